package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// poisonFlags are the filters every poison command takes.
type poisonFlags struct {
	service, subscription, reason, name, after, before string
	ids                                                []string
	limit                                              int
}

func (p *poisonFlags) add(c *cobra.Command, withLimit bool) {
	f := c.Flags()
	f.StringVarP(&p.service, "service", "s", "", "the service whose poison queue to read (required)")
	f.StringVar(&p.subscription, "subscription", "", "only events this subscription failed")
	f.StringArrayVar(&p.ids, "id", nil, "only the event with this ID (repeatable)")
	f.StringVar(&p.reason, "reason", "", "only events poisoned for this reason: retries-exhausted, permanent, panic, undecodable, misrouted")
	f.StringVar(&p.name, "name", "", "only events whose name matches this pattern ('order.#')")
	f.StringVar(&p.after, "after", "", "only events whose last failure is after this time (RFC 3339, or a duration ago: 2h)")
	f.StringVar(&p.before, "before", "", "only events whose last failure is before this time (RFC 3339, or a duration ago: 30m)")
	if withLimit {
		f.IntVar(&p.limit, "limit", 0, "stop after this many events (0: no limit)")
	}
	_ = c.MarkFlagRequired("service")
}

var reasons = []string{"retries-exhausted", "permanent", "panic", "undecodable", "misrouted"}

// filter converts the flags to a PoisonFilter.
func (p *poisonFlags) filter() (eventbus.PoisonFilter, error) {
	f := eventbus.PoisonFilter{IDs: p.ids, Subscription: p.subscription, Name: p.name, Limit: p.limit}
	if p.reason != "" {
		if !contains(reasons, p.reason) {
			return f, usageErrorf("--reason %q: want one of %s", p.reason, strings.Join(reasons, ", "))
		}
		f.Reason = eventbus.PoisonReason(p.reason)
	}
	if p.name != "" {
		if _, err := eventbus.CompilePattern(p.name); err != nil {
			return f, usageErrorf("--name: %v", err)
		}
	}
	var err error
	if f.After, err = parseWhen("--after", p.after); err != nil {
		return f, err
	}
	if f.Before, err = parseWhen("--before", p.before); err != nil {
		return f, err
	}
	if p.limit < 0 {
		return f, usageErrorf("--limit must not be negative")
	}
	return f, nil
}

