package memory_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/transports/memory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// freshURL gives every test its own in-process broker.
func freshURL(t testing.TB) string {
	name := "contract-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	return "mem://" + name
}

func newBus(t *testing.T, url, service string) *eventbus.Bus {
	t.Helper()
	b, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: service, URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

// A full subscription makes Publish wait (back-pressure) instead of
// buffering without bound; the wait ends with the caller's ctx and the
// error names the event that was not published.
func TestBackPressure(t *testing.T) {
	url := freshURL(t) + "?buffer=2"
	idleGroup(t, url, "bp")
	pub := newBus(t, url, "bp-pub")
	for i := range 2 {
		ev, _ := eventbus.NewEvent("bp.event", i, eventbus.WithSource("bp"))
		if err := pub.Publish(context.Background(), ev); err != nil {
			t.Fatalf("publishing into free buffer space: %v", err)
		}
	}
	ev, _ := eventbus.NewEvent("bp.event", 3, eventbus.WithSource("bp"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := pub.Publish(ctx, ev)
	var pe *eventbus.PublishError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &pe) || pe.Failed[0].ID != ev.ID {
		t.Fatalf("publishing into a full subscription: got %v, want a PublishError naming %s with DeadlineExceeded", err, ev.ID)
	}

	// A consumer drains the two buffered events; then there is room again.
	b := newBus(t, url, "bp")
	var handled atomic.Int32
	if err := b.Subscribe("bp.#", func(context.Context, eventbus.Event) error { handled.Add(1); return nil }, eventbus.SubscriptionName("idle")); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return handled.Load() == 2 })
	if err := pub.Publish(context.Background(), ev); err != nil {
		t.Fatalf("publishing after the consumer drained the buffer: %v", err)
	}
	waitUntil(t, func() bool { return handled.Load() == 3 })
}

