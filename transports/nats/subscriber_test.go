package nats

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestConcurrencyBound: with Concurrency 4, at most 4 handlers run at
// once. With ?prefetch=0 the server counts exactly 4 messages delivered and
// not acknowledged (the rest stay in the stream for other instances); with
// ?prefetch=20, 24; by default, while no event was handled yet (so no rate
// is known), Concurrency more: 8.
func TestConcurrencyBound(t *testing.T) {
	for _, tc := range []struct {
		prefetch string
		pending  int
	}{{"0", 4}, {"", 8}, {"20", 24}} {
		t.Run("prefetch="+tc.prefetch, func(t *testing.T) {
			var params []string
			if tc.prefetch != "" {
				params = []string{"prefetch", tc.prefetch}
			}
			url := isolatedURL(t, params...)
			b := transporttest.NewBus(t, url, unique("conc-"))
			release := make(chan struct{})
			var running, most atomic.Int32
			handled := transporttest.NewCounter()
			if err := b.Subscribe("conc.#", func(ctx context.Context, ev eventbus.Event) error {
				n := running.Add(1)
				for {
					m := most.Load()
					if n <= m || most.CompareAndSwap(m, n) {
						break
					}
				}
				<-release
				running.Add(-1)
				return handled.Handle(ctx, ev)
			}, eventbus.Concurrency(4), eventbus.SubscriptionName("bounded")); err != nil {
				t.Fatal(err)
			}
			if err := b.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			var evs []eventbus.Event
			var ids []string
			for range 40 {
				ev := mustEvent(t, "conc.job", nil)
				evs = append(evs, ev)
				ids = append(ids, ev.ID)
			}
			if err := b.Publish(context.Background(), evs...); err != nil {
				t.Fatal(err)
			}
			transporttest.WaitFor(t, 20*time.Second, "4 handlers running", func() bool { return running.Load() == 4 }, func() string { return "fewer" })
			tr := transportOf(t, b)
			events, _ := tr.streams()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := events.Consumer(ctx, consumerName(b.ServiceName(), "bounded"))
			if err != nil {
				t.Fatal(err)
			}
			var pending int
			transporttest.WaitFor(t, 20*time.Second, fmt.Sprintf("%d messages unacknowledged on the server", tc.pending), func() bool {
				info, err := c.Info(ctx)
				if err != nil {
					t.Fatal(err)
				}
				pending = info.NumAckPending
				return pending == tc.pending
			}, func() string { return fmt.Sprintf("%d", pending) })
			// Give the server time to deliver more, if it were asked to.
			time.Sleep(200 * time.Millisecond)
			if info, err := c.Info(ctx); err != nil || info.NumAckPending != tc.pending || most.Load() != 4 {
				t.Errorf("%d messages unacknowledged on the server, at most %d handlers at once; want %d and 4", info.NumAckPending, most.Load(), tc.pending)
			}
			close(release)
			transporttest.WaitFor(t, 20*time.Second, "every job", func() bool { n, _ := handled.Missing(ids); return n == 0 }, handled.DescribeMissing(ids))
		})
	}
}

