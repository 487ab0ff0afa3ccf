package memory

import (
	"context"
	"sort"
	"strings"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

var _ driver.TopologyReader = (*transport)(nil)

// Topology lists the service's groups ("<service>.<subscription>") with
// their patterns and the events they hold, and its poison store. The
// in-process broker does not count subscribers, so Consumers is -1.
func (t *transport) Topology(ctx context.Context, q driver.TopologyQuery) (*driver.Topology, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	known := map[string]driver.SubscriptionRef{}
	for _, s := range q.Subscriptions {
		if !s.Hint {
			known[s.Name] = s
		}
	}
	prefix := q.Service + "."
	top := &driver.Topology{Broker: "in-process broker"}
	seen := map[string]bool{}
	t.b.mu.RLock()
	names := make([]string, 0, len(t.b.groups))
	for name := range t.b.groups {
		if strings.HasPrefix(name, prefix) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		g := t.b.groups[name]
		sub := strings.TrimPrefix(name, prefix)
		seen[sub] = true
		o := driver.TopologyObject{Kind: driver.KindQueue, Name: name, Subscription: sub, Consumers: -1,
			Messages: int64(len(g.queue)) + int64(g.nback.Load())}
		for _, p := range g.patterns {
			o.Bindings = append(o.Bindings, p.pattern)
		}
		if len(known) > 0 {
			if ref, ok := known[sub]; !ok {
				o.Orphan, o.Note = true, "no subscription of the service has this name"
			} else if ref.Pattern != "" && !(len(o.Bindings) == 1 && o.Bindings[0] == ref.Pattern) {
				o.Orphan, o.Note = true, "bound with "+strings.Join(o.Bindings, ", ")+", not only with the subscription's pattern "+ref.Pattern
			}
		}
		top.Objects = append(top.Objects, o)
	}
	pq := t.b.poison[q.Service]
	t.b.mu.RUnlock()
	for _, s := range q.Subscriptions {
		if !seen[s.Name] && !s.Hint {
			seen[s.Name] = true
			top.Objects = append(top.Objects, driver.TopologyObject{Kind: driver.KindQueue, Name: prefix + s.Name, Subscription: s.Name,
				Messages: -1, Consumers: -1, Missing: true, Note: "the subscription has not started on this broker yet"})
		}
	}
	po := driver.TopologyObject{Kind: driver.KindPoisonQueue, Name: "poison store of " + q.Service, Consumers: -1}
	if pq == nil {
		po.Missing, po.Messages, po.Note = true, -1, "nothing was poisoned yet"
	} else {
		pq.mu.Lock()
		po.Messages = int64(len(pq.recs))
		pq.mu.Unlock()
	}
	top.Objects = append(top.Objects, po)
	return top, nil
}
