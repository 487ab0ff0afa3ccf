package amqp

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestPrefetchWindow: the window is Concurrency + 128 by default,
// ?prefetch= otherwise, never below the concurrency nor above AMQP's
// limit; a bad value is refused.
func TestPrefetchWindow(t *testing.T) {
	for _, c := range []struct{ prefetch, conc, want int }{
		{0, 1, 129}, {0, 16, 144}, {0, 65535, 65535}, {10, 1, 10}, {10, 16, 16}, {1000, 4, 1000},
	} {
		if got := prefetchWindow(c.prefetch, c.conc); got != c.want {
			t.Errorf("prefetchWindow(%d, %d) = %d, want %d", c.prefetch, c.conc, got, c.want)
		}
	}
	u := brokerURL(t)
	for _, v := range []string{"0", "-1", "65536", "x"} {
		q := u.Query()
		q.Set("prefetch", v)
		bad := *u
		bad.RawQuery = q.Encode()
		if _, _, err := parseOptions(&bad); err == nil {
			t.Errorf("prefetch=%s accepted", v)
		}
	}
}

// TestReadAheadKeepsOrderAndGivesBack: a Concurrency(1) subscription with
// a window of 20 takes 20 deliveries from the broker while its one
// handler is blocked, runs one handler at a time, handles the events in
// the order they were published, and gives the deliveries it held back
// to the queue when it closes, in order, so that the next consumer
// handles each exactly once more and still in order.
func TestReadAheadKeepsOrderAndGivesBack(t *testing.T) {
	const n, window = 100, 20
	url := isolatedURL(t, "prefetch", strconv.Itoa(window))
	svc := unique("readahead-")
	pub := transporttest.NewBus(t, url, unique("readahead-pub-"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	first, err := eventbus.New(ctx, eventbus.Config{ServiceName: svc, URL: url})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var running, peak atomic.Int32
	var mu sync.Mutex
	var order []string
	handler := func(ctx context.Context, ev eventbus.Event) error {
		r := running.Add(1)
		defer running.Add(-1)
		for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
		}
		mu.Lock()
		order = append(order, ev.ID)
		mu.Unlock()
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := first.Subscribe("readahead.#", handler, eventbus.SubscriptionName("s")); err != nil {
		t.Fatal(err)
	}
	if err := first.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var ids []string
	var evs []eventbus.Event
	for i := range n {
		ev := mustEvent(t, "readahead.item", map[string]int{"i": i})
		evs = append(evs, ev)
		ids = append(ids, ev.ID)
	}
	if err := pub.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	q := svc + ".s"
	transporttest.WaitFor(t, 20*time.Second, "the window delivered", func() bool { return queueLength(t, q) == n-window },
		func() string { return fmt.Sprintf("%d ready, want %d", queueLength(t, q), n-window) })
	// Close while the first handler is blocked: it is cancelled when the
	// transport closes, and nothing was acknowledged.
	closeCtx, closeCancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_ = first.Close(closeCtx)
	closeCancel()
	transporttest.WaitFor(t, 20*time.Second, "every delivery back in the queue", func() bool { return queueLength(t, q) == n },
		func() string { return fmt.Sprintf("%d ready, want %d", queueLength(t, q), n) })
	mu.Lock()
	order = nil
	mu.Unlock()

	close(release)
	second := transporttest.NewBus(t, url, svc)
	if err := second.Subscribe("readahead.#", handler, eventbus.SubscriptionName("s")); err != nil {
		t.Fatal(err)
	}
	if err := second.Start(ctx); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "every event handled", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) >= n },
		func() string { mu.Lock(); defer mu.Unlock(); return fmt.Sprintf("%d of %d", len(order), n) })
	mu.Lock()
	defer mu.Unlock()
	if len(order) != n {
		t.Errorf("%d events handled, want %d", len(order), n)
	}
	for i := range min(len(order), n) {
		if order[i] != ids[i] {
			t.Fatalf("event %d handled as number %d: the order is not the broker's", slicesIndex(ids, order[i]), i)
		}
	}
	if p := peak.Load(); p != 1 {
		t.Errorf("%d handlers ran at once, want 1", p)
	}
}

// TestCumulativeAcksSpareNacked: with acknowledgements sent cumulatively
// (multiple=true), a delivery nacked between acknowledged ones is still
// given back and delivered again, and every delivery is acknowledged in
// the end: nothing is left in the queue and nothing is lost.
func TestCumulativeAcksSpareNacked(t *testing.T) {
	const n = 300
	url := isolatedURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tr, err := open(ctx, driver.Config{URL: mustParse(t, url), ServiceName: unique("acks-")})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	svc := unique("acks-")
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".s", Service: svc, Subscription: "s", Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(ctx, "acks.#")
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = eventbustest.Message(mustEvent(t, "acks.item", nil))
		msgs[i].SetContext(ctx)
	}
	if err := tr.Publisher().Publish("acks.item", msgs...); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	acked := map[string]bool{}
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ch {
			mu.Lock()
			seen[m.UUID]++
			// Every seventh message is nacked the first time.
			nack := seen[m.UUID] == 1 && len(seen)%7 == 0
			if !nack {
				acked[m.UUID] = true
			}
			finished := len(acked) == n
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(len(m.UUID)%3) * time.Millisecond) // settle out of order
				if nack {
					m.Nack()
				} else {
					m.Ack()
				}
			}()
			if finished {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		mu.Lock()
		t.Fatalf("%d of %d messages acknowledged", len(acked), n)
	}
	wg.Wait()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	redelivered := 0
	for _, c := range seen {
		if c > 1 {
			redelivered++
		}
	}
	if redelivered == 0 {
		t.Error("no message was delivered again after its nack")
	}
	if l := queueLength(t, svc+".s"); l != 0 {
		t.Errorf("%d messages left in the queue after every one was acknowledged", l)
	}
}
