package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestConcurrentCallersOwnOutcomes: calls from many goroutines share the
// pooled channels' confirm windows, and each call gets the outcome of its
// own messages only: the calls whose events nobody subscribed to fail
// with ErrUnroutable, naming exactly their message, the others succeed,
// including the routable part of a PublishBatch that mixes both.
func TestConcurrentCallersOwnOutcomes(t *testing.T) {
	url := isolatedURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tr, err := open(ctx, driver.Config{URL: mustParse(t, url), ServiceName: unique("callers-")})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	q := sinkQueue(t, tr, "routed.#")
	const goroutines, calls = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*calls)
	for g := range goroutines {
		wg.Go(func() {
			name := "routed.x"
			if g%2 == 1 {
				name = "nobody.x"
			}
			for range calls {
				m := rawMessage(ctx, 64)
				err := tr.Publisher().Publish(name, m)
				var pe *driver.PublishError
				switch {
				case name == "routed.x" && err != nil:
					errs <- fmt.Errorf("routable message failed: %w", err)
				case name == "nobody.x" && (!errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].UUID != m.UUID || !errors.Is(err, driver.ErrUnroutable)):
					errs <- fmt.Errorf("unroutable message %s: %v; want ErrUnroutable for it alone", m.UUID, err)
				}
			}
		})
	}
	// A mixed call at the same time.
	var mixed []*message.Message
	var topics []string
	for i := range 10 {
		mixed = append(mixed, rawMessage(ctx, 64))
		topics = append(topics, []string{"routed.y", "nobody.y"}[i%2])
	}
	err = tr.pub.PublishBatch(topics, mixed)
	var pe *driver.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 5 {
		t.Errorf("PublishBatch: %v; want the 5 unroutable messages failed", err)
	} else {
		for _, f := range pe.Failed {
			for i, m := range mixed {
				if m.UUID == f.UUID && topics[i] != "nobody.y" {
					t.Errorf("routable message %d reported failed: %v", i, f.Err)
				}
			}
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, want := queueLength(t, q), goroutines/2*calls+5; got != want {
		t.Errorf("%d messages routed, want %d", got, want)
	}
}

// TestMixedNamesPublishedInOrder: one Bus.Publish of events with 50
// names reaches a Concurrency(1) subscription in the order of the call,
// although all of them are in flight at once.
func TestMixedNamesPublishedInOrder(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("mixed-"))
	var mu sync.Mutex
	var got []string
	if err := b.Subscribe("mixed.#", func(_ context.Context, ev eventbus.Event) error {
		mu.Lock()
		got = append(got, ev.ID)
		mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var evs []eventbus.Event
	for i := range 200 {
		evs = append(evs, mustEvent(t, fmt.Sprintf("mixed.n%02d", i%50), nil))
	}
	if err := b.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "every event handled", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == len(evs) },
		func() string { mu.Lock(); defer mu.Unlock(); return fmt.Sprintf("%d of %d", len(got), len(evs)) })
	mu.Lock()
	defer mu.Unlock()
	for i, ev := range evs {
		if got[i] != ev.ID {
			t.Fatalf("event %d (%s) handled at position %d", slicesIndex(got, ev.ID), ev.Name, i)
		}
	}
}

func slicesIndex(xs []string, x string) int {
	for i, y := range xs {
		if y == x {
			return i
		}
	}
	return -1
}
