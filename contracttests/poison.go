package contracttests

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// poisonRecord makes a message as the poison middleware stores it: its own
// record ID, the event's UUID and the subscription that failed it.
func poisonRecord(uuidStr, sub string) *message.Message {
	m := message.NewMessage(uuidStr, []byte(`{}`))
	m.Metadata.Set(driver.HeaderPoisonID, uuid.NewString())
	m.Metadata.Set(driver.HeaderPoisonSubscription, sub)
	m.Metadata.Set(driver.HeaderPoisonReason, "permanent")
	return m
}

func recordLabel(m *message.Message) string {
	return m.UUID + "@" + m.Metadata.Get(driver.HeaderPoisonSubscription)
}

// testPoisonQueueScan drives the transport's poison queue directly: Scan
// visits the records in the order they were added, in pages; it deletes
// exactly the records visit names (not other records of the same event);
// records added during a Scan are not visited by it; Purge empties the
// queue.
func testPoisonQueueScan(e *env) {
	ctx := e.ctx()
	tr := e.transport(e.service("pq"))
	pq, err := tr.PoisonQueue()
	if err != nil {
		e.t.Fatalf("PoisonQueue: %v", err)
	}
	add := func(m *message.Message) {
		e.t.Helper()
		m.SetContext(ctx)
		if err := pq.Add(ctx, m); err != nil {
			e.t.Fatalf("Add(%s): %v", recordLabel(m), err)
		}
	}
	scan := func(pageSize int, visit func([]*message.Message) ([]int, error)) []string {
		e.t.Helper()
		var seen []string
		err := pq.Scan(ctx, pageSize, func(page []*message.Message) ([]int, error) {
			if len(page) == 0 || len(page) > pageSize {
				e.t.Errorf("Scan gave a page of %d records, want 1 to %d", len(page), pageSize)
			}
			for _, m := range page {
				seen = append(seen, recordLabel(m))
			}
			if visit == nil {
				return nil, nil
			}
			return visit(page)
		})
		if err != nil {
			e.t.Fatalf("Scan: %v", err)
		}
		return seen
	}
	list := func() string { return strings.Join(scan(100, nil), " ") }

	// The same event poisoned by two subscriptions, and twice by one, is
	// three records.
	a1, b1, c1, a2, a1again := poisonRecord("a", "s1"), poisonRecord("b", "s1"), poisonRecord("c", "s1"), poisonRecord("a", "s2"), poisonRecord("a", "s1")
	for _, m := range []*message.Message{a1, b1, c1, a2, a1again} {
		add(m)
	}
	want := "a@s1 b@s1 c@s1 a@s2 a@s1"
	for range 2 { // listing removes nothing
		if got := list(); got != want {
			e.t.Fatalf("records: %q, want %q", got, want)
		}
	}

	// Delete the first record of a@s1 only, from a scan in pages of two
	// during which a record is added: that one is not visited.
	var late *message.Message
	seen := scan(2, func(page []*message.Message) ([]int, error) {
		if late == nil {
			late = poisonRecord("d", "s1")
			add(late)
		}
		for i, m := range page {
			if m.Metadata.Get(driver.HeaderPoisonID) == a1.Metadata.Get(driver.HeaderPoisonID) {
				return []int{i}, nil
			}
		}
		return nil, nil
	})
	if got := strings.Join(seen, " "); got != want {
		e.t.Errorf("a scan visited %q, want %q (the record added during it must not be visited)", got, want)
	}
	if got, want := list(), "b@s1 c@s1 a@s2 a@s1 d@s1"; got != want {
		e.t.Errorf("after deleting one record of a@s1: %q, want %q", got, want)
	}

	// An error from visit stops the scan after deleting what it named.
	stop := errors.New("stop here")
	err = pq.Scan(ctx, 1, func(page []*message.Message) ([]int, error) { return []int{0}, stop })
	if !errors.Is(err, stop) {
		e.t.Errorf("Scan returned %v, want visit's error", err)
	}
	if got, want := list(), "c@s1 a@s2 a@s1 d@s1"; got != want {
		e.t.Errorf("after a scan stopped by an error: %q, want %q", got, want)
	}

	if err := pq.Purge(ctx); err != nil {
		e.t.Fatalf("Purge: %v", err)
	}
	if got := list(); got != "" {
		e.t.Errorf("after Purge: %q, want empty", got)
	}
}

