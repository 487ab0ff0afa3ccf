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

// needPoisonQueue returns tr's poison queue, or skips the test when the
// transport has none (PoisonQueue returns an error wrapping
// ErrUnsupported).
func (e *env) needPoisonQueue(tr driver.Transport) driver.PoisonQueue {
	e.t.Helper()
	pq, err := tr.PoisonQueue()
	if errors.Is(err, driver.ErrUnsupported) {
		e.t.Skipf("%s has no poison queue: %v", e.h.Name, err)
	}
	if err != nil {
		e.t.Fatalf("PoisonQueue: %v", err)
	}
	return pq
}

// testPoisonRecordTooLarge adds poison records over a broker's limits (a
// 200 KiB header, over RabbitMQ's frame size; an 8 MiB body, over Kafka's
// record size with the poison topic's headroom) between ordinary ones:
// each is either stored intact or fails alone with an error wrapping
// ErrTooLarge, so that the bus can store a reduced record instead.
func testPoisonRecordTooLarge(e *env) {
	ctx := e.ctx()
	pq := e.needPoisonQueue(e.transport(e.service("pq-large")))
	bigMeta := poisonRecord("big-meta", "s")
	bigMeta.Metadata.Set(driver.MetadataPrefix+"blob", strings.Repeat("m", 200<<10))
	bigBody := poisonRecord("big-body", "s")
	bigBody.Payload = []byte(`"` + strings.Repeat("b", 8<<20) + `"`)
	before, after := poisonRecord("before", "s"), poisonRecord("after", "s")
	stored := map[string]*message.Message{}
	for _, m := range []*message.Message{before, bigMeta, bigBody, after} {
		m.SetContext(ctx)
		err := pq.Add(ctx, m)
		switch {
		case err == nil:
			stored[m.Metadata.Get(driver.HeaderPoisonID)] = m
		case m == before || m == after:
			e.t.Fatalf("Add of a small record after an oversized one: %v", err)
		case errors.Is(err, driver.ErrTooLarge):
			e.t.Logf("record %s refused as too large: %v", m.UUID, err)
		default:
			e.t.Errorf("Add of record %s: %v; want nil or an error wrapping ErrTooLarge that names the limit", m.UUID, err)
		}
	}
	seen := map[string]bool{}
	err := pq.Scan(ctx, 2, func(page []*message.Message) ([]int, error) {
		for _, m := range page {
			id := m.Metadata.Get(driver.HeaderPoisonID)
			want := stored[id]
			if want == nil {
				continue
			}
			seen[id] = true
			if len(m.Payload) != len(want.Payload) || m.Metadata.Get(driver.MetadataPrefix+"blob") != want.Metadata.Get(driver.MetadataPrefix+"blob") {
				e.t.Errorf("record %s came back with a %d-byte body and a %d-byte blob header, want %d and %d", m.UUID, len(m.Payload), len(m.Metadata.Get(driver.MetadataPrefix+"blob")), len(want.Payload), len(want.Metadata.Get(driver.MetadataPrefix+"blob")))
			}
		}
		return nil, nil
	})
	if err != nil {
		e.t.Fatalf("Scan: %v", err)
	}
	for id, m := range stored {
		if !seen[id] {
			e.t.Errorf("record %s was stored (Add returned nil) but Scan does not visit it", m.UUID)
		}
	}
}