// describe says what the filter selects, for confirmations.
func (p *poisonFlags) describe() string {
	var parts []string
	add := func(flag, v string) {
		if v != "" {
			parts = append(parts, flag+" "+v)
		}
	}
	add("subscription", p.subscription)
	add("reason", p.reason)
	add("name", p.name)
	add("after", p.after)
	add("before", p.before)
	if len(p.ids) > 0 {
		parts = append(parts, fmt.Sprintf("%d ID(s)", len(p.ids)))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// parseWhen reads an RFC 3339 time or a duration before now.
func parseWhen(flag, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, usageErrorf("%s %q: give an RFC 3339 time (2026-11-27T04:00:00Z) or a duration ago (90m, 2h)", flag, s)
}

// openPoison connects a bus for the service and checks that the service
// has a poison queue, where the transport can tell without creating one.
func (g *globals) openPoison(ctx context.Context, service string) (*eventbus.Bus, bool, error) {
	b, err := g.open(ctx, service)
	if err != nil {
		return nil, false, err
	}
	if tr, ok := b.Transport().(driver.TopologyReader); ok {
		top, err := tr.Topology(ctx, driver.TopologyQuery{Service: service})
		if err != nil {
			closeBus(b)
			return nil, false, err
		}
		for _, o := range top.Objects {
			if o.Kind == driver.KindPoisonQueue && o.Missing {
				fmt.Fprintf(g.stderr, "service %s has no poison queue on %s: nothing was poisoned yet, or the service name is wrong\n", service, g.redacted())
				closeBus(b)
				return nil, false, nil
			}
		}
	}
	return b, true, nil
}

// poisonRecord is a poisoned event in --json output.
type poisonRecord struct {
	RecordID     string     `json:"record_id"`
	Reason       string     `json:"reason"`
	Error        string     `json:"error"`
	ErrorLength  int        `json:"error_length,omitempty"`
	Attempts     int        `json:"attempts"`
	Subscription string     `json:"subscription"`
	Pattern      string     `json:"pattern,omitempty"`
	FirstFailure *time.Time `json:"first_failure,omitempty"`
	LastFailure  *time.Time `json:"last_failure,omitempty"`
	DecodeError  string     `json:"decode_error,omitempty"`
	Event        cloudEvent `json:"event"`
}

func toRecord(p eventbus.PoisonedEvent) poisonRecord {
	r := poisonRecord{RecordID: p.RecordID, Reason: string(p.Reason), Error: p.Error, Attempts: p.Attempts,
		Subscription: p.Subscription, Pattern: p.Pattern, Event: fromEvent(p.Event)}
	if p.ErrorLength > len(p.Error) {
		r.ErrorLength = p.ErrorLength
	}
	if !p.FirstFailure.IsZero() {
		r.FirstFailure = &p.FirstFailure
	}
	if !p.LastFailure.IsZero() {
		r.LastFailure = &p.LastFailure
	}
	if p.DecodeError != nil {
		r.DecodeError = p.DecodeError.Error()
		r.Event = cloudEvent{ID: p.Event.ID, DataBase64: p.Payload}
	}
	return r
}

func newPoisonCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "poison",
		Short: "List, show, replay and purge a service's poisoned events",
		Long: `A service's poison queue holds the events its subscriptions could not
handle, with why (reason, error, attempts) and which subscription failed.
These commands read it a page (500 records) at a time, so a queue of any
size is listed, replayed or purged in the memory of one page. Filters
narrow every command: --subscription, --id, --reason, --name, --after,
--before.`,
	}
	c.AddCommand(newPoisonLsCmd(g), newPoisonShowCmd(g), newPoisonReplayCmd(g), newPoisonPurgeCmd(g))
	return c
}

func newPoisonLsCmd(g *globals) *cobra.Command {
	var pf poisonFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "ls",
		Short: "List poisoned events, oldest first",
		Long: `ls lists the poisoned events of a service that pass the filters, oldest
first: one line each (time of the last failure, event ID, name,
subscription, reason, attempts, the start of the error), or with --json
one JSON object per line with the whole record (the event as CloudEvents
JSON under "event"). The listing streams: a queue of any size is listed in
the memory of one page. The count goes to stderr.`,
		Example: `  eventbus poison ls --service billing
  eventbus poison ls -s billing --subscription invoices --reason retries-exhausted --after 2h
  eventbus poison ls -s billing --name 'order.#' --json | jq -r .error | sort | uniq -c`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := pf.filter()
			if err != nil {
				return err
			}
			ctx, stop := signals(cmd.Context())
			defer stop()
			b, ok, err := g.openPoison(ctx, pf.service)
			if err != nil || !ok {
				return err
			}
			defer closeBus(b)
			out := newLineWriter(g.stdout)
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			n := 0
			if !asJSON {
				fmt.Fprintln(tw, "LAST FAILURE\tEVENT ID\tNAME\tSUBSCRIPTION\tREASON\tATTEMPTS\tERROR")
			}
			f.Each = func(p eventbus.PoisonedEvent) error {
				n++
				if asJSON {
					return out.json(toRecord(p))
				}
				name := p.Event.Name
				if p.DecodeError != nil {
					name = "(undecodable)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", p.LastFailure.UTC().Format("2006-01-02T15:04:05Z"), p.Event.ID, name,
					p.Subscription, p.Reason, p.Attempts, oneLine(p.Error, 60))
				if n%500 == 0 { // columns are aligned per page, so that nothing accumulates
					return tw.Flush()
				}
				return nil
			}
			_, err = b.Poisoned(ctx, f)
			_ = tw.Flush()
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("%w after %d event(s)", errInterrupted, n)
				}
				return err
			}
			fmt.Fprintf(g.stderr, "%d poisoned event(s) of %s%s\n", n, pf.service, pf.describe())
			return nil
		},
	}
	pf.add(c, true)
	c.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line with the whole record")
	return c
}

