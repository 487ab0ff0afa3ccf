package transporttest

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

// Cut is how a transport's test cuts its buses from the broker (a
// loopback proxy in between) and sees them notice.
type Cut struct {
	// Cut breaks every connection and refuses new ones; Heal lets them
	// through again.
	Cut, Heal func()
	// Down reports that both buses noticed the cut; Up that both have
	// reconnected since.
	Down, Up func() bool
}

// CutMidStream publishes 10,000 events from pub while sub consumes them,
// cuts every connection in the middle, heals it, and checks the outcome:
// every event whose Publish returned nil is handled at least once, and
// every other event was reported failed by its Publish. sub and pub are
// buses of two services on the cut URL, not started.
func CutMidStream(t testing.TB, sub, pub *eventbus.Bus, c Cut) {
	t.Helper()
	const total, batchSize = 10000, 100
	handled := NewCounter()
	if err := sub.Subscribe("fault.#", handled.Handle, eventbus.Concurrency(16)); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	evs := make([]eventbus.Event, total)
	for i := range evs {
		ev, err := eventbus.NewEvent(fmt.Sprintf("fault.e%d", i%7), map[string]int{"n": i}, eventbus.WithSource("cut-tests"))
		if err != nil {
			t.Fatal(err)
		}
		evs[i] = ev
	}
	var mu sync.Mutex
	var ok, failed []string
	var otherErrs []error
	var published, inFlight atomic.Int64
	var nextBatch atomic.Int64
	half := make(chan struct{})
	var halfOnce sync.Once
	var wg sync.WaitGroup
	// Four publishers keep batches in flight all the time, so the cut
	// lands in the middle of some.
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(nextBatch.Add(1)-1) * batchSize
				if i >= total {
					return
				}
				if i >= total/2 {
					halfOnce.Do(func() { close(half) })
				}
				batch := evs[i : i+batchSize]
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				inFlight.Add(1)
				err := pub.Publish(ctx, batch...)
				inFlight.Add(-1)
				cancel()
				mu.Lock()
				bad := map[string]bool{}
				var pe *eventbus.PublishError
				switch {
				case err == nil:
				case errors.As(err, &pe):
					for _, f := range pe.Failed {
						bad[f.ID] = true
					}
				default:
					otherErrs = append(otherErrs, err)
					for _, ev := range batch {
						bad[ev.ID] = true
					}
				}
				for _, ev := range batch {
					if bad[ev.ID] {
						failed = append(failed, ev.ID)
					} else {
						ok = append(ok, ev.ID)
					}
				}
				mu.Unlock()
				published.Add(int64(len(batch)))
			}
		}()
	}

	<-half
	c.Cut()
	cutAt, cutInFlight, handledAtCut := published.Load(), inFlight.Load(), handled.Distinct()
	WaitFor(t, 20*time.Second, "both buses notice the cut", c.Down, func() string { return "still connected" })
	c.Heal()
	WaitFor(t, 30*time.Second, "both buses reconnect", c.Up, func() string { return "not reconnected" })
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(ok)+len(failed) != total {
		t.Fatalf("%d events succeeded and %d failed, want %d in all", len(ok), len(failed), total)
	}
	WaitFor(t, 60*time.Second, "every event Publish accepted handled", func() bool {
		n, _ := handled.Missing(ok)
		return n == 0
	}, handled.DescribeMissing(ok))
	lateFailed := 0
	for _, id := range failed {
		if handled.Has(id) {
			lateFailed++
		}
	}
	t.Logf("cut after %d of %d events were published (%d Publish calls in flight, %d events handled); %d accepted, %d reported failed (%d of those reached the subscriber anyway), %d other errors %v; %d duplicate deliveries",
		cutAt, total, cutInFlight, handledAtCut, len(ok), len(failed), lateFailed, len(otherErrs), otherErrs, handled.Duplicates())
	if cutAt >= total {
		t.Errorf("the cut came after publishing ended")
	}
}
