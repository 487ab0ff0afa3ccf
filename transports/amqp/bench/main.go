// Command bench measures, in one run on one broker, persistent publishing
// with publisher confirms and consuming with a per-message ack for raw
// amqp091-go, watermill-amqp v2 and this project's RabbitMQ transport
// through the Bus API, and prints a table with ratios. Compare ratios from
// one run, not absolute numbers across runs: the broker and the machine
// are shared.
//
//	go run ./transports/amqp/bench [-url amqp://...] [-rounds 3] [-n 8000] [-n1 2000] [-wn 2000] [-batch 100] [-size 256]
//
// Each round runs every scenario once, in turn; the table shows each
// scenario's best round, so that a burst of load from other processes on
// a shared machine does not decide a ratio. The raw amqp091-go baseline
// publishes the same messages the bus sends (the CloudEvents headers and
// JSON body of eventbus.EncodeMessage), so the ratio measures the
// transport and the Bus, not the wire format; a row with bare bodies is
// shown for reference, and so is raw amqp091-go publishing in the same
// batches as the single bus publisher (-batch, default 100), waiting for
// each batch's confirms as a Publish call that returns after its confirms
// must: the difference between that row and 1,000 confirms in flight is
// the cost of the batch size, not of the bus.
//
// The URL defaults to EVENTBUS_TEST_AMQP_URL, else the local broker. Every
// exchange and queue the run declares is deleted at the end.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	_ "github.com/paissive/go-eventbus/transports/amqp"
)

type row struct {
	name string
	n    int
	d    time.Duration
}

func (r row) rate() float64 { return float64(r.n) / r.d.Seconds() }

type bench struct {
	url     string
	size    int
	id      string
	admin   *amqp091.Channel
	queues  []string
	exchs   []string
	payload []byte
	// busParams are extra URL parameters for the bus (e.g.
	// publish_channels=8).
	busParams string
	batch     int // events per Publish in the "batches" scenarios
}

