// Command marketing is the original event bus's "marketing service" example
// in Go: a marketing service reacts to events of other services through
// wildcard subscriptions ("user.*" and "#.completed"), and starts a welcome
// campaign for every registered user.
//
// Two instances of the marketing service run side by side: two buses with
// the same ServiceName, and so the same durable subscriptions. They are
// competing consumers: each event is handled by one of them, and both get a
// share of the work. A separate analytics service subscribes to "#" and
// sees every event, including the campaigns the marketing service
// publishes: fan-out across services.
//
//	go run ./examples/marketing
//
// It runs on the in-process broker unless EVENTBUS_URL names another, e.g.
// EVENTBUS_URL=amqp://guest:guest@localhost:5672/ for the local RabbitMQ.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
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
		fmt.Fprintln(os.Stderr, "marketing:", err)
		os.Exit(1)
	}
}

// UserEvent is the data of the user service's events.
type UserEvent struct {
	UserID   string `json:"user_id" validate:"required"`
	Username string `json:"username" validate:"required"`
	Plan     string `json:"plan,omitempty"`
}

// Completed is the data of other services' "*.completed" events.
type Completed struct {
	JobID   string `json:"job_id" validate:"required"`
	Summary string `json:"summary" validate:"required"`
}

// CampaignStarted is published by the marketing service.
type CampaignStarted struct {
	Campaign string `json:"campaign" validate:"required"`
	UserID   string `json:"user_id" validate:"required"`
}

var (
	userRegistered  = eventbus.MustSchema[UserEvent]("user.registered")
	userUpgraded    = eventbus.MustSchema[UserEvent]("user.upgraded")
	campaignStarted = eventbus.MustSchema[CampaignStarted]("marketing.campaign.started")
)

// workTime is how long the marketing service "works" on an event. It makes
// the sharing between the two instances visible: while one is busy, the
// other takes the next event.
const workTime = 20 * time.Millisecond

// Result is what the scenario observed.
type Result struct {
	// Published is the number of events the other services published.
	Published int
	// PerInstance counts the events each marketing instance handled.
	PerInstance map[string]int
	// HandledBy maps each event the marketing service handled to the
	// instance that handled it.
	HandledBy map[string]string
	// Campaigns lists the users a welcome campaign was started for.
	Campaigns []string
	// AnalyticsSeen counts the events the analytics service saw, by name.
	AnalyticsSeen map[string]int
	// AnalyticsTotal is the number of events the analytics service saw.
	AnalyticsTotal int
}

type scenario struct {
	out io.Writer

	mu       sync.Mutex
	res      Result
	roots    map[string]bool // correlation IDs of this run
	progress chan struct{}
}

