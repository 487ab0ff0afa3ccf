package kafka

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/extensions"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/paissive/go-eventbus/eventbus"
)

// TestCloudEventTraceParent: a CloudEvent sent by the CloudEvents SDK's
// Kafka binding with the distributed-tracing extension is handled inside
// the trace its traceparent names: the handler's ctx is in that trace, and
// the process span is a child of (and linked to) the sender's span.
func TestCloudEventTraceParent(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	b, err := eventbus.New(testCtx(t), eventbus.Config{
		ServiceName: "traced", URL: testURL(t), Logger: quietLogger,
		TracerProvider: tp, Propagator: propagation.TraceContext{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	got := make(chan trace.SpanContext, 1)
	if err := b.Subscribe("shop.order.placed", func(ctx context.Context, ev eventbus.Event) error {
		got <- trace.SpanContextFromContext(ctx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}

	tr := b.Transport().(*Transport)
	topic, err := tr.names.eventTopic("shop.order.placed")
	if err != nil {
		t.Fatal(err)
	}
	cfg := sarama.NewConfig()
	cfg.Version = DefaultVersion
	sender, err := kafka_sarama.NewSender(tr.opts.brokers, cfg, topic)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(context.Background())
	client, err := cloudevents.NewClient(sender, cloudevents.WithTimeNow(), cloudevents.WithUUIDs())
	if err != nil {
		t.Fatal(err)
	}
	const traceID, spanID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	ce := cloudevents.NewEvent()
	ce.SetType("shop.order.placed")
	ce.SetSource("https://shop.example/orders")
	ce.SetExtension("eventtype", "integration")
	extensions.DistributedTracingExtension{TraceParent: "00-" + traceID + "-" + spanID + "-01", TraceState: "vendor=x"}.AddTracingAttributes(&ce)
	if err := ce.SetData(cloudevents.ApplicationJSON, map[string]string{"order": "42"}); err != nil {
		t.Fatal(err)
	}
	if res := client.Send(testCtx(t), ce); !cloudevents.IsACK(res) {
		t.Fatalf("sending the CloudEvent: %v", res)
	}

	var sc trace.SpanContext
	select {
	case sc = <-got:
	case <-time.After(testTimeout):
		t.Fatal("the CloudEvent was not handled")
	}
	if sc.TraceID().String() != traceID {
		t.Fatalf("handled in trace %s, want the CloudEvent's %s", sc.TraceID(), traceID)
	}
	var proc tracetest.SpanStub
	waitFor(t, "the process span", func() bool {
		for _, s := range exp.GetSpans() {
			if s.Name == "process shop.order.placed" {
				proc = s
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprint(len(exp.GetSpans()), " spans") })
	if proc.Parent.SpanID().String() != spanID || !proc.Parent.IsRemote() || proc.SpanContext.SpanID() != sc.SpanID() {
		t.Errorf("process span: parent %s (remote %v), span %s; want the sender's %s, and the handler's ctx in it (%s)",
			proc.Parent.SpanID(), proc.Parent.IsRemote(), proc.SpanContext.SpanID(), spanID, sc.SpanID())
	}
	if len(proc.Links) != 1 || proc.Links[0].SpanContext.SpanID().String() != spanID || proc.Links[0].SpanContext.TraceState().Get("vendor") != "x" {
		t.Errorf("process span links %+v, want one to the sender's span with its tracestate", proc.Links)
	}
}

// TestConnectivity: the transport reports the cluster unreachable while
// its listener is cut, with the error, and reachable again once it heals;
// asking never talks to the cluster, so it answers at once throughout.
func TestConnectivity(t *testing.T) {
	t.Parallel()
	ln, addrs := faultCluster(t)
	b := newBus(t, faultURL(addrs), "health")
	tr := b.Transport().(*Transport)
	if c := tr.Connectivity(); !c.Connected || c.Since.IsZero() {
		t.Fatalf("after Open: %+v, want connected", c)
	}
	if h := b.Health(); !h.Ready || h.System != "kafka" {
		t.Fatalf("Health after Open: %+v, want ready on kafka", h)
	}
	cut := time.Now()
	ln.Cut()
	waitFor(t, "reported unreachable", func() bool {
		start := time.Now()
		c := tr.Connectivity()
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Fatalf("Connectivity took %v while the cluster is cut", d)
		}
		return !c.Connected
	}, func() string { return fmt.Sprintf("%+v", tr.Connectivity()) })
	c := tr.Connectivity()
	if c.Since.Before(cut) || c.LastError == "" || c.LastErrorTime.Before(cut) {
		t.Errorf("while cut: %+v, want disconnected since the cut, with the error", c)
	}
	if h := b.Health(); h.Ready || h.Connected || !strings.Contains(h.LastError, c.LastError) {
		t.Errorf("Health while cut: %+v, want not ready", h)
	}
	ln.Heal()
	waitFor(t, "reported reachable", func() bool { return tr.Connectivity().Connected },
		func() string { return fmt.Sprintf("%+v", tr.Connectivity()) })
	if h := b.Health(); !h.Ready {
		t.Errorf("Health after the heal: %+v, want ready", h)
	}
}
