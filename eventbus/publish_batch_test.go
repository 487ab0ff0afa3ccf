package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/transports/memory"
)

// countingTransport is the memory transport with a publisher that records
// its calls and hides PublishBatch, as a transport without the capability;
// batchingTransport offers it.
type countingTransport struct {
	driver.Transport
	pub *countingPublisher
}

func (c countingTransport) Publisher() message.Publisher { return c.pub }

type countingPublisher struct {
	message.Publisher
	mu    sync.Mutex
	calls []string // "Publish <topic> <n>" or "PublishBatch <n>"
}

func (p *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	p.calls = append(p.calls, fmt.Sprintf("Publish %s %d", topic, len(msgs)))
	p.mu.Unlock()
	return p.Publisher.Publish(topic, msgs...)
}

type batchingPublisher struct{ *countingPublisher }

func (p batchingPublisher) PublishBatch(topics []string, msgs []*message.Message) error {
	p.mu.Lock()
	p.calls = append(p.calls, fmt.Sprintf("PublishBatch %d", len(msgs)))
	p.mu.Unlock()
	return p.Publisher.(driver.BatchPublisher).PublishBatch(topics, msgs)
}

var registerCounting = sync.OnceFunc(func() {
	open := func(batch bool) driver.OpenFunc {
		return func(ctx context.Context, cfg driver.Config) (driver.Transport, error) {
			u := *cfg.URL
			u.Scheme = "mem"
			cfg.URL = &u
			t, err := driver.Open(ctx, u.String(), cfg)
			if err != nil {
				return nil, err
			}
			cp := &countingPublisher{Publisher: t.Publisher()}
			ct := countingTransport{Transport: t, pub: cp}
			if batch {
				return batchingTransport{ct}, nil
			}
			return ct, nil
		}
	}
	driver.Register("countbatch", open(true))
	driver.Register("countplain", open(false))
})

type batchingTransport struct{ countingTransport }

func (b batchingTransport) Publisher() message.Publisher {
	return batchingPublisher{b.pub}
}

// TestPublishMixedNames: a Publish of events with different names is one
// PublishBatch call on a transport that has it, in the order of the call;
// on one that has not, it is one Publish per run of equal names, in order;
// a call of one name is one Publish either way. The subscriber receives
// every event in the order of the call both ways.
func TestPublishMixedNames(t *testing.T) {
	registerCounting()
	for _, scheme := range []string{"countbatch", "countplain"} {
		t.Run(scheme, func(t *testing.T) {
			name := "mixed-" + scheme
			t.Cleanup(func() { memory.Forget(name) })
			ctx := context.Background()
			b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "svc", URL: scheme + "://" + name})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close(ctx)
			var mu sync.Mutex
			var got []string
			done := make(chan struct{})
			var evs []eventbus.Event
			for i := range 12 {
				ev, err := eventbus.NewEvent(fmt.Sprintf("mix.n%d", i/2), nil) // runs of two equal names
				if err != nil {
					t.Fatal(err)
				}
				evs = append(evs, ev)
			}
			if err := b.Subscribe("mix.#", func(_ context.Context, ev eventbus.Event) error {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, ev.ID)
				if len(got) == len(evs)+1 {
					close(done)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if err := b.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if err := b.Publish(ctx, evs...); err != nil {
				t.Fatal(err)
			}
			one, _ := eventbus.NewEvent("mix.one", nil)
			if err := b.Publish(ctx, one); err != nil {
				t.Fatal(err)
			}
			<-done
			pub := b.Transport().Publisher()
			var calls []string
			switch p := pub.(type) {
			case batchingPublisher:
				calls = p.calls
			case *countingPublisher:
				calls = p.calls
			}
			want := "PublishBatch 12, Publish mix.one 1"
			if scheme == "countplain" {
				var w []string
				for i := range 6 {
					w = append(w, fmt.Sprintf("Publish mix.n%d 2", i))
				}
				want = strings.Join(append(w, "Publish mix.one 1"), ", ")
			}
			if g := strings.Join(calls, ", "); g != want {
				t.Errorf("publisher calls: %s; want %s", g, want)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, ev := range evs {
				if got[i] != ev.ID {
					t.Fatalf("event %d of the call handled at position %d", i, indexOf(got, ev.ID))
				}
			}
		})
	}
}

func indexOf(xs []string, x string) int {
	for i, y := range xs {
		if y == x {
			return i
		}
	}
	return -1
}

// TestPublishMixedNamesFailuresNamed: the failures a PublishBatch
// reports are the events the bus reports, with their names.
func TestPublishMixedNamesFailuresNamed(t *testing.T) {
	b := newMemBus(t, "svc")
	ctx := context.Background()
	if err := b.Subscribe("routed.#", nop); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	a, _ := eventbus.NewEvent("routed.a", nil)
	x, _ := eventbus.NewEvent("nobody.x", nil)
	c, _ := eventbus.NewEvent("routed.c", nil)
	err := b.Publish(ctx, a, x, c)
	var pe *eventbus.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].ID != x.ID || pe.Failed[0].Name != "nobody.x" || !errors.Is(err, eventbus.ErrUnroutable) {
		t.Fatalf("Publish: %v; want nobody.x alone failed as unroutable", err)
	}
}
