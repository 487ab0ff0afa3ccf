package bench

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Consume rows that read what a table's setup stored, clocked from the
// first message to the last.

// consumeClock measures from the first message received to the last, so
// that joining the group is not counted.
type consumeClock struct {
	count atomic.Int64
	want  int64
	mu    sync.Mutex
	start *Clock
	res   Result
	done  chan struct{}
}

func newConsumeClock(want int) *consumeClock {
	return &consumeClock{want: int64(want), done: make(chan struct{})}
}

func (c *consumeClock) tick() {
	n := c.count.Add(1)
	if n == 1 {
		c.mu.Lock()
		clk := StartClock()
		c.start = &clk
		c.mu.Unlock()
	}
	if n == c.want {
		c.mu.Lock()
		for c.start == nil { // the first tick has not stored its clock yet
			c.mu.Unlock()
			time.Sleep(time.Microsecond)
			c.mu.Lock()
		}
		// The messages after the first, between the first and the last.
		c.res = c.start.Stop(int(c.want) - 1)
		c.mu.Unlock()
		close(c.done)
	}
}

func (c *consumeClock) wait() (Result, error) {
	select {
	case <-c.done:
		return c.res, nil
	case <-time.After(5 * time.Minute):
		return Result{}, fmt.Errorf("only %d of %d messages arrived", c.count.Load(), c.want)
	}
}

// consumeThroughTransport measures a transport's subscriber without the
// bus: it opens the transport of url, subscribes cfg and has readers
// goroutines take n messages from the channel and ack each, as the bus's
// router and handlers would.
func consumeThroughTransport(url string, cfg driver.SubscriberConfig, n, readers int) (Result, error) {
	return withSubscriber(url, cfg, func(ctx context.Context, sub message.Subscriber) (Result, error) {
		ch, err := sub.Subscribe(ctx, cfg.Pattern)
		if err != nil {
			return Result{}, err
		}
		c := newConsumeClock(n)
		for range readers {
			go func() {
				for m := range ch {
					m.Ack()
					c.tick()
				}
			}()
		}
		return c.wait()
	})
}

// consumeThroughTransportRouter measures a transport's subscriber under a
// bare Watermill router; see consumeThroughRouter.
func consumeThroughTransportRouter(url string, cfg driver.SubscriberConfig, n int) (Result, error) {
	return withSubscriber(url, cfg, func(_ context.Context, sub message.Subscriber) (Result, error) {
		return consumeThroughRouter(sub, cfg.Pattern, n)
	})
}

// consumeThroughRouter measures sub under a bare Watermill router whose
// handler only counts: the floor of a bus on sub, which consumes through
// such a router. The router costs every message a goroutine of its own
// and a hop through the goroutine that puts the handler's name in the
// message's context; the bus adds its decoding, failure policy and
// handler context on top.
func consumeThroughRouter(sub message.Subscriber, topic string, n int) (Result, error) {
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		return Result{}, err
	}
	c := newConsumeClock(n)
	router.AddConsumerHandler("floor", topic, sub, func(*message.Message) error {
		c.tick()
		return nil
	})
	ran := make(chan error, 1)
	go func() { ran <- router.Run(context.Background()) }()
	defer router.Close()
	select {
	case <-router.Running():
	case err := <-ran: // the subscriber could not subscribe
		return Result{}, fmt.Errorf("router: %w", err)
	}
	return c.wait()
}

// withSubscriber opens the transport of url and a subscriber of cfg on it,
// runs measure and closes both.
func withSubscriber(url string, cfg driver.SubscriberConfig, measure func(context.Context, message.Subscriber) (Result, error)) (Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: cfg.Service, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return Result{}, err
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(cfg)
	if err != nil {
		return Result{}, err
	}
	defer sub.Close()
	return measure(ctx, sub)
}

// consumeThroughBus measures bus handling n events of pattern at
// concurrency with a handler that does nothing, and closes the bus.
func consumeThroughBus(bus *eventbus.Bus, pattern string, n, concurrency int) (Result, error) {
	ctx := context.Background()
	defer bus.Close(ctx)
	c := newConsumeClock(n)
	if err := bus.Subscribe(pattern, func(context.Context, eventbus.Event) error {
		c.tick()
		return nil
	}, eventbus.Concurrency(concurrency)); err != nil {
		return Result{}, err
	}
	if err := bus.Start(ctx); err != nil {
		return Result{}, err
	}
	return c.wait()
}
