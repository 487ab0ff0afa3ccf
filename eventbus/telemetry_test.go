package eventbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/transports/memory"
)

// metrics collects a ManualReader's metrics by name.
func metrics(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// sum adds up the points of a counter (or up-down counter, or gauge)
// whose attributes include want.
func sum(m metricdata.Metrics, want ...attribute.KeyValue) int64 {
	var n int64
	points := func(attrs attribute.Set, v int64) {
		for _, kv := range want {
			if got, ok := attrs.Value(kv.Key); !ok || got != kv.Value {
				return
			}
		}
		n += v
	}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			points(p.Attributes, p.Value)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			points(p.Attributes, p.Value)
		}
	}
	return n
}

// count adds up the counts of a histogram's points whose attributes
// include want.
func count(m metricdata.Metrics, want ...attribute.KeyValue) uint64 {
	var n uint64
	d, _ := m.Data.(metricdata.Histogram[float64])
outer:
	for _, p := range d.DataPoints {
		for _, kv := range want {
			if got, ok := p.Attributes.Value(kv.Key); !ok || got != kv.Value {
				continue outer
			}
		}
		n += p.Count
	}
	return n
}

// TestMetrics publishes events of which some are retried and some
// poisoned, and reads every metric the bus records.
func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	name := "metrics-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	ctx := context.Background()
	b, err := eventbus.New(ctx, eventbus.Config{
		ServiceName: "metered", URL: "mem://" + name, MeterProvider: mp,
		Policy: eventbus.Policy{MaxAttempts: 2, InitialBackoff: time.Millisecond, Jitter: eventbus.NoJitter},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(ctx) })
	var done atomic.Int32
	var flaky atomic.Int32
	err = b.Subscribe("m.#", func(_ context.Context, ev eventbus.Event) error {
		defer done.Add(1)
		switch ev.Name {
		case "m.bad":
			return errors.New("always fails")
		case "m.flaky":
			if flaky.Add(1) == 1 {
				return errors.New("fails once")
			}
		}
		return nil
	}, eventbus.SubscriptionName("all"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var evs []eventbus.Event
	for _, n := range []string{"m.ok", "m.ok", "m.ok", "m.bad", "m.bad", "m.flaky"} {
		ev, err := eventbus.NewEvent(n, nil)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	if err := b.Publish(ctx, evs...); err != nil {
		t.Fatal(err)
	}
	unroutable, _ := eventbus.NewEvent("nobody.listens", nil)
	if err := b.Publish(ctx, unroutable); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Fatalf("unroutable event: %v", err)
	}
	// 3 ok + 2 bad × 2 attempts + flaky × 2.
	waitUntil(t, "all attempts", func() bool { return done.Load() == 9 })
	sub := attribute.String("messaging.destination.subscription.name", "all")
	var m map[string]metricdata.Metrics
	waitUntil(t, "the last delivery recorded", func() bool {
		m = metrics(t, reader)
		return count(m["messaging.process.duration"]) == 6
	})
	check := func(what string, got, want int64) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %d, want %d", what, got, want)
		}
	}
	dest := func(n string) attribute.KeyValue { return attribute.String("messaging.destination.name", n) }
	check("sent m.ok", sum(m["messaging.client.sent.messages"], dest("m.ok")), 3)
	check("sent, all", sum(m["messaging.client.sent.messages"]), 7)
	check("sent unroutable", sum(m["messaging.client.sent.messages"], attribute.String("error.type", "unroutable")), 1)
	check("publish calls", int64(count(m["messaging.client.operation.duration"])), 4) // m.ok, m.bad, m.flaky, nobody.listens
	check("consumed", sum(m["messaging.client.consumed.messages"], sub), 6)
	check("handled", int64(count(m["messaging.process.duration"], sub, attribute.String("eventbus.outcome", "handled"))), 4)
	check("poisoned (duration)", int64(count(m["messaging.process.duration"], attribute.String("eventbus.outcome", "poisoned"), attribute.String("error.type", "retries-exhausted"))), 2)
	check("retries", sum(m["eventbus.retries"], sub), 3)
	check("poisoned", sum(m["eventbus.poisoned"], sub, attribute.String("eventbus.poison.reason", "retries-exhausted")), 2)
	check("in flight", sum(m["eventbus.handlers.in_flight"], sub), 0)
	check("poison depth", sum(m["eventbus.poison.depth"], attribute.String("eventbus.service", "metered")), 2)
	check("store failures", sum(m["eventbus.poison.store_failures"]), 0)
	if got := m["messaging.client.consumed.messages"].Data.(metricdata.Sum[int64]).DataPoints[0].Attributes; !got.HasValue("messaging.system") || !got.HasValue("messaging.consumer.group.name") {
		t.Errorf("consumed attributes %v lack the system or the group", got.ToSlice())
	}
	if _, err := b.PurgePoison(ctx, eventbus.PoisonFilter{}); err != nil {
		t.Fatal(err)
	}
	check("poison depth after purge", sum(metrics(t, reader)["eventbus.poison.depth"]), 0)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within 10s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestOnPublish: the hook sees each event with its fields filled in, may
