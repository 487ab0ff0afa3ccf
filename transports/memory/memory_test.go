package memory_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/contracttests"
	"github.com/paissive/go-eventbus/transports/memory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// freshURL gives every test its own in-process broker.
func freshURL(t testing.TB) string {
	name := "contract-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	return "mem://" + name
}

func TestContract(t *testing.T) {
	contracttests.Run(t, contracttests.Harness{Name: "memory", URL: freshURL, Parallel: true})
}
