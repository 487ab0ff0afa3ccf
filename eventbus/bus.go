package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/logkeys"
	"github.com/paissive/go-eventbus/internal/redactlog"
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
	transport driver.Transport
	pub       message.Publisher
	router    *message.Router
	idem      middleware.IdempotencyStore
	desc      driver.Description
	tel       *telemetry // nil when Config.DisableTelemetry

	// runCtx lives as long as the bus; the router's subscriptions hang off it.
	runCtx    context.Context
	runCancel context.CancelFunc
	// closeCtx ends when Close starts, so that Start and Subscribe calls
	// waiting for the broker give up rather than keep Close waiting.
	closeCtx    context.Context
	closeCancel context.CancelFunc

	// setupMu serialises Start and Subscribe, which talk to the transport
	// and may wait for the broker; Close never takes it.
	setupMu sync.Mutex

	mu         sync.Mutex // guards the fields below; never held while waiting for the broker
	subs       map[string]*subscription
	started    bool
	closing    bool
	closed     chan struct{} // closed when Close has finished
	routerDone chan struct{}

	pubClosed atomic.Bool
	// redact hides the URL's secrets in the texts Health shows; nil when
	// the URL has none.
	redact *strings.Replacer
}

type subscription struct {
	name        string
	group       string
	pattern     Pattern
	handler     Handler // the user's, inside the middleware
	concurrency int
	policy      Policy
	subscriber  message.Subscriber
	middleware  []Middleware
	tel         *subTelemetry    // nil when the bus's telemetry is off
	running     *message.Handler // the router's handler once consuming; guarded by Bus.mu

	// For Bus.Health: deliveries being handled, and when the last one
	// began (Unix nanoseconds).
	inFlight     atomic.Int64
	lastDelivery atomic.Int64
	// poisonFailure is the last failure to store a poison record, nil
	// once one is stored.
	poisonFailure atomic.Pointer[storeFailure]
}

// New connects to the transport cfg.URL names and returns a bus. ctx bounds
// the connection attempt only; the bus lives until Close.
func New(ctx context.Context, cfg Config) (*Bus, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// Error texts of brokers and transports may quote the URL, password
	// included: every line the bus, Watermill and the transport log goes
	// through a handler that hides the URL's secrets.
	secrets := driver.URLSecrets(cfg.URL)
	if len(secrets) > 0 {
		cfg.Logger = slog.New(redactlog.New(cfg.Logger.Handler(), secrets))
	}
	b := &Bus{cfg: cfg, log: cfg.Logger, idem: cfg.IdempotencyStore, subs: make(map[string]*subscription), closed: make(chan struct{}), redact: redactlog.Replacer(secrets)}
	t, err := driver.Open(ctx, cfg.URL, driver.Config{ServiceName: cfg.ServiceName, Logger: cfg.Logger, TLS: cfg.TLS})
	if err != nil {
		return nil, err
	}
	// Watermill logs its lifecycle at info level; the bus is quiet on the
	// happy path, so those lines become debug lines.
	slogger := cfg.Logger.With(logkeys.Service, cfg.ServiceName)
	wlog := levelGate{watermill.NewSlogLoggerWithLevelMapping(slogger, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug}), slogger, b.isClosing}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 365 * 24 * time.Hour}, wlog)
	if err != nil {
		_ = t.Close()
		return nil, err
	}
	b.desc = describe(t, cfg.URL)
	if !cfg.DisableTelemetry {
		if b.tel, err = newTelemetry(cfg, b.desc, t); err != nil {
			_ = t.Close()
			return nil, err
		}
	}
	b.transport, b.pub, b.router = t, t.Publisher(), router
	b.runCtx, b.runCancel = context.WithCancel(context.Background())
	b.closeCtx, b.closeCancel = context.WithCancel(context.Background())
	return b, nil
}

// ServiceName returns the service the bus belongs to.
func (b *Bus) ServiceName() string { return b.cfg.ServiceName }

// Transport returns the bus's transport, for tools that need what only
// the broker's driver offers (its raw publisher, an optional capability).
func (b *Bus) Transport() driver.Transport { return b.transport }

func (b *Bus) isClosing() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closing
}

