package nats

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestMixedNamesKeepOrder: one Publish of events with 20 different names
// goes to the stream in one batch (driver.BatchPublisher), each on its
// name's subject, and a subscription at concurrency 1 handles them in the
// order of the call.
func TestMixedNamesKeepOrder(t *testing.T) {
	url := isolatedURL(t)
	sub, pub := transporttest.NewBus(t, url, unique("mixed-sub-")), transporttest.NewBus(t, url, unique("mixed-pub-"))
	var mu sync.Mutex
	var names []string
	if err := sub.Subscribe("mix.#", func(_ context.Context, ev eventbus.Event) error {
		mu.Lock()
		names = append(names, ev.Name)
		mu.Unlock()
		return nil
	}, eventbus.Concurrency(1)); err != nil {
		t.Fatal(err)
	}
	odd := transporttest.NewCounter()
	if err := sub.Subscribe("mix.n01", odd.Handle, eventbus.SubscriptionName("one-name")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sub.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 200
	var evs []eventbus.Event
	var want []string
	for i := range n {
		ev := mustEvent(t, fmt.Sprintf("mix.n%02d", i%20), map[string]int{"seq": i})
		evs = append(evs, ev)
		want = append(want, ev.Name)
	}
	if err := pub.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 30*time.Second, "every event handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(names) >= n
	}, func() string { mu.Lock(); defer mu.Unlock(); return fmt.Sprintf("%d of %d", len(names), n) })
	mu.Lock()
	defer mu.Unlock()
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("position %d holds %s, want %s: the order of the call was not kept", i, names[i], want[i])
		}
	}
	// Each event went to its own name's subject: the subscription to
	// one name gets its 10 events and no other.
	transporttest.WaitFor(t, 30*time.Second, "mix.n01's events", func() bool { return odd.Distinct() >= n/20 }, func() string { return fmt.Sprint(odd.Distinct()) })
	for i, ev := range evs {
		if got := odd.Has(ev.ID); got != (i%20 == 1) {
			t.Errorf("event %d (%s) reached the mix.n01 subscription: %v", i, ev.Name, got)
		}
	}
}