// oneLine shortens s to one line of at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func newPoisonShowCmd(g *globals) *cobra.Command {
	var pf poisonFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "show EVENT-ID...",
		Short: "Show poisoned events in full: error, headers, data",
		Long: `show prints every record of the given events in full: the failure (reason,
attempts, times, the whole error), the event's attributes, metadata, every
header as stored, and the data. An event poisoned more than once (by two
subscriptions, or again after a replay) has a record each.`,
		Example: `  eventbus poison show --service billing 0b6c1f3e-5d0a-4c57-9a53-2f4d8f8e7c11
  eventbus poison show -s billing --json 0b6c1f3e-5d0a-4c57-9a53-2f4d8f8e7c11 | jq .event.data`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pf.ids = args
			f, err := pf.filter()
			if err != nil {
				return err
			}
			ctx, stop := signals(cmd.Context())
			defer stop()
			b, ok, err := g.openPoison(ctx, pf.service)
			if err != nil || !ok {
				return err
			}
			defer closeBus(b)
			out := newLineWriter(g.stdout)
			found := map[string]bool{}
			f.Each = func(p eventbus.PoisonedEvent) error {
				found[p.Event.ID] = true
				if asJSON {
					return out.json(toRecord(p))
				}
				return out.line(showRecord(p))
			}
			if _, err := b.Poisoned(ctx, f); err != nil {
				return err
			}
			var missing []string
			for _, id := range args {
				if !found[id] {
					missing = append(missing, id)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("not in the poison queue of %s: %s (replayed or purged already? list it with 'eventbus poison ls -s %s')", pf.service, strings.Join(missing, ", "), pf.service)
			}
			return nil
		},
	}
	pf.add(c, false)
	c.Flags().BoolVar(&asJSON, "json", false, "one JSON object per record")
	return c
}

