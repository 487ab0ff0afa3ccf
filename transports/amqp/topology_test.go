package amqp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// subscribeNamed subscribes a counter to pattern under a subscription
// name and starts the bus.
func subscribeNamed(t testing.TB, b *eventbus.Bus, pattern, name string) *transporttest.Counter {
	t.Helper()
	c := transporttest.NewCounter()
	if err := b.Subscribe(pattern, c.Handle, eventbus.SubscriptionName(name)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

// closeBus closes b now (newBus closes it again at the end, harmlessly).
func closeBus(t testing.TB, b *eventbus.Bus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// publishOne publishes one event named name and returns it with Publish's
// error.
func publishOne(t testing.TB, b *eventbus.Bus, name string) (eventbus.Event, error) {
	t.Helper()
	ev := mustEvent(t, name, map[string]string{"n": name})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return ev, b.Publish(ctx, ev)
}

// queueDepth returns the number of messages ready in queue.
func queueDepth(t testing.TB, queue string) int {
	t.Helper()
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("queue %s: %v", queue, err)
	}
	return q.Messages
}

// TestPatternChangeBetweenRuns: a named subscription subscribed with one
// pattern and, in the next run of the service, with another receives only
// events of the new pattern: an event of the old one no longer reaches its
// queue, and publishing it is unroutable. An event of the old pattern that
// was queued between the runs reaches the new run and is poisoned as
// misrouted, not lost and not handled.
func TestPatternChangeBetweenRuns(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("change-")
	pub := transporttest.NewBus(t, url, unique("change-pub-"))

	run1 := transporttest.NewBus(t, url, svc)
	c1 := subscribeNamed(t, run1, "old.#", "orders")
	ev, err := publishOne(t, pub, "old.one")
	if err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the old pattern's event in run 1", func() bool { return c1.Has(ev.ID) }, func() string { return "not handled" })
	closeBus(t, run1)
	between, err := publishOne(t, pub, "old.between")
	if err != nil {
		t.Fatalf("an old-pattern event between the runs: %v (the queue keeps its binding while the service is down)", err)
	}

	run2 := transporttest.NewBus(t, url, svc)
	c2 := subscribeNamed(t, run2, "new.#", "orders")
	_, err = publishOne(t, pub, "old.after")
	if !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("Publish of an old-pattern event after the change: %v; want ErrUnroutable", err)
	}
	fresh, err := publishOne(t, pub, "new.one")
	if err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the new pattern's event in run 2", func() bool { return c2.Has(fresh.ID) }, func() string { return "not handled" })
	var poisoned []eventbus.PoisonedEvent
	transporttest.WaitFor(t, 20*time.Second, "the event queued between the runs poisoned as misrouted", func() bool {
		poisoned, err = run2.Poisoned(context.Background(), eventbus.PoisonFilter{})
		return err == nil && len(poisoned) == 1
	}, func() string { return fmt.Sprintf("%d poisoned (%v)", len(poisoned), err) })
	if p := poisoned[0]; p.Event.ID != between.ID || p.Reason != "misrouted" {
		t.Errorf("poisoned %s (%s), want %s as misrouted", p.Event.ID, p.Reason, between.ID)
	}
	if c2.Distinct() != 1 {
		t.Errorf("run 2 handled %d events, want only the new-pattern one", c2.Distinct())
	}
	queue := transportOf(t, run2).QueueName(svc + ".orders")
	if n := queueDepth(t, queue); n != 0 {
		t.Errorf("queue %s holds %d messages", queue, n)
	}

	// With another subscription matching the old pattern, the event is
	// routable, and still misses this queue.
	other := transporttest.NewBus(t, url, unique("change-other-"))
	c3 := subscribeNamed(t, other, "old.#", "watch")
	late, err := publishOne(t, pub, "old.late")
	if err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the other service's event", func() bool { return c3.Has(late.ID) }, func() string { return "not handled" })
	closeBus(t, run2)
	if n := queueDepth(t, queue); n != 0 || c2.Has(late.ID) {
		t.Errorf("the old pattern's event reached the changed subscription (queue depth %d)", n)
	}
}

// TestPatternChangeLosesNothing: at every step of a pattern change, an
// event matching the new pattern is routed to the queue (Publish succeeds
// with no other subscription to take it); the old pattern's events stop
// only once the subscription's exchange is replaced; and every event
// routed during the change is handled exactly once.
func TestPatternChangeLosesNothing(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("steps-")
	pub := transporttest.NewBus(t, url, unique("steps-pub-"))
	run1 := transporttest.NewBus(t, url, svc)
	subscribeNamed(t, run1, "step.old.#", "s")
	closeBus(t, run1)

	var mu sync.Mutex
	var routed []string
	var steps []string
	var failures []string
	testHookChange = func(step string) {
		ev, err := publishOne(t, pub, "step.new.x")
		mu.Lock()
		defer mu.Unlock()
		steps = append(steps, step)
		if err != nil {
			failures = append(failures, fmt.Sprintf("after %q: %v", step, err))
			return
		}
		routed = append(routed, ev.ID)
	}
	defer func() { testHookChange = nil }()
	run2 := transporttest.NewBus(t, url, svc)
	c := subscribeNamed(t, run2, "step.#", "s")
	testHookChange = nil

	mu.Lock()
	defer mu.Unlock()
	want := []string{"next bound to the queue", "next bound with the new pattern", "exchange deleted", "exchange declared",
		"exchange bound to the queue", "exchange bound with the new pattern", "next deleted"}
	if strings.Join(steps, "|") != strings.Join(want, "|") {
		t.Errorf("steps %q, want %q", steps, want)
	}
	// Before the temporary exchange carries the new pattern, an event of
	// the new pattern only (not of the old one) has no route: the first
	// step's failure is expected, no other.
	if len(failures) != 1 || !strings.Contains(failures[0], `"next bound to the queue"`) || !strings.Contains(failures[0], "no subscription matches") {
		t.Errorf("publish failures %q; want only the one before the temporary exchange was bound", failures)
	}
	transporttest.WaitFor(t, 20*time.Second, "every event routed during the change handled", func() bool {
		n, _ := c.Missing(routed)
		return n == 0
	}, c.DescribeMissing(routed))
	if d := c.Duplicates(); d != 0 {
		t.Errorf("%d events handled twice: the two routes during the change must deliver once", d)
	}
}

// TestPatternChangeOldEventsStopAtTheSwitch: an event of the old pattern
// only is routed until the subscription's exchange is deleted, and
// unroutable from then on.
func TestPatternChangeOldEventsStopAtTheSwitch(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("stop-")
	pub := transporttest.NewBus(t, url, unique("stop-pub-"))
	run1 := transporttest.NewBus(t, url, svc)
	subscribeNamed(t, run1, "stop.a.#", "s")
	closeBus(t, run1)

	outcome := map[string]error{}
	testHookChange = func(step string) {
		_, err := publishOne(t, pub, "stop.a.x")
		outcome[step] = err
	}
	defer func() { testHookChange = nil }()
	run2 := transporttest.NewBus(t, url, svc)
	subscribeNamed(t, run2, "stop.b.#", "s")
	testHookChange = nil
	for step, err := range outcome {
		before := step == "next bound to the queue" || step == "next bound with the new pattern"
		if before && err != nil {
			t.Errorf("old-pattern event after %q: %v; want it routed until the switch", step, err)
		}
		if !before && !errors.Is(err, eventbus.ErrUnroutable) {
			t.Errorf("old-pattern event after %q: %v; want ErrUnroutable", step, err)
		}
	}
	if len(outcome) != 7 {
		t.Errorf("%d steps seen", len(outcome))
	}
}

// TestPatternChangeConcurrentInstances: instances of the new version
// starting together while events of both patterns' intersection are
// published: none of those events is unroutable at any moment, each is
// handled, and the queue ends with the new pattern only.
func TestPatternChangeConcurrentInstances(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("conc-change-")
	pub := transporttest.NewBus(t, url, unique("conc-pub-"))
	run1 := transporttest.NewBus(t, url, svc)
	subscribeNamed(t, run1, "cc.a.*", "s")
	closeBus(t, run1)

	handled := transporttest.NewCounter()
	var stop atomic.Bool
	var published []string
	var failed []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			ev, err := publishOne(t, pub, "cc.a.both") // matches the old and the new pattern
			if err != nil {
				failed = append(failed, err)
				continue
			}
			published = append(published, ev.ID)
		}
	}()
	var instances []*eventbus.Bus
	for range 3 {
		instances = append(instances, transporttest.NewBus(t, url, svc))
	}
	var wg sync.WaitGroup
	for _, b := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Subscribe("cc.#", handled.Handle, eventbus.SubscriptionName("s"), eventbus.Concurrency(4)); err != nil {
				t.Error(err)
				return
			}
			if err := b.Start(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	stop.Store(true)
	<-done
	if len(failed) > 0 {
		t.Errorf("%d publishes of an event matching both patterns failed during the change, e.g. %v", len(failed), failed[0])
	}
	if len(published) == 0 {
		t.Fatal("nothing published during the change")
	}
	transporttest.WaitFor(t, 30*time.Second, "every event handled", func() bool { n, _ := handled.Missing(published); return n == 0 }, handled.DescribeMissing(published))
	if _, err := publishOne(t, pub, "cc.b.new"); err != nil {
		t.Errorf("new-pattern event after the change: %v", err)
	}
	if _, err := publishOne(t, pub, "ccx.old"); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("unrelated event: %v; want ErrUnroutable", err)
	}
	t.Logf("%d events published during the change", len(published))
}

