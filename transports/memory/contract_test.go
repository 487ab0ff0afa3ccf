package memory_test

import (
	"testing"

	"github.com/paissive/go-eventbus/contracttests"
)

// TestContract runs the whole contract suite on a fresh in-process broker
// per test. The memory transport has no network to break, so the suite's
// fault tests are skipped (they run against real brokers in the amqp and
// kafka packages, and against a faulty wrapper of this transport in the
// suite's own tests).
func TestContract(t *testing.T) {
	contracttests.Run(t, contracttests.Harness{Name: "memory", URL: freshURL, Parallel: true})
}
