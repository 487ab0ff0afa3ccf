package amqp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/tidwall/gjson"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/logkeys"
	"github.com/paissive/go-eventbus/internal/wire"
)

// NewSubscriber returns a subscriber for one subscription group. Its
// Subscribe(ctx, pattern) declares the group's durable queue and exchange,
// binds them (see changePattern) and consumes the queue with a window of
// deliveries larger than cfg.Concurrency (see prefetchWindow): the broker
// keeps sending while handlers run, and at most cfg.Concurrency messages
// are handed to the bus at a time.
func (t *Transport) NewSubscriber(cfg driver.SubscriberConfig) (message.Subscriber, error) {
	if t.isClosed() {
		return nil, errClosed
	}
	if cfg.Group == "" {
		return nil, errors.New("amqp transport: subscriber without a group")
	}
	if q := t.queueName(cfg.Group); len(q) > maxName {
		return nil, fmt.Errorf("amqp transport: queue name %q is %d bytes long; RabbitMQ queue names are limited to %d: shorten the subscription's name", q, len(q), maxName)
	}
	if strings.Contains(cfg.Group, helperMark) {
		return nil, fmt.Errorf("amqp transport: subscription group %q contains %q, which the transport reserves for the names of the objects it adds to a subscription's queue (its lock and its temporary exchange); rename the subscription", cfg.Group, helperMark)
	}
	if t.queueName(cfg.Group) == t.opts.exchange {
		return nil, fmt.Errorf("amqp transport: subscription group %q would have the name of the topic exchange %q for its own exchange; choose another subscription name or ?exchange=", cfg.Group, t.opts.exchange)
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.Concurrency > math.MaxUint16 {
		cfg.Concurrency = math.MaxUint16
	}
	s := &subscriber{t: t, cfg: cfg, window: prefetchWindow(t.opts.prefetch, cfg.Concurrency), tokens: make(chan struct{}, cfg.Concurrency)}
	s.life, s.stop = context.WithCancel(t.msgCtx)
	t.subsMu.Lock()
	t.subs[s] = struct{}{}
	t.subsMu.Unlock()
	return s, nil
}

// DefaultReadAhead is how many deliveries a subscription keeps waiting
// beyond those being handled when the URL does not set ?prefetch=: its
// channel prefetch is Concurrency + DefaultReadAhead; see prefetchWindow.
const DefaultReadAhead = 128

// prefetchWindow is the channel prefetch (basic.qos) of a subscription:
// how many deliveries the broker sends before it waits for acks. It is
// larger than the subscription's concurrency, so that the next deliveries
// are already here when a handler finishes, rather than a round trip away:
// with the prefetch equal to the concurrency, Concurrency(1) handled one
// event per round trip (0.23-0.45x raw consumption with prefetch 200), and
// Concurrency(16) reached 0.72x with a window of 64 and 0.92-0.99x with
// 128 to 256. The deliveries beyond the concurrency wait in the client,
// unacknowledged, and come back to the queue when the subscriber closes or
// crashes, as deliveries always do. ?prefetch=N sets it for every
// subscription of the transport (at least the subscription's concurrency
// is used); the default is Concurrency + 128. Each waiting delivery holds
// its message in memory: lower it for large events (128 events of 1 MiB
// are 128 MiB per subscription).
func prefetchWindow(prefetch, concurrency int) int {
	w := prefetch
	if w == 0 {
		w = concurrency + DefaultReadAhead
	}
	return min(max(w, concurrency), math.MaxUint16)
}

// subscriber consumes one group's queue.
type subscriber struct {
	t   *Transport
	cfg driver.SubscriberConfig
	// window is the channel's prefetch; tokens holds one token per message
	// handed to the bus and not yet settled, at most Concurrency.
	window int
	tokens chan struct{}
	// life ends when the subscriber or the transport closes; the
	// subscription's consumers, and their re-establishment after a
	// connection loss, last as long.
	life context.Context
	stop context.CancelFunc

	mu     sync.Mutex
	closed bool
	loops  sync.WaitGroup // consume loops
}

// Subscribe binds the group's queue with pattern and starts consuming. It
// returns once the queue exists and is bound and the consumer is
// registered, so events published after it returns reach the
// subscription. ctx bounds only this setup: during an outage Subscribe
// waits for the connection until ctx ends, and it returns by ctx's
// deadline also when the broker is frozen, leaving nothing behind. The
// subscription then lasts, re-established after every connection loss,
// until the subscriber or the transport closes, which closes the channel.
func (s *subscriber) Subscribe(ctx context.Context, pattern string) (<-chan *message.Message, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errClosed
	}
	s.loops.Add(1)
	s.mu.Unlock()
	c, err := s.setupRetry(ctx, pattern, true)
	if err != nil {
		s.loops.Done()
		return nil, fmt.Errorf("amqp transport: subscribing %s to %q: %w", s.cfg.Group, pattern, err)
	}
	out := make(chan *message.Message)
	go s.run(pattern, c, out)
	return out, nil
}