// TestRollingDeployKeepsNewerPattern: an instance of the old version that
// reconnects after an instance of the new version changed the pattern does
// not change it back: the old pattern's events stay unroutable, the new
// pattern's reach the queue, and the old instance keeps consuming.
func TestRollingDeployKeepsNewerPattern(t *testing.T) {
	px := startFaultProxy(t)
	url := isolatedURL(t)
	proxied := strings.Replace(url, brokerURL(t).Host, px.Addr(), 1)
	svc := unique("rolling-")
	pub := transporttest.NewBus(t, url, unique("rolling-pub-"))

	oldInst := transporttest.NewBus(t, proxied, svc)
	cOld := subscribeNamed(t, oldInst, "roll.old.#", "s")
	newInst := transporttest.NewBus(t, url, svc)
	cNew := subscribeNamed(t, newInst, "roll.#", "s")
	if _, err := publishOne(t, pub, "rollx.old.z"); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Fatalf("control: %v", err)
	}

	tr := transportOf(t, oldInst)
	_, gen := tr.conn.connected()
	px.Cut()
	transporttest.WaitFor(t, 10*time.Second, "the old instance disconnected", func() bool { up, _ := tr.conn.connected(); return !up }, func() string { return "still up" })
	px.Heal()
	transporttest.WaitFor(t, 20*time.Second, "the old instance reconnected", func() bool { up, g := tr.conn.connected(); return up && g > gen }, func() string { return "not yet" })

	// The old instance re-subscribes on the new connection and consumes
	// again (it handles events that match both patterns); the pattern
	// stays the new one: an event only it matches is still routed.
	transporttest.WaitFor(t, 20*time.Second, "the old instance consuming again", func() bool {
		if _, err := publishOne(t, pub, "roll.old.x"); err != nil {
			t.Fatalf("event of both patterns: %v", err)
		}
		return cOld.Distinct() > 0
	}, func() string { return "the old instance handled nothing" })
	var ids []string
	for range 5 {
		ev, err := publishOne(t, pub, "roll.other")
		if err != nil {
			t.Fatalf("new-pattern event after the old instance re-subscribed: %v (the old instance changed the pattern back)", err)
		}
		ids = append(ids, ev.ID)
	}
	if _, err := publishOne(t, pub, "rollx.old.z"); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("unrelated event: %v", err)
	}
	// Each reached the queue: handled by the new instance, or poisoned as
	// misrouted by the old one, whose pattern does not match.
	transporttest.WaitFor(t, 20*time.Second, "the new-pattern events settled", func() bool {
		ps, err := oldInst.Poisoned(context.Background(), eventbus.PoisonFilter{})
		if err != nil {
			return false
		}
		seen := map[string]bool{}
		for _, p := range ps {
			seen[p.Event.ID] = p.Reason == "misrouted"
		}
		for _, id := range ids {
			if !cNew.Has(id) && !seen[id] {
				return false
			}
		}
		return true
	}, func() string { return "some neither handled nor poisoned" })
}

