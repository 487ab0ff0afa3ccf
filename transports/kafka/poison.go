package kafka

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/wire"
)

// tombstoneHeader marks a record of the poison topic that removes the
// entry with the same key.
const tombstoneHeader = "eventbus_poison_removed"

// poisonQueue is the service's poison topic: one partition (so List is in
// the order of Add), compacted, keyed by subscription and message UUID.
// Remove appends tombstones (null values with the same key) and then
// deletes the records below the oldest entry still stored, so the topic
// holds little more than the live entries.
type poisonQueue struct {
	t     *Transport
	topic string
}

func poisonKey(m *message.Message) string {
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

// entry is a stored message and where it is.
type entry struct {
	key    string
	offset int64
	msg    *message.Message
}

// read returns the live entries, oldest first, and the high-water mark
// up to which it read. A concurrent Remove may delete the records it
// starts from; it then reads again.
func (p *poisonQueue) read(ctx context.Context) ([]entry, int64, error) {
	if err := p.ensure(ctx); err != nil {
		return nil, 0, err
	}
	// The tail of the partition is always a record (no transactions, and
	// compaction spares the active segment), so reading stops at the
	// high-water mark; the timeout only guards against a broker that
	// behaves otherwise.
	ctx, cancel := context.WithTimeout(ctx, topicTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		es, hwm, err := p.readOnce(ctx)
		if errors.Is(err, sarama.ErrOffsetOutOfRange) && attempt < 3 {
			continue
		}
		return es, hwm, err
	}
}

func (p *poisonQueue) readOnce(ctx context.Context) ([]entry, int64, error) {
	client := p.t.client
	oldest, err := client.GetOffset(p.topic, 0, sarama.OffsetOldest)
	if err != nil {
		return nil, 0, fmt.Errorf("kafka transport: poison topic %s: %w", p.topic, err)
	}
	hwm, err := client.GetOffset(p.topic, 0, sarama.OffsetNewest)
	if err != nil {
		return nil, 0, fmt.Errorf("kafka transport: poison topic %s: %w", p.topic, err)
	}
	live := map[string]entry{}
	if oldest < hwm {
		consumer, err := sarama.NewConsumerFromClient(client)
		if err != nil {
			return nil, 0, err
		}
		defer consumer.Close()
		pc, err := consumer.ConsumePartition(p.topic, 0, oldest)
		if err != nil {
			return nil, 0, fmt.Errorf("kafka transport: reading poison topic %s: %w", p.topic, err)
		}
		defer pc.AsyncClose()
	read:
		for {
			select {
			case rec, ok := <-pc.Messages():
				if !ok {
					return nil, 0, fmt.Errorf("kafka transport: reading poison topic %s: consumer stopped", p.topic)
				}
				key := string(rec.Key)
				if _, dead := header(rec, tombstoneHeader); dead || rec.Value == nil {
					delete(live, key)
				} else {
					live[key] = entry{key: key, offset: rec.Offset, msg: decode(rec)}
				}
				if rec.Offset+1 >= hwm {
					break read
				}
			case err := <-pc.Errors():
				if err != nil {
					return nil, 0, fmt.Errorf("kafka transport: reading poison topic %s: %w", p.topic, err)
				}
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		}
	}
	out := make([]entry, 0, len(live))
	for _, e := range live {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].offset < out[j].offset })
	return out, hwm, nil
}

// List returns the stored messages, oldest first, and leaves them stored.
func (p *poisonQueue) List(ctx context.Context) ([]*message.Message, error) {
	es, _, err := p.read(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*message.Message, len(es))
	for i, e := range es {
		out[i] = e.msg
	}
	return out, nil
}

// Remove deletes the stored messages with the given UUIDs (every
// subscription's entry for each), or all of them when none are given.
func (p *poisonQueue) Remove(ctx context.Context, uuids ...string) error {
	es, hwm, err := p.read(ctx)
	if err != nil {
		return err
	}
	drop := make(map[string]bool, len(uuids))
	for _, id := range uuids {
		drop[id] = true
	}
	var tombs []*message.Message
	var keys []string
	lowLive := hwm
	for _, e := range es {
		if len(uuids) == 0 || drop[e.msg.UUID] {
			m := message.NewMessage(e.msg.UUID, nil)
			m.Metadata.Set(tombstoneHeader, "1")
			m.SetContext(ctx)
			tombs = append(tombs, m)
			keys = append(keys, e.key)
			continue
		}
		lowLive = min(lowLive, e.offset)
	}
	if len(tombs) > 0 {
		if err := p.t.pub.send(p.topic, tombs, keys, true); err != nil {
			return fmt.Errorf("kafka transport: removing from poison topic %s: %w", p.topic, err)
		}
	}
	// Everything below the oldest live entry is dead: delete it, so List
	// does not read it again. Compaction would get there eventually.
	if lowLive > 0 {
		if err := p.t.admin.DeleteRecords(p.topic, map[int32]int64{0: lowLive}); err != nil && !errors.Is(err, context.Canceled) {
			p.t.log.Debug("kafka transport: cannot delete records of the poison topic; tombstones hide them", "topic", p.topic, "error", err)
		}
	}
	return nil
}
