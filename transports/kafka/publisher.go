package kafka

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/logkeys"
)

// Publisher publishes messages through Sarama AsyncProducers shared by
// every caller, with acks from all in-sync replicas and, where the
// cluster supports it, idempotence. A Publish call hands all its messages
// to the producer at once, so Sarama batches them into few requests, and
// waits for each message's ack. Records that fail with an error another
// attempt may fix (broker unreachable, restarting or frozen, leader
// elections) are produced again, with backoff, until their message's
// context ends; see the package documentation. It is safe for concurrent
// use.
type Publisher struct {
	t *Transport
	// events writes event and replay topics, whose records are at most
	// max_message_bytes; poison writes the poison topics, whose records
	// may be PoisonHeadroom larger. Two producers, because Sarama's limit
	// on a record is also its limit on a batch, and a batch of events
	// larger than max_message_bytes would be refused by the event topics.
	events, poison *producer

	mu      sync.Mutex
	closed  bool
	closing chan struct{}  // closed when Close starts: nothing new is produced
	gone    chan struct{}  // closed when Close stopped waiting: waiting calls fail
	sending sync.WaitGroup // calls handing records to a producer
}

var (
	_ message.Publisher     = (*Publisher)(nil)
	_ driver.BatchPublisher = (*Publisher)(nil)
)

// producer is one Sarama AsyncProducer on its own client.
type producer struct {
	name       string
	client     sarama.Client // closed after the producer
	ap         sarama.AsyncProducer
	maxBytes   int    // largest record, as recordSize counts it
	limit      string // how the limit is named in errors
	idempotent bool
	stopping   *atomic.Bool  // set when Close gives up: Sarama's retries stop waiting
	done       chan struct{} // closed once Sarama has returned every record
	lastWarn   atomic.Int64  // unix nanoseconds of the last retry warning
	inflight   atomic.Int64  // records handed to Sarama and not yet returned
}

// result is where a dispatcher reports one record's outcome.
type result chan error

// Backoff of Publish between attempts at records that failed with an
// error another attempt may fix.
const (
	minPublishRetry = 50 * time.Millisecond
	maxPublishRetry = time.Second
)

func newPublisher(ctx context.Context, t *Transport) (*Publisher, error) {
	p := &Publisher{t: t, closing: make(chan struct{}), gone: make(chan struct{})}
	var err error
	p.events, err = newProducer(ctx, t, "event", t.opts.maxMessageBytes,
		fmt.Sprintf("max_message_bytes=%d", t.opts.maxMessageBytes))
	if err != nil {
		return nil, err
	}
	p.poison, err = newProducer(ctx, t, "poison", t.opts.poisonMaxBytes(),
		fmt.Sprintf("the poison topic's max.message.bytes=%d (max_message_bytes + %d)", t.opts.poisonMaxBytes(), PoisonHeadroom))
	if err != nil {
		p.events.stop(time.Now())
		return nil, err
	}
	return p, nil
}

// producerConfig is the configuration of a producer whose records are at
// most maxBytes as recordSize counts them.
func (t *Transport) producerConfig(maxBytes int, idempotent bool, stopping *atomic.Bool) *sarama.Config {
	c := *t.sarama
	c.Producer.Idempotent = idempotent
	// Sarama checks each record's estimated size against MaxMessageBytes
	// and fills each partition's batch up to it. Leaving out the batch
	// header keeps both below the topic's max.message.bytes: the estimate
	// is never below the record's encoded size (see recordSize).
	c.Producer.MaxMessageBytes = maxBytes - recordBatchOverhead
	// Sarama's own retries keep a partition's records in order; they end
	// after about 7s (10 retries, 100ms doubling to 1s), and Publish then
	// produces the record again until its context ends.
	c.Producer.Retry.Max = 10
	c.Producer.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		if stopping.Load() {
			return 0
		}
		return min(100*time.Millisecond<<min(retries, 4), time.Second)
	}
	return &c
}

