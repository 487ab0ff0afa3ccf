// Package eventbustest is a test harness for code that handles and publishes
// events, in the manner of MassTransit's test harness: a bus on a fresh
// in-process broker, helpers to publish, and waits with deadlines for what
// should happen next, whose failure messages list what did happen.
//
//	func TestWelcomeMail(t *testing.T) {
//		h := eventbustest.New(t)
//		h.Subscribe("user.registered", mailer.HandleUserRegistered(h.Bus))
//		h.Publish(h.NewEvent("user.registered", UserRegistered{ID: "42"}))
//		h.WaitHandled("user.registered")
//		mail := h.WaitPublished("mail.sent")
//		// ... assert on mail
//	}
//
// The harness watches three things:
//
//   - handled: every call of a handler of a bus the harness made ([Harness.Bus]
//     and [Harness.NewBus]), however it was subscribed, with its outcome;
//   - published: every event published on the harness's broker, by the test,
//     by handlers or by other code given [Harness.URL], seen through a
//     subscription to "#" of a separate recorder service;
//   - poisoned: the poison queues of the harness's services, and of any
//     other service named with [InService].
//
// Because the recorder subscribes to every event, a publish on the harness's
// broker never fails with eventbus.ErrUnroutable.
//
// Waits are satisfied by anything recorded since the harness started, not
// only by what happens after the call, so a wait never misses an event that
// was quicker than the test.
package eventbustest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/transports/memory"
)

// DefaultTimeout bounds each wait unless [WithTimeout] or [Within] says
// otherwise.
const DefaultTimeout = 5 * time.Second

// DefaultServiceName is the service name of [Harness.Bus] unless
// [WithServiceName] says otherwise.
const DefaultServiceName = "test-service"

// pollInterval is how often waits for poisoned events read the poison
// queues, which have no change notification.
const pollInterval = 10 * time.Millisecond

// Option configures a [Harness].
type Option func(*config)

type config struct {
	service string
	timeout time.Duration
	policy  eventbus.Policy
	busCfg  func(*eventbus.Config)
	logger  *slog.Logger
}

// WithServiceName sets the service name of [Harness.Bus] (default
// [DefaultServiceName]).
func WithServiceName(name string) Option { return func(c *config) { c.service = name } }

// WithTimeout sets how long each wait lasts before it fails the test, and
// bounds publishing and closing (default [DefaultTimeout]).
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithPolicy sets the failure policy of the harness's buses, for example a
// short backoff so that poisoning happens quickly in tests.
func WithPolicy(p eventbus.Policy) Option { return func(c *config) { c.policy = p } }

// WithBusConfig lets f adjust the configuration of every bus the harness
// makes (middleware, an idempotency store), after the harness set the
// service name, URL, logger and policy.
func WithBusConfig(f func(*eventbus.Config)) Option {
	return func(c *config) { c.busCfg = f }
}

// WithLogger sets the buses' logger. The default writes warnings and errors
// (such as "event moved to poison queue") to the test log.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// Call is one call of a handler of a bus the harness made.
type Call struct {
	// Service and Subscription identify the handler: the bus's service name
	// and the subscription's name (its pattern unless named with
	// eventbus.SubscriptionName).
	Service, Subscription string
	// Event is the event the handler was called with.
	Event eventbus.Event
	// Err is what the handler returned (a panic becomes an error); nil
	// means the event was handled.
	Err error
	// Attempt counts the calls of this subscription for this event ID,
	// starting at 1; retries and redeliveries increase it.
	Attempt int
	// Start and End bound the call.
	Start, End time.Time
}

// String describes the call in one line, as failure messages list it.
func (c Call) String() string {
	s := fmt.Sprintf("%s by %s/%s", describe(c.Event), c.Service, c.Subscription)
	if c.Attempt > 1 {
		s += fmt.Sprintf(" (attempt %d)", c.Attempt)
	}
	if c.Err != nil {
		s += " FAILED: " + c.Err.Error()
	}
	return s
}

// Harness is a bus on a fresh in-process broker with recorders for what
// happens on it. Create it with [New]; it is closed when the test ends.
// Its methods may be called from any goroutine, but those that fail the
// test (all except the accessors) must follow the rules of testing.TB.
type Harness struct {
	// Bus is the service's bus, started, with the harness's recording
	// middleware. Subscribe to it directly or through [Harness.Subscribe].
	Bus *eventbus.Bus

	t      testing.TB
	cfg    config
	url    string
	broker string
	rec    *recorder

	mu      sync.Mutex
	buses   map[string]*eventbus.Bus // by service: the harness's own buses
	listers map[string]*eventbus.Bus // by service: unstarted buses for poison listing
	order   []*eventbus.Bus          // every bus, in creation order, for Close
}

var brokerSeq atomic.Int64

