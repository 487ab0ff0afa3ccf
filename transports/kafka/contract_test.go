package kafka

import (
	"testing"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/contracttests"
)

// TestContract runs the whole contract suite under a subtest named after
// the broker kind ("kfake", "docker" or "env"); each test gets its own
// topic prefix (and, on kfake, its own in-process cluster).
func TestContract(t *testing.T) {
	t.Parallel()
	_, kind := brokertest.KafkaBrokers(t)
	t.Run(kind, func(t *testing.T) {
		contracttests.Run(t, contracttests.Harness{
			Name:              "kafka on " + kind,
			URL:               func(t testing.TB) string { return testURL(t) },
			RetainsUnroutable: true,
			Parallel:          true,
			// Faults on an in-process cluster of the test's own, whose
			// listener the test cuts or freezes.
			Faulty: func(t testing.TB) (string, contracttests.Faults) {
				ln, addrs := faultCluster(t)
				return faultURL(addrs), ln
			},
		})
	})
}