func main() {
	defURL := os.Getenv("EVENTBUS_TEST_AMQP_URL")
	if defURL == "" {
		defURL = "amqp://guest:guest@127.0.0.1:5672/"
	}
	url := flag.String("url", defURL, "broker URL")
	rounds := flag.Int("rounds", 3, "rounds; each scenario reports its best round")
	n := flag.Int("n", 8000, "messages per raw and bus measurement")
	n1 := flag.Int("n1", 2000, "messages for the bus consumer at concurrency 1")
	wn := flag.Int("wn", 2000, "messages for watermill-amqp (it confirms one at a time)")
	size := flag.Int("size", 256, "payload bytes")
	only := flag.String("only", "", "run only the bus measurements (\"bus\")")
	batch := flag.Int("batch", 100, "events per Publish call in the single-publisher scenarios")
	busParams := flag.String("bus-params", "", "extra URL query parameters for the bus, e.g. publish_channels=8")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	log.SetFlags(0)

	var b [4]byte
	_, _ = rand.Read(b[:])
	bn := &bench{url: *url, size: *size, id: hex.EncodeToString(b[:])}
	bn.payload = jsonPayload(*size)
	bn.busParams = *busParams
	bn.batch = max(*batch, 1)
	rawBatchName = fmt.Sprintf("raw amqp091-go publish, batches of %d, wait each batch", bn.batch)
	busPubName = fmt.Sprintf("bus publish, 1 publisher, batches of %d", bn.batch)
	conn, err := amqp091.Dial(*url)
	if err != nil {
		log.Fatalf("bench: cannot connect to %s: %v", eventbus.RedactURL(*url), err)
	}
	defer conn.Close()
	if bn.admin, err = conn.Channel(); err != nil {
		log.Fatal(err)
	}
	defer bn.cleanup()

	best := map[string]row{}
	var order []string
	add := func(r row, err error) {
		if err != nil {
			bn.cleanup()
			log.Fatalf("bench: %s: %v", r.name, err)
		}
		fmt.Fprintf(os.Stderr, "  %-56s %8.0f msg/s\n", r.name, r.rate())
		b, ok := best[r.name]
		if !ok {
			order = append(order, r.name)
		}
		if !ok || r.rate() > b.rate() {
			best[r.name] = r
		}
	}
	fmt.Fprintf(os.Stderr, "bench on %s, %d-byte payloads, %d round(s)\n", eventbus.RedactURL(*url), *size, *rounds)
	for round := 1; round <= *rounds; round++ {
		fmt.Fprintf(os.Stderr, "round %d\n", round)
		sfx := strconv.Itoa(round)
		if *only != "bus" {
			add(bn.rawPublish(*n, sfx, true))
			add(bn.rawConsume(*n, sfx))
			add(bn.rawPublish(*n, sfx+"b", false))
			add(bn.rawPublishBatches(*n, sfx))
			add(bn.watermillPublish(*wn, sfx))
			add(bn.watermillConsume(*wn, sfx))
		}
		rs, err := bn.busAll(*n, *n1, sfx)
		for _, r := range rs {
			add(r, err)
		}
		if err != nil {
			add(row{name: "bus"}, err)
		}
		bn.cleanup()
	}
	if *only == "bus" {
		return
	}
	rows := make([]row, 0, len(order))
	for _, name := range order {
		rows = append(rows, best[name])
	}
	rawPub, rawCon, wmPub := best[rawPubName], best[rawConName], best[wmPubName]
	busPub, busC16 := best[busPubName], best[busC16Name]
	fmt.Println()
	fmt.Printf("best of %d round(s), %d-byte payloads, every message persistent; publishes confirmed, deliveries acked one by one\n\n", *rounds, *size)
	fmt.Printf("| %-58s | %7s | %8s | %8s | %-46s |\n", "scenario", "msgs", "seconds", "msg/s", "ratio")
	fmt.Printf("|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 60), strings.Repeat("-", 9), strings.Repeat("-", 10), strings.Repeat("-", 10), strings.Repeat("-", 48))
	ratio := func(r row) string {
		switch r.name {
		case rawPubName, rawConName:
			return "1 (baseline)"
		case busPubName:
			return fmt.Sprintf("%.2f× raw (%.2f× raw batches), %.1f× watermill", r.rate()/rawPub.rate(), r.rate()/best[rawBatchName].rate(), r.rate()/wmPub.rate())
		case bus16Name:
			return fmt.Sprintf("%.2f× raw, %.1f× watermill", r.rate()/rawPub.rate(), r.rate()/wmPub.rate())
		case busC1Name, busC16Name, wmConName:
			return fmt.Sprintf("%.2f× raw consume", r.rate()/rawCon.rate())
		}
		return fmt.Sprintf("%.2f× raw", r.rate()/rawPub.rate())
	}
	for _, r := range rows {
		fmt.Printf("| %-58s | %7d | %8.2f | %8.0f | %-46s |\n", r.name, r.n, r.d.Seconds(), r.rate(), ratio(r))
	}
	fmt.Println()
	check := func(what string, got, want float64) {
		verdict := "met"
		if got < want {
			verdict = "MISSED"
		}
		fmt.Printf("target: %-56s %6.2f (want >= %g): %s\n", what, got, want, verdict)
	}
	check(fmt.Sprintf("bus publish (batches of %d) / raw publish", bn.batch), busPub.rate()/rawPub.rate(), 0.8)
	check(fmt.Sprintf("bus publish (batches of %d) / watermill-amqp publish", bn.batch), busPub.rate()/wmPub.rate(), 20)
	check("bus consume at concurrency 16 / raw consume", busC16.rate()/rawCon.rate(), 0.8)
}

func jsonPayload(size int) []byte {
	pad := size - len(`{"p":""}`)
	if pad < 0 {
		pad = 0
	}
	b, _ := json.Marshal(map[string]string{"p": strings.Repeat("x", pad)})
	return b
}

func (bn *bench) name(s string) string { return "bench-" + bn.id + "-" + s }

// topic declares a durable topic exchange with one durable queue bound
// with key.
func (bn *bench) topic(exchange, kind, queue, key string) error {
	if err := bn.admin.ExchangeDeclare(exchange, kind, true, false, false, false, nil); err != nil {
		return err
	}
	bn.exchs = append(bn.exchs, exchange)
	if _, err := bn.admin.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		return err
	}
	bn.queues = append(bn.queues, queue)
	return bn.admin.QueueBind(queue, key, exchange, false, nil)
}

