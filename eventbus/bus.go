package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/paissive/go-eventbus/internal/wire"
	"github.com/paissive/go-eventbus/middleware"
)

// Bus publishes events and runs the service's subscriptions. It is safe for
// concurrent use. Create it with [New], add subscriptions with
// [Bus.Subscribe], start consuming with [Bus.Start], and release it with
// [Bus.Close].
type Bus struct {
	cfg       Config
	log       *slog.Logger
	transport Transport
	pub       message.Publisher
	router    *message.Router
	userMW    []message.HandlerMiddleware
	idem      middleware.IdempotencyStore

	// runCtx lives as long as the bus; the router's subscriptions hang off it.
	runCtx    context.Context
	runCancel context.CancelFunc

	mu         sync.Mutex // guards subs, started and Subscribe/Start/Close
	subs       map[string]*subscription
	started    bool
	closing    bool
	routerDone chan struct{}

	pubClosed atomic.Bool
}

type subscription struct {
	name        string
	group       string
	pattern     Pattern
	handler     Handler
	concurrency int
	policy      Policy
	subscriber  message.Subscriber
	timeout     time.Duration // HandlerTimeout option, applied over policy
	middleware  []message.HandlerMiddleware
}

// Option configures a bus beyond its Config.
type Option func(*Bus)

// WithMiddleware adds Watermill middleware to every subscription, inside the
// bus's failure-policy middleware and around the handler.
func WithMiddleware(m ...message.HandlerMiddleware) Option {
	return func(b *Bus) { b.userMW = append(b.userMW, m...) }
}

// WithIdempotencyStore sets the store used by subscriptions whose policy has
// an IdempotencyWindow. The default is an in-process LRU of 100,000 IDs
// (middleware.NewMemoryIdempotencyStore); pass a shared store (Redis, SQL)
// when several instances must recognise each other's work.
func WithIdempotencyStore(s middleware.IdempotencyStore) Option {
	return func(b *Bus) { b.idem = s }
}

// New connects to the transport cfg.URL names and returns a bus. ctx bounds
// the connection attempt only; the bus lives until Close.
func New(ctx context.Context, cfg Config, opts ...Option) (*Bus, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	b := &Bus{cfg: cfg, log: cfg.Logger, subs: make(map[string]*subscription)}
	for _, o := range opts {
		o(b)
	}
	t, err := OpenTransport(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// Watermill logs its lifecycle at info level; the bus is quiet on the
	// happy path, so those lines become debug lines.
	slogger := cfg.Logger.With("service", cfg.ServiceName)
	wlog := levelGate{watermill.NewSlogLoggerWithLevelMapping(slogger, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug}), slogger}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 365 * 24 * time.Hour}, wlog)
	if err != nil {
		_ = t.Close()
		return nil, err
	}
	b.transport, b.pub, b.router = t, t.Publisher(), router
	b.runCtx, b.runCancel = context.WithCancel(context.Background())
	return b, nil
}

// ServiceName returns the service the bus belongs to.
func (b *Bus) ServiceName() string { return b.cfg.ServiceName }

// Transport returns the bus's transport, for tests and tools that need the
// raw publisher or subscriber.
func (b *Bus) Transport() Transport { return b.transport }

// Subscribe registers handler for events whose names match pattern (see
// [Pattern]). Before Start it takes effect at Start; after Start it starts
// consuming before it returns. Invalid patterns and options are rejected
// here, as is a second subscription with the same name.
func (b *Bus) Subscribe(pattern string, handler Handler, opts ...SubscribeOption) error {
	p, err := CompilePattern(pattern)
	if err != nil {
		return err
	}
	if handler == nil {
		return errors.New("eventbus: Subscribe with a nil handler")
	}
	s := &subscription{name: pattern, pattern: p, handler: handler, concurrency: 1, policy: b.cfg.Policy}
	for _, o := range opts {
		if err := o(s); err != nil {
			return err
		}
	}
	if s.timeout > 0 {
		s.policy.HandlerTimeout = s.timeout
	}
	s.group = b.cfg.ServiceName + "." + s.name

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		return ErrClosed
	}
	if _, dup := b.subs[s.name]; dup {
		return fmt.Errorf("eventbus: service %s already has a subscription named %q; give this one another name with SubscriptionName", b.cfg.ServiceName, s.name)
	}
	// The transport sees the subscription now, so that what it cannot
	// serve is an error here rather than at Start.
	if err := b.newSubscriber(s); err != nil {
		return err
	}
	b.subs[s.name] = s
	if !b.started {
		return nil
	}
	ch, err := b.subscribe(s)
	if err != nil {
		delete(b.subs, s.name)
		return err
	}
	h := b.addHandler(s, ch)
	if err := b.router.RunHandlers(b.runCtx); err != nil {
		return fmt.Errorf("eventbus: starting subscription %s: %w", s.group, err)
	}
	<-h.Started()
	return nil
}

