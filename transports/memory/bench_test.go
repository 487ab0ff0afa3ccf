package memory_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/transports/memory"
)

// BenchmarkEndToEnd measures publish → handler → ack through the Bus on the
// memory transport at concurrency 1 and 8, next to Watermill's GoChannel
// with a Router, the baseline the transport must beat. Compare the
// events/s metrics of one run; absolute numbers vary with the machine.
//
// Every variant starts from the same prepared events and turns each into a
// Watermill message while publishing (the Bus in Publish, the baselines
// with EncodeMessage before their Publish), so the work on the publishing
// side is the same. The events are a small ring published over and over,
// not b.N of them made beforehand: hundreds of megabytes of prepared
// events kept alive made every garbage collection during the run slow, and
// whether one fell into a run swung the results by a fifth.
//
// The plain GoChannel handler does nothing with the message; the
// "-decoding" one decodes it into an Event, as the Bus does before calling
// a handler, which is the same job done with Watermill alone.
//
//	go test -run=^$ -bench=EndToEnd ./transports/memory/
//
// "telemetry" compares the bus's OpenTelemetry instrumentation in three
// states, at concurrency 8; see benchTelemetry.
func BenchmarkEndToEnd(b *testing.B) {
	for _, c := range []int{1, 8} {
		b.Run(fmt.Sprintf("bus/concurrency=%d", c), func(b *testing.B) { benchBus(b, c, eventbus.Config{}) })
	}
	b.Run("telemetry", benchTelemetry)
	b.Run("watermill-gochannel-router", func(b *testing.B) { benchGoChannel(b, false) })
	b.Run("watermill-gochannel-router-decoding", func(b *testing.B) { benchGoChannel(b, true) })
	b.Run("transport-router-floor", benchFloor)
}

// benchFloor is the memory transport under a bare Router, without the Bus:
// what is left when the Bus's own work (decoding, failure policy, handler
// context) is taken away.
func benchFloor(b *testing.B) {
	name := "bench-" + b.Name()
	defer memory.Forget(name)
	tr, err := driver.Open(context.Background(), "mem://"+name, driver.Config{ServiceName: "floor"})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "floor.bench", Concurrency: 8, Pattern: "bench.event", Match: matcher("bench.event")})
	if err != nil {
		b.Fatal(err)
	}
	runRouter(b, sub, false, func(msgs []*message.Message) error { return tr.Publisher().Publish("bench.event", msgs...) })
}

// batch is the number of events per Publish call; ring, a multiple of it,
// the number of prepared events.
const (
	batch = 100
	ring  = 1000
)

// prepare makes the ring of events every variant publishes.
func prepare(b *testing.B) []eventbus.Event {
	evs := make([]eventbus.Event, ring)
	for i := range evs {
		var err error
		evs[i], err = eventbus.NewEvent("bench.event", payload, eventbus.WithSource("bench"))
		if err != nil {
			b.Fatal(err)
		}
	}
	return evs
}

// batches calls publish with consecutive slices of the ring, b.N events in
// all, and returns the events handled per second once handled is closed.
func batches(b *testing.B, evs []eventbus.Event, handled <-chan struct{}, publish func([]eventbus.Event) error) {
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i += batch {
		j := i % ring
		if err := publish(evs[j : j+min(batch, b.N-i)]); err != nil {
			b.Fatal(err)
		}
	}
	<-handled
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

func benchBus(b *testing.B, concurrency int, cfg eventbus.Config) {
	name := "bench-" + b.Name()
	defer memory.Forget(name)
	ctx := context.Background()
	cfg.ServiceName, cfg.URL = "bench", "mem://"+name
	bus, err := eventbus.New(ctx, cfg)
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
	batches(b, prepare(b), done, func(evs []eventbus.Event) error { return bus.Publish(ctx, evs...) })
}

// benchGoChannel measures Watermill's GoChannel under a Router. With
// decode set, its handler decodes each message into an Event as the Bus
// does before calling a handler: the same job done with Watermill alone.
func benchGoChannel(b *testing.B, decode bool) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	runRouter(b, pubsub, decode, func(msgs []*message.Message) error { return pubsub.Publish("bench.event", msgs...) })
}

// runRouter measures publish → handler → ack for a subscriber under a bare
// Watermill Router, encoding and publishing b.N events in batches.
func runRouter(b *testing.B, sub message.Subscriber, decode bool, publish func([]*message.Message) error) {
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	router.AddConsumerHandler("bench", "bench.event", sub, func(msg *message.Message) error {
		if decode {
			if _, err := driver.Decode(msg); err != nil {
				return err
			}
		}
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	})
	go func() { _ = router.Run(context.Background()) }()
	<-router.Running()
	defer router.Close()
	batches(b, prepare(b), done, func(evs []eventbus.Event) error {
		msgs := make([]*message.Message, len(evs))
		for i, ev := range evs {
			msgs[i] = eventbustest.Message(ev)
		}
		return publish(msgs)
	})
}

