package contracttests_test

import (
	"testing"

	"github.com/paissive/go-eventbus/contracttests"
	"github.com/paissive/go-eventbus/transports/memory"
)

// A transport runs the suite from its own tests, with a Harness that hands
// every test a URL of its own (here: a fresh in-process broker, forgotten
// when the test ends). In a _test.go file, testContract would be
// func TestContract(t *testing.T).
func ExampleRun() {
	testContract := func(t *testing.T) {
		contracttests.Run(t, contracttests.Harness{
			Name: "memory",
			URL: func(t testing.TB) string {
				name := "contract-" + t.Name()
				t.Cleanup(func() { memory.Forget(name) })
				return "mem://" + name
			},
			Parallel: true,
		})
	}
	_ = testContract
}
