package nats

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// routingNames are event names with the zero-segment cases of '#'.
var routingNames = []string{
	"a", "b", "user", "completed", "registered",
	"a.b", "a.x", "b.a", "user.registered", "user.deleted", "admin.registered", "order.completed",
	"a.x.b", "a.b.c", "a.b.b", "user.profile.updated", "order.payment.completed",
	"a.x.y.b", "a.b.c.d", "x.y.z.w.v",
}

// routingPatterns are every form of pattern: literals, '*' and '#' at
// the start, middle and end, alone and repeated.
var routingPatterns = []string{
	"a", "a.b", "user.registered", "a.b.c.d",
	"*", "*.*", "*.*.*", "a.*", "*.b", "*.registered", "a.*.b", "user.*",
	"#", "#.#", "*.#", "#.*", "*.*.#", "#.*.*",
	"a.#", "user.#", "a.b.#", "user.*.#", "a.#.*",
	"#.b", "#.completed", "#.a.#", "#.b.#",
	"a.#.b", "a.#.#.b", "a.*.#.b", "#.x.#.b", "*.#.b",
}

// natsMatch reports whether a NATS filter subject matches subject: '*' is
// one token, '>' one or more at the end.
func natsMatch(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(f) == len(s)
}

// TestFilterSubjects checks, for every pattern form and every name, that
// the filter subjects select every name the pattern matches, and only
// those when they claim to be exact, with one filter (NATS 2.9) and with
// several (2.10 and later). It also checks which patterns need the
// filter in Go, since that is what costs.
func TestFilterSubjects(t *testing.T) {
	wantExact := map[bool][]string{}
	for _, multi := range []bool{false, true} {
		for _, pattern := range routingPatterns {
			p := mustPattern(pattern)
			filters, exact := filterSubjects("ns", pattern, multi)
			if !multi && len(filters) != 1 {
				t.Errorf("%q: %d filter subjects for a server that takes one", pattern, len(filters))
			}
			for _, f := range filters {
				if !strings.HasPrefix(f, "ns.") {
					t.Errorf("%q: filter %q outside the stream's subjects", pattern, f)
				}
			}
			for _, name := range routingNames {
				sel := slices.ContainsFunc(filters, func(f string) bool { return natsMatch(f, "ns."+name) })
				if p.Match(name) && !sel {
					t.Errorf("multi=%v %q: filters %v miss %q", multi, pattern, filters, name)
				}
				if exact && sel && !p.Match(name) {
					t.Errorf("multi=%v %q: filters %v claim to be exact but select %q", multi, pattern, filters, name)
				}
			}
			if exact {
				wantExact[multi] = append(wantExact[multi], pattern)
			}
		}
	}
	// Filtered in Go: '#' followed by a literal anywhere, and "P.#" on a
	// server that takes one filter.
	inexact := func(multi bool) []string {
		var out []string
		for _, p := range routingPatterns {
			if !slices.Contains(wantExact[multi], p) {
				out = append(out, p)
			}
		}
		return out
	}
	if got, want := inexact(true), []string{"#.b", "#.completed", "#.a.#", "#.b.#", "a.#.b", "a.#.#.b", "a.*.#.b", "#.x.#.b", "*.#.b"}; !slices.Equal(got, want) {
		t.Errorf("filtered in Go with several filter subjects: %v, want %v", got, want)
	}
	if got, want := inexact(false), []string{"a.#", "user.#", "a.b.#", "user.*.#", "#.b", "#.completed", "#.a.#", "#.b.#", "a.#.b", "a.#.#.b", "a.*.#.b", "#.x.#.b", "*.#.b"}; !slices.Equal(got, want) {
		t.Errorf("filtered in Go with one filter subject: %v, want %v", got, want)
	}
}

// TestRoutingThroughDelivery subscribes once per pattern form, publishes
// every name once, then a fence per subscription (behind the probes in the
// stream, and delivered in stream order at Concurrency 1), and checks that
// each subscription received exactly the names its pattern matches with
// RabbitMQ semantics, the zero-segment '#' cases included. It also checks
// the consumers' filter subjects on the server: several per consumer on
// NATS 2.10 and later, one on 2.9.
func TestRoutingThroughDelivery(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("routing-"))
	type rec struct {
		mu    sync.Mutex
		names []string
		fence bool
	}
	recs := make([]*rec, len(routingPatterns))
	for i, pattern := range routingPatterns {
		r := &rec{}
		recs[i] = r
		if err := b.Subscribe(pattern, func(_ context.Context, ev eventbus.Event) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			if ev.Metadata["fence"] == pattern {
				r.fence = true
			} else if ev.Metadata["fence"] == "" {
				r.names = append(r.names, ev.Name)
			}
			return nil
		}, eventbus.SubscriptionName(fmt.Sprintf("p%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var probes []eventbus.Event
	for _, n := range routingNames {
		probes = append(probes, mustEvent(t, n, nil))
	}
	if err := b.Publish(context.Background(), probes...); err != nil {
		t.Fatal(err)
	}
	var fences []eventbus.Event
	for _, pattern := range routingPatterns {
		p := mustPattern(pattern)
		i := slices.IndexFunc(routingNames, p.Match)
		fences = append(fences, mustEvent(t, routingNames[i], nil, eventbus.WithMetadata("fence", pattern)))
	}
	if err := b.Publish(context.Background(), fences...); err != nil {
		t.Fatal(err)
	}
	for i, pattern := range routingPatterns {
		r := recs[i]
		transporttest.WaitFor(t, 30*time.Second, "fence of "+pattern, func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.fence
		}, func() string { return "not delivered" })
		p := mustPattern(pattern)
		var want []string
		for _, n := range routingNames {
			if p.Match(n) {
				want = append(want, n)
			}
		}
		r.mu.Lock()
		got := slices.Clone(r.names)
		r.mu.Unlock()
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("pattern %q received %v, want %v", pattern, got, want)
		}
	}

	tr := transportOf(t, b)
	events, _ := tr.streams()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := events.Consumer(ctx, consumerName(b.ServiceName(), "p"+fmt.Sprintf("%02d", slices.Index(routingPatterns, "user.#"))))
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.CachedInfo().Config
	got := cfg.FilterSubjects
	if cfg.FilterSubject != "" {
		got = []string{cfg.FilterSubject}
	}
	want := []string{tr.Stream() + ".>"}
	if tr.multiFilter {
		want = []string{tr.Stream() + ".user", tr.Stream() + ".user.>"}
	}
	if !slices.Equal(got, want) {
		t.Errorf("consumer of user.# on nats-server %s filters %v, want %v", tr.nc.ConnectedServerVersion(), got, want)
	}
	t.Logf("nats-server %s: user.# filters %v", tr.nc.ConnectedServerVersion(), got)
}
