// Command bench compares, in one run on one broker, the go-eventbus Kafka
// transport with raw Sarama and with watermill-kafka's defaults: publish
// throughput (one event per call and batches) and consume throughput.
//
// It uses an in-process kfake cluster unless EVENTBUS_TEST_KAFKA_BROKERS
// names real brokers. Numbers from one run are comparable with each
// other; absolute figures depend on the machine and broker.
//
//	go run ./transports/kafka/bench [-n 5000] [-size 256]
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	kafkatransport "github.com/paissive/go-eventbus/transports/kafka"
)

var (
	n          = flag.Int("n", 5000, "messages per measurement")
	size       = flag.Int("size", 256, "payload bytes")
	batch      = flag.Int("batch", 100, "events per Publish call in the batched measurements")
	partitions = flag.Int("partitions", 8, "partitions of each topic")
)

type row struct {
	kind, name string
	rate       float64
	base       bool // the reference of its kind
	note       string
}

func main() {
	flag.Parse()
	brokers, where, stop := cluster()
	defer stop()
	fmt.Printf("broker: %s %v; %d messages of %d bytes per measurement, %d partitions\n\n", where, brokers, *n, *size, *partitions)
	payload := []byte(`"` + strings.Repeat("x", max(*size-2, 0)) + `"`)

	var rows []row
	add := func(kind, name string, base bool, note string, f func() (int, time.Duration, error)) {
		count, d, err := f()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(1)
		}
		rows = append(rows, row{kind: kind, name: name, rate: float64(count) / d.Seconds(), base: base, note: note})
	}

	rawSyncTopic, rawAsyncTopic, wkTopic := "raw-sync", "raw-async", "wk"
	for _, tp := range []string{rawSyncTopic, rawAsyncTopic, wkTopic} {
		if err := createTopic(brokers, tp); err != nil {
			fatal(err)
		}
	}
	busURL := "kafka://" + strings.Join(brokers, ",") + fmt.Sprintf("/?partitions=%d&prefix=", *partitions)

	add("publish", "Sarama SyncProducer, acks=all, one SendMessage per message", true, "", func() (int, time.Duration, error) {
		return rawSync(brokers, rawSyncTopic, payload, 1)
	})
	add("publish", fmt.Sprintf("Sarama SyncProducer, acks=all, SendMessages of %d", *batch), false, "", func() (int, time.Duration, error) {
		return rawSync(brokers, rawSyncTopic, payload, *batch)
	})
	add("publish", fmt.Sprintf("Sarama SyncProducer, SendMessages of %d, the bus's headers, idempotent", *batch), false, "same records as the bus", func() (int, time.Duration, error) {
		return rawSyncLikeBus(brokers, rawSyncTopic, payload, *batch)
	})
	add("publish", "Sarama AsyncProducer, acks=all, all in flight (ceiling)", false, "", func() (int, time.Duration, error) {
		return rawAsync(brokers, rawAsyncTopic, payload)
	})
	add("publish", "watermill-kafka Publisher, defaults (acks=local, one at a time)", false, "", func() (int, time.Duration, error) {
		return wkPublish(brokers, wkTopic, payload)
	})
	pfx1, pfxB := unique("bench1"), unique("benchb")
	add("publish", "Bus.Publish, one event per call", false, "acks=all, idempotent", func() (int, time.Duration, error) {
		return busPublish(busURL+pfx1, payload, 1)
	})
	add("publish", fmt.Sprintf("Bus.Publish, %d events per call", *batch), false, "acks=all, idempotent", func() (int, time.Duration, error) {
		return busPublish(busURL+pfxB, payload, *batch)
	})
	add("publish", "Bus.Publish, one event per call, 16 goroutines", false, "acks=all, idempotent", func() (int, time.Duration, error) {
		return busPublishParallel(busURL+unique("benchp"), payload, 16)
	})

	add("consume", "Sarama consumer group, mark each message (ceiling)", false, "no per-message work: reads prefetched batches", func() (int, time.Duration, error) {
		return rawConsume(brokers, rawAsyncTopic)
	})
	add("consume", "watermill-kafka Subscriber, ack each (OffsetOldest)", true, "one in flight per partition", func() (int, time.Duration, error) {
		return wkConsume(brokers, wkTopic)
	})
	add("consume", "transport subscriber without the bus, Concurrency 64, ack each", false, "", func() (int, time.Duration, error) {
		return transportConsume(busURL+pfxB, 64)
	})
	add("consume", "Bus subscription, Concurrency 1", false, "", func() (int, time.Duration, error) {
		return busConsume(busURL+pfxB, 1)
	})
	add("consume", "Bus subscription, Concurrency 64", false, "", func() (int, time.Duration, error) {
		return busConsume(busURL+pfxB, 64)
	})

	fmt.Println("| what | msg/s | ratio | note |")
	fmt.Println("| --- | ---: | ---: | --- |")
	for _, kind := range []string{"publish", "consume"} {
		var base float64
		for _, r := range rows {
			if r.kind == kind && r.base {
				base = r.rate
			}
		}
		for _, r := range rows {
			if r.kind != kind {
				continue
			}
			fmt.Printf("| %s: %s | %.0f | %.2f | %s |\n", kind, r.name, r.rate, r.rate/base, r.note)
		}
	}
	fmt.Println("\nratio: publish rows against Sarama's SyncProducer one message at a time; consume rows against watermill-kafka's Subscriber")
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func unique(p string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return p + hex.EncodeToString(b[:])
}

