package amqp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

var _ driver.TopologyReader = (*Transport)(nil)

// adminTimeout bounds one call to an administration interface, unless
// the ctx given to Topology ends first.
const adminTimeout = 10 * time.Second

// Topology describes the service's queues: its subscriptions' queues
// ("<service>.<subscription>") with their depth and consumer count, the
// exchange and the poison queue. It declares nothing: it looks queues up
// with passive declarations.
//
// AMQP 0-9-1 cannot list queues or bindings, so without q.Admin it
// describes the subscriptions q names only, without their bindings. With
// q.Admin it lists every queue of the service and the exchange's bindings
// through RabbitMQ's own tools, which also finds orphans (a queue of the
// service bound to no exchange, or, when q names the service's
// subscriptions, a queue no subscription explains and a binding left by an
// old pattern). q.Admin is either "rabbitmqctl" (or a path to it, with
// arguments such as "-n rabbit@host"), run on a broker node, or the http://
// or https:// URL of the management plugin, with the credentials in it
// ("http://guest:guest@localhost:15672").
func (t *Transport) Topology(ctx context.Context, q driver.TopologyQuery) (*driver.Topology, error) {
	if t.isClosed() {
		return nil, errClosed
	}
	vhost := t.vhost()
	top := &driver.Topology{Broker: fmt.Sprintf("exchange %q in vhost %q at %s", t.opts.exchange, vhost, t.conn.redacted)}
	known := map[string]driver.SubscriptionRef{}
	for _, s := range q.Subscriptions {
		if !s.Hint {
			known[s.Name] = s
		}
	}
	// The service's queues are "<prefix>:<service>.<subscription>" (see
	// QueueName); helper objects carry helperMark in their names.
	prefix := t.queueName(q.Service + ".")

	ex := driver.TopologyObject{Kind: driver.KindExchange, Name: t.opts.exchange, Messages: -1, Consumers: -1}
	if ok, err := t.lookupExchange(ctx, t.opts.exchange); err != nil {
		return nil, err
	} else if !ok {
		ex.Missing, ex.Note = true, "the exchange does not exist: nothing was published or subscribed with this URL's ?exchange="
	}
	top.Objects = append(top.Objects, ex)

	var subs []driver.TopologyObject
	if q.Admin != "" {
		list, err := t.adminList(ctx, q.Admin, vhost)
		if err != nil {
			return nil, err
		}
		// A subscription's queue is bound to its own exchange (of the same
		// name), which the topic exchange binds with the pattern; a queue
		// bound to the topic exchange directly is the topology of earlier
		// versions, still read.
		bound := map[string][]string{}  // queue -> patterns from this exchange
		others := map[string][]string{} // queue -> other exchanges binding it
		viaOwn := map[string]bool{}     // queue -> bound to its own exchange
		for _, b := range list.bindings {
			if b.Source == "" {
				continue
			}
			switch {
			case b.Source == t.opts.exchange:
				bound[b.Destination] = append(bound[b.Destination], b.RoutingKey)
			case b.DestinationKind == "queue" && b.Source == b.Destination:
				viaOwn[b.Destination] = true
			case b.DestinationKind == "queue":
				others[b.Destination] = append(others[b.Destination], b.Source)
			}
		}
		seen := map[string]bool{}
		for _, lq := range list.queues {
			if !strings.HasPrefix(lq.Name, prefix) || strings.Contains(lq.Name, helperMark) {
				continue
			}
			if _, ours := bound[lq.Name]; !ours && !viaOwn[lq.Name] && len(others[lq.Name]) > 0 {
				continue // a queue of the same name of another exchange's application
			}
			sub := strings.TrimPrefix(lq.Name, prefix)
			seen[sub] = true
			o := driver.TopologyObject{Kind: driver.KindQueue, Name: lq.Name, Subscription: sub,
				Bindings: bound[lq.Name], Messages: lq.Messages, Consumers: lq.Consumers}
			sort.Strings(o.Bindings)
			ref, isKnown := known[sub]
			switch {
			case len(o.Bindings) == 0:
				o.Orphan, o.Note = true, fmt.Sprintf("bound to no exchange: it receives no events (only replays); delete it if the subscription is gone (rabbitmqctl delete_queue %s)", lq.Name)
			case len(known) > 0 && !isKnown:
				o.Orphan, o.Note = true, "no subscription of the service has this name: a renamed or removed subscription whose queue still collects events; delete it once drained"
			case isKnown && ref.Pattern != "" && !(len(o.Bindings) == 1 && o.Bindings[0] == ref.Pattern):
				o.Orphan, o.Note = true, fmt.Sprintf("bound with %s, not only with the subscription's pattern %s: the next start of the subscription replaces its exchange's binding; a direct binding left by an earlier version must be removed by hand (rabbitmqctl or the management UI: unbind)", strings.Join(o.Bindings, ", "), ref.Pattern)
			}
			subs = append(subs, o)
		}
		for _, s := range q.Subscriptions {
			if !seen[s.Name] && !s.Hint {
				subs = append(subs, t.missingQueue(q.Service, s))
				seen[s.Name] = true
			}
		}
	} else {
		seen := map[string]bool{}
		for _, s := range q.Subscriptions {
			if seen[s.Name] {
				continue
			}
			seen[s.Name] = true
			o, err := t.lookupQueue(ctx, t.queueName(q.Service+"."+s.Name))
			if err != nil {
				return nil, err
			}
			o.Kind, o.Subscription = driver.KindQueue, s.Name
			switch {
			case o.Missing && s.Hint:
				continue // named by an old poison record: gone, as it may be
			case o.Missing:
				o = t.missingQueue(q.Service, s)
			case s.Pattern != "" && s.Hint:
				o.Note = "found in poison records, which name the pattern " + s.Pattern
			case s.Pattern != "":
				o.Note = "expected binding: " + s.Pattern
			}
			subs = append(subs, o)
		}
		top.Notes = append(top.Notes, "AMQP 0-9-1 cannot list queues or bindings: shown are the subscriptions named, looked up by name (depth = messages ready, not those delivered and unacknowledged). "+
			"For every queue of the service, its bindings and orphans, give an administration interface: rabbitmqctl on a broker node, or the management plugin's URL (http://user:password@host:15672).")
	}
	sort.SliceStable(subs, func(i, j int) bool { return subs[i].Name < subs[j].Name })
	top.Objects = append(top.Objects, subs...)

	po, err := t.lookupQueue(ctx, t.poisonName(q.Service))
	if err != nil {
		return nil, err
	}
	po.Kind = driver.KindPoisonQueue
	if po.Missing {
		po.Note = "no poison queue: nothing was poisoned yet, or the service name is wrong"
	}
	top.Objects = append(top.Objects, po)
	return top, nil
}

