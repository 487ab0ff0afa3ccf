package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	kafkatransport "github.com/paissive/go-eventbus/transports/kafka"
)

// kafkaCluster is the brokers the run uses: given ones, or an in-process
// kfake cluster.
type kafkaCluster struct {
	brokers []string
	where   string
	close   func()
}

func startKafka(brokers string) (*kafkaCluster, error) {
	if brokers != "" {
		return &kafkaCluster{brokers: strings.Split(brokers, ","), where: "Kafka at " + brokers, close: func() {}}, nil
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(func(network, _ string) (net.Listener, error) {
		return net.Listen(network, "127.0.0.1:0")
	}))
	if err != nil {
		return nil, err
	}
	return &kafkaCluster{brokers: c.ListenAddrs(), where: "kfake, in process", close: c.Close}, nil
}

// KafkaConfig configures the Kafka table.
type KafkaConfig struct {
	Brokers []string
	Where   string // how the brokers are described in the title
	// N is the number of events per measurement; Sarama's SyncProducer
	// and watermill-kafka's publisher, one message at a time, get N/4.
	N          int
	Size       int
	Partitions int // of every topic; default 8
}

// Short names of the Kafka rows.
const (
	kafkaSync       = "sync producer"
	kafkaSync100    = "sync producer batches"
	kafkaAsync      = "async producer"
	kafkaWMPub      = "watermill publish"
	kafkaBus1       = "bus single"
	kafkaBus100     = "bus batches"
	kafkaBusMixed   = "bus mixed names"
	kafkaBus16      = "bus 16 goroutines"
	kafkaRawCon     = "consumer group"
	kafkaWMCon      = "watermill consume"
	kafkaWMRouter   = "watermill consume under a router"
	kafkaRouter     = "transport under a router C64"
	kafkaTransport  = "transport subscriber"
	kafkaTransport1 = "transport subscriber C1"
	kafkaBusC1      = "bus consume C1"
	kafkaBusC64     = "bus consume C64"
)

type kafkaBench struct {
	cfg     KafkaConfig
	id      string
	payload json.RawMessage
	// consumeTopic holds N events the bus published (the transport's
	// single-mapping topic of prefix consumePrefix); every consume row
	// reads it from the start with a group of its own.
	consumePrefix string
	seq           atomic.Int64
}

