// Command nicheanalysis is the original event bus's "niche analysis
// service" example in Go: a service that publishes typed domain events,
// validated by schemas, and handles its own follow-ups.
//
// A request to analyse a niche ("niche.analysis.requested") is handled by
// the service itself: it scores the niche's keywords and publishes
// "niche.analysis.completed" and one "niche.opportunity.identified" per
// promising keyword, which further subscriptions of the same service pick
// up. An audit subscription to "niche.#" sees all of them.
//
// Schemas guard both ends: an event with invalid data cannot be created
// with the schema, and an invalid event that another producer published
// without the schema is rejected by the typed handler as a permanent
// failure and moved to the poison queue at once, without retries.
//
//	go run ./examples/nicheanalysis
//
// It runs on the in-process broker unless EVENTBUS_URL names another, e.g.
// EVENTBUS_URL=amqp://guest:guest@localhost:5672/ for the local RabbitMQ.
package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	_ "github.com/paissive/go-eventbus/transports/amqp"
	_ "github.com/paissive/go-eventbus/transports/kafka"
	_ "github.com/paissive/go-eventbus/transports/memory"
	_ "github.com/paissive/go-eventbus/transports/nats"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := run(ctx, os.Stdout, os.Getenv("EVENTBUS_URL")); err != nil {
		fmt.Fprintln(os.Stderr, "nicheanalysis:", err)
		os.Exit(1)
	}
}

// The service's domain events. The validate tags are the schema rules.
type (
	// AnalysisRequested asks for a niche to be analysed.
	AnalysisRequested struct {
		AnalysisID  string   `json:"analysis_id" validate:"required"`
		Niche       string   `json:"niche" validate:"required"`
		Keywords    []string `json:"keywords" validate:"min=1,dive,required"`
		RequestedBy string   `json:"requested_by" validate:"required,email"`
	}
	// AnalysisCompleted reports the result of an analysis.
	AnalysisCompleted struct {
		AnalysisID    string         `json:"analysis_id" validate:"required"`
		Niche         string         `json:"niche" validate:"required"`
		Score         int            `json:"score" validate:"min=0,max=100"`
		Keywords      map[string]int `json:"keywords" validate:"min=1"`
		Opportunities []string       `json:"opportunities"`
	}
	// OpportunityIdentified is one promising keyword of an analysis.
	OpportunityIdentified struct {
		AnalysisID string `json:"analysis_id" validate:"required"`
		Niche      string `json:"niche" validate:"required"`
		Keyword    string `json:"keyword" validate:"required"`
		Score      int    `json:"score" validate:"min=60,max=100"`
	}
)

var (
	analysisRequested     = eventbus.MustSchema[AnalysisRequested]("niche.analysis.requested", eventbus.SchemaVersion("1"))
	analysisCompleted     = eventbus.MustSchema[AnalysisCompleted]("niche.analysis.completed", eventbus.SchemaVersion("1"))
	opportunityIdentified = eventbus.MustSchema[OpportunityIdentified]("niche.opportunity.identified", eventbus.SchemaVersion("1"))
)

// threshold is the keyword score from which a keyword is an opportunity.
const threshold = 60

// score is the service's (deterministic, toy) keyword model: 0 to 100.
func score(keyword string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(keyword))
	return int(h.Sum32() % 101)
}

// analyse scores a request's keywords.
func analyse(r AnalysisRequested) (AnalysisCompleted, []OpportunityIdentified) {
	c := AnalysisCompleted{AnalysisID: r.AnalysisID, Niche: r.Niche, Keywords: map[string]int{}, Opportunities: []string{}}
	var opps []OpportunityIdentified
	total := 0
	for _, k := range r.Keywords {
		s := score(k)
		c.Keywords[k] = s
		total += s
		if s >= threshold {
			c.Opportunities = append(c.Opportunities, k)
			opps = append(opps, OpportunityIdentified{AnalysisID: r.AnalysisID, Niche: r.Niche, Keyword: k, Score: s})
		}
	}
	c.Score = total / len(r.Keywords)
	return c, opps
}

// FollowUp is an event the service published while handling another.
type FollowUp struct {
	Name, AnalysisID string
	// ID, CorrelationID and CausationID are those of the follow-up event.
	ID, CorrelationID, CausationID string
}

// Result is what the scenario observed.
type Result struct {
	// Requests maps each valid analysis ID to the ID of its request event.
	Requests map[string]string
	// Rejected is the schema's error for data it refused to make an event of.
	Rejected string
	// Invalid is the ID of the invalid request published without the schema.
	Invalid string
	// Completed and Opportunities are what the follow-up handlers received.
	Completed     []AnalysisCompleted
	Opportunities []OpportunityIdentified
	// FollowUps are the events published by the request handler.
	FollowUps []FollowUp
	// Audited counts the events the "niche.#" subscription saw, by name.
	Audited map[string]int
	// Poisoned is the invalid request in the poison queue.
	Poisoned eventbus.PoisonedEvent
}

