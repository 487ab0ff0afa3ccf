package bench

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/brokertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		xs   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(c.xs); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.xs, got, c.want)
		}
	}
}

// TestSelectRows: -rows keeps the rows named and those they are compared
// with, and drops comparisons and targets against rows left out.
func TestSelectRows(t *testing.T) {
	rows := []*Scenario{
		{Short: "raw"},
		{Short: "other"},
		{Short: "bus a", Compare: []string{"raw", "other"}, Targets: []Target{{"other", 1}}},
	}
	if got := selectRows(rows, []string{"bus"}); len(got) != 3 {
		t.Fatalf("kept %d rows, want all 3", len(got))
	}
	rows = []*Scenario{{Short: "raw"}, {Short: "other"}, {Short: "bus a", Compare: []string{"raw"}, Targets: []Target{{"other", 1}}}}
	got := selectRows(rows, []string{"bus"})
	if len(got) != 2 || got[0].Short != "raw" || got[1].Short != "bus a" {
		t.Fatalf("kept %d rows, want raw and bus a", len(got))
	}
	if len(got[1].Targets) != 0 {
		t.Errorf("a target against a row left out was kept: %v", got[1].Targets)
	}
}

// TestMemoryTable runs the in-memory table with few events: every row
// measures, the ratios are computed within the round, and the table and
// its target are printed.
func TestMemoryTable(t *testing.T) {
	tb := MemoryTable(MemoryConfig{N: 2000})
	rep, err := tb.Run(context.Background(), 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Rows {
		if len(r.Rates) != 2 || r.Rates[0] <= 0 {
			t.Errorf("%s: rates %v", r.Name, r.Rates)
		}
		for c, xs := range r.Ratios {
			if len(xs) != 2 || xs[0] <= 0 {
				t.Errorf("%s: ratios to %s %v", r.Name, c, xs)
			}
		}
	}
	var out bytes.Buffer
	rep.Print(&out)
	for _, want := range []string{"| bus, Concurrency(8) |", "× transport under a bare Router", "target ≥ 0.7"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printed table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestGrowthMemory runs the growth matrix on the memory transport with
// few events: every cell measures, and the table has a row per number of
// subscriptions.
func TestGrowthMemory(t *testing.T) {
	g, err := RunGrowth(context.Background(), GrowthConfig{Rounds: 1, Scale: 0.05, Transports: []string{"memory"}}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Cells) != len(growthSubs)*len(growthPayloads) {
		t.Fatalf("%d cells, want %d", len(g.Cells), len(growthSubs)*len(growthPayloads))
	}
	for _, c := range g.Cells {
		if len(c.Rates) != 1 || c.Rates[0] <= 0 {
			t.Errorf("%+v: no rate", c)
		}
		want := c.Events * c.Subscriptions / growthNames // each event reaches a tenth of the subscriptions
		if c.Subscriptions == 1 {
			want = c.Events / growthNames // the tenth of the events the one subscription matches
		}
		if c.Deliveries != want {
			t.Errorf("%d subscriptions, %d events: %d deliveries expected, want %d", c.Subscriptions, c.Events, c.Deliveries, want)
		}
	}
	var out bytes.Buffer
	g.Print(&out)
	if !strings.Contains(out.String(), "| memory | 100 |") {
		t.Errorf("printed matrix lacks the 100-subscription row:\n%s", out.String())
	}
}

// TestNATSTable runs the NATS table with few events on the test server
// (brokertest.NATSURL): every row measures, the raw rows send the bus's
// wire format, and the targets are printed. It deletes what it created.
func TestNATSTable(t *testing.T) {
	url, _ := brokertest.NATSURL(t)
	tb := NATSTable(NATSConfig{URL: url, N: 400, Batch: 50})
	rep, err := tb.Run(context.Background(), 1, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rep.Rows {
		if len(r.Rates) != 1 || r.Rates[0] <= 0 {
			t.Errorf("%s: rates %v", r.Name, r.Rates)
		}
	}
	var out bytes.Buffer
	rep.Print(&out)
	for _, want := range []string{"| bus consume, Concurrency(16) |", "bus batches / raw batches:", "bus consume C16 / pull consume:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printed table lacks %q:\n%s", want, out.String())
		}
	}
}
