package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/examples/internal/extest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestMarketingMemory(t *testing.T) {
	h := eventbustest.New(t)
	res, out := runScenario(t, h.URL())
	checkResult(t, res, out)

	// Seen from outside: every campaign was caused by a registration and
	// carries its correlation ID.
	regs := h.WaitPublishedN("user.registered", 4)
	campaigns := h.WaitPublishedN("marketing.campaign.started", 4)
	for _, c := range campaigns {
		i := slices.IndexFunc(regs, func(r eventbus.Event) bool { return r.ID == c.CausationID })
		if i < 0 {
			t.Errorf("campaign %s was caused by %q, which is no user.registered event", c.ID, c.CausationID)
			continue
		}
		if c.CorrelationID != regs[i].CorrelationID || c.Source != "marketing" {
			t.Errorf("campaign %s: correlation %q source %q, want the registration's correlation %q and source marketing", c.ID, c.CorrelationID, c.Source, regs[i].CorrelationID)
		}
	}
	h.WaitPublishedN("#", 12)
	if n := len(h.Published()); n != 12 {
		t.Errorf("%d events were published on the broker, want 12", n)
	}
}

func TestMarketingRabbitMQ(t *testing.T) {
	res, out := runScenario(t, extest.AMQPURL(t, "eventbus-examples-marketing"))
	checkResult(t, res, out)
}

// TestMarketingNATS runs the example on NATS JetStream, in a stream of its own.
func TestMarketingNATS(t *testing.T) {
	res, out := runScenario(t, extest.NATSURL(t, "examples-marketing"))
	checkResult(t, res, out)
}

func runScenario(t *testing.T, url string) (Result, string) {
	t.Helper()
	return extest.Run(t, 20*time.Second, run, url)
}

func checkResult(t *testing.T, res Result, out string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("output:\n%s", out)
		}
	}()
	if res.Published != 8 {
		t.Fatalf("the other services published %d events, want 8", res.Published)
	}
	// Competing consumers: each event handled once, by one instance, and
	// both instances got work.
	if len(res.HandledBy) != res.Published {
		t.Errorf("marketing handled %d distinct events, want %d", len(res.HandledBy), res.Published)
	}
	sum := 0
	for _, instance := range []string{"marketing#1", "marketing#2"} {
		if res.PerInstance[instance] == 0 {
			t.Errorf("%s handled no events (per instance: %v); the instances should share the work", instance, res.PerInstance)
		}
		sum += res.PerInstance[instance]
	}
	if sum != res.Published {
		t.Errorf("the instances handled %d events in all (%v), want each of the %d events once", sum, res.PerInstance, res.Published)
	}
	slices.Sort(res.Campaigns)
	if want := []string{"u-1", "u-2", "u-3", "u-4"}; !slices.Equal(res.Campaigns, want) {
		t.Errorf("welcome campaigns for %v, want %v", res.Campaigns, want)
	}
	// Fan-out: analytics saw every event, the campaigns included.
	want := map[string]int{
		"user.registered": 4, "user.upgraded": 2, "niche.analysis.completed": 1,
		"content.generation.completed": 1, "marketing.campaign.started": 4,
	}
	if res.AnalyticsTotal != 12 || len(res.AnalyticsSeen) != len(want) {
		t.Errorf("analytics saw %d events %v, want 12: %v", res.AnalyticsTotal, res.AnalyticsSeen, want)
	}
	for name, n := range want {
		if res.AnalyticsSeen[name] != n {
			t.Errorf("analytics saw %d %s, want %d", res.AnalyticsSeen[name], name, n)
		}
	}
	for _, line := range []string{
		"welcome campaign started for ada (u-1)",
		"promotion drafted from niche-analysis's result",
		"[analytics]   marketing.campaign.started   from marketing",
		"analytics saw all 12 events",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("output lacks %q", line)
		}
	}
}