// ours reports whether ev belongs to this run; on a durable broker, events
// of an interrupted earlier run may still be queued. They are acknowledged
// and ignored.
func (s *scenario) ours(ev eventbus.Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.roots[ev.CorrelationID]
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

// marketingInstance subscribes one instance of the marketing service.
func (s *scenario) marketingInstance(bus *eventbus.Bus, instance string) error {
	handled := func(ev eventbus.Event, what string) {
		fmt.Fprintf(s.out, "[%s] %-28s %s\n", instance, ev.Name, what)
		s.record(func(r *Result) {
			r.PerInstance[instance]++
			r.HandledBy[ev.ID] = instance
		})
	}
	// user.* matches user.registered and user.upgraded, not user.a.b.
	err := bus.Subscribe("user.*", func(ctx context.Context, ev eventbus.Event) error {
		if !s.ours(ev) {
			return nil
		}
		if err := work(ctx); err != nil {
			return err
		}
		switch ev.Name {
		case userRegistered.Name():
			u, err := userRegistered.Parse(ev)
			if err != nil {
				return err
			}
			// Published with the handler's ctx: the campaign event inherits
			// the registration's correlation ID.
			c, err := campaignStarted.NewEvent(CampaignStarted{Campaign: "welcome", UserID: u.UserID}, eventbus.WithType(eventbus.Integration))
			if err != nil {
				return err
			}
			if err := bus.Publish(ctx, c); err != nil {
				return err
			}
			s.record(func(r *Result) { r.Campaigns = append(r.Campaigns, u.UserID) })
			handled(ev, fmt.Sprintf("welcome campaign started for %s (%s)", u.Username, u.UserID))
		case userUpgraded.Name():
			u, err := userUpgraded.Parse(ev)
			if err != nil {
				return err
			}
			handled(ev, fmt.Sprintf("%s moved to the %q upsell segment", u.Username, u.Plan))
		default:
			handled(ev, "no campaign for this one")
		}
		return nil
	})
	if err != nil {
		return err
	}
	// #.completed matches "completed" preceded by any number of segments.
	return bus.Subscribe("#.completed", func(ctx context.Context, ev eventbus.Event) error {
		if !s.ours(ev) {
			return nil
		}
		if err := work(ctx); err != nil {
			return err
		}
		var c Completed
		if err := ev.Decode(&c); err != nil {
			return eventbus.Permanent(err)
		}
		handled(ev, fmt.Sprintf("promotion drafted from %s's result: %s", ev.Source, c.Summary))
		return nil
	})
}

// work simulates the marketing service's work, giving up if ctx ends.
func work(ctx context.Context) error {
	t := time.NewTimer(workTime)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run has other services publish user and "completed" events, and returns
// once the marketing service handled each of them once and the analytics
// service saw all of them and the campaigns.
func run(ctx context.Context, out io.Writer, url string) (Result, error) {
	if url == "" {
		url = "mem://"
	}
	out = &syncWriter{w: out}
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := &scenario{
		out: out,
		res: Result{
			PerInstance: map[string]int{}, HandledBy: map[string]string{}, AnalyticsSeen: map[string]int{},
		},
		roots:    map[string]bool{},
		progress: make(chan struct{}, 1),
	}

	var opened []*eventbus.Bus
	defer func() {
		for i := len(opened) - 1; i >= 0; i-- {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := opened[i].Close(cctx); err != nil {
				fmt.Fprintf(out, "closing %s: %v\n", opened[i].ServiceName(), err)
			}
			cancel()
		}
	}()
	open := func(service string) (*eventbus.Bus, error) {
		b, err := eventbus.New(ctx, eventbus.Config{ServiceName: service, URL: url, Logger: logger})
		if err == nil {
			opened = append(opened, b)
		}
		return b, err
	}

	// Two instances of the marketing service: same ServiceName, same
	// subscriptions, so they share the events.
	for _, instance := range []string{"marketing#1", "marketing#2"} {
		bus, err := open("marketing")
		if err != nil {
			return s.res, err
		}
		if err := s.marketingInstance(bus, instance); err != nil {
			return s.res, err
		}
	}
	// The analytics service sees everything.
	analytics, err := open("analytics")
	if err != nil {
		return s.res, err
	}
	err = analytics.Subscribe("#", func(_ context.Context, ev eventbus.Event) error {
		if !s.ours(ev) {
			return nil
		}
		fmt.Fprintf(out, "[analytics]   %-28s from %s\n", ev.Name, ev.Source)
		s.record(func(r *Result) {
			r.AnalyticsSeen[ev.Name]++
			r.AnalyticsTotal++
		})
		return nil
	}, eventbus.Concurrency(4))
	if err != nil {
		return s.res, err
	}
	for _, b := range opened {
		if err := b.Start(ctx); err != nil {
			return s.res, err
		}
	}

	// The other services, which only publish.
	users, err := open("user-service")
	if err != nil {
		return s.res, err
	}
	niche, err := open("niche-analysis")
	if err != nil {
		return s.res, err
	}
	content, err := open("content-generation")
	if err != nil {
		return s.res, err
	}
	type pub struct {
		bus *eventbus.Bus
		ev  eventbus.Event
	}
	var pubs []pub
	// add(bus)(ev, err) queues an event made by NewEvent for bus.
	add := func(bus *eventbus.Bus) func(eventbus.Event, error) error {
		return func(ev eventbus.Event, err error) error {
			if err != nil {
				return err
			}
			pubs = append(pubs, pub{bus, ev})
			return nil
		}
	}
	for i, name := range []string{"ada", "bob", "cy", "dee"} {
		if err := add(users)(userRegistered.NewEvent(UserEvent{UserID: fmt.Sprintf("u-%d", i+1), Username: name}, eventbus.WithSource("user-service"))); err != nil {
			return s.res, err
		}
	}
	for i, name := range []string{"ada", "bob"} {
		if err := add(users)(userUpgraded.NewEvent(UserEvent{UserID: fmt.Sprintf("u-%d", i+1), Username: name, Plan: "pro"}, eventbus.WithSource("user-service"))); err != nil {
			return s.res, err
		}
	}
	if err := add(niche)(eventbus.NewEvent("niche.analysis.completed", Completed{JobID: "na-1", Summary: "home fitness scores 82"}, eventbus.WithSource("niche-analysis"), eventbus.WithType(eventbus.Integration))); err != nil {
		return s.res, err
	}
	if err := add(content)(eventbus.NewEvent("content.generation.completed", Completed{JobID: "cg-1", Summary: "10 blog posts drafted"}, eventbus.WithSource("content-generation"), eventbus.WithType(eventbus.Integration))); err != nil {
		return s.res, err
	}

	// Each root event starts its own correlation: its ID.
	s.mu.Lock()
	for _, p := range pubs {
		s.roots[p.ev.ID] = true
	}
	s.res.Published = len(pubs)
	s.mu.Unlock()
	for _, p := range pubs {
		if err := p.bus.Publish(ctx, p.ev); err != nil {
			return s.res, err
		}
	}

	registered := 4
	wantMarketing, wantAnalytics := len(pubs), len(pubs)+registered
	for {
		s.mu.Lock()
		m, a := len(s.res.HandledBy), s.res.AnalyticsTotal
		done := m >= wantMarketing && a >= wantAnalytics && len(s.res.Campaigns) >= registered
		s.mu.Unlock()
		if done {
			break
		}
		select {
		case <-s.progress:
		case <-ctx.Done():
			return s.snapshot(), fmt.Errorf("waiting for the services: marketing handled %d of %d events, analytics saw %d of %d: %w", m, wantMarketing, a, wantAnalytics, ctx.Err())
		}
	}
	res := s.snapshot()
	fmt.Fprintf(out, "marketing handled %d events (shared: %v); analytics saw all %d events (%v)\n",
		len(res.HandledBy), res.PerInstance, res.AnalyticsTotal, res.AnalyticsSeen)
	return res, nil
}

func (s *scenario) snapshot() Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.res
	r.PerInstance = maps.Clone(r.PerInstance)
	r.HandledBy = maps.Clone(r.HandledBy)
	r.AnalyticsSeen = maps.Clone(r.AnalyticsSeen)
	r.Campaigns = append([]string(nil), r.Campaigns...)
	return r
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