// KafkaTable returns the Kafka table: publishing with acks from all
// in-sync replicas, consuming with an ack (offset mark) per message; the
// bus next to Sarama and watermill-kafka.
func KafkaTable(cfg KafkaConfig) *Table {
	if cfg.N <= 0 {
		cfg.N = 20000
	}
	if cfg.Size <= 0 {
		cfg.Size = 256
	}
	if cfg.Partitions <= 0 {
		cfg.Partitions = 8
	}
	b := &kafkaBench{cfg: cfg}
	n, slow := cfg.N, max(cfg.N/4, 100)
	return &Table{
		Name:  "kafka",
		Title: fmt.Sprintf("Kafka (%s), %d-byte payloads, %d partitions, acks=all", cfg.Where, cfg.Size, cfg.Partitions),
		Setup: b.setup,
		Notes: []string{
			"Consume rows read the same topic of N events, each with a new consumer group, and are clocked from the first message to the last (joining the group is not counted). " +
				"With kfake the broker runs in the bench process: µs CPU/event includes the broker's work. " +
				"The router rows put a subscriber under a bare Watermill router whose handler only counts: the bus consumes through such a router, so the transport's row is as fast as the bus can be on this transport.",
		},
		Rows: []*Scenario{
			{Name: "Sarama SyncProducer, one SendMessage per message", Short: kafkaSync,
				Run: func(context.Context) (Result, error) { return b.rawSync(slow, 1) }},
			{Name: "Sarama SyncProducer, SendMessages of 100", Short: kafkaSync100, Compare: []string{kafkaSync},
				Run: func(context.Context) (Result, error) { return b.rawSync(n, 100) }},
			{Name: "Sarama AsyncProducer, all in flight (ceiling)", Short: kafkaAsync, Compare: []string{kafkaSync},
				Run: func(context.Context) (Result, error) { return b.rawAsync(n) }},
			{Name: "watermill-kafka Publisher, defaults (acks=local, one at a time)", Short: kafkaWMPub, Compare: []string{kafkaSync},
				Run: func(context.Context) (Result, error) { return b.wkPublish(slow) }},
			{Name: "bus publish, one event per call", Short: kafkaBus1, Compare: []string{kafkaSync},
				Run: func(context.Context) (Result, error) { return b.busPublish(slow, 1, 1, 1) }},
			{Name: "bus publish, 100 events of one name per call", Short: kafkaBus100, Compare: []string{kafkaSync, kafkaSync100},
				Run: func(context.Context) (Result, error) { return b.busPublish(n, 100, 1, 1) }},
			{Name: "bus publish, 100 events of 100 names per call", Short: kafkaBusMixed, Compare: []string{kafkaBus100},
				Run: func(context.Context) (Result, error) { return b.busPublish(n, 100, 100, 1) }},
			{Name: "bus publish, 16 goroutines, one event per call", Short: kafkaBus16, Compare: []string{kafkaSync},
				Run: func(context.Context) (Result, error) { return b.busPublish(n, 1, 1, 16) }},
			{Name: "Sarama consumer group, mark each message (ceiling: no per-message work)", Short: kafkaRawCon, Compare: []string{kafkaWMCon},
				Run: func(context.Context) (Result, error) { return b.rawConsume(n) }},
			{Name: "watermill-kafka Subscriber, ack each", Short: kafkaWMCon,
				Run: func(context.Context) (Result, error) { return b.wkConsume(n, false) }},
			{Name: "watermill-kafka Subscriber under a bare Watermill router, handler only counts", Short: kafkaWMRouter, Compare: []string{kafkaWMCon},
				Run: func(context.Context) (Result, error) { return b.wkConsume(n, true) }},
			{Name: "transport's subscriber without the bus, Concurrency 64, ack each", Short: kafkaTransport, Compare: []string{kafkaWMCon},
				Run: func(context.Context) (Result, error) { return b.transportConsume(n, 64, false) }},
			{Name: "transport's subscriber under a bare Watermill router, Concurrency 64, handler only counts (the bus's floor)", Short: kafkaRouter, Compare: []string{kafkaWMCon, kafkaTransport},
				Run: func(context.Context) (Result, error) { return b.transportConsume(n, 64, true) }},
			{Name: "transport's subscriber without the bus, Concurrency 1, ack each", Short: kafkaTransport1, Compare: []string{kafkaWMCon},
				Run: func(context.Context) (Result, error) { return b.transportConsume(n, 1, false) }},
			{Name: "bus consume, Concurrency(1)", Short: kafkaBusC1, Compare: []string{kafkaWMCon, kafkaTransport1},
				Targets: []Target{{kafkaWMCon, 1.0}, {kafkaTransport1, 0.8}},
				Run:     func(context.Context) (Result, error) { return b.busConsume(n, 1) }},
			{Name: "bus consume, Concurrency(64)", Short: kafkaBusC64, Compare: []string{kafkaWMCon, kafkaTransport, kafkaWMRouter, kafkaRouter},
				Targets: []Target{{kafkaWMCon, 1.0}, {kafkaTransport, 0.8}},
				Run:     func(context.Context) (Result, error) { return b.busConsume(n, 64) }},
		},
	}
}

func (b *kafkaBench) unique(p string) string {
	return fmt.Sprintf("%s-%s-%d", p, b.id, b.seq.Add(1))
}

func (b *kafkaBench) busURL(prefix string) string {
	return "kafka://" + strings.Join(b.cfg.Brokers, ",") + fmt.Sprintf("/?partitions=%d&prefix=%s", b.cfg.Partitions, prefix)
}

