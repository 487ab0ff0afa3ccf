package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// outcome is what Publish reported for one event.
type outcome struct {
	ok       bool
	returned time.Time // when the Publish call that carried the event returned
	err      string    // the event's own error when !ok
}

// mark is one line of the outage timeline.
type mark struct {
	at   time.Time
	what string
}

// results is everything a run observed, as raw facts; [tally] turns it
// into counts.
type results struct {
	scenario string
	broker   string // what the broker is, for the header
	kafka    bool   // the broker speaks Kafka: failures after recovery fail the run

	events, publishers, batch int
	outage                    time.Duration
	grace                     time.Duration // failures later than recovered+grace count as failed after recovery

	start     time.Time // first Publish
	recovered time.Time // the broker first answered a new connection after the outage; zero: never
	marks     []mark

	outcomes map[string]outcome // by event ID, every event handed to Publish
	handled  map[string]int     // deliveries by event ID, this run's events only
	foreign  int                // deliveries of events this run did not publish

	publishCalls int
	overruns     int           // Publish calls that returned later than their ctx deadline plus overrunMargin
	maxOverrun   time.Duration // the largest such delay

	notes []string // close errors and other remarks, printed as they are
}

// overrunMargin is how late after its ctx deadline a Publish call may
// return before the report counts it as an overrun.
const overrunMargin = time.Second

// counts are the figures a run is judged by.
type counts struct {
	planned      int // events the run meant to publish
	notPublished int // never handed to Publish (the run was interrupted)
	publishedOK  int // Publish returned nil for them
	failed       int // Publish reported them failed

	// failedAfterRecovery counts failures reported later than grace
	// after the broker answered again: Publish should have ridden the
	// outage out by then.
	failedAfterRecovery int
	// latestFailure is when the last failure was reported, relative to
	// the recovery (negative: before it); meaningful when failed > 0 and
	// the broker recovered.
	latestFailure time.Duration

	lost                  int // Publish nil, never handled
	duplicated            int // handled more than once
	extraDeliveries       int // deliveries beyond the first, over all events
	handledAlthoughFailed int // Publish reported them failed, yet they arrived
	foreign               int // deliveries of events this run did not publish

	lostSample []string     // up to five lost event IDs, for a look at the broker
	errors     []errorCount // distinct failure texts, most frequent first
}

// errorCount is one distinct Publish failure text and how many events it
// failed.
type errorCount struct {
	text string
	n    int
}

// tally counts r. An event counts as lost only when Publish returned nil
// for it and it was never handled; events whose Publish failed may or may
// not arrive (the broker may have stored them before the failure was
// reported), so they are counted apart. Duplicates are allowed by
// at-least-once delivery and reported, not judged.
func tally(r results) counts {
	c := counts{planned: r.events, foreign: r.foreign}
	c.notPublished = r.events - len(r.outcomes)
	if c.notPublished < 0 {
		c.notPublished = 0
	}
	errs := map[string]int{}
	var latest time.Time
	for id, o := range r.outcomes {
		n := r.handled[id]
		if n > 1 {
			c.duplicated++
			c.extraDeliveries += n - 1
		}
		if o.ok {
			c.publishedOK++
			if n == 0 {
				c.lost++
				c.lostSample = append(c.lostSample, id)
			}
			continue
		}
		c.failed++
		errs[o.err]++
		if o.returned.After(latest) {
			latest = o.returned
		}
		if n > 0 {
			c.handledAlthoughFailed++
		}
		if !r.recovered.IsZero() && o.returned.After(r.recovered.Add(r.grace)) {
			c.failedAfterRecovery++
		}
	}
	if c.failed > 0 && !r.recovered.IsZero() {
		c.latestFailure = latest.Sub(r.recovered)
	}
	sort.Strings(c.lostSample)
	if len(c.lostSample) > 5 {
		c.lostSample = c.lostSample[:5]
	}
	for text, n := range errs {
		c.errors = append(c.errors, errorCount{text, n})
	}
	sort.Slice(c.errors, func(i, j int) bool {
		if c.errors[i].n != c.errors[j].n {
			return c.errors[i].n > c.errors[j].n
		}
		return c.errors[i].text < c.errors[j].text
	})
	return c
}