func (t *Transport) missingQueue(service string, s driver.SubscriptionRef) driver.TopologyObject {
	return driver.TopologyObject{Kind: driver.KindQueue, Name: t.queueName(service + "." + s.Name), Subscription: s.Name, Messages: -1, Consumers: -1,
		Missing: true, Note: "no such queue: the subscription has not started on this broker (or its name is wrong); events published until it starts do not reach it"}
}

// vhost is the virtual host the transport's URL names.
func (t *Transport) vhost() string {
	u, err := url.Parse(t.conn.url)
	if err != nil || u.Path == "" || u.Path == "/" {
		return "/"
	}
	return strings.TrimPrefix(u.Path, "/")
}

// passive runs a passive declaration on a channel of its own (a
// declaration of something missing closes the channel) and reports
// whether the object exists.
func (t *Transport) passive(ctx context.Context, what string, f func(ch *amqp091.Channel) error) (bool, error) {
	ch, _, err := t.openChannel(ctx)
	if err != nil {
		return false, fmt.Errorf("amqp transport: looking up %s: %w", what, err)
	}
	err = t.within(ctx, ch, "looking up "+what, func() error { return f(ch) })
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
		return false, nil // the broker closed the channel
	}
	if err != nil {
		return false, fmt.Errorf("amqp transport: looking up %s: %w", what, err)
	}
	t.closeChannel(ctx, ch)
	return true, nil
}

func (t *Transport) lookupExchange(ctx context.Context, name string) (bool, error) {
	return t.passive(ctx, fmt.Sprintf("exchange %q", name), func(ch *amqp091.Channel) error {
		return ch.ExchangeDeclarePassive(name, amqp091.ExchangeTopic, true, false, false, false, nil)
	})
}

