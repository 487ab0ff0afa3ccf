package bench

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/transports/memory"
)

// MemoryConfig configures the in-memory table.
type MemoryConfig struct {
	N    int // events per measurement
	Size int
}

// Short names of the memory rows.
const (
	memFloor     = "transport under a bare Router"
	memGoChannel = "GoChannel + Router"
	memBusC1     = "bus C1"
	memBusC8     = "bus C8"
)

// memBatch is the number of events per Publish call in the memory table.
const memBatch = 100

// MemoryTable returns the in-memory table: publish (calls of 100) →
// handler → ack, the bus next to the memory transport under a bare
// Watermill Router (what is left without the bus's own work) and
// Watermill's GoChannel under a Router.
func MemoryTable(cfg MemoryConfig) *Table {
	if cfg.N <= 0 {
		cfg.N = 200000
	}
	if cfg.Size <= 0 {
		cfg.Size = 256
	}
	n := cfg.N
	payload := jsonPayload(cfg.Size)
	return &Table{
		Name:  "memory",
		Title: fmt.Sprintf("In memory, %d-byte payloads, publish (calls of %d) → handler → ack", cfg.Size, memBatch),
		Notes: []string{
			"Every row turns the same prepared events into messages while the clock runs (the bus in Publish, the others with the bus's encoding). " +
				"The floor is the memory transport's subscriber (Concurrency 8) under a bare Watermill Router whose handler does nothing: the bus adds decoding, the failure policy and the handler's context.",
		},
		Rows: []*Scenario{
			{Name: "memory transport under a bare Watermill Router, Concurrency 8 (the floor)", Short: memFloor,
				Run: func(context.Context) (Result, error) { return memFloorRun(n, payload) }},
			{Name: "Watermill GoChannel under a Router", Short: memGoChannel, Compare: []string{memFloor},
				Run: func(context.Context) (Result, error) { return memGoChannelRun(n, payload) }},
			{Name: "bus, Concurrency(1)", Short: memBusC1, Compare: []string{memFloor, memGoChannel},
				Run: func(context.Context) (Result, error) { return memBusRun(n, 1, payload) }},
			{Name: "bus, Concurrency(8)", Short: memBusC8, Compare: []string{memFloor, memGoChannel},
				Targets: []Target{{memFloor, 0.7}},
				Run:     func(context.Context) (Result, error) { return memBusRun(n, 8, payload) }},
		},
	}
}

// memRing is the number of prepared events the memory rows publish over
// and over: b.N events made beforehand would keep hundreds of megabytes
// alive and make every garbage collection during the run slow.
const memRing = 1000

func memEvents(payload []byte) []eventbus.Event {
	return makeEvents("bench.event", memRing, 1, payload)
}

// publishRing publishes n events of the ring in calls of memBatch and
// returns once handled is closed.
func publishRing(n int, evs []eventbus.Event, handled <-chan struct{}, publish func([]eventbus.Event) error) (Result, error) {
	clk := StartClock()
	for i := 0; i < n; i += memBatch {
		j := i % memRing
		if err := publish(evs[j : j+min(memBatch, n-i)]); err != nil {
			return Result{}, err
		}
	}
	select {
	case <-handled:
	case <-time.After(5 * time.Minute):
		return Result{}, fmt.Errorf("not every event was handled")
	}
	return clk.Stop(n), nil
}

func memName() string { return "bench-" + uniqueID() }

func memBusRun(n, concurrency int, payload []byte) (Result, error) {
	name := memName()
	defer memory.Forget(name)
	ctx := context.Background()
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "bench", URL: "mem://" + name, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return Result{}, err
	}
	defer bus.Close(ctx)
	var handled atomic.Int64
	done := make(chan struct{})
	if err := bus.Subscribe("bench.#", func(context.Context, eventbus.Event) error {
		if handled.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}, eventbus.Concurrency(concurrency)); err != nil {
		return Result{}, err
	}
	if err := bus.Start(ctx); err != nil {
		return Result{}, err
	}
	return publishRing(n, memEvents(payload), done, func(evs []eventbus.Event) error { return bus.Publish(ctx, evs...) })
}

func memFloorRun(n int, payload []byte) (Result, error) {
	name := memName()
	defer memory.Forget(name)
	tr, err := driver.Open(context.Background(), "mem://"+name, driver.Config{ServiceName: "floor"})
	if err != nil {
		return Result{}, err
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "floor.bench", Concurrency: 8, Pattern: "bench.event", Match: mustMatch("bench.event")})
	if err != nil {
		return Result{}, err
	}
	return runRouter(n, payload, sub, func(msgs []*message.Message) error { return tr.Publisher().Publish("bench.event", msgs...) })
}

func memGoChannelRun(n int, payload []byte) (Result, error) {
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	return runRouter(n, payload, pubsub, func(msgs []*message.Message) error { return pubsub.Publish("bench.event", msgs...) })
}

// runRouter measures publish → handler → ack for a subscriber under a bare
// Watermill Router whose handler does nothing.
func runRouter(n int, payload []byte, sub message.Subscriber, publish func([]*message.Message) error) (Result, error) {
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		return Result{}, err
	}
	var handled atomic.Int64
	done := make(chan struct{})
	router.AddConsumerHandler("bench", "bench.event", sub, func(*message.Message) error {
		if handled.Add(1) == int64(n) {
			close(done)
		}
		return nil
	})
	go func() { _ = router.Run(context.Background()) }()
	<-router.Running()
	defer router.Close()
	return publishRing(n, memEvents(payload), done, func(evs []eventbus.Event) error {
		msgs := make([]*message.Message, len(evs))
		for i, ev := range evs {
			msgs[i] = eventbustestMessage(ev)
		}
		return publish(msgs)
	})
}

// mustMatch is the Match function of a pattern the benchmark knows to be
// valid.
func mustMatch(pattern string) func(name string) bool {
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		panic(err)
	}
	return p.Match
}
