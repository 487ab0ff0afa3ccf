package kafka

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/blocking"
	"github.com/paissive/go-eventbus/internal/wire"
)

var _ driver.Tapper = (*Transport)(nil)

// Tap opens a tap: a partition consumer for every partition of the event
// topics the patterns need, outside any consumer group (so it commits
// nothing and takes nothing from the subscriptions), reading from the end
// of each partition, or with FromBeginning from the oldest record
// retained; records whose "ce_type" does not match are skipped. With
// mapping=segment, a pattern whose first segment is a wildcard reads every
// event topic that exists when the tap opens; topics created later are
// not read. Replay and poison topics are never read. A partition consumer
// that fails for good (its partition deleted) ends the tap: its channel
// closes and Err says why.
func (t *Transport) Tap(ctx context.Context, cfg driver.TapConfig) (driver.Tap, error) {
	if len(cfg.Patterns) == 0 || cfg.Match == nil {
		return nil, fmt.Errorf("kafka transport: a tap needs patterns and their Match function")
	}
	topics, err := t.tapTopics(ctx, cfg.Patterns)
	if err != nil {
		return nil, err
	}
	for _, topic := range topics {
		if err := t.ensureTopic(ctx, topic, t.opts.partitions, false); err != nil {
			return nil, fmt.Errorf("kafka transport: opening a tap: %w", err)
		}
	}
	start := sarama.OffsetNewest
	if cfg.FromBeginning {
		start = sarama.OffsetOldest
	}
	type opened struct {
		c   sarama.Consumer
		pcs []sarama.PartitionConsumer
	}
	release := func(o opened) {
		for _, pc := range o.pcs {
			pc.AsyncClose()
		}
		_ = o.c.Close()
	}
	// ConsumePartition resolves the newest offset before it returns, so
	// a record produced after Tap returns is at or past it.
	o, err := blocking.Call(ctx, func() (opened, error) {
		var o opened
		c, err := sarama.NewConsumerFromClient(t.client)
		if err != nil {
			return o, err
		}
		o.c = c
		for _, topic := range topics {
			ps, err := t.client.Partitions(topic)
			if err != nil {
				release(o)
				return opened{}, fmt.Errorf("partitions of %s: %w", topic, err)
			}
			for _, p := range ps {
				pc, err := c.ConsumePartition(topic, p, start)
				if err != nil {
					release(o)
					return opened{}, fmt.Errorf("reading %s/%d: %w", topic, p, err)
				}
				o.pcs = append(o.pcs, pc)
			}
		}
		return o, nil
	}, release)
	if err != nil {
		return nil, fmt.Errorf("kafka transport: opening a tap on %s: %w", strings.Join(topics, ", "), err)
	}
	tp := &kafkaTap{out: make(chan *message.Message), stop: make(chan struct{}), done: make(chan struct{})}
	var readers sync.WaitGroup
	for _, pc := range o.pcs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			tp.read(t, pc, cfg.Match)
		}()
	}
	go func() {
		select {
		case <-tp.stop:
		case <-t.life.Done():
		}
		release(o)
		readers.Wait()
		close(tp.out)
		close(tp.done)
	}()
	return tp, nil
}

// tapTopics returns the event topics the patterns need.
func (t *Transport) tapTopics(ctx context.Context, patterns []string) ([]string, error) {
	set := map[string]bool{}
	for _, p := range patterns {
		ts, err := t.names.patternTopics(p)
		if err == nil {
			for _, topic := range ts {
				set[topic] = true
			}
			continue
		}
		// mapping=segment and a wildcard first segment: every event
		// topic that exists now.
		all, lerr := blocking.Call(ctx, func() (map[string]sarama.TopicDetail, error) { return t.admin.ListTopics() }, nil)
		if lerr != nil {
			return nil, fmt.Errorf("kafka transport: listing the event topics for a tap with %q: %w", p, lerr)
		}
		for topic := range all {
			if strings.HasPrefix(topic, t.names.join("events.")) {
				set[topic] = true
			}
		}
	}
	topics := make([]string, 0, len(set))
	for topic := range set {
		topics = append(topics, topic)
	}
	sort.Strings(topics)
	if len(topics) == 0 {
		return nil, fmt.Errorf("kafka transport: a tap with %s reads no topic: no event topic exists yet under mapping=segment; name a first segment", strings.Join(patterns, ", "))
	}
	return topics, nil
}

type kafkaTap struct {
	out  chan *message.Message
	stop chan struct{}
	once sync.Once
	done chan struct{}

	mu  sync.Mutex
	err error
}

func (tp *kafkaTap) Messages() <-chan *message.Message { return tp.out }

func (tp *kafkaTap) Err() error {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.err
}

// fail ends the tap with err.
func (tp *kafkaTap) fail(err error) {
	tp.mu.Lock()
	if tp.err == nil {
		tp.err = err
	}
	tp.mu.Unlock()
	tp.once.Do(func() { close(tp.stop) })
}

func (tp *kafkaTap) read(t *Transport, pc sarama.PartitionConsumer, match func(string) bool) {
	msgs, errs := pc.Messages(), pc.Errors()
	for msgs != nil || errs != nil {
		select {
		case rec, ok := <-msgs:
			if !ok {
				msgs = nil
				continue
			}
			if name, has := header(rec, wire.Type); !has || !match(name) {
				continue
			}
			m := decode(rec)
			m.SetContext(t.msgCtx)
			select {
			case tp.out <- m:
			case <-tp.stop:
			case <-t.life.Done():
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// Sarama retries transient errors itself; what it reports
			// here ends the partition consumer only when it is final.
			t.log.Debug("kafka transport: tap partition consumer", "error", err)
			var cerr *sarama.ConsumerError
			if errors.As(err, &cerr) && (errors.Is(cerr.Err, sarama.ErrOffsetOutOfRange) || errors.Is(cerr.Err, sarama.ErrUnknownTopicOrPartition)) {
				tp.fail(fmt.Errorf("kafka transport: the tap stopped reading %s/%d: %w; open a new tap", cerr.Topic, cerr.Partition, cerr.Err))
			}
		}
	}
}

// Close stops the partition consumers and returns once they stopped.
func (tp *kafkaTap) Close() error {
	tp.once.Do(func() { close(tp.stop) })
	<-tp.done
	return nil
}
