package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/blocking"
	"github.com/paissive/go-eventbus/internal/logkeys"
)

// NewSubscriber returns a subscriber for one subscription group; see
// [Transport] and the package documentation.
func (t *Transport) NewSubscriber(cfg driver.SubscriberConfig) (message.Subscriber, error) {
	if cfg.Group == "" {
		return nil, errors.New("kafka transport: subscriber without a group")
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.Pattern == "" || cfg.Match == nil {
		return nil, errors.New("kafka transport: subscriber without a pattern and its Match function")
	}
	// Reject what the mapping cannot serve when the subscription is made
	// (Bus.Subscribe), not only when it starts.
	if _, err := t.names.patternTopics(cfg.Pattern); err != nil {
		return nil, err
	}
	s := &subscriber{t: t, cfg: cfg, closing: make(chan struct{})}
	t.closeMu.Lock()
	defer t.closeMu.Unlock()
	if t.closed {
		return nil, errClosed
	}
	t.subs[s] = struct{}{}
	return s, nil
}

// subscriber consumes one subscription group.
type subscriber struct {
	t   *Transport
	cfg driver.SubscriberConfig

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	loops   sync.WaitGroup
}

// Subscribe joins the consumer group of the subscription for the topics
// the mapping gives pattern, plus the group's replay topic, and returns
// once the consumer has joined (or after join_timeout, while it keeps
// trying; at once with join_timeout=0). ctx bounds only this setup: when
// it ends first, Subscribe returns its error and stops what it started.
// The subscription then lasts until the subscriber or the transport
// closes, which closes the channel. Records whose "ce_type" does not
// match pattern are acknowledged without being delivered.
func (s *subscriber) Subscribe(ctx context.Context, pattern string) (<-chan *message.Message, error) {
	if pattern != s.cfg.Pattern {
		return nil, fmt.Errorf("kafka transport: Subscribe(%q) of a subscriber configured for %q", pattern, s.cfg.Pattern)
	}
	topics, err := s.t.names.patternTopics(pattern)
	if err != nil {
		return nil, err
	}
	replay := s.t.names.replayTopic(s.cfg.Group)
	topics = append(topics, replay)
	for _, topic := range topics {
		n := s.t.opts.partitions
		if topic == replay {
			n = 1
		}
		if err := s.t.ensureTopic(ctx, topic, n, false); err != nil {
			return nil, fmt.Errorf("kafka transport: subscription %s: %w", s.cfg.Group, err)
		}
	}
	c := &consumer{
		s:      s,
		match:  s.cfg.Match,
		topics: topics,
		replay: replay,
		out:    make(chan *message.Message),
		sem:    make(chan struct{}, s.cfg.Concurrency),
		joined: make(chan struct{}),
	}
	// The subscription outlives ctx: it hangs off the transport.
	runCtx, cancel := context.WithCancel(s.t.msgCtx)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return nil, errClosed
	}
	s.loops.Add(1)
	s.mu.Unlock()
	// Close waits for the consumer (its acknowledgements) only once it was
	// handed out; a Subscribe that fails leaves it to stop on its own.
	detach := sync.OnceFunc(s.loops.Done)
	started := s.t.background(func() {
		defer detach()
		defer cancel()
		go func() {
			select {
			case <-s.closing:
				cancel()
			case <-runCtx.Done():
			}
		}()
		c.run(runCtx)
	})
	if !started {
		detach()
		cancel()
		return nil, errClosed
	}
	d := s.t.opts.joinTimeout
	if d == 0 {
		return c.out, nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-c.joined:
		return c.out, nil
	case <-tm.C:
		s.t.log.Warn("kafka transport: the consumer has not joined its group yet; it keeps trying in the background", logkeys.Group, s.cfg.Group, logkeys.Waited, d)
		return c.out, nil
	case <-runCtx.Done():
		detach()
		return nil, errClosed
	case <-ctx.Done():
		cancel()
		detach()
		return nil, fmt.Errorf("kafka transport: subscription %s: the consumer had not joined its group before the deadline (%w); it was stopped", s.cfg.Group, ctx.Err())
	}
}

