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
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/wire"
)

// NewSubscriber returns a subscriber for one subscription group. Its
// Subscribe(ctx, pattern) declares the group's durable queue, binds it to
// the exchange with the pattern and consumes it with a prefetch of
// cfg.Concurrency, so that many messages are in flight at once.
func (t *Transport) NewSubscriber(cfg driver.SubscriberConfig) (message.Subscriber, error) {
	if t.isClosed() {
		return nil, ErrClosed
	}
	if cfg.Group == "" {
		return nil, errors.New("amqp transport: subscriber without a group")
	}
	if len(cfg.Group) > 255 {
		return nil, fmt.Errorf("amqp transport: group %q is %d bytes long; RabbitMQ queue names are limited to 255", cfg.Group, len(cfg.Group))
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	if cfg.Concurrency > math.MaxUint16 {
		cfg.Concurrency = math.MaxUint16
	}
	s := &subscriber{t: t, cfg: cfg, closing: make(chan struct{})}
	t.subsMu.Lock()
	t.subs[s] = struct{}{}
	t.subsMu.Unlock()
	return s, nil
}

// subscriber consumes one group's queue.
type subscriber struct {
	t   *Transport
	cfg driver.SubscriberConfig

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	loops   sync.WaitGroup // consume loops
}

// Subscribe binds the group's queue with pattern and starts consuming. It
// returns once the queue exists and is bound, so events published after it
// returns reach the subscription; during an outage it waits for the
// connection until ctx ends. The channel closes when the subscriber or
// the transport closes, or ctx ends.
func (s *subscriber) Subscribe(ctx context.Context, pattern string) (<-chan *message.Message, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.loops.Add(1)
	s.mu.Unlock()
	c, err := s.setupRetry(ctx, pattern)
	if err != nil {
		s.loops.Done()
		return nil, fmt.Errorf("amqp transport: subscribing %s to %q: %w", s.cfg.Group, pattern, err)
	}
	out := make(chan *message.Message)
	// ctx bounded the setup only: the subscription lasts until the
	// subscriber or the transport closes.
	go s.run(context.Background(), pattern, c, out)
	return out, nil
}

// consumer is one channel consuming the queue.
type consumer struct {
	ch         *amqp091.Channel
	tag        string
	deliveries <-chan amqp091.Delivery
}

// setupRetry sets up a consumer, retrying with backoff while the
// connection is down or drops; other failures (a queue declared with other
// arguments, a refused permission) are returned.
func (s *subscriber) setupRetry(ctx context.Context, pattern string) (*consumer, error) {
	// Waiting for the connection ends with the subscriber or transport.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.t.msgCtx, cancel)
	defer stop()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	delay := 50 * time.Millisecond
	for {
		select {
		case <-s.closing:
			return nil, ErrClosed
		default:
		}
		conn, _, err := s.t.conn.get(ctx)
		if err != nil {
			select {
			case <-s.closing:
				return nil, ErrClosed
			default:
				return nil, err
			}
		}
		c, err := s.setup(conn, pattern)
		if err == nil {
			return c, nil
		}
		if !conn.IsClosed() {
			return nil, err
		}
		s.t.conn.lost(conn)
		select {
		case <-ctx.Done():
			return nil, err
		case <-s.closing:
			return nil, ErrClosed
		case <-time.After(delay/2 + rand.N(delay/2+1)):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func (s *subscriber) setup(conn *amqp091.Connection, pattern string) (*consumer, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*consumer, error) {
		_ = ch.Close()
		return nil, err
	}
	if err := ch.Qos(s.cfg.Concurrency, 0, false); err != nil {
		return fail(err)
	}
	// Declare everything again on every (re)subscription: a consumer the
	// broker cancelled because its queue was deleted comes back with its
	// queue, binding and exchange.
	if err := s.t.declareExchange(ch); err != nil {
		return fail(err)
	}
	if err := s.t.declareQueue(ch, s.cfg.Group); err != nil {
		return fail(err)
	}
	if err := ch.QueueBind(s.cfg.Group, pattern, s.t.opts.exchange, false, nil); err != nil {
		return fail(fmt.Errorf("binding queue %q to exchange %q with %q: %w", s.cfg.Group, s.t.opts.exchange, pattern, err))
	}
	tag := "eventbus-" + watermill.NewShortUUID()
	d, err := ch.Consume(s.cfg.Group, tag, false, false, false, false, nil)
	if err != nil {
		return fail(fmt.Errorf("consuming queue %q: %w", s.cfg.Group, err))
	}
	return &consumer{ch: ch, tag: tag, deliveries: d}, nil
}

// run forwards deliveries to out and re-establishes the consumer when its
// channel or connection drops, until the subscriber closes or ctx ends.
func (s *subscriber) run(ctx context.Context, pattern string, c *consumer, out chan<- *message.Message) {
	defer s.loops.Done()
	// inflight counts delivered messages not yet acked or nacked.
	var inflight sync.WaitGroup
	delay := 50 * time.Millisecond
	for {
		since := time.Now()
		stopped := s.forward(ctx, c, out, &inflight)
		if stopped {
			// Settle the messages in flight before closing out: the
			// router stops waiting once out is closed and its handlers
			// returned, and the transport may close right after.
			s.finish(c, &inflight)
			close(out)
			return
		}
		// The channel or connection dropped: messages in flight on it
		// are requeued by the broker and their acks fail harmlessly.
		_ = c.ch.Close()
		s.t.log.Warn("amqp transport: consumer stopped; resubscribing", "group", s.cfg.Group)
		// A consumer that keeps being cancelled at once (a broker
		// policy, a deleted queue) must not turn into a hot loop.
		if time.Since(since) > 5*time.Second {
			delay = 50 * time.Millisecond
		}
		select {
		case <-time.After(delay/2 + rand.N(delay/2+1)):
		case <-s.closing:
		case <-ctx.Done():
		case <-s.t.msgCtx.Done():
		}
		delay = min(2*delay, 5*time.Second)
		for {
			next, err := s.setupRetry(ctx, pattern)
			if err == nil {
				c = next
				break
			}
			if s.stopping(ctx) {
				close(out)
				inflight.Wait()
				return
			}
			// Keep trying: a subscription must not stop for good
			// because of one failed redeclaration.
			s.t.log.Error("amqp transport: cannot resubscribe; retrying", "group", s.cfg.Group, "error", err)
			select {
			case <-time.After(delay/2 + rand.N(delay/2+1)):
			case <-s.closing:
			case <-ctx.Done():
			case <-s.t.msgCtx.Done():
			}
			delay = min(2*delay, 5*time.Second)
		}
	}
}

// stopping reports whether the subscriber, its ctx or the transport ended.
func (s *subscriber) stopping(ctx context.Context) bool {
	select {
	case <-s.closing:
		return true
	default:
		return ctx.Err() != nil || s.t.msgCtx.Err() != nil
	}
}

// forward hands deliveries to out. It returns true when the subscriber
// should stop (closed, ctx ended, transport closed) and false when the
// deliveries ended because the channel died.
func (s *subscriber) forward(ctx context.Context, c *consumer, out chan<- *message.Message, inflight *sync.WaitGroup) bool {
	for {
		var d amqp091.Delivery
		var ok bool
		select {
		case d, ok = <-c.deliveries:
			if !ok {
				select {
				case <-s.closing:
					return true
				case <-s.t.msgCtx.Done():
					return true
				default:
					return ctx.Err() != nil
				}
			}
		case <-s.closing:
			return true
		case <-ctx.Done():
			return true
		case <-s.t.msgCtx.Done():
			return true
		}
		msg := toMessage(&d)
		msg.SetContext(s.t.msgCtx)
		select {
		case out <- msg:
		case <-s.closing:
			return true // not handed over: the channel close requeues it
		case <-ctx.Done():
			return true
		case <-s.t.msgCtx.Done():
			return true
		}
		inflight.Add(1)
		go s.settle(msg, d, inflight)
	}
}

// settle acks or nacks the delivery once the bus decided.
func (s *subscriber) settle(msg *message.Message, d amqp091.Delivery, inflight *sync.WaitGroup) {
	defer inflight.Done()
	var err error
	select {
	case <-msg.Acked():
		err = d.Ack(false)
	case <-msg.Nacked():
		err = d.Nack(false, true)
	case <-s.t.msgCtx.Done():
		// select picks at random among ready cases: an ack that raced
		// with the transport's close must still be sent.
		select {
		case <-msg.Acked():
			err = d.Ack(false)
		default:
			return // the transport closed: the broker requeues it
		}
	}
	if err != nil {
		s.t.log.Debug("amqp transport: cannot settle a message; the broker will redeliver it", "group", s.cfg.Group, "message_id", msg.UUID, "error", err)
	}
}

// finish stops the consumer, waits for the messages in flight to be
// settled (or the transport to close), then closes the channel, which
// requeues anything still unacknowledged.
func (s *subscriber) finish(c *consumer, inflight *sync.WaitGroup) {
	_ = c.ch.Cancel(c.tag, false)
	inflight.Wait()
	_ = c.ch.Close()
}

// Close stops consuming. Messages already handed out stay valid (their
// contexts are not cancelled) and Close waits until they are acked or
// nacked, or the transport closes.
func (s *subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.loops.Wait()
		return nil
	}
	s.closed = true
	close(s.closing)
	s.mu.Unlock()
	s.loops.Wait()
	s.t.subsMu.Lock()
	delete(s.t.subs, s)
	s.t.subsMu.Unlock()
	return nil
}

// toMessage converts a delivery to a Watermill message. The UUID is the
// message-id property, else the ce_id header, else a new UUID (a message
// from a foreign client); headers that are not strings are converted.
func toMessage(d *amqp091.Delivery) *message.Message {
	md := make(message.Metadata, len(d.Headers))
	for k, v := range d.Headers {
		if s, ok := headerString(v); ok {
			md[k] = s
		}
	}
	id := d.MessageId
	if id == "" {
		id = md[wire.ID]
	}
	if id == "" {
		id = watermill.NewUUID()
	}
	msg := message.NewMessage(id, d.Body)
	msg.Metadata = md
	return msg
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
