// Package bench is the project's benchmark: scenarios that compare the bus
// with the raw clients of each broker (and with Watermill's own publishers
// and subscribers) in one run, and the cost-growth matrix. cmd/bench runs
// it; the per-transport programs (transports/amqp/bench,
// transports/kafka/bench, transports/nats/bench) run one table of it. docs/performance.md
// explains the tables.
//
// A table's scenarios run in rounds; every round runs each scenario once,
// starting with a different one each round, so that no scenario always
// runs first or last. A ratio is computed within each round (the
// scenario's rate divided by the rate of the scenario it is compared with
// in the same round), and the table shows the median of those ratios and
// their range: on a shared machine the load changes between rounds, and a
// ratio taken within one round cancels most of that.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Result is one measurement of a scenario.
type Result struct {
	// N is the number of events (messages) the scenario counted.
	N int
	// D is the wall time they took.
	D time.Duration
	// CPU is the process's CPU time (user and system, every goroutine and
	// the garbage collector) during D: the client's share of the work, and
	// with an in-process broker (kfake, memory) the broker's too.
	CPU time.Duration
}

// Rate is events per second.
func (r Result) Rate() float64 {
	if r.D <= 0 {
		return 0
	}
	return float64(r.N) / r.D.Seconds()
}

// CPUPerEvent is the CPU time per event in microseconds.
func (r Result) CPUPerEvent() float64 {
	if r.N == 0 {
		return 0
	}
	return float64(r.CPU.Nanoseconds()) / 1e3 / float64(r.N)
}

// cpuTime is the CPU time (user + system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Clock measures one scenario's wall and CPU time.
type Clock struct {
	start time.Time
	cpu   time.Duration
}

// StartClock starts a clock.
func StartClock() Clock { return Clock{start: time.Now(), cpu: cpuTime()} }

// Stop returns the result of n events since c started.
func (c Clock) Stop(n int) Result {
	return Result{N: n, D: time.Since(c.start), CPU: cpuTime() - c.cpu}
}

// Scenario is one row of a table.
type Scenario struct {
	// Name says what is measured, in the table's words.
	Name string
	// Short names the scenario in other rows' ratios ("raw publish").
	Short string
	// Compare lists the scenarios (by Short) whose rate in the same round
	// divides this one's: the row shows one ratio for each.
	Compare []string
	// Targets are ratios this row must reach, checked after the run.
	Targets []Target
	// Run measures once.
	Run func(ctx context.Context) (Result, error)
}

// Target is a ratio a row must reach against another row.
type Target struct {
	Against string  // Short of the other row
	Min     float64 // the least acceptable median ratio
}

// Table is a set of scenarios measured together.
type Table struct {
	// Name is the table's key in the JSON output and in -only ("amqp").
	Name string
	// Title heads the printed table.
	Title string
	// Notes are printed under the table.
	Notes []string
	// Setup runs once before the rounds; Teardown once after them (also
	// after a failure).
	Setup    func(ctx context.Context) error
	Teardown func()
	Rows     []*Scenario
}

// RowReport is what a table run measured of one row.
type RowReport struct {
	Name    string               `json:"name"`
	Short   string               `json:"short"`
	Results []Result             `json:"-"`
	Rates   []float64            `json:"rates"`  // events/s per round
	CPU     []float64            `json:"cpu_us"` // µs CPU per event per round
	Ratios  map[string][]float64 `json:"ratios"` // per round, by the Short of the other row
	Targets []TargetReport       `json:"targets,omitempty"`
	Events  int                  `json:"events_per_round"`
	compare []string
}

// TargetReport is a checked target.
type TargetReport struct {
	Against string  `json:"against"`
	Min     float64 `json:"min"`
	Median  float64 `json:"median"`
	Met     bool    `json:"met"`
}

// TableReport is a table's outcome.
type TableReport struct {
	Name      string       `json:"name"`
	Title     string       `json:"title"`
	Rounds    int          `json:"rounds"`
	LoadStart [3]float64   `json:"load_start"`
	LoadEnd   [3]float64   `json:"load_end"`
	CPUs      int          `json:"cpus"`
	Started   time.Time    `json:"started"`
	Seconds   float64      `json:"seconds"`
	Rows      []*RowReport `json:"rows"`
	Notes     []string     `json:"notes,omitempty"`
}

// LoadAverage reads the 1, 5 and 15 minute load averages (zero where
// /proc/loadavg does not exist).
func LoadAverage() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

