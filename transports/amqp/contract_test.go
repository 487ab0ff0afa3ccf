package amqp

import (
	"testing"

	"github.com/paissive/go-eventbus/contracttests"
)

// TestContract runs the whole contract suite on the real broker; each test
// gets its own exchange, and its exchange and queues are deleted after it.
func TestContract(t *testing.T) {
	contracttests.Run(t, contracttests.Harness{
		Name: "amqp",
		URL:  func(t testing.TB) string { return isolatedURL(t) },
		// Sequential: the whole suite takes a few seconds, and timing
		// checks (retry delays, Close waiting) stay meaningful on a busy
		// machine.
	})
}
