package nats

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

var _ driver.TopologyReader = (*Transport)(nil)

// consumerDescription is the description a subscription's consumer is
// created with; Topology reads the group and the pattern back from it,
// since a consumer's name cannot always be turned back into them.
func consumerDescription(group, pattern string) string {
	return "go-eventbus subscription " + group + " to " + pattern
}

// parseConsumerDescription returns the group and pattern of a consumer
// description, ok false for a consumer the transport did not describe.
func parseConsumerDescription(d string) (group, pattern string, ok bool) {
	rest, ok := strings.CutPrefix(d, "go-eventbus subscription ")
	if !ok {
		return "", "", false
	}
	return strings.Cut(rest, " to ")
}

// Topology describes the event stream, the service's durable consumers
// (one per subscription group: filter subjects, events not yet delivered,
// and in the note those delivered and not acknowledged) and its poison
// records, through the JetStream API: it sees every object, so Admin is
// not needed. A pull consumer does not know how many instances read it,
// so Consumers is unknown for consumers. A consumer whose subscription
// the query does not name, or whose filter subjects are not those of the
// named pattern, is marked as a possible orphan (the next Subscribe of a
// changed pattern updates the filters).
func (t *Transport) Topology(ctx context.Context, q driver.TopologyQuery) (*driver.Topology, error) {
	if t.isClosed() {
		return nil, errClosed
	}
	events, _ := t.streams()
	top := &driver.Topology{Broker: fmt.Sprintf("stream %q at %s", t.opts.stream, t.redacted)}
	if q.Admin != "" {
		top.Notes = append(top.Notes, "--admin is not used on NATS: the JetStream API shows every object")
	}
	info, err := events.Info(ctx)
	if err != nil {
		return nil, t.apiError(ctx, "reading the stream "+t.opts.stream, err)
	}
	top.Objects = append(top.Objects, driver.TopologyObject{
		Kind: driver.KindStream, Name: t.opts.stream, Bindings: info.Config.Subjects,
		Messages: int64(info.State.Msgs), Consumers: info.State.Consumers,
		Note: fmt.Sprintf("%d consumer(s) of every service; events kept for %s", info.State.Consumers, info.Config.MaxAge),
	})

	known := map[string]driver.SubscriptionRef{}
	for _, s := range q.Subscriptions {
		if !s.Hint {
			known[s.Name] = s
		}
	}
	prefix := q.Service + "~"
	var consumers []*jetstream.ConsumerInfo
	lister := events.ListConsumers(ctx)
	for ci := range lister.Info() {
		if strings.HasPrefix(ci.Name, prefix) {
			consumers = append(consumers, ci)
		}
	}
	if err := lister.Err(); err != nil {
		return nil, t.apiError(ctx, "listing the consumers of stream "+t.opts.stream, err)
	}
	sort.Slice(consumers, func(i, j int) bool { return consumers[i].Name < consumers[j].Name })
	seen := map[string]bool{}
	for _, ci := range consumers {
		filters := ci.Config.FilterSubjects
		if ci.Config.FilterSubject != "" {
			filters = []string{ci.Config.FilterSubject}
		}
		o := driver.TopologyObject{
			Kind: driver.KindConsumer, Name: ci.Name, Bindings: filters, Messages: int64(ci.NumPending), Consumers: -1,
			Note: fmt.Sprintf("%d delivered and not acknowledged, %d redelivered", ci.NumAckPending, ci.NumRedelivered),
		}
		group, pattern, ok := parseConsumerDescription(ci.Config.Description)
		if ok && strings.HasPrefix(group, q.Service+".") {
			o.Subscription = strings.TrimPrefix(group, q.Service+".")
			seen[o.Subscription] = true
		}
		if len(known) > 0 {
			ref, named := known[o.Subscription]
			switch {
			case o.Subscription == "" || !named:
				o.Orphan, o.Note = true, "no current subscription of the service reads it; "+o.Note
			case ref.Pattern != "" && ref.Pattern != pattern:
				want, _ := filterSubjects(t.opts.stream, ref.Pattern, t.multiFilter)
				if !slices.Equal(want, filters) {
					o.Orphan, o.Note = true, fmt.Sprintf("filters for pattern %q, not the subscription's %q (its next Subscribe updates them); %s", pattern, ref.Pattern, o.Note)
				}
			}
		}
		top.Objects = append(top.Objects, o)
	}
	for _, s := range q.Subscriptions {
		if !seen[s.Name] && !s.Hint {
			seen[s.Name] = true
			top.Objects = append(top.Objects, driver.TopologyObject{
				Kind: driver.KindConsumer, Name: consumerName(q.Service, s.Name), Subscription: s.Name,
				Messages: -1, Consumers: -1, Missing: true, Note: "no consumer: the subscription has not started on this server",
			})
		}
	}

	po := driver.TopologyObject{Kind: driver.KindPoisonQueue, Name: poisonSubject(t.opts.stream, q.Service), Consumers: -1}
	_, ps := t.streams()
	pinfo, err := ps.Info(ctx, jetstream.WithSubjectFilter(po.Name))
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		po.Missing, po.Messages, po.Note = true, -1, "no poison stream "+poisonStreamName(t.opts.stream)
	case err != nil:
		return nil, t.apiError(ctx, "reading the poison stream "+poisonStreamName(t.opts.stream), err)
	default:
		po.Messages = int64(pinfo.State.Subjects[po.Name])
		po.Note = "subject of stream " + poisonStreamName(t.opts.stream)
	}
	top.Objects = append(top.Objects, po)
	top.Notes = append(top.Notes, "a pull consumer does not know how many instances read it: CONSUMERS is unknown for consumers; MESSAGES is what the consumer has not delivered yet")
	return top, nil
}