// Close stops consuming. Messages already delivered stay valid (their
// contexts are not cancelled); Close waits until they are acknowledged or
// nacked, or the transport closes, commits the offsets of the handled
// ones and leaves the group.
func (s *subscriber) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.loops.Wait()
	s.t.closeMu.Lock()
	delete(s.t.subs, s)
	s.t.closeMu.Unlock()
	return nil
}

// consumer is one Subscribe call: a consumer group member.
type consumer struct {
	s      *subscriber
	match  func(name string) bool // the subscription's pattern
	topics []string
	replay string
	out    chan *message.Message
	sem    chan struct{} // one token per message delivered and not settled
	joined chan struct{}
	once   sync.Once
}

// run consumes until ctx ends, re-joining after each rebalance and backing
// off after failures, then leaves the group.
func (c *consumer) run(ctx context.Context) {
	defer close(c.out)
	t := c.s.t
	log := t.log.With(logkeys.Group, c.s.cfg.Group)
	groupID := t.names.groupID(c.s.cfg.Group)
	const minDelay, maxDelay = 100 * time.Millisecond, 10 * time.Second
	delay := minDelay
	backoff := func(what string, err error) bool {
		t.report(err)
		log.Warn("kafka transport: "+what+"; retrying", logkeys.Delay, delay, logkeys.Error, err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, maxDelay)
		return true
	}
	var group sarama.ConsumerGroup
	for group == nil {
		// Creating the group connects and reads metadata, which takes no
		// ctx: bound it, so that Close does not wait for a frozen broker.
		g, err := blocking.Call(ctx, func() (sarama.ConsumerGroup, error) {
			return sarama.NewConsumerGroup(t.opts.brokers, groupID, t.sarama)
		}, func(g sarama.ConsumerGroup) { _ = g.Close() })
		if err == nil {
			group = g
		} else if ctx.Err() != nil || !backoff("cannot create the consumer group", err) {
			return
		}
	}
	errsDone := make(chan struct{})
	go func() {
		defer close(errsDone)
		for err := range group.Errors() {
			if cutOff(err) {
				t.state.Down(err)
			}
			log.Debug("kafka transport: consumer error", logkeys.Error, err)
		}
	}()
	defer func() {
		if err := group.Close(); err != nil {
			log.Debug("kafka transport: leaving the group", logkeys.Error, err)
		}
		<-errsDone
	}()
	h := &handler{c: c, ok: func() { delay = minDelay }}
	for ctx.Err() == nil {
		err := group.Consume(ctx, c.topics, h)
		if ctx.Err() != nil || errors.Is(err, sarama.ErrClosedConsumerGroup) {
			return
		}
		if err != nil && !backoff("consuming failed", err) {
			return
		}
	}
}

// handler is the sarama.ConsumerGroupHandler of a consumer.
type handler struct {
	c  *consumer
	ok func()
}

// Setup marks the consumer as joined.
func (h *handler) Setup(sarama.ConsumerGroupSession) error {
	h.ok()
	h.c.s.t.state.Up()
	h.c.once.Do(func() { close(h.c.joined) })
	return nil
}

// Cleanup commits the offsets marked in the session before it ends, so an
// acknowledgement just before Close or a rebalance is not lost.
func (h *handler) Cleanup(sess sarama.ConsumerGroupSession) error {
	sess.Commit()
	return nil
}

