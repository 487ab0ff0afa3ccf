package contracttests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Run runs the whole suite against the transport the harness reaches, one
// subtest per test (see the package documentation for what each checks).
// Each test opens its own transports and buses on a fresh URL with fresh
// service names, and closes them when it ends.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.URL == nil {
		t.Fatal("contracttests: Harness.URL is nil")
	}
	if h.Timeout == 0 {
		h.Timeout = 30 * time.Second
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if h.Parallel {
				t.Parallel()
			}
			tc.run(newEnv(t, h))
		})
	}
}

// tests is the suite, in the order of the guarantee table in the package
// documentation. The transport-level tests come first: they drive the
// transport's publisher and subscribers directly, where the bus would hide
// a fault. A file of the package may add tests from its init function.
var tests = []struct {
	name string
	run  func(*env)
}{
	// Transport level: subscriptions.
	{"Patterns", testPatterns},
	{"CompetingConsumers", testCompetingConsumers},
	{"Concurrency", testConcurrency},
	{"SubscribeReturnsWhenInPlace", testSubscribeReturnsWhenInPlace},
	{"SubscriptionOutlivesSubscribeContext", testSubscriptionOutlivesSubscribeContext},
	{"CloseClosesChannel", testCloseClosesChannel},
	{"SubscriberCloseWaitsForAcks", testSubscriberCloseWaitsForAcks},
	{"NoRedeliveryAfterGracefulClose", testNoRedeliveryAfterGracefulClose},
	{"RedeliveryAfterNack", testRedeliveryAfterNack},
	{"RedeliveryAfterCrash", testRedeliveryAfterCrash},
	{"KeepsEventsWhileNoInstance", testKeepsEventsWhileNoInstance},
	// Transport level: publishing, redelivery, poison queue.
	{"PublishedMeansAccepted", testPublishedMeansAccepted},
	{"PublishAfterClose", testPublishAfterClose},
	{"Unroutable", testUnroutable},
	{"RedeliverReachesOneGroup", testRedeliverReachesOneGroup},
	{"PoisonQueueScan", testPoisonQueueScan},
	{"PoisonRecordTooLarge", testPoisonRecordTooLarge},
	// Transport level, through the harness's fault injector.
	{"PublishBoundedWhileFrozen", testPublishBoundedWhileFrozen},
	{"PublishErrorWhileDown", testPublishErrorWhileDown},
	{"TransportCallsBoundedWhileFrozen", testTransportCallsBoundedWhileFrozen},
	// Through the bus.
	{"FanOutAcrossServices", testFanOut},
	{"RedeliveryAfterHandlerError", testRedeliveryAfterError},
	{"RestartMidStreamLosesNothing", testRestartMidStream},
	{"ConcurrentPublishers", testConcurrentPublishers},
	{"EnvelopeRoundTrip", testEnvelopeRoundTrip},
	{"LargePayload", testLargePayload},
	{"CloseWaitsForHandlers", testCloseWaitsForHandlers},
	{"CloseDeadlineRedelivers", testCloseDeadline},
	{"SubscribeBeforeAndAfterStart", testSubscribeBeforeAndAfterStart},
	{"PublishWithoutStart", testPublishWithoutStart},
	{"UndecodableMessage", testUndecodable},
	{"RetriesThenPoison", testRetriesThenPoison},
	{"PermanentErrorSkipsRetries", testPermanentError},
	{"PanicIsPoisoned", testPanic},
	{"ReplayReachesOnlyFailingSubscription", testReplay},
	{"PurgePoison", testPurge},
	{"ReplayIntoFailingHandler", testReplayIntoFailingHandler},
	{"OversizedEventFailsAlone", testOversizedEventFailsAlone},
	{"LongErrorPoisonedOnce", testLongErrorPoisonedOnce},
	{"CorrelationAcrossHops", testCorrelation},
	{"TraceAcrossHops", testTraceAcrossHops},
	{"TraceRetryAndPoison", testTraceRetryAndPoison},
	{"IdempotencySkipsDuplicates", testIdempotency},
	{"RetryDelaysFollowBackoff", testRetryDelays},
	// Optional capabilities.
	{"TapSeesEveryMatchingEvent", testTap},
	{"TapFromBeginning", testTapFromBeginning},
	// Through the bus, with the fault injector.
	{"CallsBoundedWhileStalled", testCallsBoundedWhileStalled},
	{"CallsBoundedWhileDown", testCallsBoundedWhileDown},
	{"SubscribeAfterStartWhileDown", testSubscribeAfterStartWhileDown},
	{"PublishRidesOutAShortOutage", testPublishRidesOutAShortOutage},
}

