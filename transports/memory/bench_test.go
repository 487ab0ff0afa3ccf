package memory_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/transports/memory"
)

// BenchmarkEndToEnd measures publish → handler → ack through the Bus on the
// memory transport at concurrency 1 and 8, next to Watermill's GoChannel
// with a Router, the baseline the transport must beat. Compare the
// events/s metrics of one run; absolute numbers vary with the machine.
//
//	go test -run=^$ -bench=EndToEnd ./transports/memory/
func BenchmarkEndToEnd(b *testing.B) {
	for _, c := range []int{1, 8} {
		b.Run(fmt.Sprintf("bus/concurrency=%d", c), func(b *testing.B) { benchBus(b, c) })
	}
	b.Run("watermill-gochannel-router", benchGoChannel)
	b.Run("transport-router-floor", benchFloor)
}

// benchFloor is the memory transport under a bare Router, with messages
// encoded beforehand and no Bus middleware: what is left when the Bus's own
// work (encoding, decoding, failure policy) is taken away.
func benchFloor(b *testing.B) {
	name := "bench-" + b.Name()
	defer memory.Forget(name)
	tr, err := eventbus.OpenTransport(context.Background(), eventbus.Config{ServiceName: "floor", URL: "mem://" + name})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(eventbus.SubscriberConfig{Group: "floor.bench", Concurrency: 8})
	if err != nil {
		b.Fatal(err)
	}
	runRouter(b, sub, func(msgs []*message.Message) error { return tr.Publisher().Publish("bench.event", msgs...) })
}

const batch = 100

func benchBus(b *testing.B, concurrency int) {
	name := "bench-" + b.Name()
	defer memory.Forget(name)
	ctx := context.Background()
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "bench", URL: "mem://" + name})
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close(ctx)
	var handled atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	err = bus.Subscribe("bench.#", func(context.Context, eventbus.Event) error {
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	}, eventbus.Concurrency(concurrency))
	if err != nil {
		b.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		b.Fatal(err)
	}
	evs := make([]eventbus.Event, b.N)
	for i := range evs {
		evs[i], err = eventbus.NewEvent("bench.event", "bench", eventbus.Domain, payload)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < len(evs); i += batch {
		if err := bus.Publish(ctx, evs[i:min(i+batch, len(evs))]...); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

func benchGoChannel(b *testing.B) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	runRouter(b, pubsub, func(msgs []*message.Message) error { return pubsub.Publish("bench.event", msgs...) })
}

// runRouter measures publish → handler → ack for a subscriber under a bare
// Watermill Router, publishing b.N encoded events in batches.
func runRouter(b *testing.B, sub message.Subscriber, publish func([]*message.Message) error) {
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	router.AddConsumerHandler("bench", "bench.event", sub, func(*message.Message) error {
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	})
	go func() { _ = router.Run(context.Background()) }()
	<-router.Running()
	defer router.Close()
	msgs := make([]*message.Message, b.N)
	for i := range msgs {
		ev, err := eventbus.NewEvent("bench.event", "bench", eventbus.Domain, payload)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = eventbus.EncodeMessage(ev)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < len(msgs); i += batch {
		if err := publish(msgs[i:min(i+batch, len(msgs))]); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// payload is a 256-byte JSON document, the size of the reference figures.
var payload = map[string]string{"data": fmt.Sprintf("%0240d", 0)}
