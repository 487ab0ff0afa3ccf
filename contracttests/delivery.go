package contracttests

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
)

// patternCases are the original's five forms plus the zero-segment cases
// that in-memory fakes of other frameworks get wrong, with RabbitMQ
// topic-exchange semantics.
var patternNames = []string{
	"user", "user.registered", "user.deleted", "user.profile.updated",
	"registered", "admin.registered", "completed", "order.completed",
	"order.payment.completed", "a.b", "a.x.b", "a.x.y.b", "a", "b",
}

var patternCases = []struct {
	pattern string
	want    []string
}{
	{"user.registered", []string{"user.registered"}},
	{"user.*", []string{"user.registered", "user.deleted"}},
	{"user.#", []string{"user", "user.registered", "user.deleted", "user.profile.updated"}},
	{"*.registered", []string{"user.registered", "admin.registered"}},
	{"#.completed", []string{"completed", "order.completed", "order.payment.completed"}},
	{"a.#.b", []string{"a.b", "a.x.b", "a.x.y.b"}},
	{"*", []string{"user", "registered", "completed", "a", "b"}},
	{"#.#", patternNames},
	{"*.#", patternNames},
	{"#", patternNames},
}

// testPatterns subscribes once per pattern and publishes every name once,
// then a fence per pattern (a second copy of one of its names). Every
// transport delivers a subscription's events in order when they share a
// partition key and concurrency is 1, so once a subscription has its fence,
// it has every probe it will ever get: the set must be exactly the wanted
// one.
func testPatterns(e *env) {
	b := e.bus("patterns")
	recs := make([]*recorder, len(patternCases))
	for i, pc := range patternCases {
		recs[i] = newRecorder()
		e.subscribe(b, pc.pattern, recs[i].handle)
	}
	e.start(b)
	const key = "patterns"
	var probes []eventbus.Event
	for _, n := range patternNames {
		probes = append(probes, e.event(n, nil, eventbus.WithPartitionKey(key)))
	}
	e.publish(b, probes...)
	fences := make([]eventbus.Event, len(patternCases))
	for i, pc := range patternCases {
		fences[i] = e.event(pc.want[0], nil, eventbus.WithPartitionKey(key), eventbus.WithMetadata("fence", pc.pattern))
	}
	e.publish(b, fences...)
	for i, pc := range patternCases {
		e.waitFor("fence of "+pc.pattern, func() bool { return recs[i].has(fences[i].ID) },
			func() string { return fmt.Sprintf("received %v", recs[i].names()) })
		var got []string
		for _, ev := range recs[i].snapshot() {
			if ev.Metadata["fence"] == "" {
				got = append(got, ev.Name)
			}
		}
		want := slices.Clone(pc.want)
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			e.t.Errorf("pattern %q received %v, want %v", pc.pattern, got, want)
		}
	}
}

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