// newProducer starts a producer on a client of its own, bounded by ctx.
// With idempotent=auto, a cluster that refuses producer IDs (an old broker
// or no IDEMPOTENT_WRITE permission) gets a producer without idempotence
// and a log line.
func newProducer(ctx context.Context, t *Transport, name string, maxBytes int, limit string) (*producer, error) {
	idem := t.opts.idempotent != "false"
	for {
		stopping := new(atomic.Bool)
		cfg := t.producerConfig(maxBytes, idem, stopping)
		client, err := retry(ctx, t.log, "connect the "+name+" producer", func() (sarama.Client, error) {
			return sarama.NewClient(t.opts.brokers, cfg)
		}, closeClient)
		if err != nil {
			return nil, fmt.Errorf("kafka transport: cannot start the %s producer: %w", name, err)
		}
		ap, err := retry(ctx, t.log, "start the "+name+" producer", func() (sarama.AsyncProducer, error) {
			ap, err := sarama.NewAsyncProducerFromClient(producerClient{client, stopping})
			if err != nil && idem && idempotenceRefused(err) {
				return nil, stopRetrying{err}
			}
			return ap, err
		}, func(ap sarama.AsyncProducer) { _ = ap.Close() })
		if err == nil {
			return startProducer(t, name, client, ap, maxBytes, limit, idem, stopping), nil
		}
		go closeClient(client)
		var stop stopRetrying
		if errors.As(err, &stop) && t.opts.idempotent == "auto" {
			t.log.Info("kafka transport: the cluster refused an idempotent producer; producing without idempotence", "producer", name, "error", err)
			idem = false
			continue
		}
		return nil, fmt.Errorf("kafka transport: cannot start the %s producer: %w", name, err)
	}
}

// idempotenceRefused reports the errors of a cluster that does not grant
// producer IDs.
func idempotenceRefused(err error) bool {
	return errors.Is(err, sarama.ErrClusterAuthorizationFailed) ||
		errors.Is(err, sarama.ErrTransactionalIDAuthorizationFailed) ||
		errors.Is(err, sarama.ErrUnsupportedVersion)
}

func startProducer(t *Transport, name string, client sarama.Client, ap sarama.AsyncProducer, maxBytes int, limit string, idem bool, stopping *atomic.Bool) *producer {
	pr := &producer{name: name, client: client, ap: ap, maxBytes: maxBytes, limit: limit, idempotent: idem, stopping: stopping, done: make(chan struct{})}
	// The dispatchers run until Sarama has returned every record, which
	// may be after Close returned (t.after).
	dispatchers := t.afterClose(func() {
		for m := range ap.Successes() {
			pr.inflight.Add(-1)
			m.Metadata.(result) <- nil
		}
	}, func() {
		for e := range ap.Errors() {
			pr.inflight.Add(-1)
			e.Msg.Metadata.(result) <- e.Err
		}
	})
	t.afterClose(func() {
		dispatchers.Wait()
		close(pr.done)
		closeClient(client)
	})
	return pr
}

// stop flushes the producer and stops it, waiting until deadline at most;
// false means it gave up, and the producer's client was closed so that
// Sarama fails what it still holds instead of retrying it.
func (pr *producer) stop(deadline time.Time) bool {
	// AsyncClose flushes and then closes Successes and Errors, which the
	// dispatchers drain into the waiting Publish calls (Close would drain
	// the errors itself and leave those calls waiting).
	pr.ap.AsyncClose()
	tm := time.NewTimer(time.Until(deadline))
	defer tm.Stop()
	select {
	case <-pr.done:
		return true
	case <-tm.C:
		// Stop Sarama's retries and leader lookups; closing the client
		// makes it fail what it still holds. The dispatchers then end.
		pr.stopping.Store(true)
		go closeClient(pr.client)
		return false
	}
}

// producerClient is the client a producer sees. Sarama's producer fails a
// record for good when it cannot find its partition's leader, and counts
// that in a circuit breaker which, after three failures, fails every
// record of the partition for 10 seconds: during an outage the breaker
// opens, and stays open for up to 10 seconds after the broker is back
// (measured: Publish calls waited up to 16s around a 5s outage). While the
// cluster cannot be reached, the leader lookup therefore waits, retrying
// with backoff (100ms doubling to 1s), instead of failing: the records wait
// in Sarama's queues, Publish waits for them within each message's
// context, and once the broker is back they flow again at once. A failed
// metadata refresh is reported as success for the same reason (the leader
// lookup that follows it waits). Both give up when the producer is being
// stopped.
type producerClient struct {
	sarama.Client
	stopping *atomic.Bool
}