// Subscribe registers handler for events whose names match pattern (see
// [Pattern]). Before Start it takes effect at Start. After Start it starts
// consuming before it returns, so events published after it returns reach
// the handler; while the broker is unreachable it waits for it, until the
// broker is back or Close is called. Invalid patterns and options are
// rejected here, as is a second subscription with the same name, and a
// pattern the transport cannot serve.
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
	s.group = b.cfg.ServiceName + "." + s.name
	if b.tel != nil {
		s.tel = b.tel.forSubscription(s)
	}
	// The bus's middleware outermost, then the subscription's, in the
	// order given.
	mw := append(slices.Clone(b.cfg.Middleware), s.middleware...)
	for i := len(mw) - 1; i >= 0; i-- {
		s.handler = mw[i](s.handler)
	}

	b.setupMu.Lock()
	defer b.setupMu.Unlock()
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return ErrClosed
	}
	if _, dup := b.subs[s.name]; dup {
		b.mu.Unlock()
		return fmt.Errorf("eventbus: service %s already has a subscription named %q; give this one another name with SubscriptionName", b.cfg.ServiceName, s.name)
	}
	started := b.started
	b.mu.Unlock()
	// The transport sees the subscription now, so that what it cannot
	// serve is an error here rather than at Start.
	if err := b.newSubscriber(s); err != nil {
		return err
	}
	var ch <-chan *message.Message
	if started {
		if ch, err = b.subscribe(b.closeCtx, s); err != nil {
			return err
		}
	}
	b.mu.Lock()
	if b.closing {
		sub := s.subscriber
		b.mu.Unlock()
		if sub != nil {
			_ = sub.Close()
		}
		return ErrClosed
	}
	b.subs[s.name] = s
	if !started {
		b.mu.Unlock()
		return nil
	}
	h := b.addHandler(s, ch)
	err = b.router.RunHandlers(b.runCtx)
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("eventbus: starting subscription %s: %w", s.group, err)
	}
	<-h.Started()
	return nil
}

// subscribe opens the subscription at the transport, waiting for the
// broker within ctx. It runs here rather than inside the router's
// RunHandlers, because a router handler whose Subscribe failed stays
// registered without ever starting, and the router's Close then waits for
// it forever.
func (b *Bus) subscribe(ctx context.Context, s *subscription) (<-chan *message.Message, error) {
	b.mu.Lock()
	sub := s.subscriber
	b.mu.Unlock()
	if sub == nil { // closed by a failed Start
		if err := b.newSubscriber(s); err != nil {
			return nil, err
		}
		b.mu.Lock()
		sub = s.subscriber
		b.mu.Unlock()
	}
	ch, err := sub.Subscribe(ctx, s.pattern.String())
	if err != nil {
		_ = sub.Close()
		b.mu.Lock()
		s.subscriber = nil
		b.mu.Unlock()
		if b.closeCtx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("eventbus: subscribing %s to %q: %w", s.group, s.pattern, err)
	}
	return ch, nil
}

func (b *Bus) newSubscriber(s *subscription) error {
	sub, err := b.transport.NewSubscriber(driver.SubscriberConfig{
		Group: s.group, Service: b.cfg.ServiceName, Subscription: s.name,
		Pattern: s.pattern.String(), Match: s.pattern.Match, Concurrency: s.concurrency,
	})
	if err != nil {
		return fmt.Errorf("eventbus: subscribing %s to %q: %w", s.group, s.pattern, err)
	}
	b.mu.Lock()
	s.subscriber = sub
	b.mu.Unlock()
	return nil
}

// addHandler gives an open subscription its router handler; b.mu is held.
func (b *Bus) addHandler(s *subscription, ch <-chan *message.Message) *message.Handler {
	// No topic: subscribed ignores it, and the router would put it in
	// every message's ctx (two allocations per event).
	h := b.router.AddConsumerHandler(s.group, "", subscribed{s.subscriber, ch}, b.consume(s))
	h.AddMiddleware(b.pipeline(s)...)
	s.running = h
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
	mw := []message.HandlerMiddleware{growStack, track(s), middleware.Correlation}
	if pq, err := b.transport.PoisonQueue(); err == nil {
		p := middleware.Poison{
			Store: pq, Service: b.cfg.ServiceName, Subscription: s.name, Pattern: s.pattern.String(), Logger: b.log,
		}
		p.OnStored, p.OnStoreFailed = b.poisonHooks(s)
		mw = append(mw, p.Middleware)
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
			MaxInterval: pol.MaxBackoff, RandomizationFactor: max(pol.Jitter, 0), MaxElapsedTime: pol.MaxElapsed, Logger: b.log,
		}.Middleware,
	)
	if s.tel != nil {
		mw = append(mw, s.tel.attempts)
	}
	return append(mw,
		middleware.Timeout(pol.HandlerTimeout),
		middleware.Recoverer,
	)
}

