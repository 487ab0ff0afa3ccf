package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// poisonHintRecords bounds how many poison records topology reads to find
// subscription names: enough to name the subscriptions that failed
// recently, without reading a large queue.
const poisonHintRecords = 1000

func newTopologyCmd(g *globals) *cobra.Command {
	var (
		service, admin string
		subs           []string
		asJSON         bool
	)
	c := &cobra.Command{
		Use:   "topology",
		Short: "Show a service's subscriptions as the broker holds them",
		Long: `topology shows a service's broker objects: the queues (RabbitMQ) or consumer
groups (Kafka) of its subscriptions with how many messages wait and how
many consumers read them, their bindings or topics, the event topics, the
replay topics and the poison queue, and objects that look orphaned (a
queue or group of a subscription the service no longer has, a binding left
by an old pattern, a replay topic without its group).

Name the service's current subscriptions with --subscription
NAME[=PATTERN] (repeatable; the name is the pattern unless the code set
SubscriptionName): orphans are judged against them, and a subscription
without its queue or group is reported missing.

Kafka: everything comes from the admin protocol (topics, groups, members,
committed offsets; lag is records not yet committed).

RabbitMQ: AMQP 0-9-1 cannot list queues or bindings. Without --admin,
topology looks up by name the subscriptions given with --subscription and
those named in the first 1,000 poison records, and shows their depth
(messages ready) and consumers, without bindings. With --admin it lists
every queue of the service and the exchange's bindings, and finds orphans:
--admin rabbitmqctl (on a broker node; add "-n rabbit@host" inside the
quotes for another node) or --admin http://user:password@host:15672 (the
management plugin).`,
		Example: `  eventbus topology --service billing
  eventbus topology -s billing --subscription 'order.#' --subscription invoices='invoice.*'
  eventbus topology -s billing --admin rabbitmqctl --subscription 'order.#' --subscription invoices='invoice.*'
  eventbus topology -s billing --admin http://guest:guest@rabbit.internal:15672 --json
  EVENTBUS_URL=kafka://localhost:9092 eventbus topology -s billing`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var refs []driver.SubscriptionRef
			for _, s := range subs {
				name, pattern, _ := strings.Cut(s, "=")
				if name == "" {
					return usageErrorf("--subscription %q: write NAME or NAME=PATTERN", s)
				}
				if pattern == "" {
					if _, err := eventbus.CompilePattern(name); err == nil {
						pattern = name // named after its pattern, as by default
					}
				} else if _, err := eventbus.CompilePattern(pattern); err != nil {
					return usageErrorf("--subscription %q: %v", s, err)
				}
				refs = append(refs, driver.SubscriptionRef{Name: name, Pattern: pattern})
			}
			ctx, stop := signals(cmd.Context())
			defer stop()
			b, err := g.open(ctx, service)
			if err != nil {
				return err
			}
			defer closeBus(b)
			tr, ok := b.Transport().(driver.TopologyReader)
			if !ok {
				return withCode(exitUnsupported, fmt.Errorf("the transport of %s (%T) cannot describe its topology: it does not implement driver.TopologyReader", g.redacted(), b.Transport()))
			}
			top, err := tr.Topology(ctx, driver.TopologyQuery{Service: service, Subscriptions: refs, Admin: admin})
			if err != nil {
				return err
			}
			if admin == "" && hasPoisonQueue(top) {
				// Subscriptions that failed events are named in the poison
				// records: look them up too. (Only when the poison queue
				// exists: reading it would create it.)
				named := map[string]bool{}
				for _, r := range refs {
					named[r.Name] = true
				}
				_, err := b.Poisoned(ctx, eventbus.PoisonFilter{Limit: poisonHintRecords, Each: func(p eventbus.PoisonedEvent) error {
					if p.Subscription != "" && !named[p.Subscription] {
						named[p.Subscription] = true
						refs = append(refs, driver.SubscriptionRef{Name: p.Subscription, Pattern: p.Pattern, Hint: true})
					}
					return nil
				}})
				if err != nil && !errors.Is(err, driver.ErrUnsupported) {
					return err
				}
				if top, err = tr.Topology(ctx, driver.TopologyQuery{Service: service, Subscriptions: refs, Admin: admin}); err != nil {
					return err
				}
			}
			if asJSON {
				return newLineWriter(g.stdout).json(top)
			}
			fmt.Fprintf(g.stdout, "service %s on %s\n\n", service, redactAll(top.Broker))
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tNAME\tSUBSCRIPTION\tMESSAGES\tCONSUMERS\tBINDINGS\tSTATUS")
			orphans := 0
			for _, o := range top.Objects {
				status := "ok"
				switch {
				case o.Missing:
					status = "MISSING"
				case o.Orphan:
					status = "ORPHAN?"
					orphans++
				}
				if o.Note != "" {
					status += ": " + o.Note
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", o.Kind, o.Name, dash(o.Subscription), count(o.Messages), count(int64(o.Consumers)),
					dash(strings.Join(o.Bindings, " ")), status)
			}
			_ = tw.Flush()
			for _, n := range top.Notes {
				fmt.Fprintf(g.stdout, "\nnote: %s\n", n)
			}
			if orphans > 0 {
				fmt.Fprintf(g.stdout, "\n%d object(s) look orphaned; check before deleting anything.\n", orphans)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&service, "service", "s", "", "the service to describe (required)")
	f.StringArrayVar(&subs, "subscription", nil, "a current subscription of the service, NAME or NAME=PATTERN (repeatable)")
	f.StringVar(&admin, "admin", "", "RabbitMQ: list through 'rabbitmqctl [-n node]' or the management API 'http://user:password@host:15672'")
	f.BoolVar(&asJSON, "json", false, "print the topology as JSON")
	_ = c.MarkFlagRequired("service")
	return c
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func count(n int64) string {
	if n < 0 {
		return "?"
	}
	return strconv.FormatInt(n, 10)
}

// hasPoisonQueue reports whether the topology shows the poison queue.
func hasPoisonQueue(top *driver.Topology) bool {
	for _, o := range top.Objects {
		if o.Kind == driver.KindPoisonQueue {
			return !o.Missing
		}
	}
	return false
}