func (bn *bench) cleanup() {
	for _, q := range bn.queues {
		_, _ = bn.admin.QueueDelete(q, false, false, false)
	}
	for _, e := range bn.exchs {
		_ = bn.admin.ExchangeDelete(e, false, false)
	}
	bn.queues, bn.exchs = nil, nil
}

// The batch size of the "batches" scenarios is a flag, so these two
// names are set in main.
var (
	rawBatchName = "raw amqp091-go publish, batches of 100, wait each batch"
	busPubName   = "bus publish, 1 publisher, batches of 100"
)

const (
	rawPubName  = "raw amqp091-go publish, 1000 confirms in flight"
	rawBareName = "raw amqp091-go publish, 1000 in flight, bare bodies"
	rawConName  = "raw amqp091-go consume, prefetch 200, ack each"
	wmPubName   = "watermill-amqp v2 publish, ConfirmDelivery, pool 4"
	wmConName   = "watermill-amqp v2 consume, prefetch 100, ack each"
	bus16Name   = "bus publish, 16 publishers, single events"
	busC1Name   = "bus consume, concurrency 1"
	busC16Name  = "bus consume, concurrency 16"
)

// rawPublish publishes n persistent messages on one confirm-mode channel
// with up to 1,000 confirms outstanding: the bus's wire messages
// (encoded before the clock starts) when same is true, bare bodies
// otherwise.
func (bn *bench) rawPublish(n int, sfx string, same bool) (row, error) {
	r := row{name: rawPubName, n: n}
	if !same {
		r.name = rawBareName
	}
	return bn.rawPublishing(r, sfx, same, 0)
}

// rawPublishBatches publishes the bus's wire messages raw in batches of
// 100, waiting for each batch's confirms before sending the next: what
// one Bus.Publish call of 100 events must do, without the bus.
func (bn *bench) rawPublishBatches(n int, sfx string) (row, error) {
	return bn.rawPublishing(row{name: rawBatchName, n: n}, sfx+"c", true, bn.batch)
}

func (bn *bench) rawPublishing(r row, sfx string, same bool, batch int) (row, error) {
	n := r.n
	ex, q := bn.name("raw"+sfx), bn.name("raw-q"+sfx)
	if err := bn.topic(ex, "topic", q, "raw.#"); err != nil {
		return r, err
	}
	pubs := make([]amqp091.Publishing, n)
	for i := range pubs {
		pubs[i] = amqp091.Publishing{DeliveryMode: amqp091.Persistent, ContentType: "application/json", Body: bn.payload}
		if same {
			ev, err := eventbus.NewEvent("raw.event", "bench", eventbus.Domain, json.RawMessage(bn.payload))
			if err != nil {
				return r, err
			}
			m := eventbus.EncodeMessage(ev)
			h := make(amqp091.Table, len(m.Metadata))
			for k, v := range m.Metadata {
				h[k] = v
			}
			pubs[i].Headers, pubs[i].MessageId, pubs[i].CorrelationId, pubs[i].Timestamp = h, ev.ID, ev.CorrelationID, ev.Time
		}
	}
	conn, err := amqp091.Dial(bn.url)
	if err != nil {
		return r, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return r, err
	}
	if err := ch.Confirm(false); err != nil {
		return r, err
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	size := 1000
	if batch > 0 {
		size = batch
	}
	window := make(chan struct{}, size)
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
			<-window
			if batch > 0 && (i%batch == 0 || i == n) {
				batchDone <- struct{}{}
			}
		}
	}()
	start := time.Now()
	for i := 0; i < n; i++ {
		window <- struct{}{}
		if err := ch.Publish(ex, "raw.event", true, false, pubs[i]); err != nil {
			return r, err
		}
		if batch > 0 && ((i+1)%batch == 0 || i+1 == n) {
			<-batchDone
		}
	}
	<-done
	r.d = time.Since(start)
	if nacks.Load() > 0 {
		return r, fmt.Errorf("%d nacks", nacks.Load())
	}
	return r, nil
}

