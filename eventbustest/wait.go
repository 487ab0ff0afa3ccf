package eventbustest

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
)

// WaitOption narrows what a wait accepts, or changes its deadline.
type WaitOption func(*waitConfig)

type waitConfig struct {
	within   time.Duration
	service  string
	sub      string
	preds    []func(eventbus.Event) bool
	descs    []string
	services []string // extra poison queues to read
}

// Within sets the deadline of one wait, instead of the harness's timeout.
func Within(d time.Duration) WaitOption { return func(c *waitConfig) { c.within = d } }

// InService accepts only handler calls of buses of the service, or, for
// [Harness.WaitPoisoned], reads only that service's poison queue, which need
// not belong to a bus of the harness (code under test may have opened it
// with [Harness.URL]).
func InService(name string) WaitOption {
	return func(c *waitConfig) {
		c.service = name
		c.descs = append(c.descs, "in service "+name)
	}
}

// BySubscription accepts only calls of the subscription with this name (its
// pattern unless named with eventbus.SubscriptionName), or, for
// [Harness.WaitPoisoned], events that this subscription poisoned.
func BySubscription(name string) WaitOption {
	return func(c *waitConfig) {
		c.sub = name
		c.descs = append(c.descs, "by subscription "+name)
	}
}

// CorrelatedWith accepts only events with this correlation ID.
func CorrelatedWith(id string) WaitOption {
	return Where("correlation "+id, func(ev eventbus.Event) bool { return ev.CorrelationID == id })
}

// CausedBy accepts only events published by a handler of the event with
// this ID (their causation ID).
func CausedBy(id string) WaitOption {
	return Where("caused by "+id, func(ev eventbus.Event) bool { return ev.CausationID == id })
}

// Where accepts only events for which fn reports true; desc describes the
// condition in failure messages.
func Where(desc string, fn func(eventbus.Event) bool) WaitOption {
	return func(c *waitConfig) {
		c.preds = append(c.preds, fn)
		c.descs = append(c.descs, desc)
	}
}

func (h *Harness) waitConfig(opts []WaitOption) waitConfig {
	c := waitConfig{within: h.cfg.timeout}
	for _, o := range opts {
		o(&c)
	}
	if c.service != "" {
		c.services = []string{c.service}
	}
	return c
}

func (c *waitConfig) accepts(ev eventbus.Event) bool {
	for _, p := range c.preds {
		if !p(ev) {
			return false
		}
	}
	return true
}

// headline is the first line of a failure message: what did not happen.
func (c *waitConfig) headline(pattern string, n, got int, verb string) string {
	cond := ""
	if len(c.descs) > 0 {
		cond = " (" + strings.Join(c.descs, ", ") + ")"
	}
	if n <= 1 {
		return fmt.Sprintf("no event matching %q%s was %s within %v", pattern, cond, verb, c.within)
	}
	return fmt.Sprintf("only %d of %d events matching %q%s were %s within %v", got, n, pattern, cond, verb, c.within)
}

// WaitHandled waits until a handler of one of the harness's buses has
// handled (returned nil for) an event whose name matches pattern (an event
// name is a pattern too), and returns that event. It fails the test, listing
// what happened, if there is none within the timeout.
func (h *Harness) WaitHandled(pattern string, opts ...WaitOption) eventbus.Event {
	h.t.Helper()
	return h.WaitHandledN(pattern, 1, opts...)[0]
}

// WaitHandledN waits until n handler calls for events matching pattern have
// succeeded, and returns their events in the order they were handled. An
// event handled by two subscriptions counts twice.
func (h *Harness) WaitHandledN(pattern string, n int, opts ...WaitOption) []eventbus.Event {
	h.t.Helper()
	p := h.compile(pattern)
	c := h.waitConfig(opts)
	var got []eventbus.Event
	h.wait(c, func() string { return c.headline(pattern, n, len(got), "handled") }, func() bool {
		calls, _, _ := h.rec.snapshot()
		got = got[:0]
		for _, call := range calls {
			if call.Err == nil && p.Match(call.Event.Name) && c.acceptsCall(call) {
				got = append(got, call.Event)
			}
		}
		return len(got) >= n
	})
	return got[:n]
}

func (c *waitConfig) acceptsCall(call Call) bool {
	if c.service != "" && call.Service != c.service {
		return false
	}
	if c.sub != "" && call.Subscription != c.sub {
		return false
	}
	return c.accepts(call.Event)
}

// WaitPublished waits until an event whose name matches pattern has been
// published on the harness's broker (by a handler, by the test or by other
// code using [Harness.URL]) and returns the first such event.
func (h *Harness) WaitPublished(pattern string, opts ...WaitOption) eventbus.Event {
	h.t.Helper()
	return h.WaitPublishedN(pattern, 1, opts...)[0]
}