// unreachable reports errors of a cluster that cannot be reached (rather
// than of a request it refused), and leader elections in progress.
func unreachable(err error) bool {
	var kerr sarama.KError
	if errors.As(err, &kerr) {
		return kerr == sarama.ErrLeaderNotAvailable
	}
	return !errors.Is(err, sarama.ErrClosedClient) && transient(err)
}

func (c producerClient) RefreshMetadata(topics ...string) error {
	err := c.Client.RefreshMetadata(topics...)
	if err != nil && unreachable(err) && !c.stopping.Load() {
		return nil
	}
	return err
}

func (c producerClient) Leader(topic string, partition int32) (*sarama.Broker, error) {
	delay := 100 * time.Millisecond
	for {
		b, err := c.Client.Leader(topic, partition)
		if err == nil || !unreachable(err) || c.stopping.Load() {
			return b, err
		}
		time.Sleep(delay)
		delay = min(2*delay, time.Second)
	}
}

// Idempotent reports whether the event producer is idempotent.
func (p *Publisher) Idempotent() bool { return p.events.idempotent }

// Publish sends msgs, all named topic (an event name), to the topic the
// mapping gives that name, and returns once every one was acknowledged by
// all in-sync replicas. Messages whose context ends first, that exceed
// max_message_bytes (an error wrapping driver.ErrTooLarge), or that the
// cluster rejects for good are listed in an *driver.PublishError; a
// message in that list may still have been written if its context ended
// while it was being produced. Within each message's context, failures
// another attempt may fix are retried; see the package documentation.
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

// PublishBatch is Publish for messages of different names: msgs[i] is
// named topics[i]. The messages of one Kafka topic are handed to the
// producer together, in the order given, so they are in flight at once
// and the events of one key keep the order of the call; with
// mapping=segment the topics of different first segments are produced
// concurrently.
func (p *Publisher) PublishBatch(topics []string, msgs []*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if len(topics) != len(msgs) {
		return fmt.Errorf("kafka transport: PublishBatch with %d topics for %d messages", len(topics), len(msgs))
	}
	type group struct {
		topic string
		msgs  []*message.Message
	}
	var groups []*group
	byTopic := map[string]*group{}
	var failed []driver.Failure
	for i, m := range msgs {
		kt, err := p.t.names.eventTopic(topics[i])
		if err != nil {
			failed = append(failed, driver.Failure{UUID: m.UUID, Err: err})
			continue
		}
		g := byTopic[kt]
		if g == nil {
			g = &group{topic: kt}
			byTopic[kt] = g
			groups = append(groups, g)
		}
		g.msgs = append(g.msgs, m)
	}
	errs := make([]error, len(groups))
	publish := func(k int) {
		g := groups[k]
		if err := p.t.ensureTopic(g.msgs[0].Context(), g.topic, p.t.opts.partitions, false); err != nil {
			errs[k] = err
			return
		}
		errs[k] = p.send(g.topic, g.msgs, nil, false)
	}
	if len(groups) == 1 {
		publish(0)
	} else {
		var wg sync.WaitGroup
		for k := range groups {
			wg.Go(func() { publish(k) })
		}
		wg.Wait()
	}
	for k, err := range errs {
		var pe *driver.PublishError
		switch {
		case err == nil:
		case errors.As(err, &pe):
			failed = append(failed, pe.Failed...)
		default:
			for _, m := range groups[k].msgs {
				failed = append(failed, driver.Failure{UUID: m.UUID, Err: err})
			}
		}
	}
	if failed == nil {
		return nil
	}
	return &driver.PublishError{Failed: failed}
}

// pending is a message being produced.
type pending struct {
	m        *message.Message
	rec      sarama.ProducerMessage // template; each attempt sends a copy
	r        result
	attempts int
	last     error // the last failure another attempt may fix
}

