// Command observability is a service with the bus's observability wired
// up: the OpenTelemetry SDK for traces and metrics, a Prometheus exporter
// serving the metrics on /metrics, and the bus's health handler on
// /healthz for a readiness probe.
//
//	go run ./examples/observability
//
// It subscribes to "order.placed" (the handler publishes "order.billed"
// and refuses orders marked bad, which go to the poison queue) and to
// "order.billed", publishes nine orders (three bad), then prints one
// order's trace, its health and the main metrics as Prometheus serves
// them, and exits. It runs on the in-process broker unless EVENTBUS_URL
// names another, e.g. EVENTBUS_URL=amqp://guest:guest@localhost:5672/;
// OBSERVABILITY_ADDR sets the HTTP address (default 127.0.0.1:9464, the
// Prometheus exporter's usual port; 127.0.0.1:0 picks a free one).
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/paissive/go-eventbus/eventbus"
	_ "github.com/paissive/go-eventbus/transports/amqp"
	_ "github.com/paissive/go-eventbus/transports/kafka"
	_ "github.com/paissive/go-eventbus/transports/memory"
	_ "github.com/paissive/go-eventbus/transports/nats"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := os.Getenv("OBSERVABILITY_ADDR")
	if addr == "" {
		addr = "127.0.0.1:9464"
	}
	if err := run(ctx, os.Stdout, os.Getenv("EVENTBUS_URL"), addr); err != nil {
		fmt.Fprintln(os.Stderr, "observability:", err)
		os.Exit(1)
	}
}

// run starts the service, runs the scenario, prints what an operator
// would look at, and stops.
func run(ctx context.Context, out io.Writer, url, addr string) error {
	s, err := start(ctx, options{URL: url, Addr: addr, Service: "shop", Out: out})
	if err != nil {
		return err
	}
	defer s.close(context.Background())
	fmt.Fprintf(out, "serving http://%s/metrics and http://%s/healthz\n", s.addr, s.addr)
	first, err := s.scenario(ctx, 9)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "trace of the first order:")
	for _, line := range s.spans.trace(first) {
		fmt.Fprintln(out, "  "+line)
	}
	code, body, err := get(ctx, "http://"+s.addr+"/healthz")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "GET /healthz: %d %s", code, body)
	_, body, err = get(ctx, "http://"+s.addr+"/metrics")
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "GET /metrics (excerpt):")
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		for _, m := range []string{"messaging_client_sent_messages_total{", "messaging_process_duration_seconds_count{", "eventbus_poisoned_total{", "eventbus_poison_depth{"} {
			if strings.HasPrefix(line, m) {
				fmt.Fprintln(out, "  "+line)
			}
		}
	}
	// Leave the broker as we found it.
	_, err = s.bus.PurgePoison(ctx, eventbus.PoisonFilter{IDs: s.poisonedIDs()})
	return err
}

// options configure the service.
type options struct {
	URL, Addr, Service string
	Out                io.Writer
}

// service is the example service: a bus, its telemetry and an HTTP server.
type service struct {
	bus   *eventbus.Bus
	srv   *http.Server
	addr  string
	tp    *sdktrace.TracerProvider
	mp    *sdkmetric.MeterProvider
	spans *spanLog
	done  chan struct{} // closed when the server has stopped

	mu      sync.Mutex
	orders  map[string]bool // IDs of the orders this run published
	bad     []string        // those refused
	billed  atomic.Int32
	billing map[string]bool // IDs of the billing events published
}

func start(ctx context.Context, o options) (*service, error) {
	if o.URL == "" {
		o.URL = "mem://"
	}
	s := &service{orders: map[string]bool{}, billing: map[string]bool{}, spans: &spanLog{}, done: make(chan struct{})}

	// Traces: every span sampled, kept by spanLog so that the example can
	// print one trace; a real service exports them, e.g. with otlptracegrpc
	// (see docs/observability.md). W3C trace context on the wire.
	s.tp = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSyncer(s.spans))
	otel.SetTracerProvider(s.tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))

	// Metrics: the Prometheus exporter is a reader of the SDK's meter
	// provider; it registers with its own registry, served on /metrics.
	reg := prometheus.NewRegistry()
	exp, err := promexporter.New(promexporter.WithRegisterer(reg), promexporter.WithoutScopeInfo())
	if err != nil {
		return nil, err
	}
	s.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	otel.SetMeterProvider(s.mp)

	// The bus uses the globals set above (Config.TracerProvider and
	// friends would override them).
	s.bus, err = eventbus.New(ctx, eventbus.Config{ServiceName: o.Service, URL: o.URL,
		Policy: eventbus.Policy{MaxAttempts: 2, InitialBackoff: 10 * time.Millisecond}})
	if err != nil {
		s.shutdownTelemetry()
		return nil, err
	}
	if err := s.subscribe(); err != nil {
		s.close(context.Background())
		return nil, err
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/healthz", s.bus.HealthHandler())
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		s.close(context.Background())
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	if err := s.bus.Start(ctx); err != nil {
		s.close(context.Background())
		return nil, err
	}
	return s, nil
}