// TestLegacyBindingRemoved: a queue bound directly to the topic exchange,
// as versions before the subscription exchanges bound it, loses that
// binding on its first subscription, so a later pattern change leaves no
// stale route.
func TestLegacyBindingRemoved(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("legacy-")
	pub := transporttest.NewBus(t, url, unique("legacy-pub-"))
	tr := transportOf(t, pub)
	queue := svc + ".s"
	declared.add(tr.Exchange(), queue)
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(queue, "leg.#", tr.Exchange(), false, nil); err != nil {
		t.Fatal(err)
	}
	run1 := transporttest.NewBus(t, url, svc)
	c1 := subscribeNamed(t, run1, "leg.#", "s")
	ev, err := publishOne(t, pub, "leg.one")
	if err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "handled", func() bool { return c1.Has(ev.ID) }, func() string { return "not handled" })
	if d := c1.Duplicates(); d != 0 {
		t.Errorf("%d duplicates through the two routes", d)
	}
	closeBus(t, run1)
	run2 := transporttest.NewBus(t, url, svc)
	subscribeNamed(t, run2, "other.#", "s")
	if _, err := publishOne(t, pub, "leg.two"); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("old-pattern event after the change: %v; want ErrUnroutable (the direct binding is gone)", err)
	}
}

// TestUnroutableThroughSubscriptionExchange: a subscription whose queue an
// operator deleted while the service was down leaves its exchange bound to
// the topic exchange; an event routed to it reaches no queue, and
// RabbitMQ returns it: Publish fails with ErrUnroutable.
func TestUnroutableThroughSubscriptionExchange(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("gone-")
	run := transporttest.NewBus(t, url, svc)
	subscribeNamed(t, run, "gone.#", "s")
	queue := transportOf(t, run).QueueName(svc + ".s")
	closeBus(t, run)
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	// The exchange is still there, bound with the pattern.
	if err := ch.ExchangeDeclarePassive(queue, amqp091.ExchangeFanout, true, false, true, false, nil); err != nil {
		t.Fatalf("the subscription's exchange: %v", err)
	}
	pub := transporttest.NewBus(t, url, unique("gone-pub-"))
	if _, err := publishOne(t, pub, "gone.x"); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("Publish to a subscription exchange without a queue: %v; want ErrUnroutable", err)
	}
}