// send produces msgs to topic; keys, when not nil, overrides the record
// key of each message, and null sends null values (tombstones). Each
// message's context bounds its wait and its retries: failures another
// attempt may fix are retried with backoff (50ms doubling to 1s) until it
// ends, the others fail at once. Retried messages are handed to the
// producer again in the order of msgs. Records for a poison topic go to
// the poison producer, whose limit is max_message_bytes + PoisonHeadroom.
func (p *Publisher) send(topic string, msgs []*message.Message, keys []string, null bool) error {
	pr := p.events
	if p.t.names.isPoisonTopic(topic) {
		pr = p.poison
	}
	var failed []driver.Failure
	fail := func(m *message.Message, err error) {
		failed = append(failed, driver.Failure{UUID: m.UUID, Err: err})
	}
	todo := make([]*pending, 0, len(msgs))
	for i, m := range msgs {
		if err := m.Context().Err(); err != nil {
			fail(m, err)
			continue
		}
		q := &pending{m: m, rec: *encode(topic, m)}
		if keys != nil {
			q.rec.Key = sarama.StringEncoder(keys[i])
		}
		if null {
			q.rec.Value = nil
		}
		if size := recordSize(&q.rec); size > pr.maxBytes {
			fail(m, &tooLargeError{size: size, limit: pr.limit, value: len(m.Payload), headers: len(q.rec.Headers)})
			continue
		}
		todo = append(todo, q)
	}
	delay := minPublishRetry
	for len(todo) > 0 {
		sent, err := p.hand(pr, todo, fail)
		if err != nil {
			for _, q := range todo {
				fail(q.m, err)
			}
			break
		}
		todo = todo[:0]
		for _, q := range sent {
			if err := p.await(q, topic); err != nil {
				fail(q.m, err)
			} else if q.last != nil {
				todo = append(todo, q)
			}
		}
		if len(todo) == 0 {
			break
		}
		pr.warnRetry(p.t, topic, len(todo), todo[0].last)
		todo = p.backoff(todo, delay, fail)
		delay = min(2*delay, maxPublishRetry)
	}
	if failed == nil {
		return nil
	}
	return &driver.PublishError{Failed: failed}
}

// hand gives the records of todo to the producer in order and returns
// those it took; the others failed (their context ended or the publisher
// closed). An error means the publisher is closed and nothing was handed.
func (p *Publisher) hand(pr *producer, todo []*pending, fail func(*message.Message, error)) ([]*pending, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errClosed
	}
	p.sending.Add(1)
	p.mu.Unlock()
	defer p.sending.Done()
	sent := todo[:0:0]
	for _, q := range todo {
		ctx := q.m.Context()
		rec := q.rec // Sarama keeps state in the record; every attempt gets a fresh one
		q.r = make(result, 1)
		rec.Metadata = q.r
		pr.inflight.Add(1)
		select {
		case pr.ap.Input() <- &rec:
			q.attempts++
			q.last = nil
			sent = append(sent, q)
		case <-ctx.Done():
			pr.inflight.Add(-1)
			fail(q.m, giveUp(ctx, q, "before the producer took it (it was not written)"))
		case <-p.closing:
			pr.inflight.Add(-1)
			fail(q.m, errClosed)
		}
	}
	return sent, nil
}

// await waits for the outcome of q's attempt. It returns the error that
// fails q, or nil with q.last set when another attempt may succeed, or nil
// with q.last nil when the record was acknowledged.
func (p *Publisher) await(q *pending, topic string) error {
	ctx := q.m.Context()
	select {
	case err := <-q.r:
		p.t.report(err)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, sarama.ErrShuttingDown) || errors.Is(err, sarama.ErrClosedClient):
			return fmt.Errorf("%w (the record was not acknowledged: %w)", errClosed, err)
		case errors.Is(err, sarama.ErrMessageSizeTooLarge) || errors.Is(err, sarama.ErrMessageSetSizeTooLarge):
			return fmt.Errorf("kafka transport: the broker refused the record for %s as too large (its max.message.bytes is below what the transport allows, %d bytes; raise it or lower max_message_bytes): %w: %w",
				topic, p.t.maxBytes(topic), driver.ErrTooLarge, err)
		case transient(err):
			if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
				// Deleted behind our back: the next Publish creates it again.
				p.t.topics.Delete(topic)
			}
			q.last = err
			return nil
		default:
			return fmt.Errorf("kafka transport: producing to %s: %w", topic, err)
		}
	case <-ctx.Done():
		return giveUp(ctx, q, "while waiting for the acknowledgement (the record may still be written)")
	case <-p.gone:
		return fmt.Errorf("%w before the broker acknowledged the record (it may still be written)", errClosed)
	}
}

