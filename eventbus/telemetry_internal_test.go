package eventbus

import (
	"context"
	"log/slog"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/wire"
)

// stale is a trace context an event brought along: a handler republishing
// the event it received.
const stale = "00-11111111111111111111111111111111-2222222222222222-01"

func staleMessage() *message.Message {
	msg := encode(Event{ID: "e1", Name: "a.b", Source: "s", Type: Domain, CorrelationID: "e1"})
	msg.Metadata[wire.TraceParent] = stale
	msg.Metadata[wire.TraceState] = "old=1"
	return msg
}

// TestPublishReplacesTraceContext: the bus writes the publishing span's
// context over the one an event carried, and passes the event's own
// through when it has nothing to write.
func TestPublishReplacesTraceContext(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	tr, err := newTelemetry(Config{TracerProvider: tp, Propagator: propagation.TraceContext{}, Logger: discard()}, driver.Description{System: "test"}, nopTransport{})
	if err != nil {
		t.Fatal(err)
	}
	msg := staleMessage()
	span := tr.startPublish(context.Background(), msg)
	span.End()
	sc := span.SpanContext()
	want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"
	if got := msg.Metadata[wire.TraceParent]; got != want {
		t.Errorf("ce_traceparent = %q, want the publish span's %q", got, want)
	}
	if _, ok := msg.Metadata[wire.TraceState]; ok {
		t.Errorf("the stale tracestate survived: %q", msg.Metadata[wire.TraceState])
	}
	if trace.SpanContextFromContext(msg.Context()).SpanID() != sc.SpanID() {
		t.Error("the message's ctx does not carry the publish span")
	}

	// No SDK, no span in the ctx: nothing to propagate, so the event's
	// own trace context passes through unchanged.
	tr, err = newTelemetry(Config{Logger: discard()}, driver.Description{System: "test"}, nopTransport{})
	if err != nil {
		t.Fatal(err)
	}
	msg = staleMessage()
	tr.startPublish(context.Background(), msg).End()
	if v := msg.Metadata[wire.TraceParent]; v != stale || msg.Metadata[wire.TraceState] != "old=1" {
		t.Errorf("ce_traceparent = %q, ce_tracestate = %q; want the event's own passed through", v, msg.Metadata[wire.TraceState])
	}
}

// TestCarrier: propagator keys map to CloudEvents extension headers and
// cannot overwrite the bus's own attributes.
func TestCarrier(t *testing.T) {
	md := message.Metadata{wire.ID: "e1"}
	c := carrier(md)
	c.Set("traceparent", "tp")
	c.Set("Baggage", "k=v")
	c.Set("id", "hijacked")
	if md[wire.TraceParent] != "tp" || md["ce_baggage"] != "k=v" || md[wire.ID] != "e1" {
		t.Errorf("headers %v", md)
	}
	if c.Get("traceparent") != "tp" || c.Get("baggage") != "k=v" {
		t.Errorf("Get does not read back what Set wrote")
	}
	keys := map[string]bool{}
	for _, k := range c.Keys() {
		keys[k] = true
	}
	if len(keys) != 2 || !keys["traceparent"] || !keys["baggage"] {
		t.Errorf("Keys = %v, want traceparent and baggage", c.Keys())
	}
}

type nopTransport struct{ driver.Transport }

func (nopTransport) PoisonQueue() (driver.PoisonQueue, error) { return nil, driver.ErrUnsupported }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