// testReplayIntoFailingHandler replays poisoned events into a handler that
// still fails: each is poisoned again as a new record, and the replay must
// not delete those new records (it deletes only the copies it sent). Every
// event ends up back in the poison queue, once.
func testReplayIntoFailingHandler(e *env) {
	const n = 60
	b := e.bus("refail")
	var calls atomic.Int32
	e.subscribe(b, "refail.#", func(context.Context, eventbus.Event) error {
		calls.Add(1)
		return eventbus.Permanent(errors.New("still broken"))
	}, eventbus.Concurrency(4))
	e.start(b)
	evs := make([]eventbus.Event, n)
	for i := range evs {
		evs[i] = e.event(fmt.Sprintf("refail.e%d", i%3), map[string]int{"i": i})
	}
	e.publish(b, evs...)
	first := e.waitPoisonedAll(b, evs)

	replayed, err := b.Replay(e.ctx(), eventbus.PoisonFilter{})
	if err != nil || replayed != n {
		e.t.Fatalf("Replay: %d, %v; want %d, nil", replayed, err, n)
	}
	second := e.waitPoisonedAll(b, evs)
	for id, rec := range second {
		if rec == first[id] {
			e.t.Errorf("event %s: the record after the replay is the one before it (%s); want a new record", id, rec)
		}
	}
	// A fence: once it is poisoned, every replayed event had its turn.
	fence := e.event("refail.fence", nil)
	e.publish(b, fence)
	e.waitPoisoned(b, fence.ID)
	ps, err := b.Poisoned(e.ctx(), eventbus.PoisonFilter{})
	if err != nil {
		e.t.Fatal(err)
	}
	count := map[string]int{}
	for _, p := range ps {
		count[p.Event.ID]++
	}
	for _, ev := range evs {
		if count[ev.ID] != 1 {
			e.t.Errorf("event %s is in the poison queue %d times, want once", ev.ID, count[ev.ID])
		}
	}
	if c := calls.Load(); c < 2*n+1 {
		e.t.Errorf("handler called %d times, want at least %d (each event before and after the replay, and the fence)", c, 2*n+1)
	}
}

// waitPoisonedAll waits until every event is in the poison queue and
// returns each one's record ID.
func (e *env) waitPoisonedAll(b *eventbus.Bus, evs []eventbus.Event) map[string]string {
	e.t.Helper()
	recs := map[string]string{}
	e.waitFor(fmt.Sprintf("all %d events in the poison queue", len(evs)), func() bool {
		ps, err := b.Poisoned(e.ctx(), eventbus.PoisonFilter{})
		if err != nil {
			e.t.Fatalf("Poisoned: %v", err)
		}
		clear(recs)
		for _, p := range ps {
			recs[p.Event.ID] = p.RecordID
		}
		for _, ev := range evs {
			if _, ok := recs[ev.ID]; !ok {
				return false
			}
		}
		return true
	}, func() string {
		missing := 0
		for _, ev := range evs {
			if _, ok := recs[ev.ID]; !ok {
				missing++
			}
		}
		return fmt.Sprintf("%d of %d missing", missing, len(evs))
	})
	return maps.Clone(recs)
}

