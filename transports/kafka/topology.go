package kafka

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/IBM/sarama"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/blocking"
)

var _ driver.TopologyReader = (*Transport)(nil)

// Topology describes the namespace's event topics (records retained), the
// service's consumer groups ("<prefix>.<service>.<subscription>") with
// their members, the topics they read and their lag (records not yet
// committed, summed over partitions, replay topic included), the
// subscriptions' replay topics and the service's poison topic, through the
// admin protocol. Orphans: a group or replay topic of a subscription the
// query does not name (when it names any), and a replay topic whose group
// does not exist. q.Admin is not used. Lag counts records, so under
// mapping=single it includes events the subscription's pattern skips.
func (t *Transport) Topology(ctx context.Context, q driver.TopologyQuery) (*driver.Topology, error) {
	call := func(what string, f func() error) error {
		if err := blocking.Do(ctx, f); err != nil {
			return fmt.Errorf("kafka transport: topology: %s: %w", what, err)
		}
		return nil
	}
	top := &driver.Topology{Broker: fmt.Sprintf("prefix %q, mapping=%s, brokers %s", t.opts.prefix, t.opts.mapping, strings.Join(t.opts.brokers, ","))}
	var topics map[string]sarama.TopicDetail
	var groups map[string]string
	if err := call("listing topics", func() (err error) { topics, err = t.admin.ListTopics(); return err }); err != nil {
		return nil, err
	}
	if err := call("listing consumer groups", func() (err error) { groups, err = t.admin.ListConsumerGroups(); return err }); err != nil {
		return nil, err
	}
	// records returns the records retained in topic and its offsets by
	// partition.
	records := func(topic string) (int64, map[int32][2]int64, error) {
		var n int64
		hwms := map[int32][2]int64{} // oldest, high-water mark
		err := call("offsets of "+topic, func() error {
			if err := t.client.RefreshMetadata(topic); err != nil {
				return err
			}
			ps, err := t.client.Partitions(topic)
			if err != nil {
				return err
			}
			for _, p := range ps {
				old, err := t.client.GetOffset(topic, p, sarama.OffsetOldest)
				if err != nil {
					return err
				}
				hwm, err := t.client.GetOffset(topic, p, sarama.OffsetNewest)
				if err != nil {
					return err
				}
				n += hwm - old
				hwms[p] = [2]int64{old, hwm}
			}
			return nil
		})
		return n, hwms, err
	}

	var names []string
	for name := range topics {
		names = append(names, name)
	}
	sort.Strings(names)
	hwmOf := map[string]map[int32][2]int64{}
	for _, name := range names {
		if name != t.names.join("events") && !strings.HasPrefix(name, t.names.join("events.")) {
			continue
		}
		n, hwms, err := records(name)
		if err != nil {
			return nil, err
		}
		hwmOf[name] = hwms
		top.Objects = append(top.Objects, driver.TopologyObject{Kind: driver.KindTopic, Name: name, Messages: n, Consumers: -1,
			Note: fmt.Sprintf("%d partition(s); records retained", topics[name].NumPartitions)})
	}

	known := map[string]driver.SubscriptionRef{}
	for _, s := range q.Subscriptions {
		if !s.Hint {
			known[s.Name] = s
		}
	}
	groupPrefix := t.names.groupID(q.Service + ".")
	var ids []string
	for id := range groups {
		if strings.HasPrefix(id, groupPrefix) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	var descs []*sarama.GroupDescription
	if len(ids) > 0 {
		if err := call("describing consumer groups", func() (err error) { descs, err = t.admin.DescribeConsumerGroups(ids); return err }); err != nil {
			return nil, err
		}
	}
	members := map[string]int{}
	states := map[string]string{}
	for _, d := range descs {
		members[d.GroupId], states[d.GroupId] = len(d.Members), d.State
	}
	replayOf := map[string]string{} // replay topic -> subscription
	seen := map[string]bool{}
	for _, id := range ids {
		sub := strings.TrimPrefix(id, groupPrefix)
		seen[sub] = true
		replayOf[t.names.replayTopic(q.Service+"."+sub)] = sub
		var offs *sarama.OffsetFetchResponse
		if err := call("offsets of group "+id, func() (err error) { offs, err = t.admin.ListConsumerGroupOffsets(id, nil); return err }); err != nil {
			return nil, err
		}
		o := driver.TopologyObject{Kind: driver.KindConsumerGroup, Name: id, Subscription: sub, Consumers: members[id]}
		var lag int64
		for topic, parts := range offs.Blocks {
			o.Bindings = append(o.Bindings, topic)
			hwms, ok := hwmOf[topic]
			if !ok {
				var err error
				if _, hwms, err = records(topic); err != nil {
					return nil, err
				}
				hwmOf[topic] = hwms
			}
			for p, off := range hwms {
				from := off[0] // nothing committed: the group starts at the oldest record
				if b := parts[p]; b != nil && b.Offset >= 0 {
					from = b.Offset
				}
				if d := off[1] - from; d > 0 {
					lag += d
				}
			}
		}
		sort.Strings(o.Bindings)
		o.Messages = lag
		ref, isKnown := known[sub]
		switch {
		case len(known) > 0 && !isKnown:
			o.Orphan, o.Note = true, "no subscription of the service has this name: a renamed or removed subscription's group; delete it (kafka-consumer-groups --delete --group "+id+")"
		case o.Consumers == 0:
			o.Note = "no member: nobody consumes, so the lag grows until the subscription runs again (state " + states[id] + ")"
		default:
			o.Note = "state " + states[id]
		}
		if isKnown && ref.Pattern != "" {
			o.Note += "; pattern " + ref.Pattern
		}
		top.Objects = append(top.Objects, o)
	}
	reported := map[string]bool{}
	for _, s := range q.Subscriptions {
		if !seen[s.Name] && !s.Hint && !reported[s.Name] {
			reported[s.Name] = true
			top.Objects = append(top.Objects, driver.TopologyObject{Kind: driver.KindConsumerGroup, Name: t.names.groupID(q.Service + "." + s.Name),
				Subscription: s.Name, Messages: -1, Consumers: -1, Missing: true,
				Note: "no such consumer group: the subscription has not started on this cluster (or its name is wrong)"})
			replayOf[t.names.replayTopic(q.Service+"."+s.Name)] = s.Name
		}
	}
	replayPrefix := t.names.join("replay." + safeName(q.Service) + ".")
	for _, name := range names {
		if !strings.HasPrefix(name, replayPrefix) {
			continue
		}
		n, _, err := records(name)
		if err != nil {
			return nil, err
		}
		o := driver.TopologyObject{Kind: driver.KindReplayTopic, Name: name, Messages: n, Consumers: -1, Note: "records retained (replays)"}
		if sub, ok := replayOf[name]; ok {
			o.Subscription = sub
			if !seen[sub] {
				o.Orphan, o.Note = true, "its consumer group does not exist: replays sent here wait until the subscription starts"
			} else if _, isKnown := known[sub]; len(known) > 0 && !isKnown {
				o.Orphan, o.Note = true, "no subscription of the service has this name"
			}
		} else {
			o.Orphan, o.Note = true, "no consumer group of the service reads it: left by a removed subscription"
		}
		top.Objects = append(top.Objects, o)
	}

	po := driver.TopologyObject{Kind: driver.KindPoisonQueue, Name: t.names.poisonTopic(q.Service), Consumers: -1}
	if _, ok := topics[po.Name]; !ok {
		po.Missing, po.Messages, po.Note = true, -1, "no poison topic: nothing was poisoned yet, or the service name is wrong"
	} else {
		n, _, err := records(po.Name)
		if err != nil {
			return nil, err
		}
		po.Messages, po.Note = n, "records retained, removal markers (tombstones) included: `eventbus poison ls` counts the events"
	}
	top.Objects = append(top.Objects, po)
	return top, nil
}
