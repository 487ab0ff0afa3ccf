package amqp

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestFaultCutMidStream cuts the connections of a publishing and a
// consuming bus in the middle of 10,000 events (transporttest.CutMidStream).
func TestFaultCutMidStream(t *testing.T) {
	px := startFaultProxy(t)
	url := isolatedURLVia(t, px.Addr())
	sub := transporttest.NewBus(t, url, unique("fault-sub-"))
	pub := transporttest.NewBus(t, url, unique("fault-pub-"))
	subT, pubT := transportOf(t, sub), transportOf(t, pub)
	_, subGen := subT.conn.connected()
	_, pubGen := pubT.conn.connected()
	transporttest.CutMidStream(t, sub, pub, transporttest.Cut{
		Cut: px.Cut, Heal: px.Heal,
		Down: func() bool {
			up1, _ := subT.conn.connected()
			up2, _ := pubT.conn.connected()
			return !up1 && !up2
		},
		Up: func() bool {
			up1, g1 := subT.conn.connected()
			up2, g2 := pubT.conn.connected()
			return up1 && up2 && g1 > subGen && g2 > pubGen
		},
	})
}

// TestFaultRawMessageIsPoisoned publishes, with a plain AMQP client, a
// message with a non-JSON body and no ce_ headers, then a valid event
// carrying non-string headers (x-death, numbers, a timestamp); the first
// goes to the poison queue as undecodable, the second is handled, and the
// consumer keeps serving events after both.
func TestFaultRawMessageIsPoisoned(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("raw-"))
	handled := transporttest.NewCounter()
	if err := b.Subscribe("raw.#", handled.Handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	ex := transportOf(t, b).Exchange()
	if err := ch.Publish(ex, "raw.junk", false, false, amqp091.Publishing{Body: []byte("not JSON {")}); err != nil {
		t.Fatal(err)
	}

	good := mustEvent(t, "raw.good", map[string]string{"k": "v"})
	msg := eventbustest.Message(good)
	headers := amqp091.Table{
		"x-death": []any{amqp091.Table{"count": int64(1), "reason": "rejected", "queue": "q", "time": time.Unix(1700000000, 0)}},
		"x-int":   int32(7), "x-float": 1.5, "x-bool": true, "x-bytes": []byte{1, 2}, "x-time": time.Unix(1700000000, 0),
	}
	for k, v := range msg.Metadata {
		headers[k] = v
	}
	if err := ch.Publish(ex, "raw.good", false, false, amqp091.Publishing{Headers: headers, Body: msg.Payload, MessageId: good.ID}); err != nil {
		t.Fatal(err)
	}

	transporttest.WaitFor(t, 20*time.Second, "the good event with non-string headers", func() bool { return handled.Has(good.ID) }, func() string { return "not handled" })
	var poisoned []eventbus.PoisonedEvent
	transporttest.WaitFor(t, 20*time.Second, "the raw message in the poison queue", func() bool {
		ps, err := b.Poisoned(context.Background(), eventbus.PoisonFilter{})
		if err != nil {
			t.Fatal(err)
		}
		poisoned = ps
		return len(ps) == 1
	}, func() string { return fmt.Sprintf("%d poisoned", len(poisoned)) })
	p := poisoned[0]
	if p.Reason != "undecodable" || string(p.Payload) != "not JSON {" || p.DecodeError == nil {
		t.Errorf("poisoned: reason %q payload %q decode error %v", p.Reason, p.Payload, p.DecodeError)
	}
	next := mustEvent(t, "raw.next", nil)
	if err := b.Publish(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the next event", func() bool { return handled.Has(next.ID) }, func() string { return "consumer stopped" })
	if handled.Distinct() != 2 {
		t.Errorf("handler saw %d events, want 2", handled.Distinct())
	}
}
