package contracttests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// poisonRecords returns the service's poison records, failing the test on
// an error.
func (e *env) poisonRecords(b *eventbus.Bus) []eventbus.PoisonedEvent {
	e.t.Helper()
	ps, err := b.Poisoned(e.ctx(), eventbus.PoisonFilter{})
	if err != nil {
		e.t.Fatalf("Poisoned: %v", err)
	}
	return ps
}

// recordsOf counts the records of event id.
func recordsOf(ps []eventbus.PoisonedEvent, id string) int {
	n := 0
	for _, p := range ps {
		if p.Event.ID == id {
			n++
		}
	}
	return n
}

// waitCallsPerRecord waits until the handler was called exactly perRecord
// times for each record of event id in the poison queue: every delivery
// (the first, and any redelivery at-least-once allows) ends in one record
// after perRecord calls, so a record missing, or calls beyond the policy,
// fail here.
func (e *env) waitCallsPerRecord(b *eventbus.Bus, id string, calls *atomic.Int32, perRecord int) {
	e.t.Helper()
	var recs int
	e.waitFor(fmt.Sprintf("%d handler call(s) per poison record of %s", perRecord, id), func() bool {
		recs = recordsOf(e.poisonRecords(b), id)
		return recs > 0 && int(calls.Load()) == perRecord*recs
	}, func() string {
		return fmt.Sprintf("handler called %d times, %d record(s)", calls.Load(), recs)
	})
}

// countingHandler counts its calls and returns err on each.
func countingHandler(calls *atomic.Int32, err error) eventbus.Handler {
	return func(context.Context, eventbus.Event) error {
		calls.Add(1)
		return err
	}
}

// testRetriesThenPoison: a handler that always fails is called exactly
// MaxAttempts times, then the event is in the poison queue with the
// failure headers. Poison inside retry would call it once. (A redelivery
// of the poisoned event, which at-least-once allows, is another
// MaxAttempts calls and another record.)
func testRetriesThenPoison(e *env) {
	b := e.bus("exhaust")
	e.needPoisonQueue(b.Transport())
	var calls atomic.Int32
	e.subscribe(b, "always.fails", countingHandler(&calls, errors.New("database is down")), eventbus.SubscriptionName("failing-sub"))
	e.start(b)
	ev := e.event("always.fails", nil)
	before := time.Now().Add(-time.Second)
	e.publish(b, ev)
	p := e.waitPoisoned(b, ev.ID)
	e.waitCallsPerRecord(b, ev.ID, &calls, fastPolicy.MaxAttempts)
	if p.Reason != "retries-exhausted" || p.Attempts != fastPolicy.MaxAttempts || p.Subscription != "failing-sub" ||
		p.Pattern != "always.fails" || !strings.Contains(p.Error, "database is down") ||
		p.Headers[driver.HeaderPoisonService] != e.service("exhaust") {
		e.t.Errorf("poison record: reason %q attempts %d subscription %q pattern %q error %q service %q",
			p.Reason, p.Attempts, p.Subscription, p.Pattern, p.Error, p.Headers[driver.HeaderPoisonService])
	}
	if p.FirstFailure.Before(before) || p.LastFailure.Before(p.FirstFailure) {
		e.t.Errorf("failure times: first %v, last %v", p.FirstFailure, p.LastFailure)
	}
	if p.Event.ID != ev.ID || p.Event.Name != ev.Name || string(p.Event.Data) != string(ev.Data) {
		e.t.Errorf("poisoned event lost its envelope: %+v", p.Event)
	}
}

// testPermanentError: a permanent error goes to poison after one call.
func testPermanentError(e *env) {
	b := e.bus("permanent")
	e.needPoisonQueue(b.Transport())
	var calls atomic.Int32
	e.subscribe(b, "bad.input", countingHandler(&calls, eventbus.Permanent(errors.New("malformed order"))))
	e.start(b)
	ev := e.event("bad.input", nil)
	e.publish(b, ev)
	p := e.waitPoisoned(b, ev.ID)
	e.waitCallsPerRecord(b, ev.ID, &calls, 1)
	if p.Reason != "permanent" || p.Attempts != 1 {
		e.t.Errorf("poison record: reason %q attempts %d, want permanent after 1", p.Reason, p.Attempts)
	}
}

// testPanic: a panicking handler's event goes to poison with the stack;
// the consumer keeps handling the next event.
func testPanic(e *env) {
	b := e.bus("panic")
	e.needPoisonQueue(b.Transport())
	r := newRecorder()
	e.subscribe(b, "panic.#", func(ctx context.Context, ev eventbus.Event) error {
		if ev.Name == "panic.now" {
			panic("handler exploded")
		}
		return r.handle(ctx, ev)
	})
	e.start(b)
	bad := e.event("panic.now", nil)
	e.publish(b, bad)
	p := e.waitPoisoned(b, bad.ID)
	if p.Reason != "panic" || !strings.Contains(p.Error, "handler exploded") || !strings.Contains(p.Error, "goroutine") {
		e.t.Errorf("poison record of a panic: reason %q, error %q; want reason panic and the stack", p.Reason, p.Error)
	}
	next := e.event("panic.after", nil)
	e.publish(b, next)
	e.waitFor("the event after a panic", func() bool { return r.has(next.ID) }, func() string { return "consumer stopped" })
}

