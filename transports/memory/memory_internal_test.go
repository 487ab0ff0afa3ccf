package memory

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
)

// A handler that publishes into its own full group while holding a lock
// the group's other handler needs must get through: the queue has room
// (the other handler took an event, then blocked on the lock) but stays
// above half, so no consumer signals; the waiting publisher must look again
// by itself.
func TestBackPressureHandlerPublishingIntoItsOwnGroup(t *testing.T) {
	name := "internal-" + t.Name()
	defer Forget(name)
	url := "mem://" + name + "?buffer=4"
	ctx := context.Background()

	tr, err := eventbus.OpenTransport(ctx, eventbus.Config{ServiceName: "lk", URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(eventbus.SubscriberConfig{Group: "lk.s", Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Subscribe(ctx, "lk.#"); err != nil {
		t.Fatal(err)
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	g := tr.(*transport).b.group("lk.s")

	pub, err := eventbus.New(ctx, eventbus.Config{ServiceName: "lk-pub", URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	publish := func(bus *eventbus.Bus, name string) error {
		ev, err := eventbus.NewEvent(name, "lk", eventbus.Domain, nil)
		if err != nil {
			return err
		}
		return bus.Publish(ctx, ev)
	}
	for _, n := range []string{"lk.a", "lk.c", "lk.b", "lk.b"} {
		if err := publish(pub, n); err != nil {
			t.Fatal(err)
		}
	}

	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "lk", URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// Bounded, so that a failure ends the test instead of hanging it.
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = b.Close(cctx)
	}()
	// lk.a publishes lk.z while holding mu; lk.c waits for gateC; the
	// others need mu.
	var (
		mu          sync.Mutex
		underLock   int
		handled     atomic.Int32
		aIn, cIn    = make(chan struct{}), make(chan struct{})
		goA, gateC  = make(chan struct{}), make(chan struct{})
		republished = make(chan error, 1)
	)
	err = b.Subscribe("lk.#", func(hctx context.Context, ev eventbus.Event) error {
		defer handled.Add(1)
		switch ev.Name {
		case "lk.a":
			mu.Lock()
			defer mu.Unlock()
			close(aIn)
			<-goA
			ev, _ := eventbus.NewEvent("lk.z", "lk", eventbus.Domain, nil)
			republished <- b.Publish(hctx, ev)
		case "lk.c":
			close(cIn)
			<-gateC
		default:
			mu.Lock()
			underLock++
			mu.Unlock()
		}
		return nil
	}, eventbus.SubscriptionName("s"), eventbus.Concurrency(2))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	<-aIn
	<-cIn
	// Both handlers are busy and two events wait: fill the queue.
	for range 2 {
		if err := publish(pub, "lk.b"); err != nil {
			t.Fatal(err)
		}
	}
	close(goA)
	waitFor(t, "the handler's Publish to wait for room", func() bool { return g.full.Load() == 1 })
	// The other handler takes the next event, leaving room above half,
	// and blocks on the lock the waiting publisher holds.
	close(gateC)
	select {
	case err := <-republished:
		if err != nil {
			t.Fatalf("publishing from the handler: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler's Publish is still waiting 10s after there was room")
	}
	waitFor(t, "every event to be handled", func() bool { return handled.Load() == 7 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