// consumer is one channel consuming the queue.
type consumer struct {
	ch         *amqp091.Channel
	tag        string
	deliveries <-chan amqp091.Delivery
	acks       *acks // made by forward
}

// acks acknowledges the deliveries of one consumer channel cumulatively:
// one basic.ack with multiple=true covers every delivery up to a tag once
// all of them are settled. The goroutine that settles a delivery while no
// other one is sending becomes the sender: it acknowledges up to the
// highest tag below which everything is settled, and again for what was
// settled while it wrote, until nothing is left; the others only record
// their tag. One delivery at a time is acknowledged as before; under load
// one write acknowledges many, which saves the client a system call and
// the broker a frame per delivery (acknowledging each delivery was a
// fifth of the consumer's CPU time at Concurrency(16)).
//
// A nack is sent at once, on its own, before its tag is recorded as
// settled, so a later cumulative ack never covers a delivery that was
// given back. Deliveries the subscriber holds without having handed them
// out are not registered yet, so the acknowledgements never pass them.
type acks struct {
	ch      *amqp091.Channel
	mu      sync.Mutex
	order   []uint64        // tags handed out and not yet acknowledged, in delivery order
	settled map[uint64]bool // tags in order whose message is settled
	upTo    uint64          // highest tag below which everything is settled and unsent (0: none)
	sending bool
}

func newAcks(ch *amqp091.Channel) *acks {
	return &acks{ch: ch, settled: map[uint64]bool{}}
}

// handOut registers a delivery about to be handed to the bus.
func (a *acks) handOut(tag uint64) {
	a.mu.Lock()
	a.order = append(a.order, tag)
	a.mu.Unlock()
}

// done records that the delivery tag is settled (acknowledged by the bus
// when ack is set; nacked and sent already otherwise) and sends the
// acknowledgements that are due, unless another goroutine is sending;
// then that one sends them. It returns the error of the write it made.
func (a *acks) done(tag uint64, ack bool) error {
	a.mu.Lock()
	a.settled[tag] = ack
	// Advance over the settled prefix.
	n := 0
	for n < len(a.order) {
		acked, ok := a.settled[a.order[n]]
		if !ok {
			break
		}
		delete(a.settled, a.order[n])
		if acked {
			a.upTo = a.order[n]
		}
		n++
	}
	if n > 0 {
		a.order = a.order[n:]
		if len(a.order) == 0 && cap(a.order) > 1024 {
			a.order = nil
		}
	}
	if a.sending {
		a.mu.Unlock()
		return nil
	}
	a.sending = true
	var err error
	for a.upTo != 0 {
		upTo := a.upTo
		a.upTo = 0
		a.mu.Unlock()
		if e := a.ch.Ack(upTo, true); e != nil {
			err = e
		}
		a.mu.Lock()
	}
	a.sending = false
	a.mu.Unlock()
	return err
}