// TestPrefixNamespacesQueues: two applications with the same service and
// subscription names and different prefixes in one vhost have their own
// queues, exchanges and poison queues: each handles only its own events,
// and poison replay reaches its own subscription.
func TestPrefixNamespacesQueues(t *testing.T) {
	base := brokerURL(t)
	svc := "billing"
	var buses [2]*eventbus.Bus
	var counters [2]*transporttest.Counter
	var prefixes [2]string
	var fail [2]atomic.Bool
	for i := range buses {
		prefixes[i] = unique("app")
		u := *base
		u.RawQuery = "prefix=" + prefixes[i]
		t.Cleanup(func() { deleteTopology(t, base.String(), prefixes[i]+":events") })
		buses[i] = transporttest.NewBus(t, u.String(), svc)
		counters[i] = transporttest.NewCounter()
		c, f := counters[i], &fail[i]
		if err := buses[i].Subscribe("invoice.#", func(ctx context.Context, ev eventbus.Event) error {
			if f.Load() {
				return eventbus.Permanent(errors.New("failing on purpose"))
			}
			return c.Handle(ctx, ev)
		}, eventbus.SubscriptionName("invoices")); err != nil {
			t.Fatal(err)
		}
		if err := buses[i].Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for i, b := range buses {
		tr := transportOf(t, b)
		if want := prefixes[i] + ":billing.invoices"; tr.QueueName("billing.invoices") != want {
			t.Errorf("queue name %q, want %q", tr.QueueName("billing.invoices"), want)
		}
		if want := prefixes[i] + ":events"; tr.Exchange() != want {
			t.Errorf("exchange %q, want %q", tr.Exchange(), want)
		}
		if want := prefixes[i] + ":poison:billing"; tr.poison.name != want {
			t.Errorf("poison queue %q, want %q", tr.poison.name, want)
		}
	}
	var evs [2]eventbus.Event
	for i, b := range buses {
		ev, err := publishOne(t, b, "invoice.sent")
		if err != nil {
			t.Fatal(err)
		}
		evs[i] = ev
	}
	for i := range buses {
		transporttest.WaitFor(t, 20*time.Second, "each application's event", func() bool { return counters[i].Has(evs[i].ID) }, func() string { return "not handled" })
	}
	for i := range buses {
		if counters[i].Distinct() != 1 || counters[i].Has(evs[1-i].ID) {
			t.Errorf("application %d handled %d events, including the other's: %v", i, counters[i].Distinct(), counters[i].Has(evs[1-i].ID))
		}
	}

	// Poison and replay stay within the application.
	fail[0].Store(true)
	bad, err := publishOne(t, buses[0], "invoice.bad")
	if err != nil {
		t.Fatal(err)
	}
	var ps []eventbus.PoisonedEvent
	transporttest.WaitFor(t, 20*time.Second, "the event poisoned", func() bool {
		ps, err = buses[0].Poisoned(context.Background(), eventbus.PoisonFilter{})
		return err == nil && len(ps) == 1
	}, func() string { return fmt.Sprint(len(ps), err) })
	if other, err := buses[1].Poisoned(context.Background(), eventbus.PoisonFilter{}); err != nil || len(other) != 0 {
		t.Errorf("the other application's poison queue: %d records, %v", len(other), err)
	}
	fail[0].Store(false)
	if _, err := buses[0].Replay(context.Background(), eventbus.PoisonFilter{}); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the replayed event handled", func() bool { return counters[0].Has(bad.ID) }, func() string { return "not handled" })
	if counters[1].Has(bad.ID) {
		t.Error("the replayed event reached the other application")
	}
}

// TestPrefixAndUnprefixedDoNotShare: an application without a prefix whose
// service is named like another application's prefix has other queue
// names: a prefixed name has a ':' where a service name cannot.
func TestPrefixAndUnprefixedDoNotShare(t *testing.T) {
	u := brokerURL(t)
	u.RawQuery = "prefix=shop"
	tr := &Transport{}
	tr.opts, _, _ = parseOptions(u)
	plain := &Transport{opts: options{exchange: DefaultExchange}}
	// Prefix "shop", service "billing" against service "shop" with a
	// subscription named "billing.x".
	if a, b := tr.QueueName("billing.x"), plain.QueueName("shop.billing.x"); a == b {
		t.Errorf("queue names collide: %q", a)
	}
	if tr.Exchange() != "shop:events" {
		t.Errorf("exchange %q", tr.Exchange())
	}
}

func TestTopologyURLParameters(t *testing.T) {
	for _, q := range []string{"prefix=", "prefix=a.b", "prefix=a:b", "prefix=" + strings.Repeat("p", 65), "unroutable=drop"} {
		_, err := openURL(context.Background(), "amqp://guest:pw@127.0.0.1:1/?"+q, nil)
		if err == nil || strings.Contains(err.Error(), ":pw@") {
			t.Errorf("?%s: got %v, want a redacted error", q, err)
		}
	}
	u := brokerURL(t)
	u.RawQuery = "prefix=p1&exchange=mine"
	o, _, err := parseOptions(u)
	if err != nil || o.exchange != "mine" || o.prefix != "p1" {
		t.Errorf("explicit exchange with a prefix: %+v, %v", o, err)
	}
}

// TestSubscriptionNamesTheTransportReserves: subscription names with '@'
// (the mark of the names the transport derives from a queue's) and a
// subscription whose exchange would be the topic exchange are refused.
func TestSubscriptionNamesTheTransportReserves(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("reserved-"))
	err := b.Subscribe("r.#", transporttest.NewCounter().Handle, eventbus.SubscriptionName("orders@lock"))
	if err == nil || !strings.Contains(err.Error(), "reserves") {
		t.Errorf("subscription name with '@': %v", err)
	}
	svc := unique("ex")
	u := brokerURL(t)
	u.RawQuery = "exchange=" + svc + ".x"
	t.Cleanup(func() { deleteTopology(t, brokerURL(t).String(), svc+".x") })
	tr, err := driver.Open(context.Background(), u.String(), driver.Config{ServiceName: svc})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if _, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".x", Service: svc, Subscription: "x", Concurrency: 1}); err == nil || !strings.Contains(err.Error(), "topic exchange") {
		t.Errorf("subscription exchange named like the topic exchange: %v", err)
	}
}

