package kafka

import (
	"context"
	"errors"
	"fmt"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/logkeys"
	"github.com/paissive/go-eventbus/internal/wire"
)

// tombstoneHeader marks a record of the poison topic that removes the
// entry with the same key.
const tombstoneHeader = "eventbus_poison_removed"

// poisonQueue is the service's poison topic: one partition (so records
// are read in the order they were added), compacted, keyed by the record's
// poison ID, which is unique per record, so that a replayed event poisoned
// again is a record of its own. Deleting records appends tombstones (null
// values with the same key); Scan and Purge then delete (DeleteRecords)
// everything below the oldest record still stored, so the topic holds
// little more than the live records.
type poisonQueue struct {
	t     *Transport
	topic string
}

// poisonKey is a record's key: its poison ID, or for a record without one
// (stored by an older version), its subscription and message UUID.
func poisonKey(m *message.Message) string {
	if id := m.Metadata[wire.PoisonID]; id != "" {
		return id
	}
	return m.Metadata[wire.PoisonSubscription] + "/" + m.UUID
}

func (p *poisonQueue) ensure(ctx context.Context) error {
	return p.t.ensureTopic(ctx, p.topic, 1, true)
}

// Add stores msg durably: nil means all in-sync replicas have it.
func (p *poisonQueue) Add(ctx context.Context, msg *message.Message) error {
	if err := p.ensure(ctx); err != nil {
		return err
	}
	m := msg.Copy()
	m.SetContext(ctx)
	if err := p.t.pub.send(p.topic, []*message.Message{m}, []string{poisonKey(m)}, false); err != nil {
		return fmt.Errorf("kafka transport: storing in poison topic %s: %w", p.topic, err)
	}
	return nil
}

// bounds returns the partition's oldest offset and its high-water mark.
func (p *poisonQueue) bounds(ctx context.Context) (oldest, hwm int64, err error) {
	if oldest, err = p.t.getOffset(ctx, p.topic, 0, sarama.OffsetOldest); err == nil {
		hwm, err = p.t.getOffset(ctx, p.topic, 0, sarama.OffsetNewest)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("kafka transport: poison topic %s: %w", p.topic, err)
	}
	return oldest, hwm, nil
}

// read calls fn for each record from offset from up to (not including)
// to, in order.
func (p *poisonQueue) read(ctx context.Context, from, to int64, fn func(*sarama.ConsumerMessage) error) error {
	if from >= to {
		return nil
	}
	pc, release, err := p.t.consumePartition(ctx, p.topic, 0, from)
	defer release()
	if err != nil {
		return fmt.Errorf("kafka transport: reading poison topic %s: %w", p.topic, err)
	}
	for {
		select {
		case rec, ok := <-pc.Messages():
			if !ok {
				return fmt.Errorf("kafka transport: reading poison topic %s: consumer stopped", p.topic)
			}
			if rec.Offset >= to {
				return nil
			}
			if err := fn(rec); err != nil {
				return err
			}
			if rec.Offset+1 >= to {
				return nil
			}
		case err := <-pc.Errors():
			if err != nil {
				return fmt.Errorf("kafka transport: reading poison topic %s: %w", p.topic, err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func tombstone(rec *sarama.ConsumerMessage) bool {
	_, dead := header(rec, tombstoneHeader)
	return dead || rec.Value == nil
}

// Scan reads the topic up to its high-water mark at the start twice: once
// for the tombstones (a record is deleted when a tombstone with its key
// follows it), then for the live records, which it visits a page at a
// time; it writes tombstones for the ones visit deletes before it reads
// the next page. It holds the deleted keys and one page in memory.
func (p *poisonQueue) Scan(ctx context.Context, pageSize int, visit func([]*message.Message) ([]int, error)) error {
	if pageSize < 1 {
		pageSize = 1
	}
	if err := p.ensure(ctx); err != nil {
		return err
	}
	oldest, hwm, err := p.bounds(ctx)
	if err != nil {
		return err
	}
	deadAt := map[string]int64{} // key -> offset of its last tombstone
	err = p.read(ctx, oldest, hwm, func(rec *sarama.ConsumerMessage) error {
		if tombstone(rec) {
			deadAt[string(rec.Key)] = rec.Offset
		}
		return nil
	})
	if err != nil {
		return err
	}
	lowLive := hwm // the oldest record left stored
	var page []*message.Message
	var keys []string
	var offsets []int64
	flush := func() error {
		if len(page) == 0 {
			return nil
		}
		del, verr := visit(page)
		gone := make([]bool, len(page))
		var tombs []*message.Message
		var tkeys []string
		for _, i := range del {
			if i < 0 || i >= len(page) || gone[i] {
				continue
			}
			gone[i] = true
			m := message.NewMessage(page[i].UUID, nil)
			m.Metadata.Set(tombstoneHeader, "1")
			m.SetContext(ctx)
			tombs = append(tombs, m)
			tkeys = append(tkeys, keys[i])
		}
		for i := range page {
			if !gone[i] {
				lowLive = min(lowLive, offsets[i])
			}
		}
		page, keys, offsets = page[:0], keys[:0], offsets[:0]
		if len(tombs) > 0 {
			if err := p.t.pub.send(p.topic, tombs, tkeys, true); err != nil {
				return fmt.Errorf("kafka transport: removing from poison topic %s: %w", p.topic, err)
			}
		}
		return verr
	}
	err = p.read(ctx, oldest, hwm, func(rec *sarama.ConsumerMessage) error {
		if tombstone(rec) {
			return nil
		}
		key := string(rec.Key)
		if at, dead := deadAt[key]; dead && at > rec.Offset {
			return nil
		}
		page = append(page, decode(rec))
		keys = append(keys, key)
		offsets = append(offsets, rec.Offset)
		if len(page) == pageSize {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		// Records of a page not visited stay; lowLive cannot be trusted.
		return err
	}
	p.trim(ctx, lowLive)
	return nil
}

// trim deletes every record below offset: compaction would get there
// eventually, but until then each Scan would read them again.
func (p *poisonQueue) trim(ctx context.Context, offset int64) {
	if offset <= 0 {
		return
	}
	err := p.t.deleteRecords(ctx, p.topic, map[int32]int64{0: offset})
	if err != nil && !errors.Is(err, context.Canceled) {
		p.t.log.Debug("kafka transport: cannot delete records of the poison topic; tombstones hide them", logkeys.Topic, p.topic, logkeys.Error, err)
	}
}

// Purge deletes every record stored when it starts: all records below the
// high-water mark, with DeleteRecords, or, where the cluster refuses that,
// with a tombstone for each.
func (p *poisonQueue) Purge(ctx context.Context) error {
	if err := p.ensure(ctx); err != nil {
		return err
	}
	_, hwm, err := p.bounds(ctx)
	if err != nil {
		return err
	}
	if hwm == 0 {
		return nil
	}
	err = p.t.deleteRecords(ctx, p.topic, map[int32]int64{0: hwm})
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("kafka transport: purging poison topic %s: %w", p.topic, err)
	}
	p.t.log.Debug("kafka transport: cannot delete records of the poison topic; writing tombstones", logkeys.Topic, p.topic, logkeys.Error, err)
	return p.Scan(ctx, 500, func(page []*message.Message) ([]int, error) {
		del := make([]int, len(page))
		for i := range del {
			del[i] = i
		}
		return del, nil
	})
}
