// Package transporttest holds what the built-in transports' own tests
// share beyond the contract suite: a counter of handled events, waits with
// deadlines, buses closed with the test, and the cut-in-the-middle fault
// test every broker behind a proxy runs.
package transporttest

import (
	"context"
	"fmt"
	"sync"

	"github.com/paissive/go-eventbus/eventbus"
)

// Counter records how often each event ID was handled. It is safe for
// concurrent use; Handle is an eventbus.Handler.
type Counter struct {
	mu   sync.Mutex
	seen map[string]int
	n    int
}

// NewCounter returns an empty counter.
func NewCounter() *Counter { return &Counter{seen: map[string]int{}} }

// Handle records ev and returns nil.
func (c *Counter) Handle(_ context.Context, ev eventbus.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[ev.ID]++
	c.n++
	return nil
}

// Has reports whether the event with this ID was handled.
func (c *Counter) Has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id] > 0
}

// Times returns how often the event with this ID was handled.
func (c *Counter) Times(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id]
}

// Distinct counts the events handled at least once.
func (c *Counter) Distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// Deliveries counts every handler call.
func (c *Counter) Deliveries() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Duplicates counts the calls beyond the first of each event.
func (c *Counter) Duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n - len(c.seen)
}

// Missing counts the ids not handled yet, and names one of them.
func (c *Counter) Missing(ids []string) (n int, example string) {
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

// DescribeMissing returns a report of the ids not handled yet, for a
// failed wait.
func (c *Counter) DescribeMissing(ids []string) func() string {
	return func() string {
		n, ex := c.Missing(ids)
		return fmt.Sprintf("%d of %d not handled (e.g. %s)", n, len(ids), ex)
	}
}