// TestForeignExchangeIsNeverDeleted: an exchange with a subscription's
// queue name that the transport did not make (another type) makes
// Subscribe fail with an error saying so; it is not deleted.
func TestForeignExchangeIsNeverDeleted(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("foreign-x-")
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	name := svc + ".s"
	if err := ch.ExchangeDeclare(name, amqp091.ExchangeDirect, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	defer ch.ExchangeDelete(name, false, false)
	b := transporttest.NewBus(t, url, svc)
	err = b.Subscribe("fx.#", transporttest.NewCounter().Handle, eventbus.SubscriptionName("s"))
	if err == nil {
		err = b.Start(context.Background())
	}
	if err == nil || !strings.Contains(err.Error(), "not made by this transport") {
		t.Errorf("Subscribe over a foreign exchange: %v", err)
	}
	if err := ch.ExchangeDeclarePassive(name, amqp091.ExchangeDirect, false, true, false, false, nil); err != nil {
		t.Errorf("the foreign exchange is gone: %v", err)
	}
}

// TestUnroutableAccept: with ?unroutable=accept, Publish of an event no
// subscription matches succeeds and the transport counts it; without, it
// fails with ErrUnroutable. Redeliver to a missing queue stays an error
// either way (replay must not lose records), and routed events are not
// counted.
func TestUnroutableAccept(t *testing.T) {
	url := isolatedURL(t, "unroutable", "accept")
	b := transporttest.NewBus(t, url, unique("accept-"))
	tr := transportOf(t, b)
	var c driver.UnroutableCounter = tr
	if _, err := publishOne(t, b, "nobody.a"); err != nil {
		t.Fatalf("unroutable=accept: %v", err)
	}
	evs := []eventbus.Event{mustEvent(t, "nobody.b", nil), mustEvent(t, "nobody.b", nil)}
	if err := b.Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	if n := c.UnroutableAccepted(); n != 3 {
		t.Errorf("UnroutableAccepted = %d, want 3", n)
	}
	h := subscribeNamed(t, b, "somebody.#", "s")
	ev, err := publishOne(t, b, "somebody.x")
	if err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the routed event", func() bool { return h.Has(ev.ID) }, func() string { return "not handled" })
	if n := c.UnroutableAccepted(); n != 3 {
		t.Errorf("UnroutableAccepted = %d after a routed event, want 3", n)
	}
	if err := tr.Redeliver(context.Background(), unique("nobody."), eventbusMessage(t, "nobody.c")); !errors.Is(err, driver.ErrUnroutable) {
		t.Errorf("Redeliver to a missing queue with unroutable=accept: %v; want ErrUnroutable", err)
	}

	strict := transporttest.NewBus(t, isolatedURL(t), unique("strict-"))
	if _, err := publishOne(t, strict, "nobody.a"); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("default: %v; want ErrUnroutable", err)
	}
	if n := transportOf(t, strict).UnroutableAccepted(); n != 0 {
		t.Errorf("default transport counted %d", n)
	}
}