// Publishers blocked on a full subscription all go on once a consumer
// drains it: none is left waiting, and every event arrives once.
func TestBackPressureWakesEveryPublisher(t *testing.T) {
	url := freshURL(t) + "?buffer=4"
	idleGroup(t, url, "bpw")
	pub := newBus(t, url, "bpw-pub")
	const publishers, each = 10, 20
	errs := make(chan error, publishers)
	for p := range publishers {
		go func() {
			for i := range each {
				ev, _ := eventbus.NewEvent("bpw.event", p*each+i, eventbus.WithSource("bpw"))
				if err := pub.Publish(context.Background(), ev); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	b := newBus(t, url, "bpw")
	var mu sync.Mutex
	seen := map[int]int{}
	if err := b.Subscribe("bpw.#", func(_ context.Context, ev eventbus.Event) error {
		var n int
		if err := ev.Decode(&n); err != nil {
			return err
		}
		mu.Lock()
		seen[n]++
		mu.Unlock()
		return nil
	}, eventbus.SubscriptionName("idle")); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range publishers {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatalf("a blocked publisher failed: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a publisher is still blocked 10s after the consumer started")
		}
	}
	waitUntil(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == publishers*each })
	mu.Lock()
	defer mu.Unlock()
	for n, c := range seen {
		if c != 1 {
			t.Errorf("event %d handled %d times", n, c)
		}
	}
}

// Publishers waiting for a full subscription to drain are not left waiting
// when its consumers go away after taking only a few events: there is room,
// so they go on, every one of them.
func TestBackPressureRoomAfterConsumerLeaves(t *testing.T) {
	url := freshURL(t) + "?buffer=16"
	tr := idleGroup(t, url, "bpl")
	pub := newBus(t, url, "bpl-pub")
	for i := range 16 {
		ev, _ := eventbus.NewEvent("bpl.event", i, eventbus.WithSource("bpl"))
		if err := pub.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	const blocked = 3
	published := make(chan error, blocked)
	for i := range blocked {
		go func() {
			ev, _ := eventbus.NewEvent("bpl.event", 16+i, eventbus.WithSource("bpl"))
			published <- pub.Publish(context.Background(), ev)
		}()
	}
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "bpl.idle", Concurrency: 1, Pattern: "bpl.#", Match: matcher("bpl.#")})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := sub.Subscribe(context.Background(), "bpl.#")
	if err != nil {
		t.Fatal(err)
	}
	for range blocked {
		(<-msgs).Ack()
	}
	// Close, acking whatever the consumer still took before it stopped (a
	// few at most, so the queue stays above half).
	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	for m := range msgs {
		m.Ack()
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for range blocked {
		select {
		case err := <-published:
			if err != nil {
				t.Fatalf("publishing once the consumer left room: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a publisher is still waiting 10s after the consumer left room and went away")
		}
	}
}

// A handler that publishes into its own full group while holding a lock
// the group's other handler needs must get through: the queue has room
// (the other handler took an event, then blocked on the lock) but stays
// above half, so no consumer signals; the waiting publisher must look again
// by itself.
func TestBackPressureHandlerPublishingIntoItsOwnGroup(t *testing.T) {
	url := freshURL(t) + "?buffer=4"
	ctx := context.Background()
	tr := idleGroup(t, url, "lk")
	pub := newBus(t, url, "lk-pub")
	publish := func(name string) error {
		ev, err := eventbus.NewEvent(name, nil, eventbus.WithSource("lk"))
		if err != nil {
			return err
		}
		return pub.Publish(ctx, ev)
	}
	for _, n := range []string{"lk.a", "lk.c", "lk.b", "lk.b"} {
		if err := publish(n); err != nil {
			t.Fatal(err)
		}
	}

	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "lk", URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Bounded, so that a failure ends the test instead of hanging it.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = b.Close(cctx)
	}()
	// lk.a publishes lk.z while holding mu; lk.c waits for gateC; the
	// others need mu.
	var (
		mu          sync.Mutex
		underLock   int
		handled     atomic.Int32
		aIn, cIn    = make(chan struct{}), make(chan struct{})
		goA, gateC  = make(chan struct{}), make(chan struct{})
		republished = make(chan error, 1)
	)
	err = b.Subscribe("lk.#", func(hctx context.Context, ev eventbus.Event) error {
		defer handled.Add(1)
		switch ev.Name {
		case "lk.a":
			mu.Lock()
			defer mu.Unlock()
			close(aIn)
			<-goA
			ev, _ := eventbus.NewEvent("lk.z", nil, eventbus.WithSource("lk"))
			republished <- b.Publish(hctx, ev)
		case "lk.c":
			close(cIn)
			<-gateC
		default:
			mu.Lock()
			underLock++
			mu.Unlock()
		}
		return nil
	}, eventbus.SubscriptionName("idle"), eventbus.Concurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	<-aIn
	<-cIn
	// Both handlers are busy and two events wait: fill the queue.
	for range 2 {
		if err := publish("lk.b"); err != nil {
			t.Fatal(err)
		}
	}
	close(goA)
	waitUntil(t, func() bool { return memory.WaitingPublishers(tr, "lk.idle") == 1 })
	// The other handler takes the next event, leaving room above half,
	// and blocks on the lock the waiting publisher holds.
	close(gateC)
	select {
	case err := <-republished:
		if err != nil {
			t.Fatalf("publishing from the handler: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's Publish is still waiting 10s after there was room")
	}
	waitUntil(t, func() bool { return handled.Load() == 7 })
}

// idleGroup creates the durable group <service>.idle bound to
// "<service>.#" and leaves it without consumers, like a RabbitMQ queue
// whose service is down. It returns the transport that made it.
func idleGroup(t *testing.T, url, service string) driver.Transport {
	t.Helper()
	tr, err := driver.Open(context.Background(), url, driver.Config{ServiceName: service})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: service + ".idle", Concurrency: 1, Pattern: service + ".#", Match: matcher(service + ".#")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Subscribe(context.Background(), service+".#"); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	return tr
}

// Work is done by a fixed set of goroutines: thousands of queued events do
// not start a goroutine each.
func TestNoGoroutinePerEvent(t *testing.T) {
	url := freshURL(t)
	b := newBus(t, url, "gr")
	release := make(chan struct{})
	var releaseOnce sync.Once
	// Runs before the bus closes, so that a failure does not leave the
	// handlers blocked and the close waiting for them.
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	var entered, handled atomic.Int32
	if err := b.Subscribe("gr.#", func(context.Context, eventbus.Event) error {
		entered.Add(1)
		<-release
		handled.Add(1)
		return nil
	}, eventbus.Concurrency(4)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	const n = 1000
	evs := make([]eventbus.Event, n)
	for i := range evs {
		evs[i], _ = eventbus.NewEvent("gr.event", i, eventbus.WithSource("gr"))
	}
	if err := b.Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	// Four handlers are blocked; the other events wait in the buffer.
	waitUntil(t, func() bool { return entered.Load() == 4 })
	if g := runtime.NumGoroutine(); g > before+20 {
		t.Errorf("%d goroutines with %d events queued (%d before publishing); want a fixed number", g, n, before)
	}
	releaseOnce.Do(func() { close(release) })
	waitUntil(t, func() bool { return handled.Load() == n })
}

func TestURLParameters(t *testing.T) {
	for _, url := range []string{"mem://x?buffer=0", "mem://x?buffer=lots", "mem://x?bufer=10"} {
		_, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: "u", URL: url})
		if err == nil {
			t.Errorf("New(%q) succeeded; want an error about the parameter", url)
		}
	}
}

// Buses on different broker names do not see each other's events; Forget
// gives a fresh broker.
func TestBrokerIsolation(t *testing.T) {
	a, b := newBus(t, freshURL(t)+"-a", "iso"), newBus(t, freshURL(t)+"-b", "iso")
	if err := b.Subscribe("iso.#", func(context.Context, eventbus.Event) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev, _ := eventbus.NewEvent("iso.event", nil, eventbus.WithSource("iso"))
	if err := a.Publish(context.Background(), ev); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("publishing on broker a with a subscriber only on broker b: got %v, want ErrUnroutable", err)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCloseGivesBackEventsNobodyRead: a subscriber's Close returns although
// events it had put in its channel were never read, and those events are
// delivered to the next subscriber of the group.
func TestCloseGivesBackEventsNobodyRead(t *testing.T) {
	url := freshURL(t)
	tr, err := driver.Open(context.Background(), url, driver.Config{ServiceName: "unread"})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	cfg := driver.SubscriberConfig{Group: "unread.s", Service: "unread", Subscription: "s", Concurrency: 2, Pattern: "unread.#", Match: matcher("unread.#")}
	sub, err := tr.NewSubscriber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Subscribe(context.Background(), "unread.#"); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 2 {
		ev, _ := eventbus.NewEvent(fmt.Sprintf("unread.e%d", i), i, eventbus.WithSource("unread"))
		ids = append(ids, ev.ID)
		m := eventbustest.Message(ev)
		m.SetContext(context.Background())
		if err := tr.Publisher().Publish(ev.Name, m); err != nil {
			t.Fatal(err)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for events nobody read")
	}
	next, err := tr.NewSubscriber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	ch, err := next.Subscribe(context.Background(), "unread.#")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for len(got) < 2 {
		select {
		case m := <-ch:
			got[m.UUID] = true
			m.Ack()
		case <-time.After(5 * time.Second):
			t.Fatalf("the next subscriber got %v, want %v", got, ids)
		}
	}
}