// setupRetry sets up a consumer within ctx (and the subscriber's life),
// retrying with backoff while the connection is down or drops; other
// failures (a queue declared with other arguments, a refused permission,
// no answer from a frozen broker before ctx ended) are returned. first is
// set for the setup of Subscribe; see setup.
func (s *subscriber) setupRetry(ctx context.Context, pattern string, first bool) (*consumer, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.life, cancel)
	defer stop()
	delay := 50 * time.Millisecond
	for {
		if s.life.Err() != nil {
			return nil, errClosed
		}
		conn, _, err := s.t.conn.get(ctx)
		if err != nil {
			if s.life.Err() != nil {
				return nil, errClosed
			}
			return nil, err
		}
		c, err := s.setup(ctx, conn, pattern, first)
		if err == nil {
			return c, nil
		}
		if s.life.Err() != nil {
			return nil, errClosed
		}
		if ctx.Err() != nil || !conn.IsClosed() {
			return nil, err
		}
		s.t.conn.lost(conn)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(delay/2 + rand.N(delay/2+1)):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// setup declares the subscription's topology (see changePattern) and
// starts a consumer. The first setup, that of Subscribe, gives the
// subscription's exchange this subscriber's pattern when it carries
// another; later ones, after a connection loss, leave another pattern in
// place, since it was set by an instance that subscribed later (a newer
// deployment) and reverting it would make instances flip the binding back
// and forth.
func (s *subscriber) setup(ctx context.Context, conn *amqp091.Connection, pattern string, first bool) (*consumer, error) {
	n := s.t.subNames(s.cfg.Group)
	keepOther := false
	for attempt := 1; ; attempt++ {
		ch, err := s.t.channelOn(ctx, conn)
		if err != nil {
			return nil, err
		}
		tag := "eventbus-" + watermill.NewShortUUID()
		var d <-chan amqp091.Delivery
		err = s.t.within(ctx, ch, fmt.Sprintf("setting up the consumer of queue %q", n.queue), func() error {
			if err := ch.Qos(s.window, 0, false); err != nil {
				return err
			}
			// Declare everything again on every (re)subscription: a consumer
			// the broker cancelled because its queue was deleted comes back
			// with its queue, bindings and exchanges.
			if err := s.t.declareExchange(ch); err != nil {
				return err
			}
			if err := s.t.declareQueue(ch, n.queue); err != nil {
				return err
			}
			if keepOther {
				if err := ch.QueueBind(n.queue, "", n.queue, false, nil); err != nil {
					return fmt.Errorf("binding queue %q to its exchange: %w", n.queue, err)
				}
			} else {
				if err := declareSubExchange(ch, n, pattern); err != nil {
					return err
				}
				if err := bindSubscription(ch, n, pattern); err != nil {
					return err
				}
				if first {
					if err := unbindLegacy(ch, n, pattern); err != nil {
						return err
					}
				}
			}
			var err error
			if d, err = ch.Consume(n.queue, tag, false, false, false, false, nil); err != nil {
				return fmt.Errorf("consuming queue %q: %w", n.queue, err)
			}
			return nil
		})
		if err == nil {
			return &consumer{ch: ch, tag: tag, deliveries: d}, nil
		}
		if ctx.Err() == nil {
			s.t.closeChannel(ctx, ch)
		}
		var ae *amqp091.Error
		if errors.As(err, &ae) && ae.Code == amqp091.NotFound && attempt < 5 && ctx.Err() == nil {
			// Another instance changing the pattern deleted the
			// subscription's exchange between its declaration and its
			// binding here: declare it again.
			continue
		}
		if !errors.Is(err, errOtherPattern) || keepOther {
			return nil, err
		}
		if !first {
			s.t.log.Warn("amqp transport: another instance gave the subscription another pattern since this one subscribed; keeping it (restart this instance to bind its own pattern again)", "queue", n.queue, "pattern", pattern)
			keepOther = true
			continue
		}
		if err := s.t.changePattern(ctx, conn, n, pattern); err != nil {
			return nil, err
		}
	}
}

// run forwards deliveries to out and re-establishes the consumer when its
// channel or connection drops, until the subscriber or the transport
// closes.
func (s *subscriber) run(pattern string, c *consumer, out chan<- *message.Message) {
	defer s.loops.Done()
	// inflight counts delivered messages not yet acked or nacked.
	var inflight sync.WaitGroup
	delay := 50 * time.Millisecond
	for {
		since := time.Now()
		if s.forward(c, out, &inflight) {
			// Settle the messages in flight before closing out: the
			// router stops waiting once out is closed and its handlers
			// returned, and the transport may close right after.
			s.finish(c, &inflight)
			close(out)
			return
		}
		// The channel or connection dropped: messages in flight on it
		// are requeued by the broker and their acks fail harmlessly.
		s.t.closeChannel(s.life, c.ch)
		s.t.log.Warn("amqp transport: consumer stopped; resubscribing", logkeys.Group, s.cfg.Group)
		// A consumer that keeps being cancelled at once (a broker
		// policy, a deleted queue) must not turn into a hot loop.
		if time.Since(since) > 5*time.Second {
			delay = 50 * time.Millisecond
		}
		s.pause(delay)
		delay = min(2*delay, 5*time.Second)
		for {
			next, err := s.setupRetry(s.life, pattern, false)
			if err == nil {
				c = next
				break
			}
			if s.life.Err() != nil {
				close(out)
				inflight.Wait()
				return
			}
			// Keep trying: a subscription must not stop for good
			// because of one failed redeclaration.
			s.t.log.Error("amqp transport: cannot resubscribe; retrying", logkeys.Group, s.cfg.Group, logkeys.Error, err)
			s.pause(delay)
			delay = min(2*delay, 5*time.Second)
		}
	}
}

// pause waits about d, or until the subscriber's life ends.
func (s *subscriber) pause(d time.Duration) {
	t := time.NewTimer(d/2 + rand.N(d/2+1))
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.life.Done():
	}
}

