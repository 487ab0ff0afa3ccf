package contracttests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
)

// testFanOut: two services subscribed to the same pattern each get every
// event.
func testFanOut(e *env) {
	a, b, pub := e.bus("fan-a"), e.bus("fan-b"), e.bus("fan-pub")
	ra, rb := newRecorder(), newRecorder()
	e.subscribe(a, "order.*", ra.handle)
	e.subscribe(b, "order.*", rb.handle)
	e.start(a)
	e.start(b)
	var ids []string
	var evs []eventbus.Event
	for i := range 20 {
		ev := e.event(fmt.Sprintf("order.e%d", i), nil)
		evs = append(evs, ev)
		ids = append(ids, ev.ID)
	}
	e.publish(pub, evs...)
	for _, r := range []*recorder{ra, rb} {
		e.waitFor("every event at each service", func() bool { return r.distinct() == len(ids) },
			func() string { return r.missing(ids) })
	}
}

// testRedeliveryAfterError: a handler that fails once gets the event again
// and its success acknowledges it.
func testRedeliveryAfterError(e *env) {
	b := e.bus("redeliver")
	var calls atomic.Int32
	var once sync.Once
	done := make(chan struct{})
	e.subscribe(b, "flaky.op", func(ctx context.Context, ev eventbus.Event) error {
		if calls.Add(1) == 1 {
			return errors.New("transient failure")
		}
		once.Do(func() { close(done) })
		return nil
	})
	e.start(b)
	e.publish(b, e.event("flaky.op", nil))
	e.waitChan("second delivery", done)
	ps, err := b.Poisoned(e.ctx(), eventbus.PoisonFilter{})
	if err != nil || len(ps) != 0 {
		e.t.Errorf("poison queue after a recovered failure: %d events, err %v; want empty", len(ps), err)
	}
}

func (e *env) waitChan(what string, ch <-chan struct{}) {
	e.t.Helper()
	select {
	case <-ch:
	case <-time.After(e.timeout):
		e.t.Fatalf("%s: not reached within %s", what, e.timeout)
	}
}

