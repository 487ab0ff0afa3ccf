package main

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/examples/internal/extest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAsyncMemory(t *testing.T) {
	h := eventbustest.New(t)
	res, out := runScenario(t, h.URL())
	checkResult(t, res, out)
	// 8 + 3 + 1 events, each published once: the cancelled one came back
	// by redelivery, not by a second publish.
	h.WaitPublishedN("user.registered", concurrency+3+1)
	if n := len(h.Published()); n != concurrency+3+1 {
		t.Errorf("%d events were published, want %d", n, concurrency+3+1)
	}
}

func TestAsyncRabbitMQ(t *testing.T) {
	res, out := runScenario(t, extest.AMQPURL(t, "eventbus-examples-async"))
	checkResult(t, res, out)
}

// TestAsyncNATS runs the example on NATS JetStream, in a stream of its own.
func TestAsyncNATS(t *testing.T) {
	res, out := runScenario(t, extest.NATSURL(t, "examples-async"))
	checkResult(t, res, out)
}

func runScenario(t *testing.T, url string) (Result, string) {
	t.Helper()
	return extest.Run(t, 30*time.Second, run, url)
}

func checkResult(t *testing.T, res Result, out string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("output:\n%s", out)
		}
	}()
	// Act 1: the claim of the example is that Concurrency(8) runs eight
	// one-second handlers in about one second. Each handler works a full
	// second, so less is impossible; the upper bound is loose for busy
	// machines, but far below the 8s of one-at-a-time handling.
	if res.Handled != concurrency || res.PeakInFlight != concurrency {
		t.Errorf("act 1: %d handled with %d at most in flight, want %d and %d", res.Handled, res.PeakInFlight, concurrency, concurrency)
	}
	if res.Elapsed < workTime || res.Elapsed > 3*workTime {
		t.Errorf("act 1: %d one-second handlers took %v, want about one second (between 1s and 3s)", concurrency, res.Elapsed)
	}
	// Act 2: Close waited for every handler in flight.
	if res.InFlightAtClose != 3 || res.FinishedBeforeClose != 3 {
		t.Errorf("act 2: %d of %d handlers in flight had finished when Close returned, want 3 of 3", res.FinishedBeforeClose, res.InFlightAtClose)
	}
	if res.CloseTook > 3*workTime {
		t.Errorf("act 2: Close took %v", res.CloseTook)
	}
	// Act 3: the handler saw its ctx cancelled and its event came back.
	if res.Cancelled == "" || res.Redelivered != res.Cancelled {
		t.Errorf("act 3: cancelled %q, handled again %q; want the same event", res.Cancelled, res.Redelivered)
	}
	if !strings.Contains(res.CloseErr, "context deadline exceeded") {
		t.Errorf("act 3: Close error = %q, want the deadline", res.CloseErr)
	}
	if res.Duplicates > 0 {
		// At least once: an acknowledgement lost when a bus closed brings
		// an event back, and the idempotent handler skips it.
		t.Logf("%d already handled event(s) were delivered again and skipped", res.Duplicates)
	}
	for _, want := range []string{
		"act 1: 8 handlers finished in",
		"act 2: Close returned after",
		"3 of 3 handlers in flight had finished",
		"cancel lee: context canceled",
		"was cancelled, redelivered and handled",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