// track is the outermost middleware of a subscription after growStack: it
// keeps what Bus.Health reports about the subscription and, with the
// telemetry on, runs the delivery in its process span. It sits outside
// Retry and Poison so that one span and one duration cover every attempt
// and the poison queue.
func track(s *subscription) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			start := time.Now()
			s.lastDelivery.Store(start.UnixNano())
			s.inFlight.Add(1)
			defer s.inFlight.Add(-1)
			if s.tel == nil {
				return h(msg)
			}
			return s.tel.process(h, msg, start)
		}
	}
}

// undecodableError marks a message that is not a valid event.
type undecodableError struct{ err error }

func (e *undecodableError) Error() string        { return "undecodable message: " + e.err.Error() }
func (e *undecodableError) Unwrap() error        { return e.err }
func (e *undecodableError) Permanent() bool      { return true }
func (e *undecodableError) PoisonReason() string { return middleware.ReasonUndecodable }
func (e *undecodableError) Is(t error) bool      { return t == ErrPermanent }

// misroutedError marks an event delivered to a subscription whose pattern
// does not match its name.
type misroutedError struct {
	ev    Event
	group string
	p     Pattern
}

func (e *misroutedError) Error() string {
	return fmt.Sprintf("event %s (%s) reached subscription %s, whose pattern %q does not match its name: the broker routed it by a routing key other than its ce_type", e.ev.Name, e.ev.ID, e.group, e.p)
}
func (e *misroutedError) Permanent() bool      { return true }
func (e *misroutedError) PoisonReason() string { return middleware.ReasonMisrouted }
func (e *misroutedError) Is(t error) bool      { return t == ErrPermanent }

// consume is the innermost handler: it decodes the message and calls the
// user's handler. A message that reaches a subscription without matching
// its pattern was routed by something other than its name (a producer that
// set a routing key and a ce_type that disagree): it is bad input and goes
// to the poison queue, like an undecodable one. (Transports that cannot
// route by name filter before they deliver.)
func (b *Bus) consume(s *subscription) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		ev, err := decode(msg)
		if err != nil {
			return &undecodableError{err: err}
		}
		if !s.pattern.Match(ev.Name) {
			return &misroutedError{ev: ev, group: s.group, p: s.pattern}
		}
		return callHandler(s.handler, msg.Context(), ev)
	}
}

// callHandler calls a user's handler. It is never inlined, so that Close
// can tell from its own stack that a handler called it.
//
//go:noinline
func callHandler(h Handler, ctx context.Context, ev Event) error {
	return h(ctx, ev)
}

// calledFromHandler reports whether callHandler is on the calling
// goroutine's stack. Close uses it instead of a per-event marker, so that
// the check costs nothing on the path of every event.
func calledFromHandler() bool {
	entry := callHandlerEntry()
	pcs := make([]uintptr, 128)
	for {
		n := runtime.Callers(2, pcs)
		frames := runtime.CallersFrames(pcs[:n])
		for {
			f, more := frames.Next()
			if f.Entry == entry {
				return true
			}
			if !more {
				break
			}
		}
		if n < len(pcs) {
			return false
		}
		pcs = make([]uintptr, 2*len(pcs))
	}
}

var callHandlerEntry = sync.OnceValue(func() uintptr {
	pcs := make([]uintptr, 1)
	var entry uintptr
	_ = callHandler(func(context.Context, Event) error {
		runtime.Callers(2, pcs)
		f, _ := runtime.CallersFrames(pcs).Next()
		entry = f.Entry
		return nil
	}, context.Background(), Event{})
	return entry
})

