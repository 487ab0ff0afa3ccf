package nats

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// margin is how much later than its ctx's deadline a call may return: the
// scheduling of a goroutine on a busy machine, not a wait for the server.
const margin = 500 * time.Millisecond

// bounded runs f with a ctx of d and fails the test unless it returns
// within d plus margin.
func bounded(t *testing.T, what string, d time.Duration, f func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- f(ctx) }()
	select {
	case err := <-done:
		t.Logf("%s returned after %v: %v", what, time.Since(start).Round(time.Millisecond), err)
		return err
	case <-time.After(d + margin):
		t.Fatalf("%s with a ctx of %v has not returned after %v", what, d, d+margin)
		return nil
	}
}

// TestOpenBounded: Open returns by its ctx's deadline while the server is
// down (connections refused) or frozen (accepted, never answered).
func TestOpenBounded(t *testing.T) {
	for _, fault := range []string{"down", "frozen"} {
		t.Run(fault, func(t *testing.T) {
			url, px := faultyURL(t)
			if fault == "down" {
				px.Cut()
			} else {
				px.Stall()
			}
			defer px.Heal()
			err := bounded(t, "Open", time.Second, func(ctx context.Context) error {
				tr, err := driver.Open(ctx, url, driver.Config{ServiceName: "bounded"})
				if err == nil {
					_ = tr.Close()
				}
				return err
			})
			if err == nil {
				t.Error("Open succeeded against a server that is " + fault)
			}
		})
	}
}

// TestCallsBoundedWhileFrozen freezes the server under an open transport:
// every ctx-taking call of the transport returns by its deadline, Close
// returns within its bound, and nothing is left running (goleak).
func TestCallsBoundedWhileFrozen(t *testing.T) {
	url, px := faultyURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	service := unique("frozen-")
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: service})
	if err != nil {
		t.Fatal(err)
	}
	pq, _ := tr.PoisonQueue()
	cfg := driver.SubscriberConfig{Group: service + ".s", Service: service, Subscription: "s", Pattern: "frozen.#",
		Match: matcher("frozen.#"), Concurrency: 2}
	sub, err := tr.NewSubscriber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(ctx, cfg.Pattern)
	if err != nil {
		t.Fatal(err)
	}
	// One message handed out and not settled when the server freezes.
	ev := mustEvent(t, "frozen.held", nil)
	if err := tr.Publisher().Publish(ev.Name, eventMessage(ev)); err != nil {
		t.Fatal(err)
	}
	var held *message.Message
	select {
	case held = <-ch:
	case <-ctx.Done():
		t.Fatal("not delivered")
	}

	px.Stall()
	defer px.Heal()
	const d = time.Second
	bounded(t, "Publish", d, func(ctx context.Context) error {
		m := eventMessage(mustEvent(t, "frozen.pub", nil))
		m.SetContext(ctx)
		return tr.Publisher().Publish("frozen.pub", m)
	})
	bounded(t, "Redeliver", d, func(ctx context.Context) error {
		return tr.Redeliver(ctx, cfg.Group, eventMessage(mustEvent(t, "frozen.re", nil)))
	})
	bounded(t, "PoisonQueue.Add", d, func(ctx context.Context) error {
		return pq.Add(ctx, eventMessage(mustEvent(t, "frozen.add", nil)))
	})
	bounded(t, "PoisonQueue.Scan", d, func(ctx context.Context) error {
		return pq.Scan(ctx, 10, func([]*message.Message) ([]int, error) { return nil, nil })
	})
	bounded(t, "PoisonQueue.Purge", d, func(ctx context.Context) error { return pq.Purge(ctx) })
	bounded(t, "Subscribe", d, func(ctx context.Context) error {
		s2, err := tr.NewSubscriber(driver.SubscriberConfig{Group: service + ".t", Pattern: "x", Match: matcher("x"), Concurrency: 1})
		if err != nil {
			return err
		}
		_, err = s2.Subscribe(ctx, "x")
		return err
	})
	held.Ack()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- tr.Close() }()
	select {
	case err := <-done:
		t.Logf("Close while frozen returned after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(2*closeTimeout + 2*margin):
		t.Fatalf("Close while frozen has not returned after %v", 2*closeTimeout+2*margin)
	}
}

// eventMessage encodes ev as the bus does.
func eventMessage(ev eventbus.Event) *message.Message {
	return driver.Encode(driver.Envelope{
		ID: ev.ID, Name: ev.Name, Source: ev.Source, Type: ev.Type.String(), Time: ev.Time,
		CorrelationID: ev.ID, Metadata: ev.Metadata, Data: ev.Data,
	})
}
