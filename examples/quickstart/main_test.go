package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/examples/internal/extest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestQuickstartMemory(t *testing.T) {
	h := eventbustest.New(t)
	out := runScenario(t, h.URL())
	checkOutput(t, out)
	evs := h.WaitPublishedN("user.registered", 2)
	for _, ev := range evs {
		if ev.Source != "my-service" || ev.CorrelationID != ev.ID {
			t.Errorf("event %s: source %q correlation %q; want my-service and its own ID", ev.ID, ev.Source, ev.CorrelationID)
		}
	}
}

func TestQuickstartRabbitMQ(t *testing.T) {
	checkOutput(t, runScenario(t, extest.AMQPURL(t, "eventbus-examples-quickstart")))
}

// TestQuickstartNATS runs the example on NATS JetStream, in a stream of its own.
func TestQuickstartNATS(t *testing.T) {
	checkOutput(t, runScenario(t, extest.NATSURL(t, "examples-quickstart")))
}

func runScenario(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// The handlers write concurrently: the buffer must be safe for that.
	var out extest.Buffer
	if err := run(ctx, &out, url); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	return out.String()
}

func checkOutput(t *testing.T, out string) {
	t.Helper()
	for _, want := range []string{
		"basic handler: user registered: john_doe (event ",
		"basic handler: user registered: jane_doe (event ",
		"schema handler: user registered: john_doe <john.doe@example.com>",
		"schema handler: user registered: jane_doe <jane.doe@example.com>",
		"all events handled",
	} {
		if n := strings.Count(out, want); n != 1 {
			t.Errorf("output has %d times %q, want once", n, want)
		}
	}
	if !strings.HasSuffix(out, "all events handled\n") {
		t.Errorf("output does not end with %q", "all events handled")
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}