// problems lists why the run failed; none means it passed. Lost events
// fail every run. Failures after recovery fail a Kafka run only: the
// Kafka transport must retry through a broker restart within Publish's
// ctx; on RabbitMQ the figure is reported for comparison.
func problems(r results, c counts) []string {
	var p []string
	if c.lost > 0 {
		p = append(p, fmt.Sprintf("%d event(s) lost: Publish returned nil but they were never handled", c.lost))
	}
	if r.recovered.IsZero() {
		p = append(p, "the broker did not answer again after the outage")
	} else if r.kafka && c.failedAfterRecovery > 0 {
		p = append(p, fmt.Sprintf("%d event(s) failed later than %v after the broker was back", c.failedAfterRecovery, r.grace))
	}
	if c.notPublished > 0 {
		p = append(p, fmt.Sprintf("the run was interrupted: %d event(s) not published", c.notPublished))
	}
	if c.publishedOK == 0 && c.notPublished < c.planned {
		p = append(p, "no Publish succeeded, so nothing was tested")
	}
	return p
}

// printReport writes the timeline and the counts of one run to w.
func printReport(w io.Writer, r results, c counts) {
	fmt.Fprintf(w, "\n== %s: %s\n", r.scenario, r.broker)
	fmt.Fprintf(w, "%d events, %d publishers, batches of %d, outage %v, failures counted late after recovery + %v\n",
		r.events, r.publishers, r.batch, r.outage, r.grace)

	fmt.Fprintln(w, "\ntimeline (seconds since the first Publish):")
	marks := append([]mark(nil), r.marks...)
	sort.SliceStable(marks, func(i, j int) bool { return marks[i].at.Before(marks[j].at) })
	for _, m := range marks {
		fmt.Fprintf(w, "  %8.3f  %s\n", m.at.Sub(r.start).Seconds(), m.what)
	}

	fmt.Fprintln(w, "\nresults:")
	row := func(label string, n int, extra string) {
		fmt.Fprintf(w, "  %-56s %6d  %s\n", label, n, extra)
	}
	row("published ok (Publish returned nil)", c.publishedOK, "")
	row("failed (Publish reported an error)", c.failed, "")
	late := ""
	switch {
	case r.recovered.IsZero():
		late = "(the broker never answered again)"
	case c.failed > 0:
		late = fmt.Sprintf("(last failure %+.3fs from recovery)", c.latestFailure.Seconds())
	}
	if !r.kafka && c.failedAfterRecovery > 0 {
		late += " (reported; fails the run on Kafka only)"
	}
	row(fmt.Sprintf("failed after recovery (> %v after the broker was back)", r.grace), c.failedAfterRecovery, late)
	lost := ""
	if len(c.lostSample) > 0 {
		lost = "e.g. " + strings.Join(c.lostSample, " ")
	}
	row("lost (Publish nil, never handled)", c.lost, lost)
	row("duplicated (handled more than once)", c.duplicated, fmt.Sprintf("(%d extra deliveries)", c.extraDeliveries))
	row("handled although reported failed", c.handledAlthoughFailed, "")
	if c.notPublished > 0 {
		row("not published (run interrupted)", c.notPublished, "")
	}
	if c.foreign > 0 {
		row("deliveries of other runs' events (ignored)", c.foreign, "")
	}
	row("Publish calls", r.publishCalls, "")
	over := ""
	if r.overruns > 0 {
		over = fmt.Sprintf("(up to %.3fs late)", r.maxOverrun.Seconds())
	}
	row(fmt.Sprintf("Publish calls later than their ctx deadline + %v", overrunMargin), r.overruns, over)

	if len(c.errors) > 0 {
		fmt.Fprintln(w, "\nPublish failures by error:")
		for i, e := range c.errors {
			if i == 5 {
				fmt.Fprintf(w, "  ... and %d more distinct errors\n", len(c.errors)-5)
				break
			}
			fmt.Fprintf(w, "  %6d  %s\n", e.n, e.text)
		}
	}
	for _, n := range r.notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if p := problems(r, c); len(p) > 0 {
		fmt.Fprintf(w, "\nverdict: FAIL\n")
		for _, s := range p {
			fmt.Fprintf(w, "  - %s\n", s)
		}
	} else {
		fmt.Fprintf(w, "\nverdict: PASS\n")
	}
}