// Run measures the table: rounds rounds, each running every row once,
// starting at a different row each round. progress receives a line per
// measurement. With a CPU profile running, the samples of each row carry
// the label scenario=<Short> (go tool pprof -tagfocus scenario=...).
func (t *Table) Run(ctx context.Context, rounds int, progress io.Writer) (*TableReport, error) {
	rep := &TableReport{Name: t.Name, Title: t.Title, Rounds: rounds, CPUs: runtime.NumCPU(), Started: time.Now(), Notes: t.Notes}
	rep.LoadStart = LoadAverage()
	if t.Setup != nil {
		if err := t.Setup(ctx); err != nil {
			if t.Teardown != nil {
				t.Teardown()
			}
			return nil, fmt.Errorf("%s: setup: %w", t.Name, err)
		}
	}
	if t.Teardown != nil {
		defer t.Teardown()
	}
	byShort := map[string]*RowReport{}
	for _, s := range t.Rows {
		r := &RowReport{Name: s.Name, Short: s.Short, Ratios: map[string][]float64{}, compare: s.Compare}
		rep.Rows = append(rep.Rows, r)
		byShort[s.Short] = r
	}
	fmt.Fprintf(progress, "%s: %d round(s), load average %.2f\n", t.Title, rounds, rep.LoadStart[0])
	for round := 0; round < rounds; round++ {
		fmt.Fprintf(progress, "  round %d\n", round+1)
		for k := range t.Rows {
			i := (round + k) % len(t.Rows)
			s := t.Rows[i]
			var res Result
			var err error
			runtime.GC()
			pprof.Do(ctx, pprof.Labels("scenario", s.Short), func(ctx context.Context) {
				res, err = s.Run(ctx)
			})
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", t.Name, s.Name, err)
			}
			fmt.Fprintf(progress, "    %-66s %10.0f/s %8.1f µs CPU/event\n", s.Name, res.Rate(), res.CPUPerEvent())
			rr := rep.Rows[i]
			rr.Results = append(rr.Results, res)
			rr.Rates = append(rr.Rates, res.Rate())
			rr.CPU = append(rr.CPU, res.CPUPerEvent())
			rr.Events = res.N
		}
		for i, s := range t.Rows {
			rr := rep.Rows[i]
			for _, c := range s.Compare {
				o, ok := byShort[c]
				if !ok {
					return nil, fmt.Errorf("%s: %s compares with %q, which is not a row", t.Name, s.Name, c)
				}
				rr.Ratios[c] = append(rr.Ratios[c], rr.Rates[round]/o.Rates[round])
			}
		}
	}
	for i, s := range t.Rows {
		rr := rep.Rows[i]
		for _, tg := range s.Targets {
			m := Median(rr.Ratios[tg.Against])
			rr.Targets = append(rr.Targets, TargetReport{Against: tg.Against, Min: tg.Min, Median: m, Met: m >= tg.Min})
		}
	}
	rep.LoadEnd = LoadAverage()
	rep.Seconds = time.Since(rep.Started).Seconds()
	return rep, nil
}

// Median returns the median of xs (the mean of the middle two for an even
// count), 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Print writes the table in Markdown: each row's median rate and CPU per
// event, and its ratios (median of the rounds' ratios, with their range),
// then the targets.
func (r *TableReport) Print(w io.Writer) {
	fmt.Fprintf(w, "### %s\n\n", r.Title)
	fmt.Fprintf(w, "%d round(s), medians; load average %.2f at the start, %.2f at the end (%d CPUs); %.0f s\n\n",
		r.Rounds, r.LoadStart[0], r.LoadEnd[0], r.CPUs, r.Seconds)
	fmt.Fprintln(w, "| scenario | events/s | µs CPU/event | ratio (median of rounds, range) |")
	fmt.Fprintln(w, "| --- | ---: | ---: | --- |")
	for _, row := range r.Rows {
		var ratios []string
		for _, c := range row.compare {
			xs := row.Ratios[c]
			ratios = append(ratios, fmt.Sprintf("%.2f× %s (%.2f–%.2f)", Median(xs), c, slices.Min(xs), slices.Max(xs)))
		}
		ratio := strings.Join(ratios, "; ")
		if ratio == "" {
			ratio = "baseline"
		}
		fmt.Fprintf(w, "| %s | %.0f | %.1f | %s |\n", row.Name, Median(row.Rates), Median(row.CPU), ratio)
	}
	var targets []string
	for _, row := range r.Rows {
		for _, t := range row.Targets {
			verdict := "met"
			if !t.Met {
				verdict = "MISSED"
			}
			targets = append(targets, fmt.Sprintf("- %s / %s: %.2f, target ≥ %.2g: %s", row.Short, t.Against, t.Median, t.Min, verdict))
		}
	}
	if len(targets) > 0 {
		fmt.Fprintf(w, "\nTargets (median ratio within rounds):\n\n%s\n", strings.Join(targets, "\n"))
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "\n%s\n", n)
	}
	fmt.Fprintln(w)
}

// Report is everything one run measured, as cmd/bench -json writes it.
type Report struct {
	Command string         `json:"command"`
	Tables  []*TableReport `json:"tables,omitempty"`
	Growth  *GrowthReport  `json:"growth,omitempty"`
}

// WriteJSON writes r to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
