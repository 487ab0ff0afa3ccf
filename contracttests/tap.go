package contracttests

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// tapCases are the patterns taps are tested with: the zero-segment cases,
// single-segment wildcards and a tap of two patterns.
// tapNames are the names the tap tests publish: the original's pattern
// forms with their zero-segment cases.
var tapNames = []string{
	"user", "user.registered", "user.deleted", "user.profile.updated",
	"registered", "admin.registered", "completed", "order.completed",
	"order.payment.completed", "a.b", "a.x.b", "a.x.y.b", "a", "b",
}

var tapCases = []struct {
	patterns []string
	want     []string
}{
	{[]string{"user.#"}, []string{"user", "user.registered", "user.deleted", "user.profile.updated"}},
	{[]string{"#.completed"}, []string{"completed", "order.completed", "order.payment.completed"}},
	{[]string{"a.#.b"}, []string{"a.b", "a.x.b", "a.x.y.b"}},
	{[]string{"*"}, []string{"user", "registered", "completed", "a", "b"}},
	{[]string{"user.*", "a.#.b"}, []string{"user.registered", "user.deleted", "a.b", "a.x.b", "a.x.y.b"}},
	{[]string{"#"}, tapNames},
}

// tapper returns the transport's tap capability, or skips the test.
func (e *env) tapper() driver.Tapper {
	e.t.Helper()
	tp, ok := e.transport(e.service("tap")).(driver.Tapper)
	if !ok {
		e.t.Skipf("%s does not implement driver.Tapper (optional): tools such as `eventbus tail` say so", e.h.Name)
	}
	return tp
}

// tapRecorder drains a tap into a recorder until the tap closes.
func (e *env) tapRecorder(tp driver.Tapper, patterns []string, fromBeginning bool) (*recorder, error) {
	e.t.Helper()
	matchers := make([]func(string) bool, len(patterns))
	for i, p := range patterns {
		matchers[i] = matcher(p)
	}
	match := func(name string) bool {
		for _, m := range matchers {
			if m(name) {
				return true
			}
		}
		return false
	}
	tap, err := tp.Tap(e.ctx(), driver.TapConfig{Patterns: patterns, Match: match, FromBeginning: fromBeginning})
	if err != nil {
		return nil, err
	}
	r := newRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range tap.Messages() {
			env, err := driver.Decode(m)
			if err != nil {
				e.t.Errorf("tap %v delivered a message that is not an event: %v", patterns, err)
				continue
			}
			r.add(eventbus.Event{ID: env.ID, Name: env.Name, Metadata: env.Metadata})
		}
	}()
	e.t.Cleanup(func() {
		if err := tap.Close(); err != nil {
			e.t.Errorf("closing tap %v: %v", patterns, err)
		}
		<-done
		if err := tap.Err(); err != nil {
			e.t.Errorf("tap %v closed by Close reports %v, want nil", patterns, err)
		}
	})
	return r, nil
}

// testTap: a tap sees every event its patterns match, zero-segment
// matches included, and no other, while a durable subscription of the
// same pattern still gets every one of them. Events share a partition key
// so that they keep their order; a fence published last tells when a tap
// has everything.
func testTap(e *env) {
	tp := e.tapper()
	b := e.bus("durable")
	durable := make([]*recorder, len(tapCases))
	for i, tc := range tapCases {
		durable[i] = newRecorder()
		if len(tc.patterns) == 1 {
			e.subscribe(b, tc.patterns[0], durable[i].handle)
		}
	}
	e.start(b)
	taps := make([]*recorder, len(tapCases))
	for i, tc := range tapCases {
		r, err := e.tapRecorder(tp, tc.patterns, false)
		if err != nil {
			e.t.Fatalf("Tap(%v): %v", tc.patterns, err)
		}
		taps[i] = r
	}
	const key, rounds = "tap", 3
	var probes []eventbus.Event
	for range rounds {
		for _, n := range tapNames {
			probes = append(probes, e.event(n, nil, eventbus.WithPartitionKey(key)))
		}
	}
	e.publish(b, probes...)
	fences := make([]eventbus.Event, len(tapCases))
	for i, tc := range tapCases {
		fences[i] = e.event(tc.want[0], nil, eventbus.WithPartitionKey(key), eventbus.WithMetadata("fence", strings.Join(tc.patterns, " ")))
	}
	e.publish(b, fences...)
	for i, tc := range tapCases {
		label := fmt.Sprintf("tap %v", tc.patterns)
		e.waitFor(label+" sees its fence", func() bool { return taps[i].has(fences[i].ID) },
			func() string { return fmt.Sprintf("received %v", taps[i].names()) })
		var got []string
		for _, ev := range taps[i].snapshot() {
			if ev.Metadata["fence"] == "" {
				got = append(got, ev.Name)
			}
		}
		var want []string
		for range rounds {
			want = append(want, tc.want...)
		}
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			e.t.Errorf("%s saw %v, want exactly %v (each name %d times)", label, got, want, rounds)
		}
		if d := taps[i].duplicates(); d > 0 {
			e.t.Errorf("%s saw %d event(s) twice", label, d)
		}
		if len(tc.patterns) != 1 {
			continue
		}
		// The durable subscription of the same pattern gets all of them
		// too: the tap took none away.
		var ids []string
		for _, p := range probes {
			if slices.Contains(tc.want, p.Name) {
				ids = append(ids, p.ID)
			}
		}
		e.waitFor("durable subscription "+tc.patterns[0]+" gets every matching event", func() bool {
			return allReceived(durable[i], ids)
		}, func() string { return durable[i].missing(ids) })
	}
}

// testTapFromBeginning: a tap from the beginning sees matching events
// published before it opened, on transports that keep them; the others
// refuse it with ErrUnsupported.
func testTapFromBeginning(e *env) {
	tp := e.tapper()
	b := e.bus("history")
	e.subscribe(b, "#", newRecorder().handle) // makes every name routable
	e.start(b)
	before := []eventbus.Event{e.event("hist.one", nil), e.event("other.one", nil), e.event("hist", nil)}
	e.publish(b, before...)
	r, err := e.tapRecorder(tp, []string{"hist.#"}, true)
	if errors.Is(err, driver.ErrUnsupported) {
		e.t.Skipf("%s keeps no history for taps: %v", e.h.Name, err)
	}
	if err != nil {
		e.t.Fatalf("Tap from the beginning: %v", err)
	}
	after := e.event("hist.two", nil)
	e.publish(b, after)
	ids := []string{before[0].ID, before[2].ID, after.ID}
	e.waitFor("tap from the beginning sees the events before and after it opened", func() bool { return allReceived(r, ids) },
		func() string { return r.missing(ids) + "; received " + strings.Join(r.names(), ",") })
	if r.has(before[1].ID) {
		e.t.Errorf("tap of hist.# saw other.one")
	}
}

func allReceived(r *recorder, ids []string) bool {
	for _, id := range ids {
		if !r.has(id) {
			return false
		}
	}
	return true
}