// Start starts consuming every subscription made so far and returns once
// they all consume. If ctx ends first, or a subscription cannot be opened,
// it returns an error and leaves nothing started (Start can be called
// again); Close while Start waits for the broker makes it return
// ErrClosed. Calling it again after it succeeded does nothing.
func (b *Bus) Start(ctx context.Context) error {
	b.setupMu.Lock()
	defer b.setupMu.Unlock()
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return ErrClosed
	}
	if b.started {
		b.mu.Unlock()
		return nil
	}
	subs := make([]*subscription, 0, len(b.subs))
	for _, s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()

	// Open every subscription, in parallel (a Kafka group join alone can
	// take seconds), before the router gets any, so that one failure
	// leaves nothing half-started.
	setupCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(b.closeCtx, cancel)
	defer stop()
	chans := make([]<-chan *message.Message, len(subs))
	errs := make([]error, len(subs))
	var wg sync.WaitGroup
	for i, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chans[i], errs[i] = b.subscribe(setupCtx, s)
		}()
	}
	wg.Wait()
	closeOpened := func() {
		for i, s := range subs {
			b.mu.Lock()
			sub := s.subscriber
			if chans[i] != nil {
				s.subscriber = nil
			}
			b.mu.Unlock()
			if chans[i] != nil && sub != nil {
				_ = sub.Close()
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		closeOpened()
		if b.closeCtx.Err() != nil {
			return ErrClosed
		}
		return fmt.Errorf("eventbus: Start: %w", err)
	}

	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		closeOpened()
		return ErrClosed
	}
	for i, s := range subs {
		b.addHandler(s, chans[i])
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
	// The subscriptions are open: what is left is starting goroutines,
	// which ctx does not bound, so that Start never reports a failure for a
	// bus that is in fact consuming.
	select {
	case <-b.router.Running():
		return nil
	case err := <-errc:
		return fmt.Errorf("eventbus: starting subscriptions: %w", err)
	}
}

// Publish validates the events and hands them to the transport. It returns
// nil only when the transport has durably accepted every event (publisher
// confirms on RabbitMQ, acks from all in-sync replicas on Kafka); otherwise
// a *PublishError names the events that failed. Invalid events are rejected
// before anything is sent. Publish works without Start, and returns by
// ctx's deadline also while the broker is unreachable.
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
	cause, inHandler := middleware.CausationFromContext(ctx)
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
		if e.Type == 0 {
			e.Type = Domain
		}
		if inHandler {
			if e.CorrelationID == "" {
				e.CorrelationID = cause.CorrelationID
			}
			if e.CausationID == "" {
				e.CausationID = cause.EventID
			}
		}
		if e.CorrelationID == "" {
			e.CorrelationID = e.ID
		}
		if b.cfg.OnPublish != nil {
			if err := b.cfg.OnPublish(ctx, &e); err != nil {
				return fmt.Errorf("eventbus: publish: event %d of %d (%s, %s) refused by Config.OnPublish (nothing was published): %w", i+1, len(events), e.Name, e.ID, err)
			}
		}
		if err := e.validate(false); err != nil {
			return fmt.Errorf("eventbus: publish: event %d of %d: %w (nothing was published)", i+1, len(events), err)
		}
		msg := encode(e)
		msg.SetContext(ctx)
		msgs[i] = msg
	}
	var failed []FailedEvent
	if bp, ok := b.pub.(driver.BatchPublisher); ok && mixedNames(msgs) {
		// All in flight at once, in the order of the call.
		topics := make([]string, len(msgs))
		for i, m := range msgs {
			topics[i] = m.Metadata[wire.Type]
		}
		spans, t0 := b.startPublish(ctx, msgs)
		err := bp.PublishBatch(topics, msgs)
		if spans != nil {
			// Metrics are by event name: one record per run of a name.
			d := time.Since(t0)
			for start := 0; start < len(msgs); {
				end := nameRunEnd(msgs, start)
				b.tel.endPublish(ctx, spans[start:end], msgs[start:end], err, d)
				start = end
			}
		}
		if err != nil {
			failed = appendFailures(failed, msgs, err)
		}
		return publishResult(failed)
	}
	for start := 0; start < len(msgs); {
		end := nameRunEnd(msgs, start)
		group := msgs[start:end]
		spans, t0 := b.startPublish(ctx, group)
		err := b.pub.Publish(group[0].Metadata[wire.Type], group...)
		if spans != nil {
			b.tel.endPublish(ctx, spans, group, err, time.Since(t0))
		}
		if err != nil {
			failed = appendFailures(failed, group, err)
		}
		start = end
	}
	return publishResult(failed)
}

// startPublish starts the producer span of each of msgs and returns them
// with the time the transport's call starts; nil when telemetry is off or
// would record nothing, and then the call is not instrumented.
func (b *Bus) startPublish(ctx context.Context, msgs []*message.Message) ([]trace.Span, time.Time) {
	if b.tel == nil || b.tel.idle() {
		return nil, time.Time{}
	}
	spans := make([]trace.Span, len(msgs))
	for i, m := range msgs {
		spans[i] = b.tel.startPublish(ctx, m)
	}
	return spans, time.Now()
}

// nameRunEnd returns the end of the run of messages from start on that
// have the event name of msgs[start].
func nameRunEnd(msgs []*message.Message, start int) int {
	name := msgs[start].Metadata[wire.Type]
	end := start + 1
	for end < len(msgs) && msgs[end].Metadata[wire.Type] == name {
		end++
	}
	return end
}