// testReplay: an event poisoned by one subscription is replayed to it,
// keeps its ID and correlation, is handled once the handler is fixed, and
// its records are removed.
func testReplay(e *env) {
	b := e.bus("replay")
	e.needPoisonQueue(b.Transport())
	var fixed atomic.Bool
	failing, healthy := newRecorder(), newRecorder()
	e.subscribe(b, "invoice.#", func(ctx context.Context, ev eventbus.Event) error {
		if !fixed.Load() {
			return errors.New("bug in handler")
		}
		return failing.handle(ctx, ev)
	}, eventbus.SubscriptionName("fragile"))
	e.subscribe(b, "invoice.#", healthy.handle, eventbus.SubscriptionName("healthy"))
	e.start(b)
	ev := e.event("invoice.created", nil, eventbus.WithCorrelationID("corr-replay"))
	e.publish(b, ev)
	e.waitPoisoned(b, ev.ID)
	e.waitFor("healthy subscription", func() bool { return healthy.has(ev.ID) }, func() string { return "not delivered" })

	fixed.Store(true)
	before := e.poisonRecords(b)
	n, err := b.Replay(e.ctx(), eventbus.PoisonFilter{IDs: []string{ev.ID}})
	if k := recordsOf(before, ev.ID); err != nil || n < k {
		e.t.Fatalf("Replay: %d, %v; want at least the %d record(s) of the event, nil", n, err, k)
	}
	e.waitFor("replayed event handled", func() bool { return failing.has(ev.ID) }, func() string { return "not replayed" })
	got := failing.snapshot()[0]
	if got.CorrelationID != "corr-replay" || got.ID != ev.ID {
		e.t.Errorf("replayed event: id %s correlation %q; want %s, corr-replay", got.ID, got.CorrelationID, ev.ID)
	}
	// The records the replay sent are gone (a redelivery poisoned before
	// the handler was fixed may have added one after the replay started).
	after := map[string]bool{}
	for _, p := range e.poisonRecords(b) {
		after[p.RecordID] = true
	}
	for _, p := range before {
		if p.Event.ID == ev.ID && after[p.RecordID] {
			e.t.Errorf("record %s of the replayed event is still in the poison queue", p.RecordID)
		}
	}
	// That a replay reaches only the failing subscription is checked on
	// the transport (RedeliverReachesOneGroup): here the healthy
	// subscription may see a redelivery of the original event.
	e.t.Logf("the healthy subscription handled the event %d time(s)", healthy.times(ev.ID))
}

// testPurge: PurgePoison with IDs removes those; without, everything.
func testPurge(e *env) {
	b := e.bus("purge")
	e.needPoisonQueue(b.Transport())
	e.subscribe(b, "junk.#", func(context.Context, eventbus.Event) error { return eventbus.Permanent(errors.New("junk")) })
	e.start(b)
	evs := []eventbus.Event{e.event("junk.a", nil), e.event("junk.b", nil), e.event("junk.c", nil)}
	e.publish(b, evs...)
	for _, ev := range evs {
		e.waitPoisoned(b, ev.ID)
	}
	// Records are compared by record ID: a redelivery of a poisoned event
	// (at least once) adds records at any time, which a purge that
	// started before them need not remove.
	listed := e.poisonRecords(b)
	n, err := b.PurgePoison(e.ctx(), eventbus.PoisonFilter{IDs: []string{evs[0].ID}})
	if k := recordsOf(listed, evs[0].ID); err != nil || n < k {
		e.t.Fatalf("PurgePoison(id): %d, %v; want at least the %d record(s) of the event", n, err, k)
	}
	left := map[string]bool{}
	for _, p := range e.poisonRecords(b) {
		left[p.RecordID] = true
	}
	for _, p := range listed {
		purged := p.Event.ID == evs[0].ID
		if purged && left[p.RecordID] {
			e.t.Errorf("record %s of purged event %s still listed", p.RecordID, evs[0].ID)
		}
		if !purged && !left[p.RecordID] {
			e.t.Errorf("record %s of event %s, which was not purged, is gone", p.RecordID, p.Event.ID)
		}
	}
	listed = e.poisonRecords(b)
	if _, err := b.PurgePoison(e.ctx(), eventbus.PoisonFilter{}); err != nil {
		e.t.Fatalf("PurgePoison(): %v", err)
	}
	clear(left)
	for _, p := range e.poisonRecords(b) {
		left[p.RecordID] = true
	}
	for _, p := range listed {
		if left[p.RecordID] {
			e.t.Errorf("record %s still listed after purging all", p.RecordID)
		}
	}
}