// subscribe opens the subscription at the transport. It runs here rather
// than inside the router's RunHandlers, because a router handler whose
// Subscribe failed stays registered without ever starting, and the router's
// Close then waits for it forever.
func (b *Bus) subscribe(s *subscription) (<-chan *message.Message, error) {
	if s.subscriber == nil { // closed by a failed Start
		if err := b.newSubscriber(s); err != nil {
			return nil, err
		}
	}
	ch, err := s.subscriber.Subscribe(b.runCtx, s.pattern.String())
	if err != nil {
		_ = s.subscriber.Close()
		s.subscriber = nil
		return nil, fmt.Errorf("eventbus: subscribing %s to %q: %w", s.group, s.pattern, err)
	}
	return ch, nil
}

func (b *Bus) newSubscriber(s *subscription) error {
	sub, err := b.transport.NewSubscriber(SubscriberConfig{
		Group: s.group, Service: b.cfg.ServiceName, Subscription: s.name,
		Pattern: s.pattern.String(), Concurrency: s.concurrency,
	})
	if err != nil {
		return fmt.Errorf("eventbus: subscribing %s to %q: %w", s.group, s.pattern, err)
	}
	s.subscriber = sub
	return nil
}

// addHandler gives an open subscription its router handler.
func (b *Bus) addHandler(s *subscription, ch <-chan *message.Message) *message.Handler {
	h := b.router.AddConsumerHandler(s.group, s.pattern.String(), subscribed{s.subscriber, ch}, b.consume(s))
	h.AddMiddleware(b.pipeline(s)...)
	return h
}

// subscribed hands the router a subscription the bus already opened.
type subscribed struct {
	message.Subscriber
	ch <-chan *message.Message
}

func (s subscribed) Subscribe(context.Context, string) (<-chan *message.Message, error) {
	return s.ch, nil
}

// pipeline is the one place that fixes the middleware order; see the
// middleware package documentation for why it is this order.
func (b *Bus) pipeline(s *subscription) []message.HandlerMiddleware {
	pol := s.policy
	mw := []message.HandlerMiddleware{growStack, middleware.Correlation}
	if pq, err := b.transport.PoisonQueue(); err == nil {
		mw = append(mw, middleware.Poison{
			Store: pq, Service: b.cfg.ServiceName, Subscription: s.name, Pattern: s.pattern.String(), Logger: b.log,
		}.Middleware)
	}
	if pol.IdempotencyWindow > 0 {
		if b.idem == nil {
			b.idem = middleware.NewMemoryIdempotencyStore(0)
		}
		mw = append(mw, middleware.Idempotency{Store: b.idem, Window: pol.IdempotencyWindow, Scope: s.group, Logger: b.log}.Middleware)
	}
	mw = append(mw,
		middleware.Retry{
			MaxAttempts: pol.MaxAttempts, InitialInterval: pol.InitialBackoff, Multiplier: pol.Multiplier,
			MaxInterval: pol.MaxBackoff, RandomizationFactor: pol.Jitter, MaxElapsedTime: pol.MaxElapsed, Logger: b.log,
		}.Middleware,
		middleware.Timeout(pol.HandlerTimeout),
		middleware.Recoverer,
	)
	mw = append(mw, b.userMW...)
	return append(mw, s.middleware...)
}

// undecodableError marks a message that is not a valid event.
type undecodableError struct{ err error }

func (e *undecodableError) Error() string        { return "undecodable message: " + e.err.Error() }
func (e *undecodableError) Unwrap() error        { return e.err }
func (e *undecodableError) Permanent() bool      { return true }
func (e *undecodableError) PoisonReason() string { return middleware.ReasonUndecodable }
func (e *undecodableError) Is(t error) bool      { return t == ErrPermanent }