// cluster returns the brokers of EVENTBUS_TEST_KAFKA_BROKERS or of a fresh
// in-process kfake cluster.
func cluster() ([]string, string, func()) {
	if env := os.Getenv("EVENTBUS_TEST_KAFKA_BROKERS"); env != "" {
		return strings.Split(env, ","), "EVENTBUS_TEST_KAFKA_BROKERS", func() {}
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(func(network, _ string) (net.Listener, error) {
		return net.Listen(network, "127.0.0.1:0")
	}))
	if err != nil {
		fatal(err)
	}
	return c.ListenAddrs(), "kfake (in-process)", c.Close
}

func saramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = kafkatransport.DefaultVersion
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	return c
}

func createTopic(brokers []string, topic string) error {
	admin, err := sarama.NewClusterAdmin(brokers, saramaConfig())
	if err != nil {
		return err
	}
	defer admin.Close()
	return admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: int32(*partitions), ReplicationFactor: 1}, false)
}

func rawSync(brokers []string, topic string, payload []byte, per int) (int, time.Duration, error) {
	p, err := sarama.NewSyncProducer(brokers, saramaConfig())
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	start := time.Now()
	for i := 0; i < *n; i += per {
		msgs := make([]*sarama.ProducerMessage, 0, per)
		for j := i; j < min(i+per, *n); j++ {
			msgs = append(msgs, &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(fmt.Sprint(j)), Value: sarama.ByteEncoder(payload)})
		}
		if per == 1 {
			_, _, err = p.SendMessage(msgs[0])
		} else {
			err = p.SendMessages(msgs)
		}
		if err != nil {
			return 0, 0, err
		}
	}
	return *n, time.Since(start), nil
}

func rawAsync(brokers []string, topic string, payload []byte) (int, time.Duration, error) {
	p, err := sarama.NewAsyncProducer(brokers, saramaConfig())
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		for i := 0; i < *n; i++ {
			select {
			case <-p.Successes():
			case e := <-p.Errors():
				done <- e
				return
			}
		}
		done <- nil
	}()
	for i := 0; i < *n; i++ {
		p.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(fmt.Sprint(i)), Value: sarama.ByteEncoder(payload)}
	}
	err = <-done
	d := time.Since(start)
	p.AsyncClose()
	for range p.Successes() {
	}
	return *n, d, err
}

func wkPublish(brokers []string, topic string, payload []byte) (int, time.Duration, error) {
	cfg := wkafka.DefaultSaramaSyncPublisherConfig()
	cfg.Version = kafkatransport.DefaultVersion // kfake: consumer groups need <= 2.3
	p, err := wkafka.NewPublisher(wkafka.PublisherConfig{Brokers: brokers, Marshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: cfg}, nil)
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	start := time.Now()
	for i := 0; i < *n; i++ {
		if err := p.Publish(topic, message.NewMessage(fmt.Sprint(i), payload)); err != nil {
			return 0, 0, err
		}
	}
	return *n, time.Since(start), nil
}

func openBus(url string) (*eventbus.Bus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return eventbus.New(ctx, eventbus.Config{ServiceName: "bench", URL: url, Logger: slog.New(slog.DiscardHandler)})
}

func benchEvents(payload []byte, from, to int) []eventbus.Event {
	evs := make([]eventbus.Event, 0, to-from)
	for i := from; i < to; i++ {
		evs = append(evs, eventbus.Event{Name: "bench.item", Type: eventbus.Domain, PartitionKey: fmt.Sprint(i), Data: payload})
	}
	return evs
}

func busPublish(url string, payload []byte, per int) (int, time.Duration, error) {
	b, err := openBus(url)
	if err != nil {
		return 0, 0, err
	}
	defer b.Close(context.Background())
	// The first Publish creates the topic; do not time that.
	if err := b.Publish(context.Background(), benchEvents(payload, 0, 1)...); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	for i := 1; i < *n; i += per {
		if err := b.Publish(context.Background(), benchEvents(payload, i, min(i+per, *n))...); err != nil {
			return 0, 0, err
		}
	}
	return *n - 1, time.Since(start), nil
}