// lookupQueue returns the queue's depth (messages ready) and consumers,
// or Missing.
func (t *Transport) lookupQueue(ctx context.Context, name string) (driver.TopologyObject, error) {
	o := driver.TopologyObject{Name: name, Messages: -1, Consumers: -1}
	var q amqp091.Queue
	ok, err := t.passive(ctx, fmt.Sprintf("queue %q", name), func(ch *amqp091.Channel) (err error) {
		q, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
		return err
	})
	if err != nil {
		return o, err
	}
	if !ok {
		o.Missing = true
		return o, nil
	}
	o.Messages, o.Consumers = int64(q.Messages), q.Consumers
	return o, nil
}

// adminListing is what an administration interface lists.
type adminListing struct {
	queues []struct {
		Name      string `json:"name"`
		Messages  int64  `json:"messages"`
		Consumers int    `json:"consumers"`
	}
	bindings []adminBinding
}

type adminBinding struct {
	Source          string `json:"source"`
	Destination     string `json:"destination"`
	DestinationKind string `json:"destination_type"`
	RoutingKey      string `json:"routing_key"`
}

// adminList lists the vhost's queues and bindings through rabbitmqctl or
// the management plugin's HTTP API.
func (t *Transport) adminList(ctx context.Context, admin, vhost string) (*adminListing, error) {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	var l adminListing
	if strings.HasPrefix(admin, "http://") || strings.HasPrefix(admin, "https://") {
		base, err := url.Parse(strings.TrimSuffix(admin, "/"))
		if err != nil {
			return nil, fmt.Errorf("amqp transport: cannot read the management URL %s", driver.RedactURL(admin))
		}
		v := url.PathEscape(vhost)
		if err := t.mgmtGet(ctx, base, "/api/queues/"+v+"?columns=name,messages,consumers", &l.queues); err != nil {
			return nil, err
		}
		if err := t.mgmtGet(ctx, base, "/api/bindings/"+v+"?columns=source,destination,destination_type,routing_key", &l.bindings); err != nil {
			return nil, err
		}
		return &l, nil
	}
	args := strings.Fields(admin)
	if len(args) == 0 || path.Base(args[0]) != "rabbitmqctl" {
		return nil, fmt.Errorf("amqp transport: administration interface %q is neither rabbitmqctl (a path to it, with arguments) nor the management plugin's http(s):// URL", driver.RedactURL(admin))
	}
	ctl := func(what ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, args[0], append(append(append([]string(nil), args[1:]...), "-q"), what...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("amqp transport: %s %s: %w: %s (run it on a broker node, as a user that can read the Erlang cookie, or give -n rabbit@host)", args[0], what[0], err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	out, err := ctl("list_queues", "-p", vhost, "name", "messages", "consumers", "--formatter", "json")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(out, &l.queues); err != nil {
		return nil, fmt.Errorf("amqp transport: reading rabbitmqctl list_queues: %w", err)
	}
	out, err = ctl("list_bindings", "-p", vhost, "source_name", "destination_name", "destination_kind", "routing_key", "--formatter", "json")
	if err != nil {
		return nil, err
	}
	var bs []struct {
		Source          string `json:"source_name"`
		Destination     string `json:"destination_name"`
		DestinationKind string `json:"destination_kind"`
		RoutingKey      string `json:"routing_key"`
	}
	if err := json.Unmarshal(out, &bs); err != nil {
		return nil, fmt.Errorf("amqp transport: reading rabbitmqctl list_bindings: %w", err)
	}
	for _, b := range bs {
		l.bindings = append(l.bindings, adminBinding(b))
	}
	return &l, nil
}

// mgmtGet reads one resource of the management plugin's HTTP API.
func (t *Transport) mgmtGet(ctx context.Context, base *url.URL, resource string, into any) error {
	u := *base
	user := u.User
	u.User = nil
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String()+resource, nil)
	if err != nil {
		return fmt.Errorf("amqp transport: management API: %w", err)
	}
	if user != nil {
		pw, _ := user.Password()
		req.SetBasicAuth(user.Username(), pw)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("amqp transport: management API at %s: %v (is the rabbitmq_management plugin enabled, and the port right?)", u.Redacted(), errors.Unwrap(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("amqp transport: management API at %s: GET %s: %s (check the user's credentials and its monitoring tag)", u.Redacted(), resource, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		return fmt.Errorf("amqp transport: management API at %s: reading %s: %w", u.Redacted(), resource, err)
	}
	return nil
}
