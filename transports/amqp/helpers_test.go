package amqp

import (
	"context"
	"fmt"
	"sync"
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

// counter records how often each event ID was handled.
type counter struct {
	mu   sync.Mutex
	seen map[string]int
	n    int
}

func newCounter() *counter { return &counter{seen: map[string]int{}} }

func (c *counter) handle(_ context.Context, ev eventbus.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[ev.ID]++
	c.n++
	return nil
}

func (c *counter) has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id] > 0
}

func (c *counter) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// missing counts the ids not handled yet.
func (c *counter) missing(ids []string) (n int, example string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if c.seen[id] == 0 {
			if n == 0 {
				example = id
			}
			n++
		}
	}
	return n, example
}

func (c *counter) duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n - len(c.seen)
}

func mustEvent(t testing.TB, name string, data any, opts ...eventbus.EventOption) eventbus.Event {
	t.Helper()
	ev, err := eventbus.NewEvent(name, data, append([]eventbus.EventOption{eventbus.WithSource("amqp-tests")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func describeMissing(c *counter, ids []string) func() string {
	return func() string {
		n, ex := c.missing(ids)
		return fmt.Sprintf("%d of %d not handled (e.g. %s)", n, len(ids), ex)
	}
}
