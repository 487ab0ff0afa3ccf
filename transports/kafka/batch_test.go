package kafka

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/paissive/go-eventbus/eventbus"
)

// TestMixedNamesKeepKeyOrder: one Publish of 200 events of one key with
// 20 different names is handed to the producer at once
// (driver.BatchPublisher) and handled in the order of the call, with the
// default mapping, which puts every name in one topic.
func TestMixedNamesKeepKeyOrder(t *testing.T) {
	t.Parallel()
	u := testURL(t, "partitions", "4")
	sub, pub := newBus(t, u, "mixed-sub"), newBus(t, u, "mixed-pub")
	var mu sync.Mutex
	var seqs []int
	if err := sub.Subscribe("mix.#", func(_ context.Context, ev eventbus.Event) error {
		mu.Lock()
		seqs = append(seqs, seqOf(t, ev))
		mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	const n = 200
	var evs []eventbus.Event
	for i := range n {
		ev, err := eventbus.NewEvent(fmt.Sprintf("mix.n%02d", i%20), map[string]int{"seq": i}, eventbus.WithPartitionKey("one-key"))
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	if err := pub.Publish(testCtx(t), evs...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every event handled", func() bool { mu.Lock(); defer mu.Unlock(); return len(seqs) >= n },
		func() string { mu.Lock(); defer mu.Unlock(); return fmt.Sprintf("%d of %d", len(seqs), n) })
	mu.Lock()
	defer mu.Unlock()
	for i, s := range seqs[:n] {
		if s != i {
			t.Fatalf("position %d holds event %d: the order of the call was not kept", i, s)
		}
	}
}