// showRecord is the full text form of a poisoned event.
func showRecord(p eventbus.PoisonedEvent) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	e := p.Event
	row("event", e.ID+"  "+e.Name)
	row("record", p.RecordID)
	row("subscription", p.Subscription+patternNote(p.Pattern))
	row("reason", fmt.Sprintf("%s after %d attempt(s)", p.Reason, p.Attempts))
	if !p.FirstFailure.IsZero() {
		row("failures", p.FirstFailure.UTC().Format(time.RFC3339Nano)+" .. "+p.LastFailure.UTC().Format(time.RFC3339Nano))
	}
	if p.DecodeError != nil {
		row("undecodable", p.DecodeError.Error())
	} else {
		row("source", e.Source)
		row("kind", e.Type.String())
		row("time", e.Time.UTC().Format(time.RFC3339Nano))
		row("correlation", e.CorrelationID)
		row("causation", e.CausationID)
		row("partition key", e.PartitionKey)
		row("data version", e.DataVersion)
		for _, k := range sortedKeys(e.Metadata) {
			row("meta "+k, e.Metadata[k])
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(&b, "error:\n  %s\n", strings.ReplaceAll(strings.TrimRight(p.Error, "\n"), "\n", "\n  "))
	if p.ErrorLength > len(p.Error) {
		fmt.Fprintf(&b, "  (cut: the error was %d bytes)\n", p.ErrorLength)
	}
	b.WriteString("headers:\n")
	for _, k := range sortedKeys(p.Headers) {
		fmt.Fprintf(&b, "  %s: %s\n", k, p.Headers[k])
	}
	b.WriteString("data:\n")
	var pretty bytes.Buffer
	if json.Indent(&pretty, p.Payload, "  ", "  ") == nil {
		b.WriteString("  " + pretty.String() + "\n")
	} else {
		fmt.Fprintf(&b, "  (not JSON, %d bytes) %q\n", len(p.Payload), oneLine(string(p.Payload), 200))
	}
	return b.String()
}

func patternNote(p string) string {
	if p == "" {
		return ""
	}
	return " (pattern " + p + ")"
}

// countPoisoned counts the events that pass f, streaming, until stop is
// set.
func countPoisoned(ctx context.Context, b *eventbus.Bus, f eventbus.PoisonFilter, stop *atomic.Bool) (int, error) {
	n := 0
	f.Each = func(eventbus.PoisonedEvent) error {
		if stop.Load() {
			return errInterrupted
		}
		n++
		return nil
	}
	_, err := b.Poisoned(ctx, f)
	if errors.Is(err, errInterrupted) {
		return n, fmt.Errorf("%w while counting; nothing was changed", errInterrupted)
	}
	return n, err
}

func newPoisonReplayCmd(g *globals) *cobra.Command {
	var pf poisonFlags
	var yes bool
	c := &cobra.Command{
		Use:   "replay",
		Short: "Send poisoned events back to the subscriptions that failed them",
		Long: `replay sends the poisoned events that pass the filters back to the
subscription that failed each of them, and only to it (other subscriptions
of the same events do not see them again), and removes their records from
the poison queue. The events keep their IDs, correlation and data. An
event that fails again is poisoned again as a new record, which this
replay leaves alone. Deploy the fix first.

It counts the events and asks for confirmation unless --yes; on a terminal
it shows a progress bar on stderr.

What it guarantees: the queue is replayed a page (500 events) at a time:
a page's events are sent (with the broker's confirms), then their records
removed. Nothing is lost: a record is removed only once its event was
accepted for its subscription. Ctrl-C finishes the page in flight (its
events sent and its records removed), then stops: run the same command
again to replay the rest, and nothing is replayed twice. Only if the
process dies or is stopped harder (a second Ctrl-C, kill) between sending
a page and removing its records are that page's events (at most 500)
replayed again by the next replay, with the same IDs, which idempotent
subscriptions skip.`,
		Example: `  eventbus poison replay --service billing
  eventbus poison replay -s billing --subscription invoices --reason retries-exhausted --yes
  eventbus poison replay -s billing --id 0b6c1f3e-5d0a-4c57-9a53-2f4d8f8e7c11`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, ran, abandoned, err := g.pagedPoison(cmd, &pf, yes, pagedVerbs{"replay", "replayed", "replaying"},
				"Replay %d poisoned event(s) of %s%s to the subscriptions that failed them?",
				func(ctx context.Context, b *eventbus.Bus, f eventbus.PoisonFilter) (int, error) {
					return b.Replay(ctx, f)
				})
			if !ran {
				return err
			}
			switch {
			case errors.Is(err, errInterrupted):
				fmt.Fprintf(g.stderr, "replayed %d event(s) of %s, then stopped; run the same command again to replay the rest\n", n, pf.service)
				return err
			case err != nil && abandoned:
				fmt.Fprintf(g.stderr, "replayed %d event(s); the page in flight was abandoned: its events may be replayed again by the next replay (same IDs)\n", n)
				return errInterrupted
			case err != nil && n > 0:
				fmt.Fprintf(g.stderr, "replayed %d event(s) of %s\n", n, pf.service)
				return withCode(exitPartial, err)
			case err != nil:
				return err
			}
			fmt.Fprintf(g.stderr, "replayed %d event(s) of %s to their subscriptions\n", n, pf.service)
			return nil
		},
	}
	pf.add(c, true)
	c.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation (and do not count first)")
	return c
}

