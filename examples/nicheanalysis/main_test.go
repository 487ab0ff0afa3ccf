package main

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/examples/internal/extest"
	"github.com/paissive/go-eventbus/middleware"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The scores of the example's keywords decide how many opportunities there
// are: 3 for na-1 and 2 for na-2.
const wantOpportunities = 5

func TestNicheAnalysisMemory(t *testing.T) {
	h := eventbustest.New(t)
	res, out := runScenario(t, h.URL())
	checkResult(t, res, out)

	// From outside: each follow-up was published while handling its
	// request, so it carries the request's ID as correlation and cause.
	for _, reqID := range res.Requests {
		h.WaitPublished("niche.analysis.completed", eventbustest.CorrelatedWith(reqID), eventbustest.CausedBy(reqID))
	}
	opps := h.WaitPublishedN("niche.opportunity.*", wantOpportunities)
	for _, o := range opps {
		if o.DataVersion != "1" || o.Type != eventbus.Domain || o.Source != "niche-analysis" {
			t.Errorf("opportunity %s: version %q type %s source %s, want 1, domain, niche-analysis", o.ID, o.DataVersion, o.Type, o.Source)
		}
	}
	p := h.WaitPoisoned("niche.analysis.requested", eventbustest.InService("niche-analysis"))
	if p.Event.ID != res.Invalid || p.Attempts != 1 || p.Reason != middleware.ReasonPermanent {
		t.Errorf("poisoned %s after %d attempts (reason %s), want the invalid request %s after 1 attempt, reason permanent", p.Event.ID, p.Attempts, p.Reason, res.Invalid)
	}
	h.WaitPublishedN("#", 3+2+wantOpportunities)
	if n := len(h.Published()); n != 3+2+wantOpportunities {
		t.Errorf("%d events were published, want %d", n, 3+2+wantOpportunities)
	}
}

func TestNicheAnalysisRabbitMQ(t *testing.T) {
	res, out := runScenario(t, extest.AMQPURL(t, "eventbus-examples-nicheanalysis"))
	checkResult(t, res, out)
}

// TestNicheAnalysisNATS runs the example on NATS JetStream, in a stream of its own.
func TestNicheAnalysisNATS(t *testing.T) {
	res, out := runScenario(t, extest.NATSURL(t, "examples-nicheanalysis"))
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
	if len(res.Requests) != 2 {
		t.Fatalf("requests = %v, want na-1 and na-2", res.Requests)
	}
	if !strings.Contains(res.Rejected, "niche: required; requested_by: must be an email address") {
		t.Errorf("schema rejection = %q, want it to name the missing niche and the bad email", res.Rejected)
	}
	if len(res.Completed) != 2 {
		t.Errorf("completed analyses = %d, want 2", len(res.Completed))
	}
	for _, c := range res.Completed {
		if c.Score < 0 || c.Score > 100 || len(c.Keywords) == 0 {
			t.Errorf("completed %+v: want a score in [0, 100] and keyword scores", c)
		}
	}
	if len(res.Opportunities) != wantOpportunities {
		t.Errorf("opportunities = %d, want %d", len(res.Opportunities), wantOpportunities)
	}
	for _, o := range res.Opportunities {
		if o.Score < threshold {
			t.Errorf("opportunity %+v scores below %d", o, threshold)
		}
	}
	// Every follow-up carries its request's correlation and causation.
	if len(res.FollowUps) != 2+wantOpportunities {
		t.Errorf("follow-ups = %d, want %d", len(res.FollowUps), 2+wantOpportunities)
	}
	for _, f := range res.FollowUps {
		req := res.Requests[f.AnalysisID]
		if f.CorrelationID != req || f.CausationID != req {
			t.Errorf("follow-up %s of %s: correlation %s causation %s, want the request %s for both", f.Name, f.AnalysisID, f.CorrelationID, f.CausationID, req)
		}
	}
	want := map[string]int{"niche.analysis.requested": 3, "niche.analysis.completed": 2, "niche.opportunity.identified": wantOpportunities}
	for name, n := range want {
		if res.Audited[name] != n {
			t.Errorf("audit saw %d %s, want %d (all: %v)", res.Audited[name], name, n, res.Audited)
		}
	}
	p := res.Poisoned
	if p.Event.ID != res.Invalid || p.Attempts != 1 || p.Subscription != "niche.analysis.requested" || !strings.Contains(p.Error, "niche: required") {
		t.Errorf("poisoned = %s by %s after %d attempts: %s; want the invalid request %s by niche.analysis.requested after 1 attempt", p.Event.ID, p.Subscription, p.Attempts, p.Error, res.Invalid)
	}
	for _, line := range []string{
		"rejected  before publishing:",
		`report    na-1 "home fitness": score`,
		`brief     na-2: content brief for "pet camera"`,
		"after 1 attempt(s)",
		"done: 2 analyses completed, 5 opportunities, 10 events audited, 1 invalid request poisoned",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("output lacks %q", line)
		}
	}
}
