package eventbus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/transports/memory"
)

func newMemBus(t *testing.T, service string) *eventbus.Bus {
	t.Helper()
	name := "bus-test-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	b, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: service, URL: "mem://" + name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

func nop(context.Context, eventbus.Event) error { return nil }

func TestSubscribeRejectsBadInput(t *testing.T) {
	b := newMemBus(t, "svc")
	cases := []struct {
		pattern string
		opts    []eventbus.SubscribeOption
		h       eventbus.Handler
		want    string
	}{
		{"user*", nil, nop, "segment 1"},
		{"a..b", nil, nop, "is empty"},
		{"ok.pattern", []eventbus.SubscribeOption{eventbus.Concurrency(0)}, nop, "Concurrency(0)"},
		{"ok.pattern", []eventbus.SubscribeOption{eventbus.SubscriptionName("has space")}, nop, "space"},
		{"ok.pattern", []eventbus.SubscribeOption{eventbus.WithPolicy(eventbus.Policy{Multiplier: 0.5})}, nop, "Multiplier"},
		{"ok.pattern", nil, nil, "nil handler"},
	}
	for _, c := range cases {
		err := b.Subscribe(c.pattern, c.h, c.opts...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Subscribe(%q): got %v, want an error mentioning %q", c.pattern, err, c.want)
		}
	}
	if err := b.Subscribe("dup.#", nop); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("dup.#", nop); err == nil || !strings.Contains(err.Error(), "SubscriptionName") {
		t.Errorf("second subscription with the same name: got %v, want advice to use SubscriptionName", err)
	}
	if err := b.Subscribe("dup.#", nop, eventbus.SubscriptionName("other")); err != nil {
		t.Errorf("same pattern under another name: %v", err)
	}
}

func TestPublishRejectsInvalidEventsBeforeSending(t *testing.T) {
	b := newMemBus(t, "svc")
	got := make(chan string, 10)
	if err := b.Subscribe("check.#", func(_ context.Context, ev eventbus.Event) error { got <- ev.Name; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	good, _ := eventbus.NewEvent("check.good", nil, eventbus.WithSource("svc"))
	bad := good
	bad.ID = ""
	bad.Name = "check..bad"
	err := b.Publish(context.Background(), good, bad)
	if !errors.Is(err, eventbus.ErrInvalidName) || !strings.Contains(err.Error(), "event 2 of 2") || !strings.Contains(err.Error(), "nothing was published") {
		t.Fatalf("Publish with an invalid second event: got %v", err)
	}
	// The good event was not sent either: a later event arrives first.
	later, _ := eventbus.NewEvent("check.later", nil, eventbus.WithSource("svc"))
	if err := b.Publish(context.Background(), later); err != nil {
		t.Fatal(err)
	}
	if name := <-got; name != "check.later" {
		t.Errorf("first event handled is %s; the batch with an invalid event must not be sent", name)
	}
}

func TestPublishFillsEnvelope(t *testing.T) {
	b := newMemBus(t, "filler")
	got := make(chan eventbus.Event, 1)
	if err := b.Subscribe("fill.me", func(_ context.Context, ev eventbus.Event) error { got <- ev; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), eventbus.Event{Name: "fill.me", Type: eventbus.System, Data: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	ev := <-got
	if ev.ID == "" || ev.Time.IsZero() || ev.Source != "filler" || ev.CorrelationID != ev.ID {
		t.Errorf("envelope not filled: id %q time %v source %q correlation %q", ev.ID, ev.Time, ev.Source, ev.CorrelationID)
	}
}

func TestLifecycle(t *testing.T) {
	b := newMemBus(t, "life")
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Errorf("second Start: %v", err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := b.Start(ctx); !errors.Is(err, eventbus.ErrClosed) {
		t.Errorf("Start after Close: got %v, want ErrClosed", err)
	}
}

func TestNewErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := eventbus.New(ctx, eventbus.Config{URL: "mem://"}); err == nil || !strings.Contains(err.Error(), "ServiceName") {
		t.Errorf("New without a service name: %v", err)
	}
	if _, err := eventbus.New(ctx, eventbus.Config{ServiceName: "a b", URL: "mem://"}); err == nil {
		t.Error("New with a space in the service name succeeded")
	}
	_, err := eventbus.New(ctx, eventbus.Config{ServiceName: "s", URL: "zmq://user:hunter2@localhost:4222"})
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "registered schemes") {
		t.Errorf("New with an unknown scheme: %v", err)
	}
}

func TestHandlerTimeoutCancelsEachAttempt(t *testing.T) {
	b := newMemBus(t, "timeouts")
	attempts := make(chan error, 10)
	err := b.Subscribe("slow.#", func(ctx context.Context, ev eventbus.Event) error {
		<-ctx.Done()
		attempts <- ctx.Err()
		return ctx.Err()
	}, eventbus.WithPolicy(eventbus.Policy{MaxAttempts: 2, InitialBackoff: time.Millisecond, Jitter: eventbus.NoJitter, HandlerTimeout: 20 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev, _ := eventbus.NewEvent("slow.call", nil, eventbus.WithSource("timeouts"))
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := <-attempts; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("attempt %d ended with %v, want DeadlineExceeded", i+1, err)
		}
	}
}