// rawConsume drains the queue rawPublish filled with prefetch 200 and an
// ack per message.
func (bn *bench) rawConsume(n int, sfx string) (row, error) {
	r := row{name: rawConName, n: n}
	conn, err := amqp091.Dial(bn.url)
	if err != nil {
		return r, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return r, err
	}
	if err := ch.Qos(200, 0, false); err != nil {
		return r, err
	}
	start := time.Now()
	ds, err := ch.Consume(bn.name("raw-q"+sfx), "", false, false, false, false, nil)
	if err != nil {
		return r, err
	}
	for i := 0; i < n; i++ {
		d, ok := <-ds
		if !ok {
			return r, errors.New("consumer closed")
		}
		if err := d.Ack(false); err != nil {
			return r, err
		}
	}
	r.d = time.Since(start)
	return r, nil
}

func (bn *bench) watermillConfig(sfx string) wamqp.Config {
	cfg := wamqp.NewDurablePubSubConfig(bn.url, wamqp.GenerateQueueNameConstant(bn.name("wm-q"+sfx)))
	cfg.Publish.ConfirmDelivery = true
	cfg.Publish.ChannelPoolSize = 4
	cfg.Consume.Qos.PrefetchCount = 100
	return cfg
}

// watermillPublish publishes n messages through watermill-amqp's publisher
// with ConfirmDelivery and a pool of 4 channels, in Publish calls of 100.
func (bn *bench) watermillPublish(n int, sfx string) (row, error) {
	r := row{name: wmPubName, n: n}
	logger := watermill.NopLogger{}
	cfg := bn.watermillConfig(sfx)
	topic := bn.name("wm" + sfx)
	bn.exchs = append(bn.exchs, topic)
	bn.queues = append(bn.queues, bn.name("wm-q"+sfx))
	sub, err := wamqp.NewSubscriber(cfg, logger)
	if err != nil {
		return r, err
	}
	defer sub.Close()
	if err := sub.SubscribeInitialize(topic); err != nil {
		return r, err
	}
	pub, err := wamqp.NewPublisher(cfg, logger)
	if err != nil {
		return r, err
	}
	defer pub.Close()
	start := time.Now()
	for i := 0; i < n; i += 100 {
		msgs := make([]*message.Message, 0, 100)
		for j := i; j < min(i+100, n); j++ {
			msgs = append(msgs, message.NewMessage(watermill.NewUUID(), bn.payload))
		}
		if err := pub.Publish(topic, msgs...); err != nil {
			return r, err
		}
	}
	r.d = time.Since(start)
	return r, nil
}

// watermillConsume drains that queue with watermill-amqp's subscriber
// (prefetch 100), acking each message.
func (bn *bench) watermillConsume(n int, sfx string) (row, error) {
	r := row{name: wmConName, n: n}
	sub, err := wamqp.NewSubscriber(bn.watermillConfig(sfx), watermill.NopLogger{})
	if err != nil {
		return r, err
	}
	defer sub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	msgs, err := sub.Subscribe(ctx, bn.name("wm"+sfx))
	if err != nil {
		return r, err
	}
	for i := 0; i < n; i++ {
		m, ok := <-msgs
		if !ok {
			return r, errors.New("subscription closed")
		}
		m.Ack()
	}
	r.d = time.Since(start)
	return r, nil
}