// TestLongHandlerNotRedelivered: a handler that runs for several AckWaits
// (ack_wait=1s) keeps its event, and the events fetched behind it keep
// theirs: the subscriber tells the server they are in progress, so the
// other instance of the group never gets them.
func TestLongHandlerNotRedelivered(t *testing.T) {
	url := isolatedURL(t, "ack_wait", "1s")
	svc := unique("long-")
	var calls sync.Map
	var total atomic.Int32
	h := func(_ context.Context, ev eventbus.Event) error {
		total.Add(1)
		n, _ := calls.LoadOrStore(ev.ID, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if ev.Name == "long.job" {
			time.Sleep(3500 * time.Millisecond)
		}
		return nil
	}
	i1, i2 := transporttest.NewBus(t, url, svc), transporttest.NewBus(t, url, svc)
	for _, b := range []*eventbus.Bus{i1, i2} {
		if err := b.Subscribe("long.#", h, eventbus.SubscriptionName("workers")); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// The quick jobs behind the long one may wait in the prefetch of the
	// instance that runs it: they must not be delivered elsewhere either.
	evs := []eventbus.Event{mustEvent(t, "long.job", nil)}
	for range 5 {
		evs = append(evs, mustEvent(t, "long.quick", nil))
	}
	if err := i1.Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "every job started", func() bool { return total.Load() >= int32(len(evs)) }, func() string { return "not started" })
	time.Sleep(4500 * time.Millisecond) // the long handler runs 3.5 s, 3.5 AckWaits
	for _, ev := range evs {
		n, _ := calls.Load(ev.ID)
		if got := n.(*atomic.Int32).Load(); got != 1 {
			t.Errorf("%s was handled %d times, want once", ev.Name, got)
		}
	}
}

// TestConsumerDeletedIsRecreated: an operator deletes the group's consumer
// while it runs; the subscriber creates it again and goes on.
func TestConsumerDeletedIsRecreated(t *testing.T) {
	url := isolatedURL(t, "deliver", "new")
	b := transporttest.NewBus(t, url, unique("deleted-"))
	handled := transporttest.NewCounter()
	if err := b.Subscribe("del.#", handled.Handle, eventbus.SubscriptionName("s")); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr := transportOf(t, b)
	events, _ := tr.streams()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	if err := events.DeleteConsumer(ctx, consumerName(b.ServiceName(), "s")); err != nil {
		t.Fatal(err)
	}
	// The subscriber learns it from the answer to its pull request ("409
	// Consumer Deleted"), or, when the server does not send one, from the
	// missing heartbeats; keep publishing until an event gets through the
	// new consumer.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ev := mustEvent(t, "del.after", nil)
		if err := b.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		ok := false
		for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if handled.Has(ev.ID) {
				ok = true
				break
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no event handled after the consumer was deleted")
		}
	}
	if _, err := events.Consumer(ctx, consumerName(b.ServiceName(), "s")); err != nil {
		t.Errorf("consumer not recreated: %v", err)
	}
}