func eventbusMessage(t testing.TB, name string) *message.Message {
	t.Helper()
	return eventbustest.Message(mustEvent(t, name, nil))
}

// TestPatternChangeWaitsForTheLockWithinCtx: while another connection
// holds a subscription's lock (an instance in the middle of a switch),
// Subscribe waits for it, returns by its ctx's deadline with an error
// naming the lock, and switches once the lock is free; a lock whose
// holder's connection dies is free at once.
func TestPatternChangeWaitsForTheLockWithinCtx(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("lock-")
	run1 := transporttest.NewBus(t, url, svc)
	subscribeNamed(t, run1, "lk.old.#", "s")
	closeBus(t, run1)

	holder, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	ch, err := holder.Channel()
	if err != nil {
		t.Fatal(err)
	}
	lock := transportOf(t, run1).subNames(svc + ".s").lock
	if _, err := ch.QueueDeclare(lock, false, false, true, false, amqp091.Table{"x-queue-type": "classic"}); err != nil {
		t.Fatal(err)
	}

	run2 := transporttest.NewBus(t, url, svc)
	if err := run2.Subscribe("lk.new.#", transporttest.NewCounter().Handle, eventbus.SubscriptionName("s")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = run2.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), lock) {
		t.Fatalf("Start while the lock is held: %v; want an error naming %s", err, lock)
	}
	if d := time.Since(start); d > 500*time.Millisecond+200*time.Millisecond {
		t.Errorf("Start returned %v after its ctx's 500ms deadline", d-500*time.Millisecond)
	}

	// The holder dies: its exclusive queue goes with its connection.
	_ = holder.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	if err := run2.Start(ctx2); err != nil {
		t.Fatalf("Start once the lock is free: %v", err)
	}
	pub := transporttest.NewBus(t, url, unique("lock-pub-"))
	if _, err := publishOne(t, pub, "lk.old.x"); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("old-pattern event after the switch: %v; want ErrUnroutable", err)
	}
	if _, err := publishOne(t, pub, "lk.new.x"); err != nil {
		t.Errorf("new-pattern event after the switch: %v", err)
	}
}