// change it, and refusing one refuses the whole call.
func TestOnPublish(t *testing.T) {
	name := "onpublish-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	ctx := context.Background()
	type key struct{}
	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "stamped", URL: "mem://" + name,
		OnPublish: func(ctx context.Context, ev *eventbus.Event) error {
			if ev.ID == "" || ev.Source != "stamped" || ev.CorrelationID == "" || ev.Time.IsZero() {
				return fmt.Errorf("fields not filled in: %+v", ev)
			}
			if ev.Name == "refused" {
				return errors.New("not allowed")
			}
			tenant, _ := ctx.Value(key{}).(string)
			if ev.Metadata == nil {
				ev.Metadata = map[string]string{}
			}
			ev.Metadata["tenant"] = tenant
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(ctx) })
	got := make(chan eventbus.Event, 2)
	if err := b.Subscribe("#", func(_ context.Context, ev eventbus.Event) error { got <- ev; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ok, _ := eventbus.NewEvent("accepted", nil)
	refused, _ := eventbus.NewEvent("refused", nil)
	if err := b.Publish(context.WithValue(ctx, key{}, "acme"), ok, refused); err == nil || !strings.Contains(err.Error(), "not allowed") || !strings.Contains(err.Error(), refused.ID) {
		t.Fatalf("Publish with a refused event: %v, want an error", err)
	}
	if err := b.Publish(context.WithValue(ctx, key{}, "acme"), ok); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-got:
		if ev.ID != ok.ID || ev.Metadata["tenant"] != "acme" {
			t.Errorf("received %s with metadata %v, want %s stamped with tenant acme (and nothing of the refused call)", ev.ID, ev.Metadata, ok.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not delivered")
	}
}

// TestHealth: a bus with a subscription is not ready before Start, ready
// once consuming, and reports each subscription; the handler serves it
// with 200 or 503; a closed bus is not ready.
func TestHealth(t *testing.T) {
	name := "health-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	ctx := context.Background()
	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "probed", URL: "mem://" + name})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	if err := b.Subscribe("h.#", func(context.Context, eventbus.Event) error {
		entered <- struct{}{}
		<-release
		return nil
	}, eventbus.SubscriptionName("slow")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b.HealthHandler())
	defer srv.Close()
	get := func() (int, eventbus.Health) {
		t.Helper()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h eventbus.Health
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		return resp.StatusCode, h
	}
	if code, h := get(); code != http.StatusServiceUnavailable || h.Ready || len(h.Subscriptions) != 1 || h.Subscriptions[0].Consuming || !h.Connected || h.System != "memory" {
		t.Errorf("before Start: %d %+v, want 503, connected, one subscription not consuming", code, h)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ev, _ := eventbus.NewEvent("h.x", nil)
	before := time.Now()
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	<-entered
	code, h := get()
	s := h.Subscriptions[0]
	if code != http.StatusOK || !h.Ready || h.Service != "probed" || s.Name != "slow" || s.Pattern != "h.#" || !s.Consuming || s.InFlight != 1 || s.LastDelivery.Before(before.Add(-time.Second)) {
		t.Errorf("handling: %d %+v, want 200, ready, subscription slow consuming with one in flight", code, h)
	}
	close(release)
	waitUntil(t, "nothing in flight", func() bool { return b.Health().Subscriptions[0].InFlight == 0 })
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if code, h := get(); code != http.StatusServiceUnavailable || h.Ready || !h.Closed || h.Subscriptions[0].Consuming {
		t.Errorf("after Close: %d %+v, want 503, closed", code, h)
	}
}

// TestDisableTelemetry: with the telemetry off, no span is started, the
// trace context of the ctx is not written on the wire, and health still
// counts.
func TestDisableTelemetry(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	name := "off-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	ctx := context.Background()
	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "dark", URL: "mem://" + name,
		TracerProvider: tp, Propagator: propagation.TraceContext{}, DisableTelemetry: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(ctx) })
	got := make(chan bool, 1)
	if err := b.Subscribe("#", func(ctx context.Context, ev eventbus.Event) error {
		got <- true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sctx, span := tp.Tracer("test").Start(ctx, "root")
	ev, _ := eventbus.NewEvent("x", nil)
	if err := b.Publish(sctx, ev); err != nil {
		t.Fatal(err)
	}
	span.End()
	<-got
	waitUntil(t, "the delivery counted", func() bool { return !b.Health().Subscriptions[0].LastDelivery.IsZero() })
	if spans := exp.GetSpans(); len(spans) != 1 || spans[0].Name != "root" {
		t.Errorf("spans %v, want only the test's root", spans)
	}
}