// env is one test's namespace: a URL and a unique prefix for service names.
type env struct {
	t       *testing.T
	h       Harness
	url     string
	prefix  string
	timeout time.Duration
	log     *slog.Logger
}

func newEnv(t *testing.T, h Harness) *env {
	var b [4]byte
	_, _ = rand.Read(b[:])
	e := &env{t: t, h: h, prefix: "ct" + hex.EncodeToString(b[:]), timeout: h.Timeout}
	e.log = slog.New(&testLog{t: t, level: slog.LevelWarn})
	// Registered first, so it runs last: log lines from goroutines that
	// outlive the test are dropped rather than reported to a finished test.
	t.Cleanup(e.log.Handler().(*testLog).stop)
	e.url = h.URL(t)
	return e
}

// testLog writes log lines of warning level and above to the test's log,
// which shows them only when the test fails.
type testLog struct {
	t     *testing.T
	level slog.Level
	mu    sync.Mutex
	done  bool
	attrs []slog.Attr
}

func (l *testLog) stop() {
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
}

func (l *testLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= l.level }

func (l *testLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	add := func(a slog.Attr) bool {
		v := a.Value.String()
		if len(v) > 300 {
			v = v[:300] + "..."
		}
		fmt.Fprintf(&b, " %s=%q", a.Key, v)
		return true
	}
	for _, a := range l.attrs {
		add(a)
	}
	r.Attrs(add)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.t.Log(b.String())
	}
	return nil
}

func (l *testLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &testLogView{l, append(slices.Clone(l.attrs), as...)}
}

func (l *testLog) WithGroup(string) slog.Handler { return l }

// testLogView is a testLog with attributes; it shares the parent's lock and
// stop flag.
type testLogView struct {
	*testLog
	attrs []slog.Attr
}

func (v *testLogView) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(v.attrs...)
	return v.testLog.Handle(ctx, r)
}

func (v *testLogView) WithAttrs(as []slog.Attr) slog.Handler {
	return &testLogView{v.testLog, append(slices.Clone(v.attrs), as...)}
}

// ctx returns a context bounded by the suite's timeout.
func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	e.t.Cleanup(cancel)
	return ctx
}

// service returns a service name unique to this test.
func (e *env) service(name string) string { return e.prefix + "-" + name }

// bus opens a bus for the service and closes it when the test ends.
func (e *env) bus(service string) *eventbus.Bus {
	return e.busWith(eventbus.Config{ServiceName: e.service(service)})
}

// fastPolicy retries quickly, so failure tests do not wait for the
// default backoff.
var fastPolicy = eventbus.Policy{MaxAttempts: 3, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Jitter: eventbus.NoJitter}

