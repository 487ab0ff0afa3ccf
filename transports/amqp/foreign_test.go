package amqp

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// recorder keeps the events a handler received, by ID.
type recorder struct {
	mu  sync.Mutex
	evs map[string]eventbus.Event
}

func newRecorder() *recorder { return &recorder{evs: map[string]eventbus.Event{}} }

func (r *recorder) handle(_ context.Context, ev eventbus.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs[ev.ID] = ev
	return nil
}

func (r *recorder) get(id string) (eventbus.Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev, ok := r.evs[id]
	return ev, ok
}

// rawPublish publishes p to the bus's exchange with routing key key, as a
// client that knows nothing of the bus (amqplib, Spring) would.
func rawPublish(t *testing.T, exchange, key string, p amqp091.Publishing) {
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
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
	if err := ch.Publish(exchange, key, true, false, p); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-confirms:
		if !c.Ack {
			t.Fatalf("the broker nacked %s", key)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no confirm for %s", key)
	}
}

// TestForeignCloudEvents publishes CloudEvents the way producers other than
// the bus send them over RabbitMQ, with raw amqp091-go messages, and checks
// that each is handled (none is poisoned) with what it carried:
//
//   - binary mode with "ce_" headers and only the required attributes: no
//     time, no eventtype, no body;
//   - the AMQP binding's "cloudEvents_" attributes, typed AMQP values for
//     time and extensions (a timestamp, an integer, a boolean), the data's
//     content type in the content-type property and the correlation in
//     the correlation-id property;
//   - the "cloudEvents:" prefix that Spring's AMQP support writes;
//   - structured mode: content type application/cloudevents+json and the
//     attributes in the JSON body, without a message-id;
//   - "ce_" headers with the correlation only in the correlation-id
//     property.
//
// A handler that republishes one of them under another name keeps its
// extensions, which reach the next handler.
func TestForeignCloudEvents(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("foreign-"))
	rec, fwd := newRecorder(), newRecorder()
	if err := b.Subscribe("shop.#", func(ctx context.Context, ev eventbus.Event) error {
		if err := rec.handle(ctx, ev); err != nil {
			return err
		}
		if ev.Name != "shop.order.forward" {
			return nil
		}
		out := ev
		out.ID, out.Name = "", "forwarded.order"
		return b.Publish(ctx, out)
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("forwarded.#", fwd.handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ex := transportOf(t, b).Exchange()
	when := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)

	rawPublish(t, ex, "shop.minimal", amqp091.Publishing{Headers: amqp091.Table{
		"ce_specversion": "1.0", "ce_id": "min-1", "ce_source": "urn:amqplib", "ce_type": "shop.minimal",
	}})
	rawPublish(t, ex, "shop.order.forward", amqp091.Publishing{
		Headers: amqp091.Table{
			"cloudEvents_specversion": "1.0", "cloudEvents_id": "binding-1", "cloudEvents_source": "urn:amqp-binding",
			"cloudEvents_type": "shop.order.forward", "cloudEvents_time": when, "cloudEvents_subject": "order-9",
			"cloudEvents_traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
			"cloudEvents_attempt":     int32(3), "cloudEvents_urgent": true,
		},
		ContentType: "application/json", CorrelationId: "corr-binding", Body: []byte(`{"order":9}`),
	})
	rawPublish(t, ex, "shop.spring", amqp091.Publishing{
		Headers: amqp091.Table{
			"cloudEvents:specversion": "1.0", "cloudEvents:id": "spring-1", "cloudEvents:source": "urn:spring",
			"cloudEvents:type": "shop.spring", "cloudEvents:eventtype": "integration",
		},
		ContentType: "application/json", Body: []byte(`{"spring":true}`),
	})
	rawPublish(t, ex, "shop.structured", amqp091.Publishing{
		ContentType: "application/cloudevents+json",
		Body: []byte(`{"specversion":"1.0","id":"structured-1","source":"urn:structured","type":"shop.structured",` +
			`"time":"2026-05-06T07:08:09Z","correlationid":"corr-s","tenant":"acme","count":7,"data":{"k":"v"}}`),
	})
	rawPublish(t, ex, "shop.corr", amqp091.Publishing{
		Headers: amqp091.Table{
			"ce_specversion": "1.0", "ce_id": "corr-1", "ce_source": "urn:amqplib", "ce_type": "shop.corr",
		},
		CorrelationId: "corr-from-property", ContentType: "application/json", Body: []byte(`[]`),
	})

	want := map[string]func(eventbus.Event) string{
		"min-1": func(ev eventbus.Event) string {
			if ev.Source != "urn:amqplib" || ev.Type != eventbus.Domain || !ev.Time.IsZero() || len(ev.Data) != 0 || len(ev.Metadata) != 0 {
				return fmt.Sprintf("source %q, type %v, time %v, data %q, metadata %v; want the default kind, no time, no data", ev.Source, ev.Type, ev.Time, ev.Data, ev.Metadata)
			}
			return ""
		},
		"binding-1": func(ev eventbus.Event) string {
			wantMD := map[string]string{"subject": "order-9", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "attempt": "3", "urgent": "true"}
			if ev.CorrelationID != "corr-binding" || !ev.Time.Equal(when) || !maps.Equal(ev.Metadata, wantMD) || string(ev.Data) != `{"order":9}` {
				return fmt.Sprintf("correlation %q, time %v, metadata %v, data %s", ev.CorrelationID, ev.Time, ev.Metadata, ev.Data)
			}
			return ""
		},
		"spring-1": func(ev eventbus.Event) string {
			if ev.Source != "urn:spring" || ev.Type != eventbus.Integration || string(ev.Data) != `{"spring":true}` {
				return fmt.Sprintf("source %q, type %v, data %s", ev.Source, ev.Type, ev.Data)
			}
			return ""
		},
		"structured-1": func(ev eventbus.Event) string {
			if ev.CorrelationID != "corr-s" || !ev.Time.Equal(when) || !maps.Equal(ev.Metadata, map[string]string{"tenant": "acme", "count": "7"}) || string(ev.Data) != `{"k":"v"}` {
				return fmt.Sprintf("correlation %q, time %v, metadata %v, data %s", ev.CorrelationID, ev.Time, ev.Metadata, ev.Data)
			}
			return ""
		},
		"corr-1": func(ev eventbus.Event) string {
			if ev.CorrelationID != "corr-from-property" {
				return fmt.Sprintf("correlation %q, want the correlation-id property", ev.CorrelationID)
			}
			return ""
		},
	}
	for id, check := range want {
		transporttest.WaitFor(t, 20*time.Second, "foreign event "+id+" handled", func() bool { _, ok := rec.get(id); return ok }, func() string {
			ps, err := b.Poisoned(context.Background(), eventbus.PoisonFilter{})
			var why []string
			for _, p := range ps {
				why = append(why, fmt.Sprintf("%s: %s %v", p.Event.ID, p.Reason, p.DecodeError))
			}
			return fmt.Sprintf("poisoned: %v (%v)", why, err)
		})
		ev, _ := rec.get(id)
		if problem := check(ev); problem != "" {
			t.Errorf("%s: %s", id, problem)
		}
	}

	// The republished event kept the foreign event's extensions.
	var forwarded eventbus.Event
	transporttest.WaitFor(t, 20*time.Second, "the republished event", func() bool {
		fwd.mu.Lock()
		defer fwd.mu.Unlock()
		for _, ev := range fwd.evs {
			forwarded = ev
			return true
		}
		return false
	}, func() string { return "not handled" })
	orig, _ := rec.get("binding-1")
	if !maps.Equal(forwarded.Metadata, orig.Metadata) || forwarded.CorrelationID != "corr-binding" {
		t.Errorf("republished metadata %v, correlation %q; want %v and the original correlation", forwarded.Metadata, forwarded.CorrelationID, orig.Metadata)
	}
	if ps, err := b.Poisoned(context.Background(), eventbus.PoisonFilter{}); err != nil || len(ps) != 0 {
		t.Errorf("poisoned: %d records, %v; want none", len(ps), err)
	}
}

// BenchmarkToMessage converts a delivery of an event the bus published:
// what every consumed message costs before decoding. Reading the AMQP
// binding's prefixes and the properties of foreign producers must not
// make it dearer.
func BenchmarkToMessage(b *testing.B) {
	d := amqp091.Delivery{
		Headers: amqp091.Table{
			"ce_specversion": "1.0", "ce_id": "8c0e5d4a-1234-4bcd-9876-0123456789ab", "ce_source": "billing",
			"ce_type": "order.payment.completed", "ce_time": "2026-01-02T03:04:05.123456789Z", "ce_eventtype": "integration",
			"content-type": "application/json", "ce_correlationid": "corr-1", "ce_tenant": "acme",
		},
		ContentType: "application/json", CorrelationId: "corr-1", MessageId: "8c0e5d4a-1234-4bcd-9876-0123456789ab",
		Body: []byte(`{"order_id":"o-123456","amount":12.5}`),
	}
	b.ReportAllocs()
	for b.Loop() {
		toMessage(&d)
	}
}
