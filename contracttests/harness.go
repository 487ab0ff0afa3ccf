package contracttests

import (
	"testing"
	"time"
)

// Harness tells the suite how to reach a broker and what the transport can
// do.
type Harness struct {
	// Name labels the transport in test output.
	Name string

	// URL returns a transport URL for one test. Every bus the test opens
	// with it talks to the same namespace, and events published through it
	// must not reach buses opened with the URL of another call (a fresh
	// exchange, topic prefix or in-process broker per call), because the
	// suite publishes bare names such as "completed" to test wildcards. It
	// may register t.Cleanup to delete what the test declared.
	URL func(t testing.TB) string

	// RetainsUnroutable is true for transports that keep events no
	// subscription matches (Kafka appends them to a topic) instead of
	// reporting eventbus.ErrUnroutable from Publish. The Unroutable test is
	// then skipped, and only the fault tests (PublishErrorWhileDown) can
	// provoke a publish error: provide Faulty too.
	RetainsUnroutable bool

	// Faulty, when set, returns a URL for one test whose path to the
	// broker goes through a fault injector the test controls (a loopback
	// proxy that can cut or stall the connection, a wrapper around an
	// in-process broker's listener), so that the suite can check what the
	// transport does while the broker is down or frozen: publish errors,
	// calls bounded by their ctx, reconnection. Each call must return a
	// broker namespace of its own, like URL. Without it those tests are
	// skipped, saying why.
	Faulty func(t testing.TB) (url string, f Faults)

	// Timeout bounds each wait in the suite; zero means 30 seconds. A
	// transport that never delivers what a test waits for fails that test
	// after Timeout.
	Timeout time.Duration

	// Parallel runs the tests in parallel (t.Parallel).
	Parallel bool
}
