package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/syncbuf"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestRawAMQPTraceParent: a message published with amqp091-go alone, with
// the CloudEvents headers and ce_traceparent, is handled inside the trace
// it names.
func TestRawAMQPTraceParent(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := eventbus.New(ctx, eventbus.Config{
		ServiceName: "raw-traced", URL: isolatedURL(t),
		TracerProvider: tp, Propagator: propagation.TraceContext{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	got := make(chan trace.SpanContext, 1)
	if err := b.Subscribe("raw.traced", func(ctx context.Context, ev eventbus.Event) error {
		got <- trace.SpanContextFromContext(ctx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}

	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	const traceID, spanID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	err = ch.PublishWithContext(ctx, transportOf(t, b).Exchange(), "raw.traced", true, false, amqp091.Publishing{
		ContentType: "application/json",
		Headers: amqp091.Table{
			"ce_specversion": "1.0", "ce_id": "raw-1", "ce_source": "raw-producer", "ce_type": "raw.traced",
			"ce_time": time.Now().UTC().Format(time.RFC3339), "ce_eventtype": "integration",
			"ce_traceparent": "00-" + traceID + "-" + spanID + "-01",
		},
		Body: []byte(`{"n":1}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case sc := <-got:
		if sc.TraceID().String() != traceID {
			t.Errorf("handled in trace %s, want the message's %s", sc.TraceID(), traceID)
		}
	case <-ctx.Done():
		t.Fatal("the raw message was not handled")
	}
	transporttest.WaitFor(t, 10*time.Second, "the process span", func() bool {
		for _, s := range exp.GetSpans() {
			if s.Name == "process raw.traced" {
				if s.Parent.SpanID().String() != spanID || s.SpanContext.TraceID().String() != traceID || len(s.Links) != 1 {
					t.Errorf("process span: trace %s, parent %s, %d links; want %s, %s and one link", s.SpanContext.TraceID(), s.Parent.SpanID(), len(s.Links), traceID, spanID)
				}
				if v := attrValue(s, "messaging.system"); v != "rabbitmq" {
					t.Errorf("messaging.system = %q, want rabbitmq", v)
				}
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprint(len(exp.GetSpans()), " spans") })
}

func attrValue(s tracetest.SpanStub, key string) string {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

// TestConnectivity: while a proxy in front of the broker is cut, the
// transport reports itself disconnected since the cut, with the error,
// and logs each failed reconnection attempt at Warn with the redacted
// URL, the attempt and the next delay; once healed it reports connected.
// Asking never waits for the broker. The poison queue counts its records.
func TestConnectivity(t *testing.T) {
	px := startFaultProxy(t)
	u := isolatedURLVia(t, px.Addr())
	var logs syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := eventbus.New(ctx, eventbus.Config{
		ServiceName: unique("health"), URL: u,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Policy: eventbus.Policy{MaxAttempts: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	if err := b.Subscribe("health.#", func(context.Context, eventbus.Event) error {
		return eventbus.Permanent(errors.New("poison it"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tr := transportOf(t, b)
	if c := tr.Connectivity(); !c.Connected || c.Since.IsZero() {
		t.Fatalf("connected transport reports %+v", c)
	}
	if d := tr.Describe(); d.System != "rabbitmq" || d.ServerAddress == "" || d.ServerPort == 0 {
		t.Errorf("Describe = %+v", d)
	}
	ev, err := eventbus.NewEvent("health.check", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 10*time.Second, "the poison queue counts the poisoned event", func() bool {
		n, err := tr.poison.PoisonCount(ctx)
		return err == nil && n == 1
	}, func() string { n, err := tr.poison.PoisonCount(ctx); return fmt.Sprint(n, err) })

	cut := time.Now()
	px.Cut()
	transporttest.WaitFor(t, 10*time.Second, "reported disconnected", func() bool {
		start := time.Now()
		c := tr.Connectivity()
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Fatalf("Connectivity took %v while the broker is cut", d)
		}
		return !c.Connected
	}, func() string { return fmt.Sprintf("%+v", tr.Connectivity()) })
	if c := tr.Connectivity(); c.Since.Before(cut) || c.LastError == "" {
		t.Errorf("while cut: %+v, want disconnected since the cut, with the error", c)
	}
	transporttest.WaitFor(t, 10*time.Second, "a failed reconnection logged", func() bool {
		return strings.Contains(logs.String(), "cannot connect to the broker; retrying")
	}, logs.String)
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, "cannot connect to the broker") {
			continue
		}
		if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "attempt=") || !strings.Contains(line, "delay=") ||
			!strings.Contains(line, ":xxxxx@"+px.Addr()) || strings.Contains(line, "guest:guest") {
			t.Errorf("connection attempt line lacks level, attempt, delay or the redacted URL: %s", line)
		}
	}
	if h := b.Health(); h.Ready || h.Connected || h.LastError == "" {
		t.Errorf("Health while cut: %+v", h)
	}
	px.Heal()
	transporttest.WaitFor(t, 20*time.Second, "reported connected", func() bool { return tr.Connectivity().Connected },
		func() string { return fmt.Sprintf("%+v", tr.Connectivity()) })
	c := tr.Connectivity()
	if c.Since.Before(cut) || c.LastError == "" {
		t.Errorf("after the heal: %+v, want connected since then, the last error kept", c)
	}
}
