package nats

import (
	"testing"

	"github.com/paissive/go-eventbus/contracttests"
)

// TestContract runs the whole contract suite on the test server (see
// brokertest.NATSURL); each test gets its own streams, deleted after it.
func TestContract(t *testing.T) {
	serverURL(t) // logs which server runs
	contracttests.Run(t, contracttests.Harness{
		Name: "nats",
		URL:  func(t testing.TB) string { return isolatedURL(t) },
		// JetStream stores whatever a stream's subjects capture, whether
		// or not a consumer will ever read it.
		RetainsUnroutable: true,
		// Faults through a loopback proxy the test cuts or freezes, in
		// front of the server (which is never stopped).
		Faulty: func(t testing.TB) (string, contracttests.Faults) {
			return faultyURL(t)
		},
	})
}