// backoff waits before the next attempt at todo, until delay (with
// jitter) has passed or the context of a message ends; messages whose
// context ended fail, the others are returned.
func (p *Publisher) backoff(todo []*pending, delay time.Duration, fail func(*message.Message, error)) []*pending {
	wake := make(chan struct{}, 1)
	stops := make([]func() bool, 0, len(todo))
	for _, q := range todo {
		stops = append(stops, context.AfterFunc(q.m.Context(), func() {
			select {
			case wake <- struct{}{}:
			default:
			}
		}))
	}
	tm := time.NewTimer(delay/2 + rand.N(delay/2+1))
	select {
	case <-tm.C:
	case <-wake:
	case <-p.closing:
	}
	tm.Stop()
	for _, stop := range stops {
		stop()
	}
	left := todo[:0]
	for _, q := range todo {
		if ctx := q.m.Context(); ctx.Err() != nil {
			fail(q.m, giveUp(ctx, q, "while retrying"))
			continue
		}
		left = append(left, q)
	}
	return left
}

// giveUp is the error of a message whose context ended.
func giveUp(ctx context.Context, q *pending, when string) error {
	if q.last != nil {
		return fmt.Errorf("kafka transport: gave up %s after %d attempt(s) (%w); the last failed: %w", when, q.attempts, context.Cause(ctx), q.last)
	}
	return fmt.Errorf("kafka transport: gave up %s (%w)", when, context.Cause(ctx))
}

// warnRetry logs, at most every 5 seconds per producer, that records are
// being produced again.
func (pr *producer) warnRetry(t *Transport, topic string, n int, err error) {
	now := time.Now().UnixNano()
	last := pr.lastWarn.Load()
	if now-last < int64(5*time.Second) || !pr.lastWarn.CompareAndSwap(last, now) {
		t.log.Debug("kafka transport: producing failed; retrying within each message's context", logkeys.Topic, topic, "records", n, logkeys.Error, err)
		return
	}
	t.log.Warn("kafka transport: producing failed; retrying within each message's context", logkeys.Topic, topic, "records", n, logkeys.Error, err)
}

// tooLargeError is the error of a record over a producer's limit.
type tooLargeError struct {
	size, value, headers int
	limit                string
}

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("kafka transport: record of %d bytes (value %d bytes, %d headers; key, headers and batch header counted as Kafka does, varints at their widest) exceeds %s; make the event smaller or raise max_message_bytes (and the topics' max.message.bytes)",
		e.size, e.value, e.headers, e.limit)
}

// Unwrap makes errors.Is(err, driver.ErrTooLarge) true.
func (e *tooLargeError) Unwrap() error { return driver.ErrTooLarge }

// Close flushes the records being produced and stops the producers; it
// waits CloseTimeout at most.
func (p *Publisher) Close() error { return p.close(time.Now().Add(CloseTimeout)) }

// close stops the producers, waiting until deadline at most for them to
// flush. After that, Publish calls still waiting fail with eventbus.ErrClosed and
// the producers are stopped in the background.
func (p *Publisher) close(deadline time.Time) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.closing)
	p.mu.Unlock()
	// No record may be handed to a producer after AsyncClose; the calls
	// handing records leave at once, because closing is closed.
	p.sending.Wait()
	var stopped sync.WaitGroup
	var flushed atomic.Int32
	for _, pr := range []*producer{p.events, p.poison} {
		stopped.Add(1)
		go func() {
			defer stopped.Done()
			if pr.stop(deadline) {
				flushed.Add(1)
			}
		}()
	}
	stopped.Wait()
	close(p.gone)
	if flushed.Load() < 2 {
		return errors.New("kafka transport: the producers had not flushed by the Close deadline (broker unreachable or frozen); records not acknowledged by then were reported failed, and may still be written")
	}
	return nil
}