// testRestartMidStream: 1,000 events, half published before the only
// instance of a subscription closes and half while it closes and a new
// one starts; every event is handled, and none that the first instance
// handled is handled again by the second (a graceful Close settles what
// it acknowledged). Mid-stream is established, not hoped for: the first
// instance's handlers block once a third of the events are handled, so
// its Close starts with most of the stream unhandled; they are released
// once Close has begun, and finish (and are acknowledged) within it.
func testRestartMidStream(e *env) {
	const total, batch = 1000, 50
	pub := e.bus("restart-pub")
	first, second := newRecorder(), newRecorder()
	gate := make(chan struct{})
	var handled atomic.Int32
	b1 := e.bus("restart")
	e.subscribe(b1, "stream.#", func(ctx context.Context, ev eventbus.Event) error {
		if handled.Add(1) > total/3 {
			select {
			case <-gate:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return first.handle(ctx, ev)
	}, eventbus.SubscriptionName("stream"), eventbus.Concurrency(4))
	e.start(b1)

	evs := make([]eventbus.Event, total)
	for i := range evs {
		evs[i] = e.event("stream.item", map[string]int{"n": i})
	}
	began := time.Now()
	for i := 0; i < total/2; i += batch {
		e.publish(pub, evs[i:i+batch]...)
	}
	e.waitFor("a third of the stream handled by the first instance", func() bool { return handled.Load() > total/3 },
		func() string { return fmt.Sprintf("%d handled", first.distinct()) })
	third := time.Since(began)

	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- b1.Close(ctx) }()
	// The second half is published while the first instance closes and
	// while no instance runs; the broker must keep it.
	pubErr := make(chan error, 1)
	go func() {
		for i := total / 2; i < total; i += batch {
			if err := pub.Publish(ctx, evs[i:i+batch]...); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()
	// Close has begun once the bus answers Subscribe with ErrClosed
	// (before that, the same subscription name is refused as a duplicate,
	// without side effects); only then are the blocked handlers released.
	e.waitFor("the first instance's Close to begin", func() bool {
		return errors.Is(b1.Subscribe("stream.#", first.handle, eventbus.SubscriptionName("stream")), eventbus.ErrClosed)
	}, func() string { return "Subscribe does not answer ErrClosed" })
	midway := first.distinct()
	close(gate)
	select {
	case err := <-closed:
		if err != nil {
			e.t.Fatalf("closing the first instance: %v", err)
		}
	case <-time.After(e.timeout):
		e.t.Fatalf("the first instance's Close has not returned after %v", e.timeout)
	}
	closedAt := time.Since(began)
	b2 := e.bus("restart")
	e.subscribe(b2, "stream.#", second.handle, eventbus.SubscriptionName("stream"), eventbus.Concurrency(4))
	e.start(b2)
	select {
	case err := <-pubErr:
		if err != nil {
			e.t.Fatalf("publishing: %v", err)
		}
	case <-time.After(e.timeout):
		e.t.Fatalf("publishing the second half has not finished after %v", e.timeout)
	}
	all := ids(evs)
	e.waitFor("every event handled by one instance or the other", func() bool {
		for _, id := range all {
			if !first.has(id) && !second.has(id) {
				return false
			}
		}
		return true
	}, func() string {
		n := 0
		for _, id := range all {
			if !first.has(id) && !second.has(id) {
				n++
			}
		}
		return fmt.Sprintf("%d of %d not handled (first instance %d, second %d)", n, total, first.distinct(), second.distinct())
	})
	var again []int
	for i, id := range all {
		if first.has(id) && second.has(id) {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		// The indexes (in publishing order; the first half was published
		// before Close) and the timings tell a delivery that outlived the
		// broker's acknowledgement timeout from a lost acknowledgement.
		e.t.Errorf("%d events handled (and acknowledged) by the first instance before its graceful Close were handled again by the second: events %v", len(again), again)
	}
	e.t.Logf("the first instance had handled %d of %d events when its Close began, %d in all; the second handled %d; %d redeliveries within an instance; a third handled after %v, Close returned after %v, all handled after %v",
		midway, total, first.distinct(), second.distinct(), first.duplicates()+second.duplicates(),
		third.Round(time.Millisecond), closedAt.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

// testConcurrentPublishers: many goroutines publishing at once lose
// nothing.
func testConcurrentPublishers(e *env) {
	const goroutines, each = 8, 50
	pub, b := e.bus("conc-pub"), e.bus("conc")
	r := newRecorder()
	e.subscribe(b, "conc.#", r.handle, eventbus.Concurrency(8))
	e.start(b)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	idc := make(chan string, goroutines*each)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ev, err := eventbus.NewEvent(fmt.Sprintf("conc.g%d", g), map[string]int{"i": i}, eventbus.WithSource("contract-tests"))
				if err != nil {
					errs <- err
					return
				}
				if err := pub.Publish(context.Background(), ev); err != nil {
					errs <- err
					return
				}
				idc <- ev.ID
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(idc)
	for err := range errs {
		e.t.Fatalf("concurrent Publish: %v", err)
	}
	var ids []string
	for id := range idc {
		ids = append(ids, id)
	}
	e.waitFor("every concurrently published event", func() bool { return r.distinct() == len(ids) }, func() string { return r.missing(ids) })
}

// testEnvelopeRoundTrip: every envelope field and awkward metadata survive
// the wire unchanged.
func testEnvelopeRoundTrip(e *env) {
	b := e.bus("envelope")
	r := newRecorder()
	e.subscribe(b, "envelope.check", r.handle)
	e.start(b)
	data := []byte(`{"text":"héllo wörld ✓ 🚀","empty":"","nested":{"list":[1,2.5,null,true]},"quote":"\"<>&'"}`)
	in := eventbus.Event{
		ID:            "id-ünïcode-" + e.prefix,
		Name:          "envelope.check",
		Source:        "sërvice/✓",
		Type:          eventbus.Notification,
		Time:          time.Date(2026, 11, 27, 1, 2, 3, 456789012, time.UTC),
		DataVersion:   "v2 ✓",
		CorrelationID: "corr 🚀",
		CausationID:   "cause-1",
		PartitionKey:  "ключ",
		Metadata: map[string]string{
			"empty":        "",
			"unicode ✓":    "значение 🚀",
			"ce_id":        "not-the-id",
			"content-type": "text/plain",
			"x-death":      "not a table",
			"long":         strings.Repeat("x", 4096),
		},
		Data: data,
	}
	e.publish(b, in)
	e.waitFor("the event", func() bool { return r.len() > 0 }, func() string { return "not delivered" })
	out := r.snapshot()[0]
	check := func(field string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			e.t.Errorf("%s: got %q, want %q", field, got, want)
		}
	}
	check("ID", out.ID, in.ID)
	check("Name", out.Name, in.Name)
	check("Source", out.Source, in.Source)
	check("Type", out.Type, in.Type)
	if !out.Time.Equal(in.Time) {
		e.t.Errorf("Time: got %v, want %v", out.Time, in.Time)
	}
	check("DataVersion", out.DataVersion, in.DataVersion)
	check("CorrelationID", out.CorrelationID, in.CorrelationID)
	check("CausationID", out.CausationID, in.CausationID)
	check("PartitionKey", out.PartitionKey, in.PartitionKey)
	check("Data", string(out.Data), string(in.Data))
	if len(out.Metadata) != len(in.Metadata) {
		e.t.Errorf("Metadata: got %d keys %v, want %d", len(out.Metadata), out.Metadata, len(in.Metadata))
	}
	for k, v := range in.Metadata {
		if got, ok := out.Metadata[k]; !ok || got != v {
			e.t.Errorf("Metadata[%q]: got %q (present %v), want %q", k, got, ok, v)
		}
	}
}

// testLargePayload: a 1 MiB payload arrives intact.
func testLargePayload(e *env) {
	b := e.bus("large")
	r := newRecorder()
	e.subscribe(b, "large.payload", r.handle)
	e.start(b)
	body := `"` + strings.Repeat("0123456789abcdef", (1<<20)/16-1) + `"`
	ev := e.event("large.payload", []byte(body))
	e.publish(b, ev)
	e.waitFor("the large event", func() bool { return r.len() > 0 }, func() string { return "not delivered" })
	if got := r.snapshot()[0].Data; string(got) != body {
		e.t.Errorf("payload: got %d bytes, want %d identical bytes", len(got), len(body))
	}
}

// testCloseWaitsForHandlers: Close returns only after the handler in
// flight finished, and that handler's event is acknowledged, not lost.
func testCloseWaitsForHandlers(e *env) {
	b := e.bus("close-wait")
	started, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	var ctxErr atomic.Value
	var once sync.Once
	e.subscribe(b, "slow.job", func(ctx context.Context, ev eventbus.Event) error {
		once.Do(func() { close(started) })
		select {
		case <-release:
		case <-time.After(e.timeout): // the test failed before releasing it
		}
		if err := ctx.Err(); err != nil {
			ctxErr.Store(err)
		}
		finished.Store(true)
		return nil
	})
	e.start(b)
	e.publish(b, e.event("slow.job", nil))
	e.waitChan("handler start", started)
	closed := make(chan error, 1)
	go func() { closed <- b.Close(context.Background()) }()
	// A Close that does not wait returns now, while the handler is blocked.
	select {
	case err := <-closed:
		e.t.Fatalf("Close returned (%v) while a handler was in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-closed:
		if err != nil {
			e.t.Errorf("Close: %v", err)
		}
	case <-time.After(e.timeout):
		e.t.Fatal("Close did not return after the handler finished")
	}
	if !finished.Load() {
		e.t.Error("Close returned before the handler finished")
	}
	if err := ctxErr.Load(); err != nil {
		e.t.Errorf("handler ctx was cancelled during a graceful Close: %v", err)
	}
}

// testCloseDeadline: when Close's ctx ends before a handler does, Close
// returns the ctx's error, the handler's ctx is cancelled, and the event
// (not acknowledged) reaches the next instance of the subscription.
func testCloseDeadline(e *env) {
	b := e.bus("close-deadline")
	e.needPoisonQueue(b.Transport())
	started := make(chan struct{})
	cancelled := make(chan struct{})
	var startOnce, cancelOnce sync.Once
	e.subscribe(b, "stuck.job", func(ctx context.Context, ev eventbus.Event) error {
		startOnce.Do(func() { close(started) })
		<-ctx.Done()
		cancelOnce.Do(func() { close(cancelled) })
		return ctx.Err()
	}, eventbus.SubscriptionName("stuck"))
	e.start(b)
	ev := e.event("stuck.job", nil)
	e.publish(b, ev)
	e.waitChan("handler start", started)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		e.t.Errorf("Close past its deadline: got %v, want DeadlineExceeded", err)
	}
	e.waitChan("handler ctx cancelled after Close gave up", cancelled)
	next := e.bus("close-deadline")
	r := newRecorder()
	e.subscribe(next, "stuck.job", r.handle, eventbus.SubscriptionName("stuck"))
	e.start(next)
	e.waitFor("the unfinished event at the next instance", func() bool { return r.has(ev.ID) }, func() string { return "lost" })
	if ps, err := next.Poisoned(e.ctx(), eventbus.PoisonFilter{}); err != nil || len(ps) != 0 {
		e.t.Errorf("an event interrupted by Close was poisoned (%d, %v); it must come back instead", len(ps), err)
	}
}

// testSubscribeBeforeAndAfterStart: subscriptions made on either side of
// Start both consume.
func testSubscribeBeforeAndAfterStart(e *env) {
	b := e.bus("before-after")
	before, after := newRecorder(), newRecorder()
	e.subscribe(b, "timing.#", before.handle, eventbus.SubscriptionName("before"))
	e.start(b)
	e.subscribe(b, "timing.#", after.handle, eventbus.SubscriptionName("after"))
	ev := e.event("timing.check", nil)
	e.publish(b, ev)
	e.waitFor("subscription made before Start", func() bool { return before.has(ev.ID) }, func() string { return "not delivered" })
	e.waitFor("subscription made after Start", func() bool { return after.has(ev.ID) }, func() string { return "not delivered" })
}

// testPublishWithoutStart: a publish-only bus never calls Start.
func testPublishWithoutStart(e *env) {
	pub, sub := e.bus("pub-only"), e.bus("pub-only-sub")
	r := newRecorder()
	e.subscribe(sub, "report.#", r.handle)
	e.start(sub)
	ev := e.event("report.ready", nil)
	e.publish(pub, ev)
	e.waitFor("event from a bus never started", func() bool { return r.has(ev.ID) }, func() string { return "not delivered" })
}

// testUndecodable: raw bytes without ce_ headers, published through the
// transport's own Watermill publisher, go to the poison queue as
// undecodable; the handler never sees them and the next event is handled.
func testUndecodable(e *env) {
	b := e.bus("undecodable")
	e.needPoisonQueue(b.Transport())
	r := newRecorder()
	e.subscribe(b, "raw.#", r.handle)
	e.start(b)
	raw := message.NewMessage("raw-"+e.prefix, []byte("this is not JSON {"))
	raw.Metadata.Set("x-custom", "1")
	if err := b.Transport().Publisher().Publish("raw.bytes", raw); err != nil {
		e.t.Fatalf("raw publish: %v", err)
	}
	p := e.waitPoisoned(b, raw.UUID)
	if p.Reason != "undecodable" || p.DecodeError == nil || string(p.Payload) != "this is not JSON {" {
		e.t.Errorf("poisoned raw message: reason %q, decode error %v, payload %q", p.Reason, p.DecodeError, p.Payload)
	}
	next := e.event("raw.next", nil)
	e.publish(b, next)
	e.waitFor("the next event after a bad one", func() bool { return r.has(next.ID) }, func() string { return "consumer stopped" })
	if r.has(raw.UUID) {
		e.t.Error("the handler received the undecodable message")
	}
}
