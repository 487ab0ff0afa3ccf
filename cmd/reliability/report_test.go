package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// fixture returns results for a run of 8 events with the broker back at
// t0+10s, the 1 s grace, and one event in each situation the counts tell
// apart.
func fixture(kafka bool) results {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	return results{
		scenario: "test", broker: "test broker", kafka: kafka,
		events: 8, publishers: 1, batch: 1, outage: 5 * time.Second, grace: time.Second,
		start: t0, recovered: at(10),
		outcomes: map[string]outcome{
			"ok-handled":        {ok: true, returned: at(1)},
			"ok-lost":           {ok: true, returned: at(2)},
			"ok-twice":          {ok: true, returned: at(3)},
			"failed-in-outage":  {returned: at(6), err: "connection refused"},
			"failed-in-grace":   {returned: at(10.9), err: "circuit breaker is open"},
			"failed-late":       {returned: at(11.5), err: "circuit breaker is open"},
			"failed-but-stored": {returned: at(7), err: "confirm lost"},
		},
		handled: map[string]int{
			"ok-handled":        1,
			"ok-twice":          3,
			"failed-but-stored": 1,
		},
		foreign: 2,
	}
}

func TestTallyCountsEachSituation(t *testing.T) {
	c := tally(fixture(true))
	for _, f := range []struct {
		name      string
		got, want int
	}{
		{"planned", c.planned, 8},
		{"not published", c.notPublished, 1}, // 8 planned, 7 reported on
		{"published ok", c.publishedOK, 3},
		{"failed", c.failed, 4},
		// Only the failure 1.5 s after recovery: 0.9 s is within the grace.
		{"failed after recovery", c.failedAfterRecovery, 1},
		{"lost", c.lost, 1},
		{"duplicated", c.duplicated, 1},
		{"extra deliveries", c.extraDeliveries, 2},
		{"handled although failed", c.handledAlthoughFailed, 1},
		{"foreign", c.foreign, 2},
	} {
		if f.got != f.want {
			t.Errorf("%s = %d, want %d", f.name, f.got, f.want)
		}
	}
	if len(c.lostSample) != 1 || c.lostSample[0] != "ok-lost" {
		t.Errorf("lost sample = %v, want [ok-lost]", c.lostSample)
	}
	if c.latestFailure != 1500*time.Millisecond {
		t.Errorf("latest failure = %v after recovery, want 1.5s", c.latestFailure)
	}
	if len(c.errors) != 3 || c.errors[0] != (errorCount{"circuit breaker is open", 2}) {
		t.Errorf("errors = %v, want the breaker error first with 2 events, 3 distinct", c.errors)
	}
}

func TestTallyFailureBeforeRecoveryIsNotLate(t *testing.T) {
	r := fixture(true)
	r.recovered = r.start.Add(20 * time.Second) // every failure came before it
	if c := tally(r); c.failedAfterRecovery != 0 {
		t.Errorf("failed after recovery = %d, want 0 when every failure precedes the recovery", c.failedAfterRecovery)
	}
}

func TestProblems(t *testing.T) {
	t.Run("lost fails every broker", func(t *testing.T) {
		r := fixture(false)
		got := strings.Join(problems(r, tally(r)), "\n")
		if !strings.Contains(got, "1 event(s) lost") {
			t.Errorf("problems = %q, want the lost event", got)
		}
		if strings.Contains(got, "after the broker was back") {
			t.Errorf("problems = %q: failures after recovery must not fail a RabbitMQ run", got)
		}
	})
	t.Run("late failure fails Kafka", func(t *testing.T) {
		r := fixture(true)
		got := strings.Join(problems(r, tally(r)), "\n")
		if !strings.Contains(got, "1 event(s) failed later than 1s after the broker was back") {
			t.Errorf("problems = %q, want the late failure", got)
		}
	})
	t.Run("clean run passes", func(t *testing.T) {
		r := fixture(true)
		r.events = 3
		for id, o := range r.outcomes {
			if !o.ok {
				delete(r.outcomes, id)
			}
		}
		r.handled["ok-lost"] = 1
		if p := problems(r, tally(r)); len(p) != 0 {
			t.Errorf("problems = %q, want none", p)
		}
	})
	t.Run("no recovery fails", func(t *testing.T) {
		r := fixture(false)
		r.recovered = time.Time{}
		c := tally(r)
		if c.failedAfterRecovery != 0 {
			t.Errorf("failed after recovery = %d without a recovery, want 0", c.failedAfterRecovery)
		}
		if got := strings.Join(problems(r, c), "\n"); !strings.Contains(got, "did not answer again") {
			t.Errorf("problems = %q, want the missing recovery", got)
		}
	})
	t.Run("nothing published fails", func(t *testing.T) {
		r := fixture(false)
		r.events = 1
		r.outcomes = map[string]outcome{"x": {returned: r.start, err: "refused"}}
		if got := strings.Join(problems(r, tally(r)), "\n"); !strings.Contains(got, "nothing was tested") {
			t.Errorf("problems = %q, want that nothing was tested", got)
		}
	})
}

func TestPrintReportShowsCountsAndVerdict(t *testing.T) {
	r := fixture(true)
	var b bytes.Buffer
	printReport(&b, r, tally(r))
	out := b.String()
	for _, want := range []string{
		"lost (Publish nil, never handled)",
		"e.g. ok-lost",
		"failed after recovery (> 1s after the broker was back)",
		"(last failure +1.500s from recovery)",
		"      2  circuit breaker is open",
		"verdict: FAIL",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