// consumeTopic is the topic the consume rows read.
func (b *kafkaBench) consumeTopic() string { return b.consumePrefix + ".events" }

func (b *kafkaBench) setup(ctx context.Context) error {
	b.id = uniqueID()
	b.payload = jsonPayload(b.cfg.Size)
	b.consumePrefix = "bench-" + b.id
	bus, err := openKafkaBus(ctx, b.busURL(b.consumePrefix), "bench")
	if err != nil {
		return err
	}
	defer bus.Close(ctx)
	evs := b.events(b.cfg.N, 1)
	for i := 0; i < len(evs); i += 500 {
		if err := bus.Publish(ctx, evs[i:min(i+500, len(evs))]...); err != nil {
			return err
		}
	}
	return nil
}

func openKafkaBus(ctx context.Context, url, service string) (*eventbus.Bus, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return eventbus.New(ctx, eventbus.Config{ServiceName: service, URL: url, Logger: slog.New(slog.DiscardHandler)})
}

// events makes n events with partition keys, cycling through names names.
func (b *kafkaBench) events(n, names int) []eventbus.Event {
	evs := makeEvents("bench.item", n, names, b.payload)
	for i := range evs {
		evs[i].PartitionKey = fmt.Sprint(i)
	}
	return evs
}

func (b *kafkaBench) saramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = kafkatransport.DefaultVersion
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	return c
}

func (b *kafkaBench) createTopic(topic string) error {
	admin, err := sarama.NewClusterAdmin(b.cfg.Brokers, b.saramaConfig())
	if err != nil {
		return err
	}
	defer admin.Close()
	return admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: int32(b.cfg.Partitions), ReplicationFactor: 1}, false)
}

// records are the bus's records for n events (its ten CloudEvents
// headers, key and value), made before a clock starts.
func (b *kafkaBench) records(topic string, n int) []*sarama.ProducerMessage {
	recs := make([]*sarama.ProducerMessage, n)
	for i, ev := range b.events(n, 1) {
		recs[i], _ = kafkatransport.Marshaler{}.Marshal(topic, eventbustestMessage(ev))
	}
	return recs
}

func (b *kafkaBench) rawSync(n, per int) (Result, error) {
	topic := b.unique("raw-sync")
	if err := b.createTopic(topic); err != nil {
		return Result{}, err
	}
	p, err := sarama.NewSyncProducer(b.cfg.Brokers, b.saramaConfig())
	if err != nil {
		return Result{}, err
	}
	defer p.Close()
	recs := b.records(topic, n)
	clk := StartClock()
	for i := 0; i < n; i += per {
		if per == 1 {
			_, _, err = p.SendMessage(recs[i])
		} else {
			err = p.SendMessages(recs[i:min(i+per, n)])
		}
		if err != nil {
			return Result{}, err
		}
	}
	return clk.Stop(n), nil
}

func (b *kafkaBench) rawAsync(n int) (Result, error) {
	topic := b.unique("raw-async")
	if err := b.createTopic(topic); err != nil {
		return Result{}, err
	}
	p, err := sarama.NewAsyncProducer(b.cfg.Brokers, b.saramaConfig())
	if err != nil {
		return Result{}, err
	}
	recs := b.records(topic, n)
	done := make(chan error, 1)
	clk := StartClock()
	go func() {
		for range n {
			select {
			case <-p.Successes():
			case e := <-p.Errors():
				done <- e
				return
			}
		}
		done <- nil
	}()
	for _, r := range recs {
		p.Input() <- r
	}
	err = <-done
	res := clk.Stop(n)
	p.AsyncClose()
	for range p.Successes() {
	}
	return res, err
}

