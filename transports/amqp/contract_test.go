package amqp

import (
	"testing"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/contracttests"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// TestContract runs the whole contract suite on the real broker; each test
// gets its own exchange, and its exchange and queues are deleted after it.
func TestContract(t *testing.T) {
	t.Logf("RabbitMQ broker: %s", driver.RedactURL(brokertest.AMQPURL(t)))
	contracttests.Run(t, contracttests.Harness{
		Name: "amqp",
		URL:  func(t testing.TB) string { return isolatedURL(t) },
		// Faults through a loopback proxy the test cuts or freezes, in
		// front of the shared broker (which is never stopped).
		Faulty: func(t testing.TB) (string, contracttests.Faults) {
			px := startFaultProxy(t)
			return isolatedURLVia(t, px.Addr()), px
		},
		// Sequential: the whole suite takes about 30 s (a third of it in
		// the fault tests, which wait for deadlines), and timing checks
		// (retry delays) stay meaningful on a busy machine.
	})
}