// testOversizedEventFailsAlone publishes, in one call between two ordinary
// events, an event with a 200 KiB metadata value (over RabbitMQ's default
// frame size for headers) and one with an 8 MiB payload (over Kafka's
// default record size): a transport either carries each intact, or fails
// exactly that event with an error wrapping ErrTooLarge. The other events
// are delivered, and the bus goes on working (one bad event never harms
// the others).
func testOversizedEventFailsAlone(e *env) {
	b := e.bus("oversized")
	r := newRecorder()
	e.subscribe(b, "big.#", r.handle)
	e.start(b)
	bigMeta := e.event("big.meta", nil, eventbus.WithMetadata("blob", strings.Repeat("m", 200<<10)))
	bigBody := e.event("big.body", []byte(`"`+strings.Repeat("b", 8<<20)+`"`))
	before, after := e.event("big.before", nil), e.event("big.after", nil)
	err := b.Publish(e.ctx(), before, bigMeta, bigBody, after)
	failed := map[string]error{}
	var pe *eventbus.PublishError
	switch {
	case err == nil:
	case errors.As(err, &pe):
		for _, f := range pe.Failed {
			failed[f.ID] = f.Err
		}
	default:
		e.t.Fatalf("Publish: %v; want nil or a *PublishError naming only the oversized events", err)
	}
	for id, ferr := range failed {
		if id != bigMeta.ID && id != bigBody.ID {
			e.t.Errorf("event %s failed although it is small: %v", id, ferr)
		} else if !errors.Is(ferr, eventbus.ErrTooLarge) {
			e.t.Errorf("oversized event %s failed with %v; want an error wrapping ErrTooLarge that names the limit", id, ferr)
		}
	}
	next := e.event("big.next", nil)
	e.publish(b, next)
	want := []eventbus.Event{before, after, next}
	for _, ev := range []eventbus.Event{bigMeta, bigBody} {
		if failed[ev.ID] == nil {
			want = append(want, ev)
		}
	}
	e.waitFor("the events that were accepted", func() bool {
		for _, ev := range want {
			if !r.has(ev.ID) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("got %v", r.names()) })
	for _, got := range r.snapshot() {
		switch got.ID {
		case bigMeta.ID:
			if got.Metadata["blob"] != bigMeta.Metadata["blob"] {
				e.t.Errorf("the 200 KiB metadata value arrived as %d bytes", len(got.Metadata["blob"]))
			}
		case bigBody.ID:
			if len(got.Data) != len(bigBody.Data) {
				e.t.Errorf("the 8 MiB payload arrived as %d bytes", len(got.Data))
			}
		}
	}
	e.t.Logf("rejected as too large: %d of 2", len(failed))
}

// testLongErrorPoisonedOnce: a handler error of 300 KiB does not make the
// poison record too large to store: the event is poisoned exactly once,
// with the error cut and its full length recorded, and the handler is not
// called again.
func testLongErrorPoisonedOnce(e *env) {
	b := e.bus("long-error")
	var calls sync.Map
	e.subscribe(b, "long.#", func(_ context.Context, ev eventbus.Event) error {
		n, _ := calls.LoadOrStore(ev.ID, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if ev.Name == "long.fence" {
			return nil
		}
		return eventbus.Permanent(errors.New(strings.Repeat("x", 300<<10)))
	})
	e.start(b)
	ev := e.event("long.error", nil)
	e.publish(b, ev)
	p := e.waitPoisoned(b, ev.ID)
	if p.ErrorLength != 300<<10 || len(p.Error) >= p.ErrorLength || len(p.Error) == 0 {
		e.t.Errorf("poison record: error of %d bytes, full length %d; want it cut, with the full length 307200", len(p.Error), p.ErrorLength)
	}
	fence := e.event("long.fence", nil)
	e.publish(b, fence)
	e.waitFor("the fence", func() bool { _, ok := calls.Load(fence.ID); return ok }, func() string { return "not handled" })
	if n, _ := calls.Load(ev.ID); n.(*atomic.Int32).Load() != 1 {
		e.t.Errorf("handler called %d times for a permanent failure, want 1", n.(*atomic.Int32).Load())
	}
	ps, err := b.Poisoned(e.ctx(), eventbus.PoisonFilter{IDs: []string{ev.ID}})
	if err != nil || len(ps) != 1 {
		e.t.Errorf("poison queue holds the event %d times (%v), want once", len(ps), err)
	}
}
