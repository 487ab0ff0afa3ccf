package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	busamqp "github.com/paissive/go-eventbus/transports/amqp"
)

// AMQPConfig configures the RabbitMQ table.
type AMQPConfig struct {
	// URL of the broker; every exchange and queue the run declares is
	// deleted at the end.
	URL string
	// N is the number of events per measurement (watermill-amqp's
	// publisher, which waits for each confirm in turn, gets N/4).
	N int
	// Size is the payload size in bytes.
	Size int
	// BusParams are extra URL query parameters for the bus
	// ("publish_channels=8&prefetch=64").
	BusParams string
}

// Short names of the RabbitMQ rows, for ratios and targets.
const (
	amqpRawPub     = "raw publish"
	amqpRaw16      = "raw 16 goroutines"
	amqpBus16      = "bus 16 goroutines"
	amqpRawBatches = "raw batches"
	amqpBusBatches = "bus batches"
	amqpBusMixed   = "bus mixed names"
	amqpWMPub      = "watermill publish"
	amqpRawCon     = "raw consume"
	amqpBusC1      = "bus consume C1"
	amqpBusC16     = "bus consume C16"
	amqpWMCon      = "watermill consume"
)

// amqpBench is the state of one run of the RabbitMQ table.
type amqpBench struct {
	cfg     AMQPConfig
	id      string
	conn    *amqp091.Connection
	admin   *amqp091.Channel
	queues  []string
	exchs   []string
	payload json.RawMessage
	// pub is the bus every publishing row uses, opened in Setup (its
	// pooled channels warmed up) as the raw rows open their channel before
	// their clock starts.
	pub      *eventbus.Bus
	exchange string // the bus's exchange
	sink     string // queue bound with "#" to the bus's exchange
	quiet    *slog.Logger
}

// AMQPTable returns the RabbitMQ table: persistent messages with publisher
// confirms, consumed with an ack per message; the bus next to raw
// amqp091-go and watermill-amqp v2.
func AMQPTable(cfg AMQPConfig) *Table {
	if cfg.N <= 0 {
		cfg.N = 8000
	}
	if cfg.Size <= 0 {
		cfg.Size = 256
	}
	b := &amqpBench{cfg: cfg, quiet: slog.New(slog.DiscardHandler)}
	n := cfg.N
	t := &Table{
		Name:  "amqp",
		Title: fmt.Sprintf("RabbitMQ (%s), %d-byte payloads, persistent, confirmed, acked one by one", driver.RedactURL(cfg.URL), cfg.Size),
		Setup: b.setup,
		Teardown: func() {
			b.teardown()
		},
		Notes: []string{
			"The raw rows send the bus's wire format (its CloudEvents headers and properties), built from prepared events while the clock runs, as the bus does. " +
				"\"raw 16 goroutines\" is the ceiling of the 16-publisher shape: with 16 callers each waiting for its own confirm, at most 16 confirms are in flight, whatever the client. " +
				"µs CPU/event is the bench process's CPU time per event: the client's share; the broker's is not counted.",
		},
		Rows: []*Scenario{
			{Name: "raw amqp091-go publish, 1 goroutine, 1000 confirms in flight", Short: amqpRawPub,
				Run: func(ctx context.Context) (Result, error) { return b.rawPublish(n, 1000) }},
			{Name: "raw amqp091-go publish, 16 goroutines, single messages, each waits for its confirm", Short: amqpRaw16,
				Compare: []string{amqpRawPub},
				Run:     func(ctx context.Context) (Result, error) { return b.rawConcurrent(n, 16) }},
			{Name: "bus publish, 16 goroutines, single events", Short: amqpBus16,
				Compare: []string{amqpRawPub, amqpRaw16}, Targets: []Target{{amqpRawPub, 0.8}},
				Run: func(ctx context.Context) (Result, error) { return b.busConcurrent(n, 16) }},
			{Name: "raw amqp091-go publish, batches of 100, waits for each batch", Short: amqpRawBatches,
				Compare: []string{amqpRawPub},
				Run:     func(ctx context.Context) (Result, error) { return b.rawPublish(n, -100) }},
			{Name: "bus publish, 1 goroutine, 100 events of one name per call", Short: amqpBusBatches,
				Compare: []string{amqpRawPub, amqpRawBatches},
				Run:     func(ctx context.Context) (Result, error) { return b.busBatches(n, 100, 1) }},
			{Name: "bus publish, 1 goroutine, 100 events of 100 names per call", Short: amqpBusMixed,
				Compare: []string{amqpBusBatches}, Targets: []Target{{amqpBusBatches, 0.8}},
				Run: func(ctx context.Context) (Result, error) { return b.busBatches(n, 100, 100) }},
			{Name: "watermill-amqp v2 publish, ConfirmDelivery, pool of 4, calls of 100", Short: amqpWMPub,
				Compare: []string{amqpRawPub},
				Run:     func(ctx context.Context) (Result, error) { return b.watermillPublish(max(n/4, 100)) }},
			{Name: "raw amqp091-go consume, prefetch 200, ack each", Short: amqpRawCon,
				Run: func(ctx context.Context) (Result, error) { return b.rawConsume(n) }},
			{Name: "bus consume, Concurrency(1)", Short: amqpBusC1,
				Compare: []string{amqpRawCon}, Targets: []Target{{amqpRawCon, 0.6}},
				Run: func(ctx context.Context) (Result, error) { return b.busConsume(n, 1) }},
			{Name: "bus consume, Concurrency(16)", Short: amqpBusC16,
				Compare: []string{amqpRawCon}, Targets: []Target{{amqpRawCon, 0.9}},
				Run: func(ctx context.Context) (Result, error) { return b.busConsume(n, 16) }},
			{Name: "watermill-amqp v2 consume, prefetch 100, ack each", Short: amqpWMCon,
				Compare: []string{amqpRawCon},
				Run:     func(ctx context.Context) (Result, error) { return b.watermillConsume(n) }},
		},
	}
	return t
}

