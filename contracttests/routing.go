package contracttests

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Event names for the routing test: the classic pattern forms, every
// character class a name may hold ('-', '_', digits, upper and lower case,
// which differ), single-character segments, and 255-byte names (the
// limit): two that differ only in their last byte, one of a single
// segment and one of 128 segments.
var (
	long1 = "long." + strings.Repeat("x", 250)       // 255 bytes, 2 segments
	long2 = "long." + strings.Repeat("x", 249) + "y" // 255 bytes, differs from long1 in its last byte
	long3 = strings.Repeat("Ab9_-", 51)              // 255 bytes, 1 segment
	long4 = strings.Repeat("a.", 127) + "b"          // 255 bytes, 128 segments
	mixed = []string{"Order-Service.item_added.v2", "order-service.item_added.v2", "ORDER.Created", "order.created", "x_1.y-2.Z3", "0.1.2", "_", "-", "a-b_c.D9.b"}

	routingNames = append([]string{
		"user", "user.registered", "user.deleted", "user.profile.updated",
		"registered", "admin.registered", "completed", "order.completed",
		"order.payment.completed", "a.b", "a.x.b", "a.x.y.b", "a", "b",
		long1, long2, long3, long4,
	}, mixed...)
)

// routingCases lists, for each pattern, exactly the names of routingNames
// it matches under RabbitMQ topic-exchange semantics ('*' one segment, '#'
// zero or more). The zero-segment cases are the ones in-memory fakes of
// other frameworks get wrong: "user.#" matches "user", "a.#.b" matches
// "a.b", "#.completed" matches "completed".
var routingCases = []struct {
	pattern string
	want    []string
}{
	{"user.registered", []string{"user.registered"}},
	{"user.*", []string{"user.registered", "user.deleted"}},
	{"user.#", []string{"user", "user.registered", "user.deleted", "user.profile.updated"}},
	{"*.registered", []string{"user.registered", "admin.registered"}},
	{"#.completed", []string{"completed", "order.completed", "order.payment.completed"}},
	{"a.#.b", []string{"a.b", "a.x.b", "a.x.y.b", long4}},
	{"a.*.#.b", []string{"a.x.b", "a.x.y.b", long4}},
	{"#.b.#", []string{"b", "a.b", "a.x.b", "a.x.y.b", long4, "a-b_c.D9.b"}},
	{"a.#", []string{"a", "a.b", "a.x.b", "a.x.y.b", long4}},
	{"*", []string{"user", "registered", "completed", "a", "b", long3, "_", "-"}},
	{"#", routingNames},
	{"#.#", routingNames},
	{"*.#", routingNames},
	{"ORDER.*", []string{"ORDER.Created"}},
	{"order.*", []string{"order.completed", "order.created"}},
	{"Order-Service.#", []string{"Order-Service.item_added.v2"}},
	{"*.item_added.*", []string{"Order-Service.item_added.v2", "order-service.item_added.v2"}},
	{"#.Z3", []string{"x_1.y-2.Z3"}},
	{"0.#", []string{"0.1.2"}},
	{"*.#.D9.#", []string{"a-b_c.D9.b"}},
	{"_", []string{"_"}},
	{"-", []string{"-"}},
	{"long.*", []string{long1, long2}},
	{long1, []string{long1}},
	{long3, []string{long3}},
	{long4, []string{long4}},
}

// shortName abbreviates the 255-byte names in failure messages.
func shortName(n string) string {
	if len(n) <= 40 {
		return n
	}
	return fmt.Sprintf("%s...(%d bytes)", n[:20], len(n))
}

func shortNames(ns []string) string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = shortName(n)
	}
	return "[" + strings.Join(out, " ") + "]"
}

// testPatterns checks routing at the transport level, where the bus
// cannot drop what a transport delivers too widely: one subscription
// group per pattern, every name of routingNames published once, then a
// fence per subscription (a second event of a name it matches). Each
// subscription must receive exactly the names its pattern matches (a
// redelivery of one of them is allowed, a name it does not match is not).
// Once a subscription has every wanted name and its fence, events
// published before the fence have had their turn on every transport that
// keeps the order of one partition key at concurrency 1; a transport that
// does not still fails on any unwanted name that arrives before.
func testPatterns(e *env) {
	svc := e.service("routing")
	tr := e.transport(svc)
	subs := make([]*tsub, len(routingCases))
	for i, rc := range routingCases {
		subs[i] = e.tsubscribe(tr, nil, svc, fmt.Sprintf("p%d", i), rc.pattern, 1)
	}
	pub := e.transport(e.service("routing-pub")).Publisher()
	const key = "routing"
	for _, n := range routingNames {
		// One call per name, in order: a name the broker cannot route
		// fails here rather than going unnoticed.
		e.tpublish(pub, e.msg(n, withKey(key)))
	}
	fences := make([]*message.Message, len(routingCases))
	for i, rc := range routingCases {
		fences[i] = e.msg(rc.want[0], withKey(key), func(env *driver.Envelope) {
			env.Metadata = map[string]string{"fence": fmt.Sprint(i)}
		})
		e.tpublish(pub, fences[i])
	}
	for i, rc := range routingCases {
		s := subs[i]
		want := map[string]bool{}
		for _, n := range rc.want {
			want[n] = true
		}
		got := map[string]bool{}
		var wrong []string
		fenced := false
		deadline := time.Now().Add(e.timeout)
		for !fenced || len(got) < len(want) {
			m, ok := s.recv("routing", max(time.Until(deadline), 0))
			if !ok {
				var miss []string
				for _, n := range rc.want {
					if !got[n] {
						miss = append(miss, n)
					}
				}
				e.t.Fatalf("subscription to %q did not receive %s within %v (fence received: %v; unwanted: %s)", shortName(rc.pattern), shortNames(miss), e.timeout, fenced, shortNames(wrong))
			}
			s.ack(m)
			name := m.Metadata.Get(driver.HeaderType)
			if env, err := driver.Decode(m); err == nil && env.Metadata["fence"] != "" {
				if m.UUID == fences[i].UUID {
					fenced = true
				}
				continue
			}
			if !want[name] {
				if !slices.Contains(wrong, name) {
					wrong = append(wrong, name)
				}
				continue
			}
			got[name] = true
		}
		if len(wrong) > 0 {
			e.t.Errorf("subscription to %q received %s, which the pattern does not match", shortName(rc.pattern), shortNames(wrong))
		}
	}
}