// forward hands deliveries to out, in the broker's order, each once a
// token is free (at most Concurrency are out at a time); the rest of the
// window waits in the client. It returns true when the subscriber should
// stop (it or the transport closed) and false when the deliveries ended
// because the channel died.
func (s *subscriber) forward(c *consumer, out chan<- *message.Message, inflight *sync.WaitGroup) bool {
	for {
		var d amqp091.Delivery
		var ok bool
		select {
		case d, ok = <-c.deliveries:
			if !ok {
				return s.life.Err() != nil
			}
		case <-s.life.Done():
			return true
		}
		// Non-blocking attempts first: a select with a default case is a
		// plain channel operation, far cheaper than a blocking multi-way
		// select, and this runs once per event.
		select {
		case s.tokens <- struct{}{}:
		default:
			select {
			case s.tokens <- struct{}{}:
			case <-s.life.Done():
				return true // not handed over: the channel close requeues it
			}
		}
		msg := toMessage(&d)
		msg.SetContext(s.t.msgCtx)
		select {
		case out <- msg:
		default:
			select {
			case out <- msg:
			case <-s.life.Done():
				<-s.tokens
				return true // not handed over: the channel close requeues it
			}
		}
		if c.acks == nil {
			c.acks = newAcks(c.ch)
		}
		c.acks.handOut(d.DeliveryTag)
		inflight.Add(1)
		go s.settle(msg, d, c.acks, inflight)
	}
}

// settle acks or nacks the delivery once the bus decided, and frees its
// token.
func (s *subscriber) settle(msg *message.Message, d amqp091.Delivery, a *acks, inflight *sync.WaitGroup) {
	defer inflight.Done()
	defer func() { <-s.tokens }()
	var err error
	select {
	case <-msg.Acked():
		err = a.done(d.DeliveryTag, true)
	case <-msg.Nacked():
		err = d.Nack(false, true)
		_ = a.done(d.DeliveryTag, false)
	case <-s.t.msgCtx.Done():
		// select picks at random among ready cases: an ack that raced
		// with the transport's close must still be sent.
		select {
		case <-msg.Acked():
			err = a.done(d.DeliveryTag, true)
		default:
			return // the transport closed: the broker requeues it
		}
	}
	if err != nil {
		s.t.log.Debug("amqp transport: cannot settle a message; the broker will redeliver it", logkeys.Group, s.cfg.Group, logkeys.EventID, msg.UUID, logkeys.Error, err)
	}
}

// finish stops the consumer, waits for the messages in flight to be
// settled (or the transport to close), then closes the channel, which
// requeues anything still unacknowledged. It waits at most closeTimeout
// for the broker, so that a frozen broker does not hold it: when the
// cancel is not confirmed in time, the channel's close is not waited for
// either (it completes in the background, or with the connection).
func (s *subscriber) finish(c *consumer, inflight *sync.WaitGroup) {
	cancelled := make(chan struct{})
	go func() {
		defer close(cancelled)
		_ = c.ch.Cancel(c.tag, false)
	}()
	timer := time.NewTimer(closeTimeout)
	answered := true
	select {
	case <-cancelled:
	case <-timer.C:
		answered = false
		s.t.log.Warn("amqp transport: the broker did not confirm the cancel of a consumer; closing its channel without waiting", logkeys.Group, s.cfg.Group, logkeys.Waited, closeTimeout)
	}
	timer.Stop()
	inflight.Wait()
	if answered {
		s.t.closeChannel(context.Background(), c.ch)
	} else {
		go s.t.closeChannel(context.Background(), c.ch)
	}
}

// Close stops consuming. Messages already handed out stay valid (their
// contexts are not cancelled) and Close waits until they are acked or
// nacked, or the transport closes. Against a frozen broker it returns
// within about 2 s plus that wait; see closeTimeout.
func (s *subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.loops.Wait()
		return nil
	}
	s.closed = true
	s.stop()
	s.mu.Unlock()
	s.loops.Wait()
	s.t.subsMu.Lock()
	delete(s.t.subs, s)
	s.t.subsMu.Unlock()
	return nil
}

