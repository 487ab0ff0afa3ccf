package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/wire"
)

// Publisher publishes messages through one Sarama AsyncProducer shared by
// every caller, with acks from all in-sync replicas and, where the
// cluster supports it, idempotence. A Publish call hands all its messages
// to the producer at once, so Sarama batches them into few requests, and
// waits for each message's ack. It is safe for concurrent use.
type Publisher struct {
	t          *Transport
	prod       sarama.AsyncProducer
	idempotent bool

	mu     sync.RWMutex // held for reading while sending to prod.Input()
	closed bool
	done   sync.WaitGroup // result dispatchers
}

var _ message.Publisher = (*Publisher)(nil)

// result is where the dispatcher reports one record's outcome.
type result chan error

func newPublisher(ctx context.Context, t *Transport) (*Publisher, error) {
	cfg := *t.sarama
	idem := t.opts.idempotent != "false"
	cfg.Producer.Idempotent = idem
	prod, err := retry(ctx, t.log, "start the producer", func() (sarama.AsyncProducer, error) {
		p, err := sarama.NewAsyncProducer(t.opts.brokers, &cfg)
		if err != nil && idem && t.opts.idempotent == "auto" && !errors.Is(err, sarama.ErrOutOfBrokers) {
			// The cluster does not grant producer IDs (an old broker or
			// no IDEMPOTENT_WRITE permission): acks=all without it.
			t.log.Info("kafka transport: the cluster refused an idempotent producer; producing without idempotence", "error", err)
			idem = false
			cfg.Producer.Idempotent = false
			return sarama.NewAsyncProducer(t.opts.brokers, &cfg)
		}
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("kafka transport: cannot start the producer: %w", err)
	}
	p := &Publisher{t: t, prod: prod, idempotent: idem}
	p.done.Add(2)
	go func() {
		defer p.done.Done()
		for m := range prod.Successes() {
			m.Metadata.(result) <- nil
		}
	}()
	go func() {
		defer p.done.Done()
		for e := range prod.Errors() {
			e.Msg.Metadata.(result) <- e.Err
		}
	}()
	return p, nil
}

// Idempotent reports whether the producer is idempotent.
func (p *Publisher) Idempotent() bool { return p.idempotent }

// Publish sends msgs, all named topic (an event name), to the topic the
// mapping gives that name, and returns once every one was acknowledged by
// all in-sync replicas. Messages whose context ends first, or that the
// cluster rejects, are listed in an *eventbus.PublishError; a message in
// that list may still have been written (its ack was not awaited).
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	kt, err := p.t.names.eventTopic(topic)
	if err != nil {
		return err
	}
	ctx := msgs[0].Context()
	if err := p.t.ensureTopic(ctx, kt, p.t.opts.partitions, false); err != nil {
		return err
	}
	return p.send(kt, msgs, nil, false)
}

// send produces msgs to topic; keys, when not nil, overrides the record
// key of each message, and null sends null values (tombstones). Each
// message's context bounds its wait.
func (p *Publisher) send(topic string, msgs []*message.Message, keys []string, null bool) error {
	results := make([]result, len(msgs))
	var failed []eventbus.FailedEvent
	fail := func(m *message.Message, err error) {
		name := m.Metadata[wire.Type]
		if name == "" {
			name = topic
		}
		failed = append(failed, eventbus.FailedEvent{ID: m.UUID, Name: name, Err: err})
	}
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return ErrClosed
	}
	for i, m := range msgs {
		mctx := m.Context()
		if err := mctx.Err(); err != nil {
			fail(m, err)
			continue
		}
		if len(m.Payload) > p.t.opts.maxMessageBytes {
			fail(m, fmt.Errorf("kafka transport: payload of %d bytes exceeds max_message_bytes=%d", len(m.Payload), p.t.opts.maxMessageBytes))
			continue
		}
		pm := encode(topic, m)
		if keys != nil {
			pm.Key = sarama.StringEncoder(keys[i])
		}
		if null {
			pm.Value = nil
		}
		r := make(result, 1)
		pm.Metadata = r
		select {
		case p.prod.Input() <- pm:
			results[i] = r
		case <-mctx.Done():
			fail(m, mctx.Err())
		}
	}
	p.mu.RUnlock()
	for i, r := range results {
		if r == nil {
			continue
		}
		m := msgs[i]
		select {
		case err := <-r:
			if err != nil {
				fail(m, fmt.Errorf("kafka transport: producing to %s: %w", topic, err))
			}
		case <-m.Context().Done():
			fail(m, fmt.Errorf("kafka transport: gave up waiting for the ack (the record may still be written): %w", m.Context().Err()))
		}
	}
	if failed == nil {
		return nil
	}
	return &eventbus.PublishError{Failed: failed}
}

// Close flushes the records being produced and stops the producer.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	// AsyncClose flushes and then closes Successes and Errors, which the
	// dispatchers drain into the waiting Publish calls (Close would drain
	// the errors itself and leave those calls waiting).
	p.prod.AsyncClose()
	p.done.Wait()
	return nil
}