func busPublishParallel(url string, payload []byte, goroutines int) (int, time.Duration, error) {
	b, err := openBus(url)
	if err != nil {
		return 0, 0, err
	}
	defer b.Close(context.Background())
	if err := b.Publish(context.Background(), benchEvents(payload, 0, 1)...); err != nil {
		return 0, 0, err
	}
	var next atomic.Int64
	errs := make(chan error, goroutines)
	start := time.Now()
	for range goroutines {
		go func() {
			for {
				i := int(next.Add(1))
				if i >= *n {
					errs <- nil
					return
				}
				if err := b.Publish(context.Background(), benchEvents(payload, i, i+1)...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range goroutines {
		if err := <-errs; err != nil {
			return 0, 0, err
		}
	}
	return *n - 1, time.Since(start), nil
}

// clock measures from the first message received to the last, so that
// joining the group is not counted.
type clock struct {
	count atomic.Int64
	first atomic.Int64
	done  chan struct{}
	want  int64
}

func newClock(want int) *clock { return &clock{done: make(chan struct{}), want: int64(want)} }

func (c *clock) tick() {
	c.first.CompareAndSwap(0, time.Now().UnixNano())
	if c.count.Add(1) == c.want {
		close(c.done)
	}
}

func (c *clock) wait() (int, time.Duration, error) {
	select {
	case <-c.done:
	case <-time.After(2 * time.Minute):
		return 0, 0, fmt.Errorf("only %d of %d messages arrived", c.count.Load(), c.want)
	}
	// Rate over the messages after the first, between first and last.
	return int(c.want) - 1, time.Since(time.Unix(0, c.first.Load())), nil
}

type groupHandler struct{ c *clock }

func (groupHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h groupHandler) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		s.MarkMessage(m, "")
		h.c.tick()
	}
	return nil
}

func rawConsume(brokers []string, topic string) (int, time.Duration, error) {
	g, err := sarama.NewConsumerGroup(brokers, unique("raw"), saramaConfig())
	if err != nil {
		return 0, 0, err
	}
	defer g.Close()
	c := newClock(*n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if err := g.Consume(ctx, []string{topic}, groupHandler{c}); err != nil {
				return
			}
		}
	}()
	return c.wait()
}

func wkConsume(brokers []string, topic string) (int, time.Duration, error) {
	cfg := wkafka.DefaultSaramaSubscriberConfig()
	cfg.Version = kafkatransport.DefaultVersion
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest // the default (newest) would miss them all
	s, err := wkafka.NewSubscriber(wkafka.SubscriberConfig{Brokers: brokers, Unmarshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: cfg, ConsumerGroup: unique("wk")}, nil)
	if err != nil {
		return 0, 0, err
	}
	defer s.Close()
	ch, err := s.Subscribe(context.Background(), topic)
	if err != nil {
		return 0, 0, err
	}
	c := newClock(*n)
	go func() {
		for m := range ch {
			m.Ack()
			c.tick()
		}
	}()
	return c.wait()
}

func busConsume(url string, concurrency int) (int, time.Duration, error) {
	b, err := openBus(url)
	if err != nil {
		return 0, 0, err
	}
	defer b.Close(context.Background())
	c := newClock(*n)
	err = b.Subscribe("bench.#", func(ctx context.Context, ev eventbus.Event) error {
		c.tick()
		return nil
	}, eventbus.Concurrency(concurrency), eventbus.SubscriptionName(fmt.Sprintf("c%d", concurrency)))
	if err != nil {
		return 0, 0, err
	}
	if err := b.Start(context.Background()); err != nil {
		return 0, 0, err
	}
	return c.wait()
}

func transportConsume(url string, concurrency int) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: "bench", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, 0, err
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{
		Group: "bench.raw", Service: "bench", Subscription: "raw", Concurrency: concurrency,
		Pattern: "bench.#", Match: matcher("bench.#"),
	})
	if err != nil {
		return 0, 0, err
	}
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, "bench.#")
	if err != nil {
		return 0, 0, err
	}
	c := newClock(*n)
	go func() {
		for m := range ch {
			m.Ack()
			c.tick()
		}
	}()
	return c.wait()
}

// rawSyncLikeBus sends the records the bus sends (ten CloudEvents headers,
// key) with the bus's producer settings (idempotent, one request in
// flight), to separate the cost of the records from the bus's own.
func rawSyncLikeBus(brokers []string, topic string, payload []byte, per int) (int, time.Duration, error) {
	cfg := saramaConfig()
	cfg.Producer.Idempotent = true
	cfg.Net.MaxOpenRequests = 1
	p, err := sarama.NewSyncProducer(brokers, cfg)
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	start := time.Now()
	for i := 0; i < *n; i += per {
		msgs := make([]*sarama.ProducerMessage, 0, per)
		for j := i; j < min(i+per, *n); j++ {
			ev := driver.Envelope{ID: unique("id"), Name: "bench.item", Source: "bench", Type: "domain", Time: time.Now(), CorrelationID: "c", PartitionKey: fmt.Sprint(j), Data: payload}
			pm, _ := kafkatransport.Marshaler{}.Marshal(topic, driver.Encode(ev))
			msgs = append(msgs, pm)
		}
		if err := p.SendMessages(msgs); err != nil {
			return 0, 0, err
		}
	}
	return *n, time.Since(start), nil
}

// matcher returns the Match function of a pattern of the program's own,
// as the bus gives it to a transport.
func matcher(pattern string) func(name string) bool {
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		panic(err)
	}
	return p.Match
}
