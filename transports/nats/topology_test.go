package nats

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestPatternChangeAndTopology: a named subscription whose pattern changes
// between two runs gets only the new pattern's events (its consumer's
// filters and description are updated), and Topology shows the stream,
// the consumer with its filters, a missing subscription, an orphaned
// consumer and the poison records.
func TestPatternChangeAndTopology(t *testing.T) {
	url := isolatedURL(t)
	service := unique("topo-")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := func(pattern string, h eventbus.Handler) *eventbus.Bus {
		b := transporttest.NewBus(t, url, service)
		if err := b.Subscribe(pattern, h, eventbus.SubscriptionName("orders")); err != nil {
			t.Fatal(err)
		}
		if err := b.Subscribe("old.#", func(context.Context, eventbus.Event) error { return nil }, eventbus.SubscriptionName("retired")); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return b
	}
	first := run("order.*", func(context.Context, eventbus.Event) error { return nil })
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}

	got := transporttest.NewCounter()
	b := transporttest.NewBus(t, url, service)
	if err := b.Subscribe("invoice.*", func(ctx context.Context, ev eventbus.Event) error {
		if ev.Name == "invoice.bad" {
			return eventbus.Permanent(errors.New("bad invoice"))
		}
		return got.Handle(ctx, ev)
	}, eventbus.SubscriptionName("orders")); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	old, cur, bad := mustEvent(t, "order.placed", nil), mustEvent(t, "invoice.sent", nil), mustEvent(t, "invoice.bad", nil)
	if err := b.Publish(ctx, old, cur, bad); err != nil {
		t.Fatal(err)
	}
	fence := mustEvent(t, "invoice.fence", nil)
	if err := b.Publish(ctx, fence); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the new pattern's events", func() bool { return got.Has(fence.ID) && got.Has(cur.ID) }, func() string { return "not handled" })
	if got.Has(old.ID) {
		t.Error("the subscription got an event of its old pattern")
	}

	tr := transportOf(t, b)
	var top *driver.Topology
	transporttest.WaitFor(t, 10*time.Second, "the poison record counted", func() bool {
		var err error
		top, err = tr.Topology(ctx, driver.TopologyQuery{Service: service, Subscriptions: []driver.SubscriptionRef{
			{Name: "orders", Pattern: "invoice.*"}, {Name: "payments", Pattern: "payment.*"},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return top.Objects[len(top.Objects)-1].Messages == 1
	}, func() string { return "no poison record counted" })
	byKind := map[string][]driver.TopologyObject{}
	for _, o := range top.Objects {
		byKind[o.Kind] = append(byKind[o.Kind], o)
	}
	if s := byKind[driver.KindStream]; len(s) != 1 || s[0].Name != tr.Stream() || s[0].Messages < 4 {
		t.Errorf("stream object %+v, want the stream with the 4 events", s)
	}
	cons := map[string]driver.TopologyObject{}
	for _, o := range byKind[driver.KindConsumer] {
		cons[o.Subscription] = o
	}
	if o := cons["orders"]; o.Orphan || o.Missing || strings.Join(o.Bindings, " ") != tr.Stream()+".invoice.*" || o.Messages != 0 {
		t.Errorf("orders consumer %+v, want the new pattern's filter, nothing pending", o)
	}
	if o := cons["retired"]; !o.Orphan {
		t.Errorf("retired consumer %+v, want it marked as a possible orphan", o)
	}
	if o := cons["payments"]; !o.Missing {
		t.Errorf("payments %+v, want it missing", o)
	}
	if p := byKind[driver.KindPoisonQueue]; len(p) != 1 || p[0].Missing || p[0].Messages != 1 {
		t.Errorf("poison queue %+v, want one record", p)
	}
}