// busAll measures the Bus: publishing n events in batches of 100 from one
// goroutine, n single events from 16 goroutines, then consuming them at
// concurrency 16 and (n1 of them) at concurrency 1.
func (bn *bench) busAll(n, n1 int, sfx string) ([]row, error) {
	pub := row{name: busPubName, n: n}
	pub16 := row{name: bus16Name, n: n}
	c1 := row{name: busC1Name, n: n1}
	c16 := row{name: busC16Name, n: n}
	rows, err := bn.bus(&pub, &pub16, &c1, &c16, sfx)
	return rows, err
}

func (bn *bench) bus(pub, pub16, c1, c16 *row, sfx string) (rows []row, err error) {
	n := pub.n
	defer func() {
		if err == nil {
			rows = []row{*pub, *pub16, *c1, *c16}
		}
	}()
	exchange := bn.name("bus" + sfx)
	url := bn.url + sep(bn.url) + "exchange=" + exchange
	if bn.busParams != "" {
		url += "&" + bn.busParams
	}
	svc := bn.name("svc" + sfx)
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// The subscription queues exist before publishing (as they would in
	// production), so the published events are routed and stored; the
	// consumers start afterwards and drain them.
	if err = bn.topic(exchange, "topic", svc+".c16", "bench.batch"); err != nil {
		return
	}
	if err = bn.topic(exchange, "topic", svc+".c1", "bench.single"); err != nil {
		return
	}
	p, err := eventbus.New(ctx, eventbus.Config{ServiceName: bn.name("pub"), URL: url, Logger: quiet})
	if err != nil {
		return
	}
	defer p.Close(ctx)
	// Events are created before the clock starts, as the raw baseline's
	// messages are; Publish still validates and encodes them.
	data := json.RawMessage(bn.payload)
	mk := func(name string) []eventbus.Event {
		evs := make([]eventbus.Event, n)
		for i := range evs {
			evs[i], err = eventbus.NewEvent(name, "bench", eventbus.Domain, data)
			if err != nil {
				panic(err)
			}
		}
		return evs
	}
	batchEvs, singleEvs := mk("bench.batch"), mk("bench.single")

	start := time.Now()
	for i := 0; i < n; i += bn.batch {
		if err = p.Publish(ctx, batchEvs[i:min(i+bn.batch, n)]...); err != nil {
			return
		}
	}
	pub.d = time.Since(start)

	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	start = time.Now()
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if err := p.Publish(ctx, singleEvs[i-1]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	pub16.d = time.Since(start)
	close(errs)
	if err = <-errs; err != nil {
		return
	}

	consume := func(r *row, sub, pattern string, conc int) error {
		b, err := eventbus.New(ctx, eventbus.Config{ServiceName: svc, URL: url, Logger: quiet})
		if err != nil {
			return err
		}
		defer b.Close(ctx)
		var count atomic.Int64
		done := make(chan struct{})
		target := int64(r.n)
		if err := b.Subscribe(pattern, func(context.Context, eventbus.Event) error {
			if count.Add(1) == target {
				close(done)
			}
			return nil
		}, eventbus.SubscriptionName(sub), eventbus.Concurrency(conc)); err != nil {
			return err
		}
		start := time.Now()
		if err := b.Start(ctx); err != nil {
			return err
		}
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			return fmt.Errorf("%s: only %d of %d handled", r.name, count.Load(), target)
		}
		r.d = time.Since(start)
		return nil
	}
	if err = consume(c16, "c16", "bench.batch", 16); err != nil {
		return
	}
	err = consume(c1, "c1", "bench.single", 1)
	return
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}
