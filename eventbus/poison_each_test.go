package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
)

// TestPoisonFilterEach: Poisoned streams through Each and returns no
// slice; Replay and PurgePoison report each event once its record is
// removed, a page at a time; an error from Each stops Replay before the
// next page, with the page in flight replayed and removed (so nothing is
// replayed twice by the next Replay).
func TestPoisonFilterEach(t *testing.T) {
	b := newMemBus(t, "each")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var failing atomic.Bool
	failing.Store(true)
	var mu sync.Mutex
	handled := map[string]int{}
	err := b.Subscribe("item.#", func(_ context.Context, ev eventbus.Event) error {
		if failing.Load() {
			return eventbus.Permanent(errors.New("not yet"))
		}
		mu.Lock()
		handled[ev.ID]++
		mu.Unlock()
		return nil
	}, eventbus.Concurrency(8))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const total = 1200 // pages of 500, 500 and 200
	evs := make([]eventbus.Event, total)
	for i := range evs {
		evs[i], _ = eventbus.NewEvent(fmt.Sprintf("item.n%d", i), nil)
	}
	if err := b.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		n := 0
		if _, err := b.Poisoned(ctx, eventbus.PoisonFilter{Each: func(eventbus.PoisonedEvent) error { n++; return nil }}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadline := time.Now().Add(20 * time.Second)
	for count() < total {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events poisoned", count(), total)
		}
		time.Sleep(10 * time.Millisecond)
	}
	list, err := b.Poisoned(ctx, eventbus.PoisonFilter{Each: func(eventbus.PoisonedEvent) error { return nil }})
	if err != nil || list != nil {
		t.Fatalf("Poisoned with Each returned %d events, %v; want none (streamed)", len(list), err)
	}

	failing.Store(false)
	stop := errors.New("interrupted")
	var reported []string
	n, err := b.Replay(ctx, eventbus.PoisonFilter{Each: func(p eventbus.PoisonedEvent) error {
		reported = append(reported, p.Event.ID)
		if len(reported) == 1 {
			return stop // an interrupt as the first page is reported
		}
		return nil
	}})
	if !errors.Is(err, stop) {
		t.Fatalf("Replay stopped by Each: error %v, want it to wrap Each's", err)
	}
	if n != 500 || len(reported) != 1 {
		t.Fatalf("Replay stopped by Each replayed %d events and reported %d; want the first page (500) replayed, 1 reported", n, len(reported))
	}
	if got := count(); got != total-500 {
		t.Fatalf("after the interrupted Replay %d records are left, want %d: the page in flight must be removed", got, total-500)
	}

	var purged int
	m, err := b.PurgePoison(ctx, eventbus.PoisonFilter{Name: "#", Each: func(eventbus.PoisonedEvent) error { purged++; return nil }})
	if err != nil || m != total-500 || purged != m {
		t.Fatalf("PurgePoison: %d purged, Each called %d times, error %v; want %d", m, purged, err, total-500)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		got, dup := len(handled), 0
		for _, c := range handled {
			if c > 1 {
				dup++
			}
		}
		mu.Unlock()
		if dup > 0 {
			t.Fatalf("%d replayed events handled more than once", dup)
		}
		if got == 500 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the 500 replayed events handled", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