// WaitPublishedN waits until n events matching pattern have been published
// and returns them in the order the recorder received them.
func (h *Harness) WaitPublishedN(pattern string, n int, opts ...WaitOption) []eventbus.Event {
	h.t.Helper()
	p := h.compile(pattern)
	c := h.waitConfig(opts)
	var got []eventbus.Event
	h.wait(c, func() string { return c.headline(pattern, n, len(got), "published") }, func() bool {
		_, pub, _ := h.rec.snapshot()
		got = got[:0]
		for _, ev := range pub {
			if p.Match(ev.Name) && c.accepts(ev) {
				got = append(got, ev)
			}
		}
		return len(got) >= n
	})
	return got[:n]
}

// WaitPoisoned waits until an event whose name matches pattern is in a
// poison queue of the harness's services (or of the service named with
// [InService]) and returns it with its failure record.
func (h *Harness) WaitPoisoned(pattern string, opts ...WaitOption) eventbus.PoisonedEvent {
	h.t.Helper()
	p := h.compile(pattern)
	c := h.waitConfig(opts)
	var got eventbus.PoisonedEvent
	var listErr error
	h.wait(c, func() string { return c.headline(pattern, 1, 0, "poisoned") }, func() bool {
		var ps []eventbus.PoisonedEvent
		if c.service != "" {
			ps, listErr = h.poisonedOf(c.service)
		} else {
			ps, listErr = h.poisoned(nil)
		}
		if listErr != nil {
			return true
		}
		for _, pe := range ps {
			if p.Match(pe.Event.Name) && (c.sub == "" || pe.Subscription == c.sub) && c.accepts(pe.Event) {
				got = pe
				return true
			}
		}
		return false
	})
	if listErr != nil {
		h.t.Fatalf("eventbustest: waiting for a poisoned event matching %q: %v", pattern, listErr)
	}
	return got
}

// poisonedOf lists one service's poison queue.
func (h *Harness) poisonedOf(service string) ([]eventbus.PoisonedEvent, error) {
	b, err := h.busFor(service)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.timeout)
	defer cancel()
	ps, err := b.Poisoned(ctx, eventbus.PoisonFilter{})
	if err != nil {
		return nil, fmt.Errorf("listing the poison queue of %s: %w", service, err)
	}
	return ps, nil
}

func (h *Harness) compile(pattern string) eventbus.Pattern {
	h.t.Helper()
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		h.t.Fatalf("eventbustest: %v", err)
	}
	return p
}

// wait calls done whenever something was recorded (and at least every
// pollInterval, for the poison queues) until it reports true, and fails the
// test with a report of what happened when the deadline passes first.
func (h *Harness) wait(c waitConfig, headline func() string, done func() bool) {
	h.t.Helper()
	deadline := time.NewTimer(c.within)
	defer deadline.Stop()
	poll := time.NewTicker(pollInterval)
	defer poll.Stop()
	for {
		_, _, changed := h.rec.snapshot()
		if done() {
			return
		}
		select {
		case <-changed:
		case <-poll.C:
		case <-deadline.C:
			if done() {
				return
			}
			h.t.Fatalf("eventbustest: %s\n%s", headline(), h.report(c.services))
			return
		}
	}
}

// maxListed bounds each list in a failure report.
const maxListed = 20

// report lists what was handled, published and poisoned, for failure
// messages.
func (h *Harness) report(services []string) string {
	calls, pub, _ := h.rec.snapshot()
	var b strings.Builder
	fmt.Fprintf(&b, "handled (%d calls): %s\n", len(calls), list(calls, Call.String))
	fmt.Fprintf(&b, "published (%d): %s\n", len(pub), list(pub, func(ev eventbus.Event) string {
		return describe(ev) + " from " + ev.Source
	}))
	ps, err := h.poisoned(services)
	if err != nil {
		fmt.Fprintf(&b, "poisoned: cannot list: %v", err)
	} else {
		fmt.Fprintf(&b, "poisoned (%d): %s", len(ps), list(ps, func(p eventbus.PoisonedEvent) string {
			return fmt.Sprintf("%s by %s after %d attempt(s): %s", describe(p.Event), p.Subscription, p.Attempts, p.Error)
		}))
	}
	return b.String()
}

func list[T any](xs []T, str func(T) string) string {
	parts := make([]string, 0, min(len(xs), maxListed)+1)
	for i, x := range xs {
		if i == maxListed {
			parts = append(parts, fmt.Sprintf("... and %d more", len(xs)-maxListed))
			break
		}
		parts = append(parts, str(x))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// describe names an event briefly: "user.registered(id 1a2b3c4d)".
func describe(ev eventbus.Event) string {
	id := ev.ID
	if len(id) > 8 {
		id = id[:8]
	}
	return fmt.Sprintf("%s(id %s)", ev.Name, id)
}