type scenario struct {
	out io.Writer
	bus *eventbus.Bus

	mu       sync.Mutex
	res      Result
	ours     map[string]bool // correlation IDs of this run
	progress chan struct{}
}

func (s *scenario) isOurs(ev eventbus.Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ours[ev.CorrelationID]
}

func (s *scenario) record(f func(r *Result)) {
	s.mu.Lock()
	f(&s.res)
	s.mu.Unlock()
	select {
	case s.progress <- struct{}{}:
	default:
	}
}

// onRequested analyses a niche and publishes the results, with the
// handler's ctx so that they inherit the request's correlation ID.
func (s *scenario) onRequested(ctx context.Context, r AnalysisRequested, ev eventbus.Event) error {
	if !s.isOurs(ev) {
		return nil // left over from an interrupted earlier run
	}
	completed, opps := analyse(r)
	fmt.Fprintf(s.out, "analyse   %s %q: keyword scores %v\n", r.AnalysisID, r.Niche, completed.Keywords)
	c, err := analysisCompleted.NewEvent(completed)
	if err != nil {
		return err
	}
	out := []eventbus.Event{c}
	for _, o := range opps {
		e, err := opportunityIdentified.NewEvent(o, eventbus.WithPartitionKey(r.AnalysisID))
		if err != nil {
			return err
		}
		out = append(out, e)
	}
	if err := s.bus.Publish(ctx, out...); err != nil {
		return err
	}
	s.record(func(res *Result) {
		for _, e := range out {
			// Publish filled in the correlation and causation IDs; the
			// handler knows them from its ctx.
			res.FollowUps = append(res.FollowUps, FollowUp{
				Name: e.Name, AnalysisID: r.AnalysisID, ID: e.ID,
				CorrelationID: eventbus.CorrelationID(ctx), CausationID: ev.ID,
			})
		}
	})
	return nil
}

