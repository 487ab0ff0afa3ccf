package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/examples/internal/extest"
	"github.com/paissive/go-eventbus/internal/faultnet"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestObservabilityMemory runs the example as a user does and checks what
// it prints.
func TestObservabilityMemory(t *testing.T) {
	_, out := extest.Run(t, 20*time.Second, func(ctx context.Context, w io.Writer, url string) (struct{}, error) {
		return struct{}{}, run(ctx, w, url, "127.0.0.1:0")
	}, "mem://observability-"+t.Name())
	for _, want := range []string{
		"publish order.placed   producer parent: POST /orders",
		"process order.placed   consumer parent: publish order.placed, outcome: handled",
		"publish order.billed   producer parent: process order.placed",
		"process order.billed   consumer parent: publish order.billed, outcome: handled",
		`GET /healthz: 200 {"ready":true,"service":"shop","system":"memory"`,
		`eventbus_poisoned_total{eventbus_poison_reason="permanent"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestObservabilityMetricsMemory scrapes /metrics after the scenario.
func TestObservabilityMetricsMemory(t *testing.T) {
	s := startService(t, "mem://observability-"+t.Name(), "shop")
	runScenario(t, s)
	checkHealth(t, s, 200)
}

// TestObservabilityRabbitMQ runs the service on RabbitMQ through a proxy:
// the metrics after the scenario, then /healthz while the proxy is cut
// (503) and after it healed (200).
func TestObservabilityRabbitMQ(t *testing.T) {
	raw := extest.AMQPURL(t, "eventbus-examples-observability")
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	px, err := faultnet.NewProxy(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the service (cleanups run last first), which purges
	// its poison records through it.
	t.Cleanup(func() { _ = px.Close() })
	u.Host = px.Addr()
	// A service name of this run's own: the broker's queues outlive it.
	s := startService(t, u.String(), fmt.Sprintf("shop-%d", time.Now().UnixNano()))
	runScenario(t, s)
	checkHealth(t, s, 200)
	px.Cut()
	waitHealth(t, s, 503)
	h := health(t, s)
	if h.Connected || h.LastError == "" || h.System != "rabbitmq" {
		t.Errorf("health while cut: %+v, want disconnected with the error", h)
	}
	px.Heal()
	waitHealth(t, s, 200)

}

// TestObservabilityNATS runs the service on NATS JetStream, in a stream
// of its own: the metrics after the scenario.
func TestObservabilityNATS(t *testing.T) {
	s := startService(t, extest.NATSURL(t, "examples-observability"), "shop")
	runScenario(t, s)
	checkHealth(t, s, 200)
}

// TestObservabilityLeavesOtherOrders: on NATS a new subscription starts at
// the stream's first event, so the service receives an order another
// program published before it subscribed; it acknowledges that order
// without billing it, and the scenario ends as usual.
func TestObservabilityLeavesOtherOrders(t *testing.T) {
	u := extest.NATSURL(t, "examples-observability-history")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	other, err := eventbus.New(ctx, eventbus.Config{ServiceName: "other", URL: u})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := eventbus.NewEvent("order.placed", order{N: 99})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if err := other.Close(ctx); err != nil {
		t.Fatal(err)
	}

	s := startService(t, u, "shop")
	if _, err := s.scenario(ctx, 9); err != nil {
		t.Fatal(err)
	}
	consumed := func() float64 {
		return total(scrape(t, s)["messaging_client_consumed_messages_total"], "messaging_destination_subscription_name", "billing")
	}
	for consumed() < 10 {
		if ctx.Err() != nil {
			t.Fatalf("billing consumed %v orders, want the 9 of the scenario and the other program's", consumed())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := total(scrape(t, s)["messaging_client_sent_messages_total"], "messaging_destination_name", "order.billed"); got != 6 || s.billed.Load() != 6 {
		t.Errorf("%v order.billed sent, %d shipped; want 6 of each: the other program's order is not billed", got, s.billed.Load())
	}
}

func startService(t *testing.T, url, name string) *service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out extest.Buffer
	s, err := start(ctx, options{URL: url, Addr: "127.0.0.1:0", Service: name, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, _ = s.bus.PurgePoison(ctx, eventbus.PoisonFilter{IDs: s.poisonedIDs()})
		s.close(ctx)
	})
	return s
}

// runScenario publishes 9 orders, 3 of them bad, and checks the metrics
// Prometheus scrapes.
func runScenario(t *testing.T, s *service) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := s.scenario(ctx, 9); err != nil {
		t.Fatal(err)
	}
	// The last delivery's metrics are recorded just after its handler
	// returned: wait for them.
	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams = scrape(t, s)
		if histCount(fams["messaging_process_duration_seconds"], "eventbus_outcome", "handled") == 12 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	check := func(what string, got, want float64) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	check("sent order.placed", total(fams["messaging_client_sent_messages_total"], "messaging_destination_name", "order.placed"), 9)
	check("sent order.billed", total(fams["messaging_client_sent_messages_total"], "messaging_destination_name", "order.billed"), 6)
	check("consumed by billing", total(fams["messaging_client_consumed_messages_total"], "messaging_destination_subscription_name", "billing"), 9)
	check("consumed by shipping", total(fams["messaging_client_consumed_messages_total"], "messaging_destination_subscription_name", "shipping"), 6)
	check("handled (histogram count)", float64(histCount(fams["messaging_process_duration_seconds"], "eventbus_outcome", "handled")), 12)
	check("poisoned (histogram count)", float64(histCount(fams["messaging_process_duration_seconds"], "eventbus_outcome", "poisoned")), 3)
	check("poisoned permanent", total(fams["eventbus_poisoned_total"], "eventbus_poison_reason", "permanent"), 3)
	check("publish calls (histogram count)", float64(histCount(fams["messaging_client_operation_duration_seconds"], "messaging_operation_name", "publish")), 15)
	check("in flight", total(fams["eventbus_handlers_in_flight"], "", ""), 0)
	check("poison depth", total(fams["eventbus_poison_depth"], "", ""), 3)
}

// scrape GETs /metrics and parses the text format.
func scrape(t *testing.T, s *service) map[string]*dto.MetricFamily {
	t.Helper()
	code, body, err := get(context.Background(), "http://"+s.addr+"/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return fams
}

func matches(m *dto.Metric, label, value string) bool {
	if label == "" {
		return true
	}
	for _, l := range m.GetLabel() {
		if l.GetName() == label && l.GetValue() == value {
			return true
		}
	}
	return false
}

// total sums the counters or gauges of a family with the label.
func total(f *dto.MetricFamily, label, value string) float64 {
	var n float64
	for _, m := range f.GetMetric() {
		if matches(m, label, value) {
			n += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return n
}

// histCount sums the sample counts of a histogram family with the label.
func histCount(f *dto.MetricFamily, label, value string) uint64 {
	var n uint64
	for _, m := range f.GetMetric() {
		if matches(m, label, value) {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

func health(t *testing.T, s *service) eventbus.Health {
	t.Helper()
	return s.bus.Health()
}

func checkHealth(t *testing.T, s *service, want int) {
	t.Helper()
	code, body, err := get(context.Background(), "http://"+s.addr+"/healthz")
	if err != nil || code != want {
		t.Fatalf("GET /healthz: %d %v %s, want %d", code, err, body, want)
	}
}

// waitHealth polls /healthz over HTTP until it answers want.
func waitHealth(t *testing.T, s *service, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		start := time.Now()
		code, body, err := get(context.Background(), "http://"+s.addr+"/healthz")
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("GET /healthz took %v", d)
		}
		if code == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz answers %d %s, want %d", code, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