// mixedNames reports whether msgs have more than one event name.
func mixedNames(msgs []*message.Message) bool {
	return len(msgs) > 1 && nameRunEnd(msgs, 0) < len(msgs)
}

func publishResult(failed []FailedEvent) error {
	if failed != nil {
		return &PublishError{Failed: failed}
	}
	return nil
}

// appendFailures records which of msgs failed: those a transport's
// *driver.PublishError names, or all of them for any other error.
func appendFailures(failed []FailedEvent, msgs []*message.Message, err error) []FailedEvent {
	var pe *driver.PublishError
	if !errors.As(err, &pe) {
		for _, m := range msgs {
			failed = append(failed, FailedEvent{ID: m.UUID, Name: m.Metadata[wire.Type], Err: err})
		}
		return failed
	}
	names := make(map[string]string, len(msgs))
	for _, m := range msgs {
		names[m.UUID] = m.Metadata[wire.Type]
	}
	for _, f := range pe.Failed {
		failed = append(failed, FailedEvent{ID: f.UUID, Name: names[f.UUID], Err: f.Err})
	}
	return failed
}

// Close stops consuming, waits for handlers in flight until ctx ends, then
// closes the transport. Events whose handlers had not finished by then are
// not acknowledged and will be delivered again. Publishing from handlers
// works until they finish; Publish after Close returns ErrClosed. Close
// returns by ctx's deadline, with ctx's error if it had to stop waiting
// (the transport then finishes closing in the background); a Start or
// Subscribe waiting for the broker returns ErrClosed.
//
// Called from a handler, Close cannot wait for that handler to finish: it
// stops consumption and returns at once, and the bus finishes closing in
// the background once the handlers in flight, the caller's included, have
// returned (or ctx ends). A second Close waits for the first to finish,
// within its own ctx.
func (b *Bus) Close(ctx context.Context) error {
	fromHandler := calledFromHandler()
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		if fromHandler {
			return nil
		}
		select {
		case <-b.closed:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("eventbus: Close stopped waiting for another Close to finish: %w", ctx.Err())
		}
	}
	b.closing = true
	b.closeCancel()
	started := b.started
	b.mu.Unlock()
	if fromHandler {
		go func() { _ = b.shutdown(ctx, started) }()
		return nil
	}
	return b.shutdown(ctx, started)
}

// shutdown is the work of Close.
func (b *Bus) shutdown(ctx context.Context, started bool) error {
	defer close(b.closed)
	var waitErr error
	if started {
		routerClosed := make(chan struct{})
		go func() {
			defer close(routerClosed)
			if err := b.router.Close(); err != nil {
				b.log.Error("eventbus: closing router", logkeys.Error, err)
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
			case <-routerClosed:
			case <-ctx.Done():
				waitErr = fmt.Errorf("eventbus: Close stopped waiting for handlers in flight (they will be redelivered): %w", ctx.Err())
			}
		}
	}
	b.pubClosed.Store(true)
	b.tel.close()
	// Closing the transport cancels the contexts of handlers still running
	// and gives their events back to the broker. It is bounded on its own
	// (see Transport.Close); Close does not wait past ctx for it.
	terr := make(chan error, 1)
	go func() { terr <- b.transport.Close() }()
	var err error
	select {
	case err = <-terr:
		if err != nil {
			err = fmt.Errorf("eventbus: closing transport: %w", err)
		}
	case <-ctx.Done():
		err = fmt.Errorf("eventbus: Close stopped waiting for the transport to close (it goes on in the background): %w", ctx.Err())
	}
	b.runCancel()
	return errors.Join(waitErr, err)
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
				b.log.Warn("eventbus: closing subscriber", logkeys.Error, err)
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

// levelGate asks the slog handler whether a level is enabled before
// Watermill's slog adapter builds its attributes: the router logs twice per
// message at trace level, which otherwise costs allocations on every event.
type levelGate struct {
	watermill.LoggerAdapter
	log *slog.Logger
	// closing reports whether the bus is closing: the router then logs
	// at error level that all its handlers stopped, which is what Close
	// does on purpose.
	closing func() bool
}

func (g levelGate) Error(msg string, err error, fields watermill.LogFields) {
	if msg == "All handlers stopped, closing router" && g.closing() {
		if g.enabled(slog.LevelDebug) {
			g.LoggerAdapter.Debug(msg, fields)
		}
		return
	}
	g.LoggerAdapter.Error(msg, err, fields)
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
	return levelGate{g.LoggerAdapter.With(fields), g.log, g.closing}
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