// New returns a harness whose bus is started on a fresh in-process broker.
// Everything it opened is closed, and the broker forgotten, when the test
// ends; failing to close in time fails the test.
func New(t testing.TB, opts ...Option) *Harness {
	t.Helper()
	cfg := config{service: DefaultServiceName, timeout: DefaultTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.timeout <= 0 {
		t.Fatalf("eventbustest: WithTimeout(%v): the timeout must be positive", cfg.timeout)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	broker := fmt.Sprintf("eventbustest-%d-%s", brokerSeq.Add(1), hex.EncodeToString(rnd[:]))
	h := &Harness{
		t: t, cfg: cfg, url: "mem://" + broker, broker: broker,
		rec:     newRecorder(),
		buses:   map[string]*eventbus.Bus{},
		listers: map[string]*eventbus.Bus{},
	}
	if cfg.logger == nil {
		lw := &testLogWriter{t: t}
		t.Cleanup(lw.stop) // registered first, so it runs after the buses closed
		h.cfg.logger = slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	t.Cleanup(func() { memory.Forget(broker) })
	t.Cleanup(h.close)

	// The recorder subscribes before anything else, so it sees every event.
	rec, err := eventbus.New(t.Context(), eventbus.Config{
		ServiceName: cfg.service + "-eventbustest-recorder", URL: h.url, Logger: h.cfg.logger,
		Policy: eventbus.Policy{MaxAttempts: 1},
	})
	if err != nil {
		t.Fatalf("eventbustest: opening the recorder bus: %v", err)
	}
	h.order = append(h.order, rec)
	if err := rec.Subscribe("#", func(_ context.Context, ev eventbus.Event) error {
		h.rec.addPublished(ev)
		return nil
	}, eventbus.SubscriptionName("published"), eventbus.Concurrency(4)); err != nil {
		t.Fatalf("eventbustest: subscribing the recorder: %v", err)
	}
	h.start(rec, "recorder")
	h.Bus = h.NewBus(cfg.service)
	return h
}

// URL returns the transport URL of the harness's broker, for code under test
// that opens its own buses: they see the same events, and what they publish
// is recorded.
func (h *Harness) URL() string { return h.url }

// Timeout returns the default deadline of the waits.
func (h *Harness) Timeout() time.Duration { return h.cfg.timeout }

// NewBus returns another started bus on the harness's broker, for a second
// service (fan-out) or a second instance of one (competing consumers: call
// it twice with the same name). Its handler calls are recorded and its
// poison queue is watched like those of [Harness.Bus]. It is closed when the
// test ends.
func (h *Harness) NewBus(service string) *eventbus.Bus {
	h.t.Helper()
	cfg := eventbus.Config{ServiceName: service, URL: h.url, Logger: h.cfg.logger, Policy: h.cfg.policy}
	if h.cfg.busCfg != nil {
		h.cfg.busCfg(&cfg)
	}
	// Outermost, so that every call is recorded as the handler saw it.
	cfg.Middleware = append([]eventbus.Middleware{h.recordCalls(service)}, cfg.Middleware...)
	b, err := eventbus.New(h.t.Context(), cfg)
	if err != nil {
		h.t.Fatalf("eventbustest: opening a bus for service %q: %v", service, err)
	}
	h.mu.Lock()
	h.order = append(h.order, b)
	if _, ok := h.buses[service]; !ok {
		h.buses[service] = b
	}
	h.mu.Unlock()
	h.start(b, service)
	return b
}

func (h *Harness) start(b *eventbus.Bus, what string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.timeout)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		h.t.Fatalf("eventbustest: starting the %s bus: %v", what, err)
	}
}

// close closes every bus, newest first, within the timeout each.
func (h *Harness) close() {
	h.mu.Lock()
	buses := append([]*eventbus.Bus(nil), h.order...)
	for _, b := range h.listers {
		buses = append(buses, b)
	}
	h.mu.Unlock()
	for i := len(buses) - 1; i >= 0; i-- {
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.timeout)
		if err := buses[i].Close(ctx); err != nil {
			h.t.Errorf("eventbustest: closing the bus of service %s: %v (a handler did not return within %v)", buses[i].ServiceName(), err, h.cfg.timeout)
		}
		cancel()
	}
}

// Subscribe subscribes handler to pattern on [Harness.Bus] and fails the
// test if that fails. Every call is recorded (as is every call of handlers
// subscribed to h.Bus directly).
func (h *Harness) Subscribe(pattern string, handler eventbus.Handler, opts ...eventbus.SubscribeOption) {
	h.t.Helper()
	if err := h.Bus.Subscribe(pattern, handler, opts...); err != nil {
		h.t.Fatalf("eventbustest: Subscribe(%q): %v", pattern, err)
	}
}

