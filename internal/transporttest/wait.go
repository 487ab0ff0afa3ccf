package transporttest

import (
	"context"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// WaitFor polls cond every few milliseconds until it holds or timeout
// passes, then fails the test with describe's report.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v; %s", what, timeout, describe())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// NewBus opens a bus for service on url, with a failure policy quick
// enough for tests, and closes it when the test ends.
func NewBus(t testing.TB, url, service string) *eventbus.Bus {
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
