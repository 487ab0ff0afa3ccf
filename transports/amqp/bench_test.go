package amqp

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// BenchmarkBusPublishBatch100 publishes persistent, confirmed events
// through the Bus in batches of 100 to one bound queue; see ./bench for
// the comparison with raw amqp091-go and watermill-amqp.
func BenchmarkBusPublishBatch100(b *testing.B) {
	benchPublish(b, context.Background())
}

// BenchmarkBusPublishBatch100Deadline is BenchmarkBusPublishBatch100 with
// a ctx that has a deadline, as most callers have: the messages are then
// written by a goroutine of the call (see Publisher), which this measures
// against the inline path of a ctx that cannot end.
func BenchmarkBusPublishBatch100Deadline(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	benchPublish(b, ctx)
}

func benchPublish(b *testing.B, ctx context.Context) {
	url := isolatedURL(b)
	bus := transporttest.NewBus(b, url, unique("bench-"))
	conn, err := amqp091.Dial(brokerURL(b).String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	q := bus.ServiceName() + ".sink"
	declared.add(transportOf(b, bus).Exchange(), q)
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(q, "bench.#", transportOf(b, bus).Exchange(), false, nil); err != nil {
		b.Fatal(err)
	}
	data := json.RawMessage(`{"p":"` + strings.Repeat("x", 248) + `"}`)
	evs := make([]eventbus.Event, 100)
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		for j := range evs {
			evs[j], _ = eventbus.NewEvent("bench.event", data, eventbus.WithSource("bench"))
		}
		if err := bus.Publish(ctx, evs...); err != nil {
			b.Fatal(err)
		}
	}
}
