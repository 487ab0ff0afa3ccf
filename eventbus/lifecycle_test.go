package eventbus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// margin is how much later than its ctx's deadline a call may return in
// these tests: scheduling on a busy machine, not waiting for the broker.
const margin = 500 * time.Millisecond

// within runs f in a goroutine and fails the test unless it returns within
// d plus margin; it returns f's error.
func within(t *testing.T, d time.Duration, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d + margin):
		t.Fatalf("%s did not return within %v (+%v); it has run %v", what, d, margin, time.Since(start))
		return nil
	}
}

// stuckTransport stands for a broker that does not answer: its
// subscribers' Subscribe waits until its ctx ends, and its Close waits
// until released.
type stuckTransport struct {
	fakeTransport
	release chan struct{}
	mu      sync.Mutex
	subs    []*stuckSubscriber
}

type stuckSubscriber struct{ closed atomic.Bool }

func (s *stuckSubscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	<-ctx.Done()
	return nil, fmt.Errorf("broker does not answer: %w", ctx.Err())
}

func (s *stuckSubscriber) Close() error { s.closed.Store(true); return nil }

func (t *stuckTransport) NewSubscriber(driver.SubscriberConfig) (message.Subscriber, error) {
	s := &stuckSubscriber{}
	t.mu.Lock()
	t.subs = append(t.subs, s)
	t.mu.Unlock()
	return s, nil
}

func (t *stuckTransport) Close() error { <-t.release; return nil }

func (t *stuckTransport) allClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.subs {
		if !s.closed.Load() {
			return false
		}
	}
	return true
}

// stuckBus opens a bus on a stuckTransport of its own.
func stuckBus(t *testing.T) (*eventbus.Bus, *stuckTransport) {
	t.Helper()
	tr := &stuckTransport{release: make(chan struct{})}
	host := testDriver(t, "stucktest", func(context.Context, driver.Config) (driver.Transport, error) { return tr, nil })
	b, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: "stuck", URL: "stucktest://" + host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-tr.release:
		default:
			close(tr.release)
		}
		_ = b.Close(context.Background())
	})
	return b, tr
}

var (
	testDriversMu sync.Mutex
	testDrivers   = map[string]bool{}                                                           // registered schemes
	testOpeners   = map[string]func(context.Context, driver.Config) (driver.Transport, error){} // by scheme and host
)

// testDriver makes URLs of scheme with the returned host open a transport
// with open, for this test only: the driver of each scheme is registered
// once per process, and looks up the test's opener by the URL's host.
func testDriver(t *testing.T, scheme string, open func(context.Context, driver.Config) (driver.Transport, error)) (host string) {
	t.Helper()
	host = strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name()))
	testDriversMu.Lock()
	defer testDriversMu.Unlock()
	if !testDrivers[scheme] {
		testDrivers[scheme] = true
		driver.Register(scheme, driver.OpenFunc(func(ctx context.Context, cfg driver.Config) (driver.Transport, error) {
			testDriversMu.Lock()
			f := testOpeners[scheme+"://"+cfg.URL.Host]
			testDriversMu.Unlock()
			if f == nil {
				return nil, fmt.Errorf("no transport set up for host %q", cfg.URL.Host)
			}
			return f(ctx, cfg)
		}))
	}
	testOpeners[scheme+"://"+host] = open
	t.Cleanup(func() {
		testDriversMu.Lock()
		delete(testOpeners, scheme+"://"+host)
		testDriversMu.Unlock()
	})
	return host
}

// TestStartReturnsByItsDeadline: while the broker does not answer, Start
// returns by its ctx's deadline with that error, and leaves no subscriber
// open.
func TestStartReturnsByItsDeadline(t *testing.T) {
	b, tr := stuckBus(t)
	if err := b.Subscribe("a.#", nop); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("b.#", nop); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := within(t, 200*time.Millisecond, "Start", func() error { return b.Start(ctx) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start: %v, want an error wrapping context.DeadlineExceeded", err)
	}
	if !tr.allClosed() {
		t.Error("a failed Start left a subscriber open")
	}
}

// TestCloseEndsAWaitingStart: Close does not wait for a Start that waits for
// the broker; that Start returns ErrClosed.
func TestCloseEndsAWaitingStart(t *testing.T) {
	b, tr := stuckBus(t)
	close(tr.release) // the transport itself closes at once here
	if err := b.Subscribe("a.#", nop); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- b.Start(context.Background()) }()
	// Close once Start is inside the transport's Subscribe.
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.mu.Lock()
		n := len(tr.subs)
		tr.mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := within(t, time.Second, "Close", func() error { return b.Close(ctx) }); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-started:
		if !errors.Is(err, eventbus.ErrClosed) {
			t.Errorf("Start: %v, want ErrClosed", err)
		}
	case <-time.After(time.Second + margin):
		t.Fatal("Start still waiting after Close")
	}
}