// testCorrelation: A handles an event and publishes another with its ctx;
// B's handler sees A's correlation ID and causation = the first event's ID.
func testCorrelation(e *env) {
	a, bb := e.bus("corr-a"), e.bus("corr-b")
	e.subscribe(a, "step.one", func(ctx context.Context, ev eventbus.Event) error {
		next, err := eventbus.NewEvent("step.two", map[string]string{"from": ev.ID}, eventbus.WithSource("corr-a"))
		if err != nil {
			return err
		}
		return a.Publish(ctx, next)
	})
	type seen struct{ corr, cause, ctxCorr string }
	got := make(chan seen, 1)
	e.subscribe(bb, "step.two", func(ctx context.Context, ev eventbus.Event) error {
		select { // a redelivery finds the channel full
		case got <- seen{ev.CorrelationID, ev.CausationID, eventbus.CorrelationID(ctx)}:
		default:
		}
		return nil
	})
	e.start(a)
	e.start(bb)
	first := e.event("step.one", nil, eventbus.WithCorrelationID("order-42"))
	e.publish(a, first)
	select {
	case s := <-got:
		if s.corr != "order-42" || s.cause != first.ID || s.ctxCorr != "order-42" {
			e.t.Errorf("second hop: correlation %q, causation %q, ctx correlation %q; want order-42, %s, order-42", s.corr, s.cause, s.ctxCorr, first.ID)
		}
	case <-time.After(e.timeout):
		e.t.Fatal("second hop never handled")
	}
	// Without a correlation ID an event is its own correlation.
	solo := make(chan string, 1)
	e.subscribe(bb, "step.solo", func(ctx context.Context, ev eventbus.Event) error {
		select {
		case solo <- ev.CorrelationID:
		default:
		}
		return nil
	})
	ev := e.event("step.solo", nil)
	e.publish(a, ev)
	select {
	case c := <-solo:
		if c != ev.ID {
			e.t.Errorf("event without correlation: got %q, want its own ID %s", c, ev.ID)
		}
	case <-time.After(e.timeout):
		e.t.Fatal("solo event never handled")
	}
}

// testIdempotency: with an idempotency window, a second delivery of a
// handled event does not run the handler again.
func testIdempotency(e *env) {
	b := e.busWith(eventbus.Config{ServiceName: e.service("idem"), Policy: eventbus.Policy{
		MaxAttempts: 3, InitialBackoff: 5 * time.Millisecond, IdempotencyWindow: time.Minute,
	}})
	r := newRecorder()
	e.subscribe(b, "pay.#", r.handle)
	e.start(b)
	ev := e.event("pay.charge", nil, eventbus.WithPartitionKey("k"))
	e.publish(b, ev)
	e.waitFor("first delivery", func() bool { return r.has(ev.ID) }, func() string { return "not delivered" })
	e.publish(b, ev) // the same event again, as a redelivery would bring it
	fence := e.event("pay.fence", nil, eventbus.WithPartitionKey("k"))
	e.publish(b, fence)
	e.waitFor("fence", func() bool { return r.has(fence.ID) }, func() string { return "not delivered" })
	if n := r.times(ev.ID); n != 1 {
		e.t.Errorf("handler ran %d times for one event delivered twice, want 1", n)
	}
}

// testRetryDelays: the delays between handler calls are the configured
// exponential backoff.
func testRetryDelays(e *env) {
	pol := eventbus.Policy{MaxAttempts: 4, InitialBackoff: 60 * time.Millisecond, Multiplier: 2, MaxBackoff: time.Second, Jitter: eventbus.NoJitter}
	b := e.busWith(eventbus.Config{ServiceName: e.service("delays"), Policy: pol})
	e.needPoisonQueue(b.Transport())
	var mu sync.Mutex
	var calls []time.Time
	e.subscribe(b, "slow.retry", func(context.Context, eventbus.Event) error {
		mu.Lock()
		calls = append(calls, time.Now())
		mu.Unlock()
		return errors.New("fail")
	})
	e.start(b)
	ev := e.event("slow.retry", nil)
	e.publish(b, ev)
	e.waitPoisoned(b, ev.ID)
	mu.Lock()
	defer mu.Unlock()
	// The first delivery's calls; a redelivery would start a new series.
	if len(calls) < pol.MaxAttempts {
		e.t.Fatalf("%d calls before the event was poisoned, want %d", len(calls), pol.MaxAttempts)
	}
	calls = calls[:pol.MaxAttempts]
	want := pol.InitialBackoff
	var gaps []string
	for i := 1; i < len(calls); i++ {
		gap := calls[i].Sub(calls[i-1])
		gaps = append(gaps, gap.Round(time.Millisecond).String())
		// Timers never fire early; the upper slack absorbs a busy machine.
		if gap < want*9/10 || gap > want+250*time.Millisecond {
			e.t.Errorf("delay before call %d: %v, want about %v", i+1, gap, want)
		}
		want *= 2
	}
	e.t.Logf("measured delays %s for configured %v doubling", strings.Join(gaps, ", "), pol.InitialBackoff)
}