// order is the data of an "order.placed" event.
type order struct {
	N   int  `json:"n"`
	Bad bool `json:"bad,omitempty"`
}

func (s *service) subscribe() error {
	err := s.bus.Subscribe("order.placed", func(ctx context.Context, ev eventbus.Event) error {
		// A broker that keeps history (NATS and Kafka start a new
		// subscription at the first stored event) may hand over orders of
		// earlier runs, or of other programs: they are acknowledged and
		// left alone.
		s.mu.Lock()
		mine := s.orders[ev.ID]
		s.mu.Unlock()
		if !mine {
			return nil
		}
		var o order
		if err := ev.Decode(&o); err != nil {
			return eventbus.Permanent(err)
		}
		if o.Bad {
			return eventbus.Permanent(fmt.Errorf("order %d is malformed", o.N))
		}
		billed, err := eventbus.NewEvent("order.billed", map[string]int{"n": o.N})
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.billing[billed.ID] = true
		s.mu.Unlock()
		// Published with the handler's ctx: the billing event continues
		// the order's trace and correlation.
		return s.bus.Publish(ctx, billed)
	}, eventbus.SubscriptionName("billing"))
	if err != nil {
		return err
	}
	return s.bus.Subscribe("order.billed", func(ctx context.Context, ev eventbus.Event) error {
		s.mu.Lock()
		mine := s.billing[ev.ID]
		s.mu.Unlock()
		if mine {
			s.billed.Add(1)
		}
		return nil
	}, eventbus.SubscriptionName("shipping"))
}

// scenario publishes n orders, every third one bad, and returns once each
// good one was billed and shipped and each bad one poisoned; it returns
// the first order's trace ID.
func (s *service) scenario(ctx context.Context, n int) (string, error) {
	tracer := otel.Tracer("examples/observability")
	var first string
	for i := range n {
		ev, err := eventbus.NewEvent("order.placed", order{N: i, Bad: i%3 == 2})
		if err != nil {
			return "", err
		}
		s.mu.Lock()
		s.orders[ev.ID] = true
		if i%3 == 2 {
			s.bad = append(s.bad, ev.ID)
		}
		s.mu.Unlock()
		// Each order in a trace of its own, as if a web request placed it.
		pctx, span := tracer.Start(ctx, "POST /orders")
		if i == 0 {
			first = span.SpanContext().TraceID().String()
		}
		err = s.bus.Publish(pctx, ev)
		span.End()
		if err != nil {
			return "", err
		}
	}
	good := int32(n - len(s.bad))
	for {
		ps, err := s.bus.Poisoned(ctx, eventbus.PoisonFilter{IDs: s.poisonedIDs()})
		if err != nil {
			return "", err
		}
		if len(ps) == len(s.bad) && s.billed.Load() == good {
			return first, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for the orders: %d of %d poisoned, %d of %d shipped: %w", len(ps), len(s.bad), s.billed.Load(), good, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *service) poisonedIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.bad)
}

// close stops the HTTP server and the bus, then flushes the telemetry.
func (s *service) close(ctx context.Context) {
	if s.srv != nil {
		_ = s.srv.Shutdown(ctx)
		<-s.done
	}
	_ = s.bus.Close(ctx)
	s.shutdownTelemetry()
}

func (s *service) shutdownTelemetry() {
	_ = s.tp.Shutdown(context.Background())
	if s.mp != nil {
		_ = s.mp.Shutdown(context.Background())
	}
}

// get fetches url and returns its status and body.
func get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// spanLog is a span exporter that keeps the spans in memory, so that the
// example can print a trace; a real service exports to a collector.
type spanLog struct {
	mu    sync.Mutex
	spans []sdktrace.ReadOnlySpan
}

func (l *spanLog) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.spans = append(l.spans, spans...)
	return nil
}

func (l *spanLog) Shutdown(context.Context) error { return nil }

// trace describes the spans of one trace, in the order they started.
func (l *spanLog) trace(traceID string) []string {
	l.mu.Lock()
	spans := slices.Clone(l.spans)
	l.mu.Unlock()
	spans = slices.DeleteFunc(spans, func(s sdktrace.ReadOnlySpan) bool { return s.SpanContext().TraceID().String() != traceID })
	slices.SortFunc(spans, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
	names := map[string]string{}
	for _, s := range spans {
		names[s.SpanContext().SpanID().String()] = s.Name()
	}
	var lines []string
	for _, s := range spans {
		parent := "none"
		if s.Parent().IsValid() {
			parent = names[s.Parent().SpanID().String()]
		}
		line := fmt.Sprintf("%-22s %-8s parent: %s", s.Name(), strings.ToLower(s.SpanKind().String()), parent)
		for _, kv := range s.Attributes() {
			if kv.Key == "eventbus.outcome" {
				line += ", outcome: " + kv.Value.AsString()
			}
		}
		lines = append(lines, line)
	}
	return lines
}

var _ sdktrace.SpanExporter = (*spanLog)(nil)