func (e *env) busWith(cfg eventbus.Config) *eventbus.Bus {
	e.t.Helper()
	if cfg.URL == "" {
		cfg.URL = e.url
	}
	if cfg.Logger == nil {
		cfg.Logger = e.log
	}
	if cfg.Policy == (eventbus.Policy{}) {
		cfg.Policy = fastPolicy
	}
	b, err := eventbus.New(e.ctx(), cfg)
	if err != nil {
		e.t.Fatalf("New(%s): %v", driver.RedactURL(e.url), err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// transport opens the transport for service directly, without a bus, for
// the tests that check what the bus would hide; it is closed when the test
// ends (closing it again is harmless).
func (e *env) transport(service string) driver.Transport {
	e.t.Helper()
	tr, err := driver.Open(e.ctx(), e.url, driver.Config{ServiceName: service, Logger: e.log})
	if err != nil {
		e.t.Fatalf("opening the transport: %v", err)
	}
	e.t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// subscriberConfig is the configuration of a subscription of service to
// pattern under the name sub, as the bus would make it.
func subscriberConfig(service, sub, pattern string, concurrency int) driver.SubscriberConfig {
	return driver.SubscriberConfig{
		Group: service + "." + sub, Service: service, Subscription: sub,
		Pattern: pattern, Match: matcher(pattern), Concurrency: concurrency,
	}
}

func (e *env) subscribe(b *eventbus.Bus, pattern string, h eventbus.Handler, opts ...eventbus.SubscribeOption) {
	e.t.Helper()
	if err := b.Subscribe(pattern, h, opts...); err != nil {
		e.t.Fatalf("Subscribe(%q): %v", pattern, err)
	}
}

func (e *env) start(b *eventbus.Bus) {
	e.t.Helper()
	if err := b.Start(e.ctx()); err != nil {
		e.t.Fatalf("Start: %v", err)
	}
}

func (e *env) publish(b *eventbus.Bus, evs ...eventbus.Event) {
	e.t.Helper()
	if err := b.Publish(e.ctx(), evs...); err != nil {
		e.t.Fatalf("Publish: %v", err)
	}
}

// event makes a valid event of the given name.
func (e *env) event(name string, data any, opts ...eventbus.EventOption) eventbus.Event {
	e.t.Helper()
	if data == nil {
		data = map[string]string{"test": e.t.Name()}
	}
	ev, err := eventbus.NewEvent(name, data, append([]eventbus.EventOption{eventbus.WithSource("contract-tests")}, opts...)...)
	if err != nil {
		e.t.Fatalf("NewEvent(%q): %v", name, err)
	}
	return ev
}

// waitFor polls cond until it holds or the suite's timeout passes; then
// the test fails with what describe reports.
func (e *env) waitFor(what string, cond func() bool, describe func() string) {
	e.t.Helper()
	deadline := time.Now().Add(e.timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: not reached within %s; %s", what, e.timeout, describe())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// recorder records the events a handler received.
type recorder struct {
	mu     sync.Mutex
	events []eventbus.Event
	count  map[string]int
}

func newRecorder() *recorder { return &recorder{count: map[string]int{}} }

func (r *recorder) handle(_ context.Context, ev eventbus.Event) error {
	r.add(ev)
	return nil
}

func (r *recorder) add(ev eventbus.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	r.count[ev.ID]++
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// distinct returns how many different event IDs were received.
func (r *recorder) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.count)
}

func (r *recorder) times(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count[id]
}

func (r *recorder) has(id string) bool { return r.times(id) > 0 }

func (r *recorder) snapshot() []eventbus.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *recorder) duplicates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events) - len(r.count)
}

// names returns the sorted names received, for failure messages.
func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.events {
		out = append(out, ev.Name)
	}
	sort.Strings(out)
	return out
}

// missing lists which of ids were not received, for failure messages.
func (r *recorder) missing(ids []string) string {
	var miss []string
	for _, id := range ids {
		if !r.has(id) {
			miss = append(miss, id)
		}
	}
	if len(miss) > 5 {
		return fmt.Sprintf("%d missing, e.g. %s", len(miss), strings.Join(miss[:5], ", "))
	}
	return fmt.Sprintf("%d missing: %s", len(miss), strings.Join(miss, ", "))
}

// waitPoisoned waits until the service's poison queue holds the event.
func (e *env) waitPoisoned(b *eventbus.Bus, id string) eventbus.PoisonedEvent {
	e.t.Helper()
	var found eventbus.PoisonedEvent
	var last []eventbus.PoisonedEvent
	e.waitFor("event "+id+" in the poison queue", func() bool {
		ps, err := b.Poisoned(e.ctx(), eventbus.PoisonFilter{})
		if err != nil {
			e.t.Fatalf("Poisoned: %v", err)
		}
		last = ps
		for _, p := range ps {
			if p.Event.ID == id {
				found = p
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("poison queue holds %d event(s)", len(last)) })
	return found
}

// matcher returns the Match function of a pattern of the program's own,
// as the bus gives it to a transport.
func matcher(pattern string) func(name string) bool {
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		panic(err)
	}
	return p.Match
}