func uniqueID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// jsonPayload is a JSON document of size bytes.
func jsonPayload(size int) json.RawMessage {
	pad := max(size-len(`{"p":""}`), 0)
	b, _ := json.Marshal(map[string]string{"p": strings.Repeat("x", pad)})
	return b
}

func (b *amqpBench) name(s string) string { return "bench-" + b.id + "-" + s }

func (b *amqpBench) busURL(params string) string {
	u := b.cfg.URL + sep(b.cfg.URL) + "exchange=" + b.exchange
	if b.cfg.BusParams != "" {
		u += "&" + b.cfg.BusParams
	}
	if params != "" {
		u += "&" + params
	}
	return u
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

func (b *amqpBench) setup(ctx context.Context) error {
	b.id = uniqueID()
	b.payload = jsonPayload(b.cfg.Size)
	var err error
	if b.conn, err = amqp091.Dial(b.cfg.URL); err != nil {
		return fmt.Errorf("cannot connect to %s: %w", driver.RedactURL(b.cfg.URL), err)
	}
	if b.admin, err = b.conn.Channel(); err != nil {
		return err
	}
	b.exchange, b.sink = b.name("bus"), b.name("bus-sink")
	if err := b.topic(b.exchange, b.sink, "#"); err != nil {
		return err
	}
	if err := b.topic(b.name("raw"), b.name("raw-sink"), "#"); err != nil {
		return err
	}
	if b.pub, err = eventbus.New(ctx, eventbus.Config{ServiceName: b.name("pub"), URL: b.busURL(""), Logger: b.quiet}); err != nil {
		return err
	}
	// Open the pooled channels: a few rounds of concurrent single events.
	evs := b.events("bench.warmup", 64, 1)
	var wg sync.WaitGroup
	errs := make(chan error, len(evs))
	for _, ev := range evs {
		wg.Go(func() { errs <- b.pub.Publish(ctx, ev) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	_, err = b.admin.QueuePurge(b.sink, false)
	return err
}

func (b *amqpBench) teardown() {
	if b.pub != nil {
		_ = b.pub.Close(context.Background())
	}
	if b.admin != nil {
		for _, q := range b.queues {
			_, _ = b.admin.QueueDelete(q, false, false, false)
		}
		for _, e := range b.exchs {
			_ = b.admin.ExchangeDelete(e, false, false)
		}
	}
	if b.conn != nil {
		_ = b.conn.Close()
	}
}

// topic declares a durable topic exchange with one durable queue bound
// with key.
func (b *amqpBench) topic(exchange, queue, key string) error {
	if err := b.admin.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		return err
	}
	b.exchs = append(b.exchs, exchange)
	if err := b.queue(queue); err != nil {
		return err
	}
	return b.admin.QueueBind(queue, key, exchange, false, nil)
}

// queue declares a durable queue, as the bus's subscribers and
// watermill-amqp declare theirs, and empties it.
func (b *amqpBench) queue(name string) error {
	if _, err := b.admin.QueueDeclare(name, true, false, false, false, nil); err != nil {
		return err
	}
	if !contains(b.queues, name) {
		b.queues = append(b.queues, name)
	}
	_, err := b.admin.QueuePurge(name, false)
	return err
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// events makes n events; with names > 1 they cycle through that many
// names ("<name>.n00", ...). Events are made before a clock starts, as an
// application has them before it publishes.
func (b *amqpBench) events(name string, n, names int) []eventbus.Event {
	return makeEvents(name, n, names, b.payload)
}

func makeEvents(name string, n, names int, payload json.RawMessage) []eventbus.Event {
	evs := make([]eventbus.Event, n)
	for i := range evs {
		nm := name
		if names > 1 {
			nm = fmt.Sprintf("%s.n%02d", name, i%names)
		}
		ev, err := eventbus.NewEvent(nm, payload, eventbus.WithSource("bench"))
		if err != nil {
			panic(err)
		}
		ev.CorrelationID = ev.ID // as Bus.Publish sets it
		evs[i] = ev
	}
	return evs
}

// rawMessage is the publishing a raw amqp091-go client sends for ev: the
// headers and properties of the bus's wire format, built from the event's
// fields.
func rawMessage(ev eventbus.Event) amqp091.Publishing {
	return amqp091.Publishing{
		DeliveryMode: amqp091.Persistent, ContentType: "application/json", Body: ev.Data,
		Headers: amqp091.Table{
			driver.HeaderSpecVersion:   "1.0",
			driver.HeaderID:            ev.ID,
			driver.HeaderSource:        ev.Source,
			driver.HeaderType:          ev.Name,
			driver.HeaderTime:          ev.Time.UTC().Format(time.RFC3339Nano),
			driver.HeaderEventType:     ev.Type.String(),
			driver.HeaderContentType:   "application/json",
			driver.HeaderCorrelationID: ev.CorrelationID,
		},
		MessageId: ev.ID, CorrelationId: ev.CorrelationID, Timestamp: ev.Time,
	}
}

// sameWire checks that rawMessage sends exactly the headers the bus sends.
func sameWire(ev eventbus.Event) error {
	pub := rawMessage(ev)
	md := eventbustestMessage(ev).Metadata
	if len(md) != len(pub.Headers) {
		return fmt.Errorf("raw headers %v differ from the bus's %v", pub.Headers, md)
	}
	for k, v := range md {
		if pub.Headers[k] != v {
			return fmt.Errorf("raw header %s=%v differs from the bus's %q", k, pub.Headers[k], v)
		}
	}
	return nil
}

// eventbustestMessage is the message the bus sends for ev.
func eventbustestMessage(ev eventbus.Event) *message.Message {
	return driver.Encode(driver.Envelope{
		ID: ev.ID, Name: ev.Name, Source: ev.Source, Type: ev.Type.String(), Time: ev.Time,
		CorrelationID: ev.CorrelationID, PartitionKey: ev.PartitionKey, Metadata: ev.Metadata, Data: ev.Data,
	})
}

// confirmChannel opens a connection with one confirm-mode channel.
func (b *amqpBench) confirmChannel() (*amqp091.Connection, *amqp091.Channel, error) {
	conn, err := amqp091.Dial(b.cfg.URL)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

// rawPublish publishes n messages from one goroutine on one channel:
// with window > 0 keeping up to window confirms in flight, with window <
// 0 in batches of -window, waiting for each batch's confirms.
func (b *amqpBench) rawPublish(n, window int) (Result, error) {
	evs := b.events("raw.event", n, 1)
	if err := sameWire(evs[0]); err != nil {
		return Result{}, err
	}
	conn, ch, err := b.confirmChannel()
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	batch := 0
	if window < 0 {
		batch, window = -window, -window
	}
	slots := make(chan struct{}, window)
	var nacks atomic.Int64
	done := make(chan struct{})
	batchDone := make(chan struct{}, 1)
	go func() {
		defer close(done)
		for i := 1; i <= n; i++ {
			c, ok := <-confirms
			if !ok {
				return
			}
			if !c.Ack {
				nacks.Add(1)
			}
			<-slots
			if batch > 0 && (i%batch == 0 || i == n) {
				batchDone <- struct{}{}
			}
		}
	}()
	exchange := b.name("raw")
	clk := StartClock()
	for i := 0; i < n; i++ {
		slots <- struct{}{}
		if err := ch.Publish(exchange, "raw.event", true, false, rawMessage(evs[i])); err != nil {
			return Result{}, err
		}
		if batch > 0 && ((i+1)%batch == 0 || i+1 == n) {
			<-batchDone
		}
	}
	<-done
	res := clk.Stop(n)
	_, _ = b.admin.QueuePurge(b.name("raw-sink"), false)
	if nacks.Load() > 0 {
		return res, fmt.Errorf("%d nacks", nacks.Load())
	}
	return res, nil
}

// rawConcurrent publishes n messages from g goroutines, each sending one
// message and waiting for its confirm before the next, over 4 channels
// (the bus's default pool): the shape of an HTTP service publishing one
// event per request, done with the raw client.
func (b *amqpBench) rawConcurrent(n, g int) (Result, error) {
	evs := b.events("raw.event", n, 1)
	conn, err := amqp091.Dial(b.cfg.URL)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	chs := make([]*amqp091.Channel, busamqp.DefaultPublishChannels)
	for i := range chs {
		if chs[i], err = conn.Channel(); err != nil {
			return Result{}, err
		}
		if err := chs[i].Confirm(false); err != nil {
			return Result{}, err
		}
	}
	exchange := b.name("raw")
	var next atomic.Int64
	errs := make(chan error, g)
	var wg sync.WaitGroup
	clk := StartClock()
	for k := range g {
		ch := chs[k%len(chs)]
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				dc, err := ch.PublishWithDeferredConfirm(exchange, "raw.event", true, false, rawMessage(evs[i-1]))
				if err == nil && !dc.Wait() {
					err = errors.New("nack")
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	res := clk.Stop(n)
	_, _ = b.admin.QueuePurge(b.name("raw-sink"), false)
	close(errs)
	return res, <-errs
}

// busConcurrent publishes n events from g goroutines, one event per
// Publish call, each call with a ctx that has a deadline, as a request's
// ctx has.
func (b *amqpBench) busConcurrent(n, g int) (Result, error) {
	evs := b.events("bench.single", n, 1)
	var next atomic.Int64
	errs := make(chan error, g)
	var wg sync.WaitGroup
	clk := StartClock()
	for range g {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				err := b.pub.Publish(ctx, evs[i-1])
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	res := clk.Stop(n)
	_, _ = b.admin.QueuePurge(b.sink, false)
	close(errs)
	return res, <-errs
}

// busBatches publishes n events from one goroutine in calls of per
// events, cycling through names names.
func (b *amqpBench) busBatches(n, per, names int) (Result, error) {
	evs := b.events("bench.batch", n, names)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	clk := StartClock()
	for i := 0; i < n; i += per {
		if err := b.pub.Publish(ctx, evs[i:min(i+per, n)]...); err != nil {
			return Result{}, err
		}
	}
	res := clk.Stop(n)
	_, _ = b.admin.QueuePurge(b.sink, false)
	return res, nil
}

func (b *amqpBench) watermillConfig(queue, exchange string) wamqp.Config {
	cfg := wamqp.NewDurablePubSubConfig(b.cfg.URL, wamqp.GenerateQueueNameConstant(queue))
	cfg.Exchange.GenerateName = func(string) string { return exchange }
	cfg.Publish.ConfirmDelivery = true
	cfg.Publish.ChannelPoolSize = 4
	cfg.Consume.Qos.PrefetchCount = 100
	return cfg
}

// watermillPublish publishes n messages through watermill-amqp's
// publisher with ConfirmDelivery and a pool of 4 channels, in calls of 100.
func (b *amqpBench) watermillPublish(n int) (Result, error) {
	exchange, queue := b.name("wm"), b.name("wm-q")
	// The exchange and its bound queue, as watermill-amqp's subscriber
	// declares them: without a queue the broker would drop the messages
	// instead of storing them.
	if err := b.admin.ExchangeDeclare(exchange, "fanout", true, false, false, false, nil); err != nil {
		return Result{}, err
	}
	if !contains(b.exchs, exchange) {
		b.exchs = append(b.exchs, exchange)
	}
	if err := b.queue(queue); err != nil {
		return Result{}, err
	}
	if err := b.admin.QueueBind(queue, "", exchange, false, nil); err != nil {
		return Result{}, err
	}
	defer b.admin.QueuePurge(queue, false)
	pub, err := wamqp.NewPublisher(b.watermillConfig(queue, exchange), watermill.NopLogger{})
	if err != nil {
		return Result{}, err
	}
	defer pub.Close()
	evs := b.events("raw.event", n, 1)
	clk := StartClock()
	for i := 0; i < n; i += 100 {
		msgs := make([]*message.Message, 0, 100)
		for j := i; j < min(i+100, n); j++ {
			msgs = append(msgs, message.NewMessage(evs[j].ID, message.Payload(evs[j].Data)))
		}
		if err := pub.Publish(exchange, msgs...); err != nil {
			return Result{}, err
		}
	}
	return clk.Stop(n), nil
}

// fill puts n of the bus's messages named name into queue (through the
// default exchange), before a consumer's clock starts.
func (b *amqpBench) fill(queue, name string, n int) error {
	if err := b.queue(queue); err != nil {
		return err
	}
	conn, ch, err := b.confirmChannel()
	if err != nil {
		return err
	}
	defer conn.Close()
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	slots := make(chan struct{}, 1000)
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			c, ok := <-confirms
			if !ok || !c.Ack {
				done <- errors.New("filling the queue: a message was not confirmed")
				return
			}
			<-slots
		}
		done <- nil
	}()
	for _, ev := range b.events(name, n, 1) {
		slots <- struct{}{}
		if err := ch.Publish("", queue, true, false, rawMessage(ev)); err != nil {
			return err
		}
	}
	return <-done
}

// rawConsume drains a queue of n messages with prefetch 200 and an ack
// per message.
func (b *amqpBench) rawConsume(n int) (Result, error) {
	q := b.name("raw-con")
	if err := b.fill(q, "raw.event", n); err != nil {
		return Result{}, err
	}
	conn, err := amqp091.Dial(b.cfg.URL)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return Result{}, err
	}
	if err := ch.Qos(200, 0, false); err != nil {
		return Result{}, err
	}
	clk := StartClock()
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		return Result{}, err
	}
	for range n {
		d, ok := <-ds
		if !ok {
			return Result{}, errors.New("consumer closed")
		}
		if err := d.Ack(false); err != nil {
			return Result{}, err
		}
	}
	return clk.Stop(n), nil
}

// busConsume drains a subscription's queue of n events through a Bus
// with the given concurrency; the clock covers Start (the consumer's
// setup, as the raw row's covers its basic.consume) until the last
// handler returned.
func (b *amqpBench) busConsume(n, concurrency int) (Result, error) {
	svc := b.name(fmt.Sprintf("svc-c%d", concurrency))
	if err := b.fill(svc+".sub", "bench.consume", n); err != nil {
		return Result{}, err
	}
	ctx := context.Background()
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: svc, URL: b.busURL(""), Logger: b.quiet})
	if err != nil {
		return Result{}, err
	}
	defer bus.Close(ctx)
	var count atomic.Int64
	done := make(chan struct{})
	if err := bus.Subscribe("bench.consume", func(context.Context, eventbus.Event) error {
		if count.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}, eventbus.SubscriptionName("sub"), eventbus.Concurrency(concurrency)); err != nil {
		return Result{}, err
	}
	clk := StartClock()
	if err := bus.Start(ctx); err != nil {
		return Result{}, err
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		return Result{}, fmt.Errorf("only %d of %d events handled", count.Load(), n)
	}
	return clk.Stop(n), nil
}

// watermillConsume drains a queue of n messages with watermill-amqp's
// subscriber (prefetch 100), acking each.
func (b *amqpBench) watermillConsume(n int) (Result, error) {
	exchange, queue := b.name("wm-con"), b.name("wm-con-q")
	if !contains(b.exchs, exchange) {
		b.exchs = append(b.exchs, exchange)
	}
	if err := b.fill(queue, "raw.event", n); err != nil {
		return Result{}, err
	}
	sub, err := wamqp.NewSubscriber(b.watermillConfig(queue, exchange), watermill.NopLogger{})
	if err != nil {
		return Result{}, err
	}
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clk := StartClock()
	msgs, err := sub.Subscribe(ctx, exchange)
	if err != nil {
		return Result{}, err
	}
	for range n {
		m, ok := <-msgs
		if !ok {
			return Result{}, errors.New("subscription closed")
		}
		m.Ack()
	}
	return clk.Stop(n), nil
}