// testCompetingConsumers: two instances of one service share a
// subscription: each event is handled once, and both instances get work.
func testCompetingConsumers(e *env) {
	i1, i2, pub := e.bus("cc"), e.bus("cc"), e.bus("cc-pub")
	var mu sync.Mutex
	seen := map[string]int{}
	var n1, n2 atomic.Int32
	handler := func(n *atomic.Int32) eventbus.Handler {
		return func(ctx context.Context, ev eventbus.Event) error {
			n.Add(1)
			mu.Lock()
			seen[ev.ID]++
			mu.Unlock()
			// Hold the slot briefly so the other instance is offered work.
			time.Sleep(time.Millisecond)
			return nil
		}
	}
	e.subscribe(i1, "job.#", handler(&n1), eventbus.SubscriptionName("workers"))
	e.subscribe(i2, "job.#", handler(&n2), eventbus.SubscriptionName("workers"))
	e.start(i1)
	e.start(i2)
	const total = 200
	var evs []eventbus.Event
	for i := range total {
		evs = append(evs, e.event("job.run", nil, eventbus.WithPartitionKey(fmt.Sprint(i))))
	}
	e.publish(pub, evs...)
	e.waitFor("all jobs handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == total
	}, func() string {
		return fmt.Sprintf("instance 1 handled %d, instance 2 handled %d", n1.Load(), n2.Load())
	})
	if n1.Load() == 0 || n2.Load() == 0 {
		e.t.Errorf("work was not shared: instance 1 handled %d, instance 2 handled %d", n1.Load(), n2.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	for id, n := range seen {
		if n != 1 {
			e.t.Errorf("event %s handled %d times by the group, want once", id, n)
		}
	}
}

// testRedeliveryAfterError: a handler that fails once gets the event again
// and its success acknowledges it.
func testRedeliveryAfterError(e *env) {
	b := e.bus("redeliver")
	var calls atomic.Int32
	done := make(chan struct{})
	e.subscribe(b, "flaky.op", func(ctx context.Context, ev eventbus.Event) error {
		if calls.Add(1) == 1 {
			return errors.New("transient failure")
		}
		close(done)
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

// testRedeliveryAfterNack: at the transport level, a nacked message comes
// back (the bus's retries hide this path, so it is tested directly).
func testRedeliveryAfterNack(e *env) {
	svc := e.service("nack")
	tr := e.transport(svc)
	defer tr.Close()
	sub, err := tr.NewSubscriber(subscriberConfig(svc, "nacks", "nack.#", 1))
	if err != nil {
		e.t.Fatal(err)
	}
	ch, err := sub.Subscribe(e.ctx(), "nack.#")
	if err != nil {
		e.t.Fatal(err)
	}
	ev := e.event("nack.me", nil)
	e.publish(e.bus("nack-pub"), ev)
	receive := func(what string) *message.Message {
		select {
		case m := <-ch:
			if m.UUID != ev.ID {
				e.t.Fatalf("%s: got %s, want %s", what, m.UUID, ev.ID)
			}
			return m
		case <-time.After(e.timeout):
			e.t.Fatalf("%s: nothing received", what)
		}
		return nil
	}
	receive("first delivery").Nack()
	receive("delivery after nack").Ack()
	if err := sub.Close(); err != nil {
		e.t.Errorf("closing subscriber: %v", err)
	}
}

// testRedeliveryAfterCrash: a consumer that received an event and went
// away without acknowledging it (its transport closed) does not lose it:
// the next instance of the subscription gets it.
func testRedeliveryAfterCrash(e *env) {
	svc := e.service("crash")
	tr := e.transport(svc)
	sub, err := tr.NewSubscriber(subscriberConfig(svc, "crashy", "crash.test", 1))
	if err != nil {
		e.t.Fatal(err)
	}
	ch, err := sub.Subscribe(e.ctx(), "crash.test")
	if err != nil {
		e.t.Fatal(err)
	}
	pub := e.bus("crash-pub")
	ev := e.event("crash.test", nil)
	e.publish(pub, ev)
	select {
	case m := <-ch:
		if m.UUID != ev.ID {
			e.t.Fatalf("crashing consumer got %s, want %s", m.UUID, ev.ID)
		}
	case <-time.After(e.timeout):
		e.t.Fatal("crashing consumer got nothing")
	}
	// Crash: no ack, no graceful close of the subscriber.
	if err := tr.Close(); err != nil {
		e.t.Logf("closing crashed transport: %v", err)
	}
	b := e.busWith(eventbus.Config{ServiceName: svc})
	r := newRecorder()
	e.subscribe(b, "crash.test", r.handle, eventbus.SubscriptionName("crashy"))
	e.start(b)
	e.waitFor("redelivery to the next instance", func() bool { return r.has(ev.ID) }, func() string { return "not redelivered" })
}

// testRestartMidStream: 1,000 events published while the only instance of
// a subscription closes and a new one starts: every event is handled at
// least once.
func testRestartMidStream(e *env) {
	const total = 1000
	pub := e.bus("restart-pub")
	r := newRecorder()
	first := e.bus("restart")
	e.subscribe(first, "stream.#", r.handle, eventbus.SubscriptionName("stream"), eventbus.Concurrency(4))
	e.start(first)

	ids := make([]string, 0, total)
	var evs []eventbus.Event
	for i := range total {
		ev := e.event("stream.item", map[string]int{"n": i})
		evs = append(evs, ev)
		ids = append(ids, ev.ID)
	}
	pubErr := make(chan error, 1)
	go func() {
		for i := 0; i < total; i += 50 {
			if err := pub.Publish(context.Background(), evs[i:i+50]...); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()
	e.waitFor("a third of the stream handled", func() bool { return r.distinct() >= total/3 }, func() string { return fmt.Sprintf("%d handled", r.distinct()) })
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	if err := first.Close(ctx); err != nil {
		e.t.Fatalf("closing the first instance: %v", err)
	}
	second := e.bus("restart")
	e.subscribe(second, "stream.#", r.handle, eventbus.SubscriptionName("stream"), eventbus.Concurrency(4))
	e.start(second)
	if err := <-pubErr; err != nil {
		e.t.Fatalf("publishing: %v", err)
	}
	e.waitFor("every event handled after the restart", func() bool { return r.distinct() == total }, func() string { return r.missing(ids) })
	if d := r.duplicates(); d > 0 {
		e.t.Logf("%d duplicate deliveries across the restart (at-least-once)", d)
	}
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

// testPublishAfterClose: Publish on a closed bus fails with ErrClosed.
func testPublishAfterClose(e *env) {
	b := e.bus("after-close")
	if err := b.Close(e.ctx()); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	err := b.Publish(e.ctx(), e.event("closed.bus", nil))
	if !errors.Is(err, eventbus.ErrClosed) {
		e.t.Errorf("Publish after Close: got %v, want ErrClosed", err)
	}
	if err := b.Subscribe("closed.bus", newRecorder().handle); !errors.Is(err, eventbus.ErrClosed) {
		e.t.Errorf("Subscribe after Close: got %v, want ErrClosed", err)
	}
}

// testCloseWaitsForHandlers: Close returns only after the handler in
// flight finished, and that handler's event is acknowledged, not lost.
func testCloseWaitsForHandlers(e *env) {
	b := e.bus("close-wait")
	started, release := make(chan struct{}), make(chan struct{})
	var finished atomic.Bool
	var ctxErr atomic.Value
	e.subscribe(b, "slow.job", func(ctx context.Context, ev eventbus.Event) error {
		close(started)
		<-release
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
	started := make(chan struct{})
	cancelled := make(chan struct{})
	e.subscribe(b, "stuck.job", func(ctx context.Context, ev eventbus.Event) error {
		close(started)
		<-ctx.Done()
		close(cancelled)
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

// testPublishContextCancelled: Publish with a cancelled ctx fails with the
// ctx's error.
func testPublishContextCancelled(e *env) {
	b, s := e.bus("cancel-pub"), e.bus("cancel-sub")
	e.subscribe(s, "cancel.test", newRecorder().handle)
	e.start(s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := b.Publish(ctx, e.event("cancel.test", nil))
	if !errors.Is(err, context.Canceled) {
		e.t.Errorf("Publish with a cancelled ctx: got %v, want context.Canceled", err)
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

// testUnroutable: an event no subscription matches is reported, unless the
// transport retains such events.
func testUnroutable(e *env) {
	if e.h.RetainsUnroutable {
		e.t.Skipf("%s keeps events no subscription matches", e.h.Name)
	}
	b := e.bus("unroutable")
	ev := e.event("nobody.listens", nil)
	err := b.Publish(e.ctx(), ev)
	var pe *eventbus.PublishError
	if !errors.Is(err, eventbus.ErrUnroutable) || !errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].ID != ev.ID {
		e.t.Errorf("Publish with no matching subscription: got %v, want a PublishError naming %s and wrapping ErrUnroutable", err, ev.ID)
	}
}

// testUndecodable: raw bytes without ce_ headers, published through the
// transport's own Watermill publisher, go to the poison queue as
// undecodable; the handler never sees them and the next event is handled.
func testUndecodable(e *env) {
	b := e.bus("undecodable")
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