// testPoisonQueueScan drives the transport's poison queue directly: Scan
// visits the records in the order they were added, in pages; it deletes
// exactly the records visit names (not other records of the same event),
// the last one read included; records added during a Scan are not visited
// by it; Purge empties the queue.
func testPoisonQueueScan(e *env) {
	ctx := e.ctx()
	pq := e.needPoisonQueue(e.transport(e.service("pq")))
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
	err := pq.Scan(ctx, 1, func(page []*message.Message) ([]int, error) { return []int{0}, stop })
	if !errors.Is(err, stop) {
		e.t.Errorf("Scan returned %v, want visit's error", err)
	}
	if got, want := list(), "c@s1 a@s2 a@s1 d@s1"; got != want {
		e.t.Errorf("after a scan stopped by an error: %q, want %q", got, want)
	}

	// Deleting the last record a scan reads keeps the ones before it.
	scan(100, func(page []*message.Message) ([]int, error) { return []int{len(page) - 1}, nil })
	if got, want := list(), "c@s1 a@s2 a@s1"; got != want {
		e.t.Errorf("after deleting the last record: %q, want %q", got, want)
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
// not delete those new records (it deletes only the records it sent).
func testReplayIntoFailingHandler(e *env) {
	const n = 60
	b := e.bus("refail")
	e.needPoisonQueue(b.Transport())
	var mu sync.Mutex
	calls := map[string]int{}
	e.subscribe(b, "refail.#", func(_ context.Context, ev eventbus.Event) error {
		mu.Lock()
		calls[ev.ID]++
		mu.Unlock()
		return eventbus.Permanent(errors.New("still broken"))
	}, eventbus.Concurrency(4))
	e.start(b)
	evs := make([]eventbus.Event, n)
	for i := range evs {
		evs[i] = e.event(fmt.Sprintf("refail.e%d", i%3), map[string]int{"i": i})
	}
	e.publish(b, evs...)
	e.waitPoisonedAll(b, evs)
	before := map[string]bool{}
	for _, p := range e.poisonRecords(b) {
		before[p.RecordID] = true
	}

	replayed, err := b.Replay(e.ctx(), eventbus.PoisonFilter{})
	if err != nil || replayed < len(before) {
		e.t.Fatalf("Replay: %d, %v; want at least the %d records stored before it, nil", replayed, err, len(before))
	}
	// Each delivery of an event (the first, the replayed copy, and any
	// redelivery at-least-once allows) adds one record, and the replay
	// removed exactly the records it sent: so, once the replayed copies
	// have failed again, the queue holds (calls - replayed) records, every
	// event has a record the replay did not send, and none of those it
	// sent is left. A replay that deleted the records its copies made, or
	// more than it sent, never gets there.
	var state string
	e.waitFor("every replayed event poisoned again, as a new record", func() bool {
		ps := e.poisonRecords(b)
		fresh := map[string]bool{}
		stale := 0
		for _, p := range ps {
			if before[p.RecordID] {
				stale++
			} else {
				fresh[p.Event.ID] = true
			}
		}
		mu.Lock()
		total := 0
		for _, c := range calls {
			total += c
		}
		mu.Unlock()
		missing := 0
		for _, ev := range evs {
			if !fresh[ev.ID] {
				missing++
			}
		}
		state = fmt.Sprintf("%d records (%d of them sent by the replay), %d handler calls, %d replayed, %d events without a new record", len(ps), stale, total, replayed, missing)
		return stale == 0 && missing == 0 && len(ps) == total-replayed
	}, func() string { return state })
	e.t.Logf("at the end: %s", state)
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
// poison record too large to store: the event is poisoned once per
// delivery, with the error cut and its full length recorded, and the
// handler is not called again for it.
func testLongErrorPoisonedOnce(e *env) {
	b := e.bus("long-error")
	e.needPoisonQueue(b.Transport())
	var calls atomic.Int32
	e.subscribe(b, "long.#", func(_ context.Context, ev eventbus.Event) error {
		calls.Add(1)
		return eventbus.Permanent(errors.New(strings.Repeat("x", 300<<10)))
	})
	e.start(b)
	ev := e.event("long.error", nil)
	e.publish(b, ev)
	p := e.waitPoisoned(b, ev.ID)
	if p.ErrorLength != 300<<10 || len(p.Error) >= p.ErrorLength || len(p.Error) == 0 {
		e.t.Errorf("poison record: error of %d bytes, full length %d; want it cut, with the full length 307200", len(p.Error), p.ErrorLength)
	}
	// One call and one record per delivery: a record too large to store
	// would leave the event unacknowledged, to be handled again and again
	// with no record.
	e.waitCallsPerRecord(b, ev.ID, &calls, 1)
}
