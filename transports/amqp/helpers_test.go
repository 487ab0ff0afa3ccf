package amqp

import (
	"context"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// waitFor polls cond every few milliseconds until it holds or timeout
// passes, then fails the test with describe's report.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v; %s", what, timeout, describe())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newBus opens a bus on url that is closed when the test ends.
func newBus(t testing.TB, url, service string) *eventbus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: service, URL: url, Policy: eventbus.Policy{
		MaxAttempts: 3, InitialBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}})
	if err != nil {
		t.Fatalf("New(%s): %v", driver.RedactURL(url), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("closing bus %s: %v", service, err)
		}
	})
	return b
}

func transportOf(t testing.TB, b *eventbus.Bus) *Transport {
	t.Helper()
	tr, ok := b.Transport().(*Transport)
	if !ok {
		t.Fatalf("transport is %T", b.Transport())
	}
	return tr
}

func mustEvent(t testing.TB, name string, data any, opts ...eventbus.EventOption) eventbus.Event {
	t.Helper()
	ev, err := eventbus.NewEvent(name, data, append([]eventbus.EventOption{eventbus.WithSource("amqp-tests")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}