// run publishes two valid analysis requests and one invalid one, and
// returns once the follow-ups were handled and the invalid one poisoned.
func run(ctx context.Context, out io.Writer, url string) (Result, error) {
	if url == "" {
		url = "mem://"
	}
	out = &syncWriter{w: out}
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: dropTime}))
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "niche-analysis", URL: url, Logger: logger})
	if err != nil {
		return Result{}, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := bus.Close(cctx); err != nil {
			fmt.Fprintf(out, "closing: %v\n", err)
		}
	}()
	s := &scenario{
		out: out, bus: bus,
		res:      Result{Requests: map[string]string{}, Audited: map[string]int{}},
		ours:     map[string]bool{},
		progress: make(chan struct{}, 1),
	}

	// The service handles its own events: typed handlers get validated data.
	subs := []struct {
		pattern string
		h       eventbus.Handler
		opts    []eventbus.SubscribeOption
	}{
		{analysisRequested.Name(), analysisRequested.Handler(s.onRequested), nil},
		{analysisCompleted.Name(), analysisCompleted.Handler(func(_ context.Context, c AnalysisCompleted, ev eventbus.Event) error {
			if !s.isOurs(ev) {
				return nil
			}
			fmt.Fprintf(out, "report    %s %q: score %d, opportunities %v (correlation %s)\n", c.AnalysisID, c.Niche, c.Score, c.Opportunities, ev.CorrelationID)
			s.record(func(r *Result) { r.Completed = append(r.Completed, c) })
			return nil
		}), nil},
		{opportunityIdentified.Name(), opportunityIdentified.Handler(func(_ context.Context, o OpportunityIdentified, ev eventbus.Event) error {
			if !s.isOurs(ev) {
				return nil
			}
			fmt.Fprintf(out, "brief     %s: content brief for %q (score %d) sent to the content team\n", o.AnalysisID, o.Keyword, o.Score)
			s.record(func(r *Result) { r.Opportunities = append(r.Opportunities, o) })
			return nil
		}), nil},
		// One audit subscription for the whole hierarchy; it reads the raw
		// envelope, not the data.
		{"niche.#", func(_ context.Context, ev eventbus.Event) error {
			if !s.isOurs(ev) {
				return nil
			}
			fmt.Fprintf(out, "audit     %-28s version=%q type=%s id=%s\n", ev.Name, ev.DataVersion, ev.Type, ev.ID)
			s.record(func(r *Result) { r.Audited[ev.Name]++ })
			return nil
		}, []eventbus.SubscribeOption{eventbus.SubscriptionName("audit-log")}},
	}
	for _, sub := range subs {
		if err := bus.Subscribe(sub.pattern, sub.h, sub.opts...); err != nil {
			return s.res, err
		}
	}
	if err := bus.Start(ctx); err != nil {
		return s.res, err
	}

	requests := []AnalysisRequested{
		{AnalysisID: "na-1", Niche: "home fitness", Keywords: []string{"kettlebell workouts", "resistance bands", "yoga mats", "home gym ideas"}, RequestedBy: "ana@example.com"},
		{AnalysisID: "na-2", Niche: "pet tech", Keywords: []string{"gps dog collar", "automatic cat feeder", "pet camera"}, RequestedBy: "ben@example.com"},
	}
	var events []eventbus.Event
	wantOpps := 0
	for _, r := range requests {
		ev, err := analysisRequested.NewEvent(r)
		if err != nil {
			return s.res, err
		}
		_, opps := analyse(r)
		wantOpps += len(opps)
		events = append(events, ev)
		s.res.Requests[r.AnalysisID] = ev.ID
	}

	// The schema refuses to make an event of invalid data...
	_, err = analysisRequested.NewEvent(AnalysisRequested{AnalysisID: "na-x", Keywords: []string{"x"}, RequestedBy: "not-an-email"})
	if err == nil {
		return s.res, fmt.Errorf("the schema accepted an analysis request without a niche")
	}
	s.res.Rejected = err.Error()
	fmt.Fprintf(out, "rejected  before publishing: %s\n", oneLine(err.Error()))

	// ...and a producer that bypasses it (stamping the version it means
	// to write) gets its event poisoned by the typed handler, at once:
	// invalid data is a permanent failure.
	invalid, err := eventbus.NewEvent(analysisRequested.Name(), map[string]any{"analysis_id": "na-3", "keywords": []string{}}, eventbus.WithSource("legacy-importer"), eventbus.WithDataVersion("1"))
	if err != nil {
		return s.res, err
	}
	events = append(events, invalid)
	s.res.Invalid = invalid.ID

	s.mu.Lock()
	for _, ev := range events {
		s.ours[ev.ID] = true // each request starts its own correlation
	}
	s.mu.Unlock()
	for _, ev := range events {
		fmt.Fprintf(out, "publish   %s %s from %s\n", ev.Name, ev.ID, ev.Source)
	}
	if err := bus.Publish(ctx, events...); err != nil {
		return s.res, err
	}

	// Wait for the follow-ups, and for the invalid request in the poison
	// queue, which is polled: it has no notification.
	wantAudit := len(events) + len(requests) + wantOpps
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		done := len(s.res.Completed) >= len(requests) && len(s.res.Opportunities) >= wantOpps &&
			total(s.res.Audited) >= wantAudit && len(s.res.FollowUps) >= len(requests)+wantOpps
		s.mu.Unlock()
		if done && s.res.Poisoned.Event.ID == "" {
			ps, err := bus.Poisoned(ctx, eventbus.PoisonFilter{})
			if err != nil {
				return s.res, err
			}
			if i := slices.IndexFunc(ps, func(p eventbus.PoisonedEvent) bool { return p.Event.ID == invalid.ID }); i >= 0 {
				s.res.Poisoned = ps[i]
			}
		}
		if done && s.res.Poisoned.Event.ID != "" {
			break
		}
		select {
		case <-s.progress:
		case <-tick.C:
		case <-ctx.Done():
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.res, fmt.Errorf("waiting for the follow-ups (completed %d of %d, opportunities %d of %d, audited %d of %d, invalid request poisoned: %t): %w",
				len(s.res.Completed), len(requests), len(s.res.Opportunities), wantOpps, total(s.res.Audited), wantAudit, s.res.Poisoned.Event.ID != "", ctx.Err())
		}
	}
	p := s.res.Poisoned
	fmt.Fprintf(out, "poisoned  %s %s after %d attempt(s), reason %s: %s\n", p.Event.Name, p.Event.ID, p.Attempts, p.Reason, oneLine(p.Error))

	s.mu.Lock()
	defer s.mu.Unlock()
	res := s.res
	res.Audited = maps.Clone(res.Audited)
	res.Completed = slices.Clone(res.Completed)
	res.Opportunities = slices.Clone(res.Opportunities)
	res.FollowUps = slices.Clone(res.FollowUps)
	fmt.Fprintf(out, "done: %d analyses completed, %d opportunities, %d events audited, 1 invalid request poisoned\n", len(res.Completed), len(res.Opportunities), total(res.Audited))
	return res, nil
}

// oneLine joins the lines of a validation error.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// dropTime removes the time from log lines, to keep the trace short.
func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// syncWriter serialises writes: handlers run concurrently.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