// consume is the innermost handler: it decodes the message and calls the
// user's handler. Messages that reach a subscription without matching its
// pattern (brokers that cannot route by name) are acknowledged unhandled.
func (b *Bus) consume(s *subscription) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		ev, err := DecodeMessage(msg)
		if err != nil {
			return &undecodableError{err: err}
		}
		if !s.pattern.Match(ev.Name) {
			return nil
		}
		return s.handler(msg.Context(), ev)
	}
}

// Start starts consuming every subscription made so far and returns once
// they all consume, or with ctx's error if that takes longer than ctx
// allows. Calling it again does nothing.
func (b *Bus) Start(ctx context.Context) error {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return ErrClosed
	}
	if b.started {
		b.mu.Unlock()
		return nil
	}
	// Open every subscription before the router gets any, so that one
	// failure leaves nothing half-started: Start can be called again.
	chans := make(map[*subscription]<-chan *message.Message, len(b.subs))
	for _, s := range b.subs {
		ch, err := b.subscribe(s)
		if err != nil {
			for opened := range chans {
				_ = opened.subscriber.Close()
				opened.subscriber = nil
			}
			b.mu.Unlock()
			return err
		}
		chans[s] = ch
	}
	for s, ch := range chans {
		b.addHandler(s, ch)
	}
	b.started = true
	b.routerDone = make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(b.routerDone)
		if err := b.router.Run(b.runCtx); err != nil {
			errc <- err
		}
	}()
	b.mu.Unlock()
	select {
	case <-b.router.Running():
		return nil
	case err := <-errc:
		return fmt.Errorf("eventbus: starting subscriptions: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("eventbus: starting subscriptions: %w", ctx.Err())
	}
}

// Publish validates the events and hands them to the transport. It returns
// nil only when the transport has durably accepted every event (publisher
// confirms on RabbitMQ, acks from all in-sync replicas on Kafka); otherwise
// a *PublishError names the events that failed. Invalid events are rejected
// before anything is sent. Publish works without Start.
//
// Empty fields are filled in: ID, Time, Source (the service name) and
// CorrelationID. Called with a handler's ctx, an event inherits the handled
// event's correlation ID and gets its ID as CausationID; otherwise its
// correlation ID is its own ID.
func (b *Bus) Publish(ctx context.Context, events ...Event) error {
	if b.pubClosed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("eventbus: publish: %w", err)
	}
	trace, inHandler := middleware.TraceFromContext(ctx)
	msgs := make([]*message.Message, len(events))
	for i := range events {
		e := events[i]
		if e.ID == "" {
			e.ID = uuid.NewString()
		}
		if e.Time.IsZero() {
			e.Time = time.Now().UTC()
		}
		if e.Source == "" {
			e.Source = b.cfg.ServiceName
		}
		if inHandler {
			if e.CorrelationID == "" {
				e.CorrelationID = trace.CorrelationID
			}
			if e.CausationID == "" {
				e.CausationID = trace.EventID
			}
		}
		if e.CorrelationID == "" {
			e.CorrelationID = e.ID
		}
		if err := e.Validate(); err != nil {
			return fmt.Errorf("eventbus: publish: event %d of %d: %w (nothing was published)", i+1, len(events), err)
		}
		msg := EncodeMessage(e)
		msg.SetContext(ctx)
		msgs[i] = msg
	}
	var failed []FailedEvent
	for start := 0; start < len(msgs); {
		name := msgs[start].Metadata[wire.Type]
		end := start + 1
		for end < len(msgs) && msgs[end].Metadata[wire.Type] == name {
			end++
		}
		if err := b.pub.Publish(name, msgs[start:end]...); err != nil {
			failed = appendFailures(failed, msgs[start:end], err)
		}
		start = end
	}
	if failed != nil {
		return &PublishError{Failed: failed}
	}
	return nil
}

// appendFailures records which of msgs failed: those a *PublishError names,
// or all of them for any other error.
func appendFailures(failed []FailedEvent, msgs []*message.Message, err error) []FailedEvent {
	var pe *PublishError
	if errors.As(err, &pe) {
		return append(failed, pe.Failed...)
	}
	for _, m := range msgs {
		failed = append(failed, FailedEvent{ID: m.UUID, Name: m.Metadata[wire.Type], Err: err})
	}
	return failed
}