func (b *kafkaBench) wkPublish(n int) (Result, error) {
	topic := b.unique("wk")
	if err := b.createTopic(topic); err != nil {
		return Result{}, err
	}
	cfg := wkafka.DefaultSaramaSyncPublisherConfig()
	cfg.Version = kafkatransport.DefaultVersion
	p, err := wkafka.NewPublisher(wkafka.PublisherConfig{Brokers: b.cfg.Brokers, Marshaler: kafkatransport.Marshaler{}, OverwriteSaramaConfig: cfg}, nil)
	if err != nil {
		return Result{}, err
	}
	defer p.Close()
	evs := b.events(n, 1)
	clk := StartClock()
	for _, ev := range evs {
		if err := p.Publish(topic, eventbustestMessage(ev)); err != nil {
			return Result{}, err
		}
	}
	return clk.Stop(n), nil
}

// busPublish publishes n events in calls of per from g goroutines,
// cycling through names names, on a bus of its own (its topic created
// before the clock starts).
func (b *kafkaBench) busPublish(n, per, names, g int) (Result, error) {
	ctx := context.Background()
	bus, err := openKafkaBus(ctx, b.busURL(b.unique("bench-pub")), "bench")
	if err != nil {
		return Result{}, err
	}
	defer bus.Close(ctx)
	if err := bus.Publish(ctx, b.events(1, 1)...); err != nil {
		return Result{}, err
	}
	evs := b.events(n, names)
	var next atomic.Int64
	errs := make(chan error, g)
	var wg sync.WaitGroup
	clk := StartClock()
	for range g {
		wg.Go(func() {
			for {
				i := int(next.Add(int64(per))) - per
				if i >= n {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				err := bus.Publish(ctx, evs[i:min(i+per, n)]...)
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
	close(errs)
	return res, <-errs
}

type groupHandler struct{ c *consumeClock }

func (groupHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h groupHandler) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		s.MarkMessage(m, "")
		h.c.tick()
	}
	return nil
}

func (b *kafkaBench) rawConsume(n int) (Result, error) {
	g, err := sarama.NewConsumerGroup(b.cfg.Brokers, b.unique("raw"), b.saramaConfig())
	if err != nil {
		return Result{}, err
	}
	defer g.Close()
	c := newConsumeClock(n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{b.consumeTopic()}, groupHandler{c}); err != nil {
				return
			}
		}
	}()
	return c.wait()
}

// wkConsume measures watermill-kafka's subscriber read by one goroutine
// acking each message, or under a bare router.
func (b *kafkaBench) wkConsume(n int, router bool) (Result, error) {
	cfg := wkafka.DefaultSaramaSubscriberConfig()
	cfg.Version = kafkatransport.DefaultVersion
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	s, err := wkafka.NewSubscriber(wkafka.SubscriberConfig{Brokers: b.cfg.Brokers, Unmarshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: cfg, ConsumerGroup: b.unique("wk")}, nil)
	if err != nil {
		return Result{}, err
	}
	defer s.Close()
	if router {
		return consumeThroughRouter(s, b.consumeTopic(), n)
	}
	ch, err := s.Subscribe(context.Background(), b.consumeTopic())
	if err != nil {
		return Result{}, err
	}
	c := newConsumeClock(n)
	go func() {
		for m := range ch {
			m.Ack()
			c.tick()
		}
	}()
	return c.wait()
}

// transportConsume measures the transport's subscriber read by one
// goroutine acking each message, or under a bare router.
func (b *kafkaBench) transportConsume(n, concurrency int, router bool) (Result, error) {
	url, cfg := b.busURL(b.consumePrefix), driver.SubscriberConfig{
		Group: b.unique("bench.raw"), Service: "bench", Subscription: "raw", Concurrency: concurrency,
		Pattern: "bench.#", Match: mustMatch("bench.#"),
	}
	if router {
		return consumeThroughTransportRouter(url, cfg, n)
	}
	return consumeThroughTransport(url, cfg, n, 1)
}

func (b *kafkaBench) busConsume(n, concurrency int) (Result, error) {
	bus, err := openKafkaBus(context.Background(), b.busURL(b.consumePrefix), b.unique("bench"))
	if err != nil {
		return Result{}, err
	}
	return consumeThroughBus(bus, "bench.#", n, concurrency)
}
