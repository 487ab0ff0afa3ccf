package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
)

const testTimeout = 30 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// quietLogger logs warnings and errors only.
var quietLogger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// newBus opens a bus on url and closes it when the test ends.
func newBus(t testing.TB, url, service string) *eventbus.Bus {
	t.Helper()
	b, err := eventbus.New(testCtx(t), eventbus.Config{ServiceName: service, URL: url, Logger: quietLogger})
	if err != nil {
		t.Fatalf("eventbus.New(%s): %v", url, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// waitFor polls cond every few milliseconds until it holds, failing the
// test with describe's text after testTimeout.
func waitFor(t testing.TB, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s; %s", what, testTimeout, describe())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// counter counts handled event IDs.
type counter struct {
	mu    sync.Mutex
	seen  map[string]int
	total int
}

func newCounter() *counter { return &counter{seen: map[string]int{}} }

func (c *counter) add(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[id]++
	c.total++
}

func (c *counter) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func (c *counter) duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total - len(c.seen)
}

func (c *counter) has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id] > 0
}

func (c *counter) ids() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.seen))
	for id := range c.seen {
		out[id] = true
	}
	return out
}

func events(t testing.TB, n int, name string, key func(i int) string) []eventbus.Event {
	t.Helper()
	evs := make([]eventbus.Event, n)
	for i := range evs {
		var opts []eventbus.EventOption
		if key != nil {
			opts = append(opts, eventbus.WithPartitionKey(key(i)))
		}
		ev, err := eventbus.NewEvent(name, map[string]int{"seq": i}, append([]eventbus.EventOption{eventbus.WithSource("kafka-test")}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		evs[i] = ev
	}
	return evs
}

func seqOf(t testing.TB, ev eventbus.Event) int {
	var d struct{ Seq int }
	if err := ev.Decode(&d); err != nil {
		t.Errorf("decoding %s: %v", ev.ID, err)
	}
	return d.Seq
}

func missing(c *counter, evs []eventbus.Event) string {
	n := 0
	var first string
	for _, ev := range evs {
		if !c.has(ev.ID) {
			if n == 0 {
				first = ev.ID
			}
			n++
		}
	}
	return fmt.Sprintf("%d of %d missing (e.g. %s)", n, len(evs), first)
}

// matcher returns the Match function of a pattern of the program's own,
// as the bus gives it to a transport.
func matcher(pattern string) func(name string) bool {
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		panic(err)
	}
	return p.Match
}