// Close stops consuming, waits for handlers in flight until ctx ends, then
// closes the transport. Events whose handlers had not finished by then are
// not acknowledged and will be delivered again. Publishing from handlers
// works until they finish; Publish after Close returns ErrClosed. Close
// returns ctx's error if it had to stop waiting.
func (b *Bus) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return nil
	}
	b.closing = true
	started := b.started
	b.mu.Unlock()

	var waitErr error
	if started {
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			if err := b.router.Close(); err != nil {
				b.log.Error("eventbus: closing router", "error", err)
			}
		}()
		// The bus closes the subscribers itself rather than leave it to
		// the router: a router handler picks at random between closing
		// its subscriber and giving up when the router's ctx is cancelled,
		// which happens at the same moment, and a subscriber left open
		// keeps the router waiting forever. It also makes Close wait until
		// the acknowledgements of handled events are settled with the
		// broker, which the router does not. Subscriber.Close may be
		// called twice (see Transport).
		waitErr = b.closeSubscribers(ctx)
		if waitErr == nil {
			select {
			case <-closed:
			case <-ctx.Done():
				waitErr = fmt.Errorf("eventbus: Close stopped waiting for handlers in flight (they will be redelivered): %w", ctx.Err())
			}
		}
	}
	b.pubClosed.Store(true)
	// Closing the transport cancels the contexts of handlers still running
	// and gives their events back to the broker.
	terr := b.transport.Close()
	b.runCancel()
	if terr != nil {
		terr = fmt.Errorf("eventbus: closing transport: %w", terr)
	}
	return errors.Join(waitErr, terr)
}

// closeSubscribers closes every subscription's subscriber and waits, within
// ctx, until they are closed: consumption stopped and the messages in
// flight acknowledged or given back.
func (b *Bus) closeSubscribers(ctx context.Context) error {
	b.mu.Lock()
	subs := make([]message.Subscriber, 0, len(b.subs))
	for _, s := range b.subs {
		if s.subscriber != nil {
			subs = append(subs, s.subscriber)
		}
	}
	b.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, sub := range subs {
			if err := sub.Close(); err != nil {
				b.log.Warn("eventbus: closing subscriber", "error", err)
			}
		}
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("eventbus: Close stopped waiting for handlers in flight (they will be redelivered): %w", ctx.Err())
	}
}

// PoisonedEvent is an event in the poison queue with the record of its
// failure.
type PoisonedEvent struct {
	// Event is the stored event; for an undecodable message only its ID is
	// set and DecodeError says why.
	Event       Event
	DecodeError error
	// Headers and Payload are the stored message as it was received.
	Headers map[string]string
	Payload []byte

	Reason, Error             string
	Attempts                  int
	Subscription, Pattern     string
	FirstFailure, LastFailure time.Time
}

// Poisoned lists the events in the service's poison queue, oldest first,
// without removing them.
func (b *Bus) Poisoned(ctx context.Context) ([]PoisonedEvent, error) {
	pq, err := b.transport.PoisonQueue()
	if err != nil {
		return nil, err
	}
	msgs, err := pq.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("eventbus: listing poison queue: %w", err)
	}
	out := make([]PoisonedEvent, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, toPoisoned(m))
	}
	return out, nil
}

func toPoisoned(m *message.Message) PoisonedEvent {
	md := m.Metadata
	headers := make(map[string]string, len(md))
	for k, v := range md {
		headers[k] = v
	}
	p := PoisonedEvent{
		Headers: headers, Payload: m.Payload,
		Reason: md[wire.PoisonReason], Error: md[wire.PoisonError],
		Subscription: md[wire.PoisonSubscription], Pattern: md[wire.PoisonPattern],
	}
	p.Attempts, _ = strconv.Atoi(md[wire.PoisonAttempts])
	p.FirstFailure, _ = time.Parse(time.RFC3339Nano, md[wire.PoisonFirstFailure])
	p.LastFailure, _ = time.Parse(time.RFC3339Nano, md[wire.PoisonLastFailure])
	p.Event, p.DecodeError = DecodeMessage(m)
	if p.DecodeError != nil {
		p.Event = Event{ID: m.UUID}
	}
	return p
}