// TestMemoryStorageRestart: a server restarted with memory storage has
// lost the streams; the transport creates them again for Publish, and the
// subscription's consumer for the subscriber.
func TestMemoryStorageRestart(t *testing.T) {
	srv := brokertest.StartNATSServer(t, brokertest.NATSServerConfig{})
	url := ownServerURL(t, srv, "storage", "memory")
	b := transporttest.NewBus(t, url, unique("mem-"))
	handled := transporttest.NewCounter()
	if err := b.Subscribe("mem.#", handled.Handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := mustEvent(t, "mem.first", nil)
	if err := b.Publish(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the first event", func() bool { return handled.Has(first.ID) }, func() string { return "not handled" })
	srv.Restart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	second := mustEvent(t, "mem.second", nil)
	if err := b.Publish(ctx, second); err != nil {
		t.Fatalf("Publish after the streams were lost: %v", err)
	}
	transporttest.WaitFor(t, 30*time.Second, "the event after the restart", func() bool { return handled.Has(second.ID) }, func() string { return "not handled" })
}

// TestDeliverPolicy: a new subscription gets the events the stream holds
// from before it existed (deliver=all, the default), or only later ones
// (deliver=new).
func TestDeliverPolicy(t *testing.T) {
	for _, deliver := range []string{"all", "new"} {
		t.Run(deliver, func(t *testing.T) {
			url := isolatedURL(t, "deliver", deliver)
			pub := transporttest.NewBus(t, url, unique("pub-"))
			early := mustEvent(t, "dp.early", nil)
			if err := pub.Publish(context.Background(), early); err != nil {
				t.Fatal(err)
			}
			b := transporttest.NewBus(t, url, unique("dp-"))
			handled := transporttest.NewCounter()
			if err := b.Subscribe("dp.#", handled.Handle); err != nil {
				t.Fatal(err)
			}
			if err := b.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			late := mustEvent(t, "dp.late", nil)
			if err := pub.Publish(context.Background(), late); err != nil {
				t.Fatal(err)
			}
			transporttest.WaitFor(t, 20*time.Second, "the late event", func() bool { return handled.Has(late.ID) }, func() string { return "not handled" })
			if got, want := handled.Has(early.ID), deliver == "all"; got != want {
				t.Errorf("deliver=%s: event from before the subscription handled: %v, want %v", deliver, got, want)
			}
		})
	}
}

// TestRedeliverToUnknownGroup fails with ErrUnroutable: no consumer would
// ever take the events.
func TestRedeliverToUnknownGroup(t *testing.T) {
	url := isolatedURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ev := mustEvent(t, "x.y", nil)
	err = tr.Redeliver(ctx, "svc.nobody", eventMessage(ev))
	var pe *driver.PublishError
	if !errors.Is(err, driver.ErrUnroutable) || !errors.As(err, &pe) || pe.Failed[0].UUID != ev.ID {
		t.Errorf("Redeliver to a group without a consumer: %v; want a PublishError wrapping ErrUnroutable", err)
	}
}

// TestAdaptivePrefetch: by default a subscription whose handlers are slow
// keeps few events fetched ahead (they are unavailable to the group's
// other instances), and one whose handlers are fast fetches many ahead.
func TestAdaptivePrefetch(t *testing.T) {
	url := isolatedURL(t)
	pub := transporttest.NewBus(t, url, unique("ap-pub-"))
	var evs []eventbus.Event
	for range 400 {
		evs = append(evs, mustEvent(t, "ap.slow", nil))
	}
	for range 2000 {
		evs = append(evs, mustEvent(t, "ap.fast", nil))
	}
	if err := pub.Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	b := transporttest.NewBus(t, url, unique("ap-"))
	slow, fast := transporttest.NewCounter(), transporttest.NewCounter()
	if err := b.Subscribe("ap.slow", func(ctx context.Context, ev eventbus.Event) error {
		time.Sleep(10 * time.Millisecond)
		return slow.Handle(ctx, ev)
	}, eventbus.Concurrency(2)); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("ap.fast", fast.Handle, eventbus.Concurrency(2)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr := transportOf(t, b)
	events, _ := tr.streams()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// At most 200 events/s with 10 ms handlers at Concurrency 2: about 10
	// events of work in 50 ms, whatever the machine's speed.
	transporttest.WaitFor(t, 20*time.Second, "the slow subscription under way", func() bool { return slow.Distinct() >= 50 }, func() string { return "slow" })
	c, err := events.Consumer(ctx, consumerName(b.ServiceName(), "ap.slow"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending > 2+12 {
		t.Errorf("the slow subscription holds %d events unacknowledged; want at most Concurrency plus about 50 ms of its work", info.NumAckPending)
	}
	transporttest.WaitFor(t, 20*time.Second, "the fast subscription done", func() bool { return fast.Distinct() == 2000 }, func() string { return fmt.Sprint(fast.Distinct()) })
	var most int
	tr.subsMu.Lock()
	for s := range tr.subs {
		s.mu.Lock()
		for p := range s.pullers {
			p.mu.Lock()
			if s.cfg.Pattern == "ap.fast" {
				most = max(most, p.prefetch())
			}
			p.mu.Unlock()
		}
		s.mu.Unlock()
	}
	tr.subsMu.Unlock()
	if most <= 2 {
		t.Errorf("the fast subscription's prefetch is %d; want it above its Concurrency", most)
	}
	t.Logf("slow subscription: %d unacknowledged at Concurrency 2; fast subscription's prefetch: %d", info.NumAckPending, most)
}