// ConsumeClaim delivers the records of one partition. Records that do not
// match the pattern are marked at once; matching ones are delivered while
// fewer than Concurrency are unsettled, and their offsets are committed
// once every record before them is settled too. When the claim ends
// (rebalance or Close) it waits for the delivered messages to be settled,
// unless the transport closes.
func (h *handler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	c := h.c
	tr := &tracker{sess: sess, topic: claim.Topic(), partition: claim.Partition(), done: map[int64]bool{}}
	replay := claim.Topic() == c.replay
	var inflight sync.WaitGroup
	defer inflight.Wait()
	for {
		var rec *sarama.ConsumerMessage
		var ok bool
		select {
		case rec, ok = <-claim.Messages():
			if !ok {
				return nil
			}
		case <-sess.Context().Done():
			return nil
		}
		tr.add(rec.Offset)
		if !replay {
			if name, has := eventName(rec); has && !c.match(name) {
				tr.settle(rec.Offset)
				continue
			}
		}
		msg := decodeEvent(rec)
		if !c.deliver(sess, msg) {
			return nil
		}
		inflight.Add(1)
		go c.settle(sess, tr, rec, msg, &inflight)
	}
}

// deliver takes a concurrency token and hands msg to the subscriber's
// channel; false means the session ended first.
func (c *consumer) deliver(sess sarama.ConsumerGroupSession, msg *message.Message) bool {
	msg.SetContext(c.s.t.msgCtx)
	select {
	case c.sem <- struct{}{}:
	case <-sess.Context().Done():
		return false
	}
	select {
	case c.out <- msg:
		return true
	case <-sess.Context().Done():
		<-c.sem
		return false
	}
}

// settle waits for the bus's verdict on msg. An ack marks the offset; a
// nack delivers the record again after a backoff (100ms doubling to 10s)
// without holding a concurrency token meanwhile, so the partition goes on
// while the record stays uncommitted; the retry and poison middleware
// decide how often handlers fail, so a nack here means the bus is shutting
// down or could not store a poisoned event.
func (c *consumer) settle(sess sarama.ConsumerGroupSession, tr *tracker, rec *sarama.ConsumerMessage, msg *message.Message, inflight *sync.WaitGroup) {
	defer inflight.Done()
	t := c.s.t
	delay := 100 * time.Millisecond
	for {
		select {
		case <-msg.Acked():
			<-c.sem
			tr.settle(rec.Offset)
			return
		case <-msg.Nacked():
			<-c.sem
		case <-t.msgCtx.Done():
			<-c.sem
			// select picks at random among ready cases: an ack that raced
			// with the transport's close must still be marked, or the
			// next member of the group gets the event again.
			select {
			case <-msg.Acked():
				tr.settle(rec.Offset)
			default:
			}
			return // not acknowledged: the next member of the group gets it again
		}
		t.log.Debug("kafka transport: message nacked; delivering it again", logkeys.Group, c.s.cfg.Group, logkeys.EventID, msg.UUID, logkeys.Delay, delay)
		select {
		case <-time.After(delay):
		case <-sess.Context().Done():
			return
		}
		delay = min(2*delay, 10*time.Second)
		msg = decodeEvent(rec)
		if !c.deliver(sess, msg) {
			return
		}
	}
}

// tracker commits a partition's offsets in order: the committed offset
// only passes records whose messages were settled, whatever order they
// settle in.
type tracker struct {
	sess      sarama.ConsumerGroupSession
	topic     string
	partition int32

	mu      sync.Mutex
	pending []int64 // offsets not yet settled, ascending, with settled ones at the front removed
	done    map[int64]bool
}

func (tr *tracker) add(off int64) {
	tr.mu.Lock()
	tr.pending = append(tr.pending, off)
	tr.mu.Unlock()
}

func (tr *tracker) settle(off int64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.done[off] = true
	next := int64(-1)
	for len(tr.pending) > 0 && tr.done[tr.pending[0]] {
		delete(tr.done, tr.pending[0])
		next = tr.pending[0] + 1
		tr.pending = tr.pending[1:]
	}
	if next >= 0 {
		tr.sess.MarkOffset(tr.topic, tr.partition, next, "")
	}
	if len(tr.pending) == 0 && cap(tr.pending) > 1024 {
		tr.pending = nil
	}
}