// Replay sends poisoned events back to the subscription that failed them,
// and only to it, then removes them from the poison queue. With no IDs it
// replays every poisoned event. Replayed events keep their ID, correlation
// and headers, without the poison headers. It returns how many were
// replayed.
func (b *Bus) Replay(ctx context.Context, ids ...string) (int, error) {
	pq, err := b.transport.PoisonQueue()
	if err != nil {
		return 0, err
	}
	msgs, err := pq.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("eventbus: listing poison queue: %w", err)
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	byGroup := map[string][]*message.Message{}
	var groups []string
	for _, m := range msgs {
		if len(ids) > 0 && !want[m.UUID] {
			continue
		}
		sub := m.Metadata[wire.PoisonSubscription]
		if sub == "" {
			return 0, fmt.Errorf("eventbus: poisoned message %s has no %s header; cannot tell which subscription to replay it to", m.UUID, wire.PoisonSubscription)
		}
		r := message.NewMessage(m.UUID, m.Payload)
		for k, v := range m.Metadata {
			if !isPoisonHeader(k) {
				r.Metadata[k] = v
			}
		}
		r.SetContext(ctx)
		g := b.cfg.ServiceName + "." + sub
		if byGroup[g] == nil {
			groups = append(groups, g)
		}
		byGroup[g] = append(byGroup[g], r)
	}
	n := 0
	for _, g := range groups {
		rs := byGroup[g]
		if err := b.transport.Redeliver(ctx, g, rs...); err != nil {
			return n, fmt.Errorf("eventbus: replaying to %s: %w", g, err)
		}
		uuids := make([]string, len(rs))
		for i, r := range rs {
			uuids[i] = r.UUID
		}
		if err := pq.Remove(ctx, uuids...); err != nil {
			return n, fmt.Errorf("eventbus: replayed %d event(s) to %s but could not remove them from the poison queue (they may be replayed twice): %w", len(rs), g, err)
		}
		n += len(rs)
	}
	return n, nil
}

// PurgePoison deletes poisoned events; with no IDs it empties the queue.
func (b *Bus) PurgePoison(ctx context.Context, ids ...string) error {
	pq, err := b.transport.PoisonQueue()
	if err != nil {
		return err
	}
	if err := pq.Remove(ctx, ids...); err != nil {
		return fmt.Errorf("eventbus: purging poison queue: %w", err)
	}
	return nil
}

func isPoisonHeader(k string) bool {
	switch k {
	case wire.PoisonReason, wire.PoisonError, wire.PoisonAttempts, wire.PoisonService,
		wire.PoisonSubscription, wire.PoisonPattern, wire.PoisonFirstFailure, wire.PoisonLastFailure:
		return true
	}
	return false
}

// levelGate asks the slog handler whether a level is enabled before
// Watermill's slog adapter builds its attributes: the router logs twice per
// message at trace level, which otherwise costs allocations on every event.
type levelGate struct {
	watermill.LoggerAdapter
	log *slog.Logger
}

func (g levelGate) enabled(l slog.Level) bool { return g.log.Enabled(context.Background(), l) }

func (g levelGate) Info(msg string, fields watermill.LogFields) {
	if g.enabled(slog.LevelDebug) { // Watermill's info lines are mapped to debug
		g.LoggerAdapter.Info(msg, fields)
	}
}

func (g levelGate) Debug(msg string, fields watermill.LogFields) {
	if g.enabled(slog.LevelDebug) {
		g.LoggerAdapter.Debug(msg, fields)
	}
}

func (g levelGate) Trace(msg string, fields watermill.LogFields) {
	if g.enabled(watermill.LevelTrace) {
		g.LoggerAdapter.Trace(msg, fields)
	}
}

func (g levelGate) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return levelGate{g.LoggerAdapter.With(fields), g.log}
}

// growStack runs first on the router's fresh goroutine for each message.
// Goroutines start with a 2 KiB stack; decoding and the middleware chain
// need more, and growing the stack deep inside them copies and re-adjusts
// every frame on the way, which cost a quarter of the CPU per event in
// profiles. Growing it once here, where there are only two frames to copy,
// is much cheaper. The 8 KiB reserved give a 16 KiB stack: with 3 KiB (an
// 8 KiB stack) the examples' handlers still grew it again in up to 13 of 30
// calls, with 8 KiB in none.
func growStack(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		stackReserve()
		return h(msg)
	}
}

//go:noinline
func stackReserve() {
	var buf [8 << 10]byte
	stackSink(buf[:])
}

//go:noinline
func stackSink([]byte) {}