// TestCloseReturnsByItsDeadline: a transport that does not close in time
// does not keep Close past its ctx.
func TestCloseReturnsByItsDeadline(t *testing.T) {
	b, _ := stuckBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := within(t, 200*time.Millisecond, "Close", func() error { return b.Close(ctx) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close: %v, want an error wrapping context.DeadlineExceeded", err)
	}
}

// TestCloseFromAHandler: Close called from a handler with a ctx that never
// ends returns (it cannot wait for its own handler), and the bus finishes
// closing once the handler returned.
func TestCloseFromAHandler(t *testing.T) {
	b := newMemBus(t, "closer")
	returned := make(chan error, 1)
	if err := b.Subscribe("shut.down", func(context.Context, eventbus.Event) error {
		returned <- b.Close(context.Background())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev, _ := eventbus.NewEvent("shut.down", nil, eventbus.WithSource("closer"), eventbus.WithType(eventbus.System))
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-returned:
		if err != nil {
			t.Errorf("Close from a handler: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close called from a handler did not return: deadlock")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Errorf("a second Close, waiting for the first: %v", err)
	}
	if err := b.Publish(context.Background(), ev); !errors.Is(err, eventbus.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
}

// TestPoisonMethodsAfterClose: listing, replaying and purging the poison
// queue of a closed bus fail with ErrClosed, like every other method.
func TestPoisonMethodsAfterClose(t *testing.T) {
	b := newMemBus(t, "closed")
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := b.Poisoned(ctx, eventbus.PoisonFilter{}); !errors.Is(err, eventbus.ErrClosed) {
		t.Errorf("Poisoned: %v", err)
	}
	if _, err := b.Replay(ctx, eventbus.PoisonFilter{}); !errors.Is(err, eventbus.ErrClosed) {
		t.Errorf("Replay: %v", err)
	}
	if _, err := b.PurgePoison(ctx, eventbus.PoisonFilter{}); !errors.Is(err, eventbus.ErrClosed) {
		t.Errorf("PurgePoison: %v", err)
	}
}

// TestMisroutedEventIsPoisoned: a message that reaches a subscription
// although its ce_type does not match the pattern (a producer whose
// routing key and event name disagree) is poisoned with a reason, not
// acknowledged unseen.
func TestMisroutedEventIsPoisoned(t *testing.T) {
	b := newMemBus(t, "routes")
	var calls atomic.Int32
	if err := b.Subscribe("orders.placed", func(context.Context, eventbus.Event) error { calls.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	msg := driver.Encode(driver.Envelope{ID: "misrouted-1", Name: "users.deleted", Source: "routes", Type: "domain", Time: time.Now()})
	msg.SetContext(context.Background())
	if err := b.Transport().Publisher().Publish("orders.placed", msg); err != nil {
		t.Fatal(err)
	}
	var ps []eventbus.PoisonedEvent
	deadline := time.Now().Add(5 * time.Second)
	for len(ps) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		ps, _ = b.Poisoned(context.Background(), eventbus.PoisonFilter{})
	}
	if len(ps) != 1 || ps[0].Reason != "misrouted" || !strings.Contains(ps[0].Error, "orders.placed") {
		t.Fatalf("poison queue: %+v; want the event, poisoned as misrouted with an error naming the pattern", ps)
	}
	if calls.Load() != 0 {
		t.Error("the handler was called for an event its pattern does not match")
	}
}

func TestConcurrencyHasAMaximum(t *testing.T) {
	b := newMemBus(t, "conc")
	for _, n := range []int{eventbus.MaxConcurrency + 1, 1 << 20} {
		err := b.Subscribe(fmt.Sprintf("c%d", n), nop, eventbus.Concurrency(n))
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(eventbus.MaxConcurrency)) {
			t.Errorf("Concurrency(%d): %v, want an error naming the maximum", n, err)
		}
	}
	if err := b.Subscribe("max", nop, eventbus.Concurrency(eventbus.MaxConcurrency)); err != nil {
		t.Errorf("Concurrency(MaxConcurrency): %v", err)
	}
}

// TestConfigNeverPrintsThePassword: every way of printing a Config, fmt or
// slog, redacts the broker password.
func TestConfigNeverPrintsThePassword(t *testing.T) {
	cfg := eventbus.Config{ServiceName: "s", URL: "amqp://app:s3cr3t@broker:5672/?auth_token=t0ken"}
	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out = append(out, fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, &cfg), fmt.Sprintf(verb, struct{ C eventbus.Config }{cfg}))
	}
	out = append(out, fmt.Sprint(cfg), fmt.Sprintln(cfg))
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("cfg", "config", cfg)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "config", cfg)
	out = append(out, buf.String())
	for _, s := range out {
		if strings.Contains(s, "s3cr3t") || strings.Contains(s, "t0ken") {
			t.Errorf("printed configuration shows a secret: %s", s)
		}
		if !strings.Contains(s, "broker") {
			t.Errorf("printed configuration lost the host: %s", s)
		}
	}
}

// TestOpaqueURLIsRejected: a URL without "//" after the scheme parses with
// host and password in its opaque part; it is refused, without the
// password in the error, rather than connected to a default host.
func TestOpaqueURLIsRejected(t *testing.T) {
	for _, u := range []string{"amqp:guest:s3cr3t@elsewhere:5679", "mem:name", "kafka:host:9092"} {
		_, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: "s", URL: u})
		if err == nil || !strings.Contains(err.Error(), "//") || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("New(%q): %v; want an error asking for \"//\" that hides the password", u, err)
		}
	}
}