// NewEvent returns an event from the harness's service (options as for
// eventbus.NewEvent), failing the test if the name or data are invalid.
func (h *Harness) NewEvent(name string, data any, opts ...eventbus.EventOption) eventbus.Event {
	h.t.Helper()
	ev, err := eventbus.NewEvent(name, data, append([]eventbus.EventOption{eventbus.WithSource(h.cfg.service)}, opts...)...)
	if err != nil {
		h.t.Fatalf("eventbustest: NewEvent(%q): %v", name, err)
	}
	return ev
}

// Publish publishes events through [Harness.Bus] and fails the test if that
// fails or takes longer than the timeout.
func (h *Harness) Publish(events ...eventbus.Event) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.timeout)
	defer cancel()
	if err := h.Bus.Publish(ctx, events...); err != nil {
		h.t.Fatalf("eventbustest: Publish: %v", err)
	}
}

// Handled returns every handler call recorded so far, successful or not, in
// the order they ended.
func (h *Harness) Handled() []Call {
	calls, _, _ := h.rec.snapshot()
	return calls
}

// Published returns every event published on the broker so far, in the
// order the recorder received them.
func (h *Harness) Published() []eventbus.Event {
	_, pub, _ := h.rec.snapshot()
	return pub
}

// Poisoned returns the events in the poison queues of the harness's
// services and of the given ones, oldest first per service. It fails the
// test if a queue cannot be read.
func (h *Harness) Poisoned(services ...string) []eventbus.PoisonedEvent {
	h.t.Helper()
	ps, err := h.poisoned(services)
	if err != nil {
		h.t.Fatalf("eventbustest: %v", err)
	}
	return ps
}

func (h *Harness) poisoned(extra []string) ([]eventbus.PoisonedEvent, error) {
	var out []eventbus.PoisonedEvent
	for _, svc := range h.poisonServices(extra) {
		b, err := h.busFor(svc)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.cfg.timeout)
		ps, err := b.Poisoned(ctx, eventbus.PoisonFilter{})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing the poison queue of %s: %w", svc, err)
		}
		out = append(out, ps...)
	}
	return out, nil
}

// poisonServices lists the harness's services and extra, without repeats.
func (h *Harness) poisonServices(extra []string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, b := range h.order[1:] { // order[0] is the recorder
		if s := b.ServiceName(); !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, s := range extra {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// busFor returns a bus of service whose poison queue can be listed: one of
// the harness's, or an unstarted one opened for the purpose.
func (h *Harness) busFor(service string) (*eventbus.Bus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if b, ok := h.buses[service]; ok {
		return b, nil
	}
	if b, ok := h.listers[service]; ok {
		return b, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.timeout)
	defer cancel()
	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: service, URL: h.url, Logger: h.cfg.logger})
	if err != nil {
		return nil, fmt.Errorf("opening a bus to read the poison queue of %s: %w", service, err)
	}
	h.listers[service] = b
	return b, nil
}

// recordCalls is the bus middleware that records handler calls. It runs
// inside the failure policy, so every attempt is one call.
func (h *Harness) recordCalls(service string) eventbus.Middleware {
	return func(next eventbus.Handler) eventbus.Handler {
		return func(ctx context.Context, ev eventbus.Event) (err error) {
			// The bus runs handlers on a Watermill router, whose handler
			// name is the subscription's group, "<service>.<subscription>".
			sub := strings.TrimPrefix(message.HandlerNameFromCtx(ctx), service+".")
			start := time.Now()
			panicked := true
			defer func() {
				if panicked {
					r := recover()
					h.rec.addCall(Call{Service: service, Subscription: sub, Event: ev, Err: fmt.Errorf("panic: %v", r), Start: start, End: time.Now()})
					panic(r)
				}
			}()
			err = next(ctx, ev)
			panicked = false
			h.rec.addCall(Call{Service: service, Subscription: sub, Event: ev, Err: err, Start: start, End: time.Now()})
			return err
		}
	}
}

// recorder holds what happened, with a channel closed on every change.
type recorder struct {
	mu        sync.Mutex
	calls     []Call
	published []eventbus.Event
	attempts  map[string]int // by subscription + event ID
	changed   chan struct{}
}

func newRecorder() *recorder {
	return &recorder{attempts: map[string]int{}, changed: make(chan struct{})}
}

func (r *recorder) addCall(c Call) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := c.Service + "\x00" + c.Subscription + "\x00" + c.Event.ID
	r.attempts[key]++
	c.Attempt = r.attempts[key]
	r.calls = append(r.calls, c)
	r.notifyLocked()
}

func (r *recorder) addPublished(ev eventbus.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.published = append(r.published, ev)
	r.notifyLocked()
}

func (r *recorder) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) snapshot() ([]Call, []eventbus.Event, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Call(nil), r.calls...), append([]eventbus.Event(nil), r.published...), r.changed
}

// testLogWriter sends the buses' log lines to the test log until the test
// has finished with them.
type testLogWriter struct {
	mu      sync.Mutex
	t       testing.TB
	stopped bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}

var _ io.Writer = (*testLogWriter)(nil)