// toMessage converts a delivery to a Watermill message: the headers become
// the metadata (values that are not strings converted, see headerString)
// and the body the payload. It also reads what CloudEvents producers other
// than the bus send, so that their events decode:
//
//   - attributes named with either prefix of the CloudEvents AMQP
//     binding, "cloudEvents_" (which it prefers, for JMS) or "cloudEvents:"
//     (which Spring Cloud Function's AMQP support writes), become "ce_"
//     headers, unless a "ce_" header of the same attribute is present;
//   - the content-type property, where the AMQP binding puts the data's
//     content type (or "application/cloudevents+json" for structured
//     mode), becomes the content-type header when there is none;
//   - the correlation-id property becomes the correlation attribute when
//     the message has none.
//
// The UUID is the message-id property, else the ce_id header, else the id
// of a structured-mode body, else a new UUID.
func toMessage(d *amqp091.Delivery) *message.Message {
	md := make(message.Metadata, len(d.Headers))
	for k, v := range d.Headers {
		s, ok := headerString(v)
		if !ok {
			continue
		}
		if name, ok := amqpBindingAttribute(k); ok {
			ce := driver.AttributePrefix + name
			if _, dup := d.Headers[ce]; !dup {
				md[ce] = s
			}
			continue
		}
		md[k] = s
	}
	if _, ok := md[wire.ContentType]; !ok && d.ContentType != "" {
		md[wire.ContentType] = d.ContentType
	}
	if _, ok := md[wire.CorrelationID]; !ok && d.CorrelationId != "" {
		md[wire.CorrelationID] = d.CorrelationId
	}
	id := d.MessageId
	if id == "" {
		id = md[wire.ID]
	}
	if id == "" && strings.HasPrefix(md[wire.ContentType], driver.ContentTypeStructured) {
		id = gjson.GetBytes(d.Body, "id").String()
	}
	if id == "" {
		id = watermill.NewUUID()
	}
	msg := message.NewMessage(id, d.Body)
	msg.Metadata = md
	return msg
}

// amqpBindingAttribute returns the attribute a header of the CloudEvents
// AMQP binding names: "cloudEvents_id" and "cloudEvents:id" name "id".
// The prefix is compared without regard to case.
func amqpBindingAttribute(k string) (string, bool) {
	const prefix = "cloudEvents_"
	if len(k) <= len(prefix) || (k[len(prefix)-1] != '_' && k[len(prefix)-1] != ':') || (k[0] != 'c' && k[0] != 'C') ||
		!strings.EqualFold(k[:len(prefix)-1], prefix[:len(prefix)-1]) {
		return "", false
	}
	return k[len(prefix):], true
}

// headerString converts an AMQP header value to a string: strings as they
// are, numbers and booleans in decimal, times in RFC 3339, byte arrays in
// base64 and tables and arrays (x-death) as JSON.
func headerString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case nil:
		return "", false
	case []byte:
		return base64.StdEncoding.EncodeToString(x), true
	case bool:
		return strconv.FormatBool(x), true
	case int8:
		return strconv.FormatInt(int64(x), 10), true
	case int16:
		return strconv.FormatInt(int64(x), 10), true
	case int32:
		return strconv.FormatInt(int64(x), 10), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case int:
		return strconv.Itoa(x), true
	case uint8:
		return strconv.FormatUint(uint64(x), 10), true
	case uint16:
		return strconv.FormatUint(uint64(x), 10), true
	case uint32:
		return strconv.FormatUint(uint64(x), 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32), true
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), true
	case time.Time:
		return x.UTC().Format(time.RFC3339), true
	case amqp091.Decimal:
		return fmt.Sprintf("%de-%d", x.Value, x.Scale), true
	default:
		b, err := json.Marshal(jsonable(v))
		if err != nil {
			return "", false
		}
		return string(b), true
	}
}

// jsonable turns AMQP tables and arrays into values encoding/json
// renders faithfully.
func jsonable(v any) any {
	switch x := v.(type) {
	case amqp091.Table:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = jsonable(e)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = jsonable(e)
		}
		return a
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case amqp091.Decimal:
		s, _ := headerString(x)
		return s
	default:
		return v
	}
}