func newPoisonPurgeCmd(g *globals) *cobra.Command {
	var pf poisonFlags
	var yes bool
	c := &cobra.Command{
		Use:   "purge",
		Short: "Delete poisoned events for good",
		Long: `purge deletes the poisoned events that pass the filters from the poison
queue, for good. Without filters it empties the queue at once. It counts
the events and asks for confirmation unless --yes; with filters it works
a page at a time with a progress bar on a terminal, and Ctrl-C finishes
the page in flight, then stops.`,
		Example: `  eventbus poison purge --service billing --reason undecodable
  eventbus poison purge -s billing --subscription old-invoices --yes
  eventbus poison purge -s billing --before 720h --yes     # older than 30 days`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, ran, _, err := g.pagedPoison(cmd, &pf, yes, pagedVerbs{"purge", "purged", "purging"},
				"Delete %d poisoned event(s) of %s%s for good?",
				func(ctx context.Context, b *eventbus.Bus, f eventbus.PoisonFilter) (int, error) {
					return b.PurgePoison(ctx, f)
				})
			if !ran {
				return err
			}
			switch {
			case errors.Is(err, errInterrupted):
				fmt.Fprintf(g.stderr, "purged %d event(s) of %s, then stopped\n", n, pf.service)
				return err
			case err != nil && n > 0:
				fmt.Fprintf(g.stderr, "purged %d event(s) of %s\n", n, pf.service)
				return withCode(exitPartial, err)
			case err != nil:
				return err
			case n < 0:
				fmt.Fprintf(g.stderr, "emptied the poison queue of %s\n", pf.service)
			default:
				fmt.Fprintf(g.stderr, "purged %d event(s) of %s\n", n, pf.service)
			}
			return nil
		},
	}
	pf.add(c, true)
	c.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation (and do not count first)")
	return c
}

// pagedVerbs are the words of a paged poison command's messages.
type pagedVerbs struct{ verb, past, gerund string }

// pagedPoison is what replay and purge share. It reads the filters, opens
// the service's poison queue, counts the events they select and asks
// question (with the count, service and filters) unless yes, then runs op
// with a progress bar, which stops after the page in flight on Ctrl-C (op
// then fails with errInterrupted). ran is false when it returned before op
// ran (an error, nothing selected, the user declined or interrupted);
// abandoned reports that the command's context ended while op ran.
func (g *globals) pagedPoison(cmd *cobra.Command, pf *poisonFlags, yes bool, words pagedVerbs, question string,
	op func(context.Context, *eventbus.Bus, eventbus.PoisonFilter) (int, error)) (n int, ran, abandoned bool, err error) {
	f, err := pf.filter()
	if err != nil {
		return 0, false, false, err
	}
	stop, ctx, cancel := g.gracefulStop(cmd.Context(), "page (up to 500 events)")
	defer cancel()
	b, ok, err := g.openPoison(ctx, pf.service)
	if err != nil || !ok {
		return 0, false, false, err
	}
	defer closeBus(b)
	total := -1
	if !yes {
		if total, err = countPoisoned(ctx, b, f, stop); err != nil {
			return 0, false, false, err
		}
		if total == 0 {
			fmt.Fprintf(g.stderr, "no poisoned event of %s%s: nothing to %s\n", pf.service, pf.describe(), words.verb)
			return 0, false, false, nil
		}
		if err := g.confirm(fmt.Sprintf(question, total, pf.service, pf.describe()), yes); err != nil {
			return 0, false, false, err
		}
	}
	if stop.Load() {
		return 0, false, false, fmt.Errorf("%w; nothing was %s", errInterrupted, words.past)
	}
	bar := g.progress(total, words.gerund)
	f.Each = func(eventbus.PoisonedEvent) error {
		bar.add(1)
		if stop.Load() {
			return errInterrupted
		}
		return nil
	}
	n, err = op(ctx, b, f)
	bar.done()
	return n, true, ctx.Err() != nil, err
}
