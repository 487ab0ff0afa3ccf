package eventbus_test

import (
	"context"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/transports/memory"
)

// globalSDKChild marks the child process of TestGlobalSDKAfterNew, which
// sets the otel globals: they cannot be unset, so the test runs where they
// cannot change what the package's other tests see.
const globalSDKChild = "EVENTBUS_TEST_GLOBAL_SDK_CHILD"

// TestGlobalSDKAfterNew: a bus on the default providers records nothing
// and skips its instrumentation while no SDK is installed, and records
// spans and metrics from the next event on once the application installs
// one as the otel globals after New.
func TestGlobalSDKAfterNew(t *testing.T) {
	if os.Getenv(globalSDKChild) != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestGlobalSDKAfterNew$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), globalSDKChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child process: %v\n%s", err, out)
		}
		return
	}
	name := "global-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	ctx := context.Background()
	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "global", URL: "mem://" + name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(ctx) })
	var handled atomic.Int32
	var traced atomic.Value // the trace ID a handler's ctx carried
	if err := b.Subscribe("g.#", func(ctx context.Context, ev eventbus.Event) error {
		traced.Store(trace.SpanContextFromContext(ctx).TraceID().String())
		handled.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	publish := func() {
		t.Helper()
		ev, err := eventbus.NewEvent("g.x", nil)
		if err != nil {
			t.Fatal(err)
		}
		want := handled.Load() + 1
		if err := b.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "the event handled", func() bool { return handled.Load() == want })
	}
	publish()
	if id := traced.Load().(string); id != "00000000000000000000000000000000" {
		t.Errorf("without an SDK the handler's ctx carries trace %s, want none", id)
	}

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = tp.Shutdown(ctx); _ = mp.Shutdown(ctx) })
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(propagation.TraceContext{})

	publish()
	// The process span ends, and the consumed count is recorded, after
	// the handler returned: wait for them.
	kinds := map[string]int{}
	waitUntil(t, "the process span ended", func() bool {
		kinds = map[string]int{}
		for _, s := range exp.GetSpans() {
			kinds[s.Name]++
		}
		return kinds["process g.x"] > 0
	})
	if kinds["publish g.x"] != 1 || kinds["process g.x"] != 1 {
		t.Errorf("spans after the SDK was installed: %v, want one publish g.x and one process g.x", kinds)
	}
	if id := traced.Load().(string); id == "00000000000000000000000000000000" {
		t.Error("with the SDK the handler's ctx carries no trace")
	}
	var m map[string]metricdata.Metrics
	waitUntil(t, "the consumed event counted", func() bool {
		m = metrics(t, reader)
		return sum(m["messaging.client.consumed.messages"]) > 0
	})
	if got := sum(m["messaging.client.consumed.messages"]); got != 1 {
		t.Errorf("consumed messages recorded: %d, want 1 (the event after the SDK was installed)", got)
	}
	if got := sum(m["messaging.client.sent.messages"]); got != 1 {
		t.Errorf("sent messages recorded: %d, want 1", got)
	}
}