// payload is a 256-byte JSON document, the size of the reference figures.
var payload = map[string]string{"data": fmt.Sprintf("%0240d", 0)}

// matcher returns the Match function of a pattern of the program's own,
// as the bus gives it to a transport.
func matcher(pattern string) func(name string) bool {
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		panic(err)
	}
	return p.Match
}

// sdkConfig is a bus configuration with the OpenTelemetry SDK installed,
// every span sampled.
func sdkConfig(b *testing.B) (cfg eventbus.Config, flush func()) {
	exp := &countingExporter{}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(exp))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
		b.ReportMetric(float64(exp.n.Load())/float64(b.N), "spans/event")
	})
	return eventbus.Config{TracerProvider: tp, MeterProvider: mp, Propagator: propagation.TraceContext{}},
		func() { _ = tp.ForceFlush(context.Background()) }
}

// countingExporter is an in-memory span exporter that keeps only a count.
type countingExporter struct{ n atomic.Int64 }

func (e *countingExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.n.Add(int64(len(spans)))
	return nil
}

func (e *countingExporter) Shutdown(context.Context) error { return nil }

// benchTelemetry runs three buses side by side, each handling b.N events:
// "off" (Config.DisableTelemetry), "noop" (the default: the otel globals
// with no SDK installed) and "sdk" (the SDK's tracer provider sampling
// every span into a batch processor with an in-memory exporter that only
// counts, and its meter provider with a manual reader). They take turns
// in chunks of 2,000 events, the first of each round rotating, so that a
// machine shared with other work slows them alike and their ratios mean
// something; ns/op is the sum of the three. Between two turns, outside
// the measured time, the SDK's span processor is flushed and the garbage
// collected, so that the work one variant leaves behind (the SDK's
// exports, 8 kB of garbage per event) is not charged to the next. It reports each variant's
// events/s, noop/off (the cost of the default instrumentation: at least
// 0.95) and the SDK's extra cost per event over off.
func benchTelemetry(b *testing.B) {
	type variant struct {
		name    string
		cfg     eventbus.Config
		bus     *eventbus.Bus
		handled atomic.Int64
		target  atomic.Int64
		done    chan struct{}
		elapsed time.Duration
	}
	vs := []*variant{
		{name: "off", cfg: eventbus.Config{DisableTelemetry: true}},
		{name: "noop"},
		{name: "sdk"},
	}
	var flush func()
	vs[2].cfg, flush = sdkConfig(b)
	ctx := context.Background()
	for _, v := range vs {
		name := "bench-" + b.Name() + "-" + v.name
		defer memory.Forget(name)
		v.cfg.ServiceName, v.cfg.URL = "bench", "mem://"+name
		bus, err := eventbus.New(ctx, v.cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer bus.Close(ctx)
		v.bus = bus
		err = bus.Subscribe("bench.#", func(context.Context, eventbus.Event) error {
			if v.handled.Add(1) == v.target.Load() {
				close(v.done)
			}
			return nil
		}, eventbus.Concurrency(8))
		if err != nil {
			b.Fatal(err)
		}
		if err := bus.Start(ctx); err != nil {
			b.Fatal(err)
		}
	}
	evs := prepare(b)
	const chunk = 2000
	b.ReportAllocs()
	b.ResetTimer()
	for sent, round := 0, 0; sent < b.N; sent, round = sent+chunk, round+1 {
		n := min(chunk, b.N-sent)
		for k := range vs {
			v := vs[(round+k)%len(vs)]
			v.done = make(chan struct{})
			v.target.Store(v.handled.Load() + int64(n))
			start := time.Now()
			for i := 0; i < n; i += batch {
				j := (sent + i) % ring
				if err := v.bus.Publish(ctx, evs[j:j+min(batch, n-i)]...); err != nil {
					b.Fatal(err)
				}
			}
			<-v.done
			v.elapsed += time.Since(start)
			flush()
			runtime.GC()
		}
	}
	b.StopTimer()
	for _, v := range vs {
		b.ReportMetric(float64(b.N)/v.elapsed.Seconds(), v.name+"-events/s")
	}
	b.ReportMetric(vs[0].elapsed.Seconds()/vs[1].elapsed.Seconds(), "noop/off")
	b.ReportMetric(float64(vs[2].elapsed-vs[0].elapsed)/float64(b.N), "sdk-extra-ns/event")
}
