// Command bench measures, in one run on one broker, persistent publishing
// with publisher confirms and consuming with a per-message ack for raw
// amqp091-go, watermill-amqp v2 and this project's RabbitMQ transport
// through the Bus API, and prints a table with ratios. Compare ratios from
// one run, not absolute numbers across runs: the broker and the machine
// are shared.
//
//	go run ./transports/amqp/bench [-url amqp://...] [-rounds 3] [-n 8000] [-n1 2000] [-wn 2000] [-batch 100] [-size 256] [-only bus|publish] [-cpuprofile file]
//
// Each round runs every scenario once; the table shows each scenario's
// best round, so that a burst of load from other processes on a shared
// machine does not decide a ratio. Each round starts with a different
// scenario, so that none always runs first (right after the previous
// round's queues were deleted) or last (after the others left their
// messages on the broker). The raw amqp091-go baseline publishes the same
// messages the bus sends (the CloudEvents headers and JSON body of
// eventbus.EncodeMessage, checked before each raw row), so the ratio
// measures the transport and the Bus, not the wire format. Both sides get
// their events made before the clock starts and turn each into a message
// while the clock runs, as an application publishing events must: the
// bus through Publish, the raw client by filling an amqp091.Publishing
// straight from the event's fields. A row with bare bodies is shown for
// reference, and so is raw amqp091-go publishing in the same batches as
// the single bus publisher (-batch, default 100), waiting for each batch's
// confirms as a Publish call that returns after its confirms must: the
// difference between that row and 1,000 confirms in flight is the cost of
// the batch size, not of the bus. For the same reason the last bus row
// publishes in calls of 1,000 events, as many confirms in flight as the
// baseline. Before its clock starts the bus publishes one event per pooled
// channel, as the raw baseline opens its channel before its clock starts.
//
// The "µs CPU/msg" column is the bench process's CPU time (user and
// system, all goroutines and the garbage collector) per message while the
// row was measured: the client's share of the work, which competes with
// the broker for the machine's cores. -only publish runs only the raw and
// bus single-publisher rows, for quick comparisons; -cpuprofile writes a
// profile whose samples carry the label scenario=raw, raw-batches, bus,
// ... (go tool pprof -tagfocus scenario=bus).
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
	neturl "net/url"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	busamqp "github.com/paissive/go-eventbus/transports/amqp"
)

type row struct {
	name string
	n    int
	d    time.Duration
	cpu  time.Duration // the bench process's CPU time (user + system) during d
}

func (r row) rate() float64 { return float64(r.n) / r.d.Seconds() }

// cpuPerMsg is the bench process's CPU time per message in microseconds:
// the client's share of the work, which competes with the broker for the
// machine's cores.
func (r row) cpuPerMsg() float64 { return float64(r.cpu.Microseconds()) / float64(r.n) }

// cpuTime returns the CPU time (user + system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clock measures one scenario's wall and CPU time.
type clock struct {
	start time.Time
	cpu   time.Duration
}

func startClock() clock { return clock{start: time.Now(), cpu: cpuTime()} }

// stop records the time since c started in r.
func (c clock) stop(r *row) {
	r.d = time.Since(c.start)
	r.cpu = cpuTime() - c.cpu
}

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
	// publishOnly limits the bus measurements to the single publisher.
	publishOnly bool
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
	only := flag.String("only", "", "run only the bus measurements (\"bus\"), or only raw and bus publishing in batches and raw publishing with 1000 confirms in flight (\"publish\")")
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
	switch *only {
	case "", "bus":
	case "publish":
		bn.publishOnly = true
	default:
		log.Fatalf("bench: -only=%q: want bus or publish", *only)
	}
	rawBatchName = fmt.Sprintf("raw amqp091-go publish, batches of %d, wait each batch", bn.batch)
	busPubName = fmt.Sprintf("bus publish, 1 publisher, batches of %d", bn.batch)
	conn, err := amqp091.Dial(*url)
	if err != nil {
		log.Fatalf("bench: cannot connect to %s: %v", driver.RedactURL(*url), err)
	}
	defer conn.Close()
	if bn.admin, err = conn.Channel(); err != nil {
		log.Fatal(err)
	}
	defer bn.cleanup()

	best := map[string]row{}
	add := func(r row, err error) {
		if err != nil {
			bn.cleanup()
			log.Fatalf("bench: %s: %v", r.name, err)
		}
		fmt.Fprintf(os.Stderr, "  %-56s %8.0f msg/s %6.1f µs CPU/msg\n", r.name, r.rate(), r.cpuPerMsg())
		if b, ok := best[r.name]; !ok || r.rate() > b.rate() {
			best[r.name] = r
		}
	}
	// The scenarios run in groups (a consume drains what the publish
	// before it stored), and each round starts at the next group, so that
	// no scenario always runs first, right after the previous round's
	// queues were deleted, or last, after the others left their messages
	// on the broker.
	type group struct {
		label string
		run   func(sfx string) ([]row, error)
	}
	one := func(f func(sfx string) (row, error)) func(string) ([]row, error) {
		return func(sfx string) ([]row, error) {
			r, err := f(sfx)
			return []row{r}, err
		}
	}
	rawGroup := group{"raw", func(sfx string) ([]row, error) {
		p, err := bn.rawPublish(*n, sfx, true)
		if err != nil || bn.publishOnly {
			return []row{p}, err
		}
		c, err := bn.rawConsume(*n, sfx)
		return []row{p, c}, err
	}}
	rawBatchGroup := group{"raw-batches", one(func(sfx string) (row, error) { return bn.rawPublishBatches(*n, sfx) })}
	busGroup := group{"bus", func(sfx string) ([]row, error) { return bn.busAll(*n, *n1, sfx) }}
	var groups []group
	switch *only {
	case "bus":
		groups = []group{busGroup}
	case "publish":
		groups = []group{rawGroup, rawBatchGroup, busGroup}
	default:
		groups = []group{
			rawGroup,
			{"raw-bare", one(func(sfx string) (row, error) { return bn.rawPublish(*n, sfx+"b", false) })},
			rawBatchGroup,
			{"watermill", func(sfx string) ([]row, error) {
				p, err := bn.watermillPublish(*wn, sfx)
				if err != nil {
					return []row{p}, err
				}
				c, err := bn.watermillConsume(*wn, sfx)
				return []row{p, c}, err
			}},
			busGroup,
		}
	}
	fmt.Fprintf(os.Stderr, "bench on %s, %d-byte payloads, %d round(s)\n", driver.RedactURL(*url), *size, *rounds)
	for round := 1; round <= *rounds; round++ {
		fmt.Fprintf(os.Stderr, "round %d\n", round)
		sfx := strconv.Itoa(round)
		for k := range groups {
			g := groups[(round-1+k)%len(groups)]
			var rs []row
			// The label scenario=<group> lets -cpuprofile output be split
			// by scenario (go tool pprof -tagfocus scenario=bus); the
			// goroutines a scenario starts inherit it.
			pprof.Do(context.Background(), pprof.Labels("scenario", g.label), func(context.Context) {
				rs, err = g.run(sfx)
			})
			if err != nil {
				name := g.label
				if len(rs) > 0 && rs[len(rs)-1].name != "" {
					name = rs[len(rs)-1].name
				}
				add(row{name: name}, err)
			}
			for _, r := range rs {
				add(r, nil)
			}
		}
		bn.cleanup()
	}
	if *only == "bus" {
		return
	}
	var order []string
	for _, name := range []string{rawPubName, rawConName, rawBareName, rawBatchName, wmPubName, wmConName, busPubName, bus16Name, busC1Name, busC16Name, busRefName} {
		if _, ok := best[name]; ok {
			order = append(order, name)
		}
	}
	rows := make([]row, 0, len(order))
	for _, name := range order {
		rows = append(rows, best[name])
	}
	rawPub, rawCon, wmPub := best[rawPubName], best[rawConName], best[wmPubName]
	busPub, busC16 := best[busPubName], best[busC16Name]
	fmt.Println()
	fmt.Printf("best of %d round(s), %d-byte payloads, every message persistent; publishes confirmed, deliveries acked one by one\n\n", *rounds, *size)
	fmt.Printf("| %-58s | %7s | %8s | %8s | %11s | %-46s |\n", "scenario", "msgs", "seconds", "msg/s", "µs CPU/msg", "ratio")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 60), strings.Repeat("-", 9), strings.Repeat("-", 10), strings.Repeat("-", 10), strings.Repeat("-", 13), strings.Repeat("-", 48))
	ratio := func(r row) string {
		switch r.name {
		case rawPubName, rawConName:
			return "1 (baseline)"
		case busPubName:
			if bn.publishOnly {
				return fmt.Sprintf("%.2f× raw (%.2f× raw batches)", r.rate()/rawPub.rate(), r.rate()/best[rawBatchName].rate())
			}
			return fmt.Sprintf("%.2f× raw (%.2f× raw batches), %.1f× watermill", r.rate()/rawPub.rate(), r.rate()/best[rawBatchName].rate(), r.rate()/wmPub.rate())
		case bus16Name:
			return fmt.Sprintf("%.2f× raw, %.1f× watermill", r.rate()/rawPub.rate(), r.rate()/wmPub.rate())
		case busC1Name, busC16Name, wmConName:
			return fmt.Sprintf("%.2f× raw consume", r.rate()/rawCon.rate())
		}
		return fmt.Sprintf("%.2f× raw", r.rate()/rawPub.rate())
	}
	for _, r := range rows {
		fmt.Printf("| %-58s | %7d | %8.2f | %8.0f | %11.1f | %-46s |\n", r.name, r.n, r.d.Seconds(), r.rate(), r.cpuPerMsg(), ratio(r))
	}
	fmt.Println()
	if bn.publishOnly {
		fmt.Printf("bus publish (batches of %d) / raw publish: %.2f; / raw batches: %.2f\n", bn.batch, busPub.rate()/rawPub.rate(), busPub.rate()/best[rawBatchName].rate())
		return
	}
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
	busRefName  = "bus publish, 1 publisher, batches of 1000 (reference)"
)

// rawPublish publishes n persistent messages on one confirm-mode channel
// with up to 1,000 confirms outstanding: the bus's wire messages when same
// is true, bare bodies otherwise.
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
	// The events are created before the clock starts, as the bus's are;
	// each message is built from its event when it is published, as a
	// client publishing events must, and as the bus does.
	evs := make([]eventbus.Event, n)
	for i := range evs {
		ev, err := eventbus.NewEvent("raw.event", json.RawMessage(bn.payload), eventbus.WithSource("bench"))
		if err != nil {
			return r, err
		}
		ev.CorrelationID = ev.ID // as Bus.Publish sets it
		evs[i] = ev
	}
	if same {
		if err := sameWire(evs[0], rawMessage(evs[0], true)); err != nil {
			return r, err
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
	clk := startClock()
	for i := 0; i < n; i++ {
		window <- struct{}{}
		if err := ch.Publish(ex, "raw.event", true, false, rawMessage(evs[i], same)); err != nil {
			return r, err
		}
		if batch > 0 && ((i+1)%batch == 0 || i+1 == n) {
			<-batchDone
		}
	}
	<-done
	clk.stop(&r)
	if nacks.Load() > 0 {
		return r, fmt.Errorf("%d nacks", nacks.Load())
	}
	return r, nil
}

// rawMessage builds the publishing a raw amqp091-go client sends for ev:
// with same, the headers and properties of the bus's wire format, built
// directly from the event's fields; otherwise only the body.
func rawMessage(ev eventbus.Event, same bool) amqp091.Publishing {
	pub := amqp091.Publishing{DeliveryMode: amqp091.Persistent, ContentType: "application/json", Body: ev.Data}
	if same {
		pub.Headers = amqp091.Table{
			driver.HeaderSpecVersion:   "1.0",
			driver.HeaderID:            ev.ID,
			driver.HeaderSource:        ev.Source,
			driver.HeaderType:          ev.Name,
			driver.HeaderTime:          ev.Time.UTC().Format(time.RFC3339Nano),
			driver.HeaderEventType:     ev.Type.String(),
			driver.HeaderContentType:   "application/json",
			driver.HeaderCorrelationID: ev.CorrelationID,
		}
		pub.MessageId, pub.CorrelationId, pub.Timestamp = ev.ID, ev.CorrelationID, ev.Time
	}
	return pub
}

// sameWire checks that pub carries exactly the headers the bus sends for
// ev, so that the raw baseline publishes the bus's messages.
func sameWire(ev eventbus.Event, pub amqp091.Publishing) error {
	md := driver.Encode(driver.Envelope{
		ID: ev.ID, Name: ev.Name, Source: ev.Source, Type: ev.Type.String(), Time: ev.Time,
		CorrelationID: ev.CorrelationID, PartitionKey: ev.PartitionKey, Metadata: ev.Metadata, Data: ev.Data,
	}).Metadata
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
	clk := startClock()
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
	clk.stop(&r)
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
	clk := startClock()
	for i := 0; i < n; i += 100 {
		msgs := make([]*message.Message, 0, 100)
		for j := i; j < min(i+100, n); j++ {
			msgs = append(msgs, message.NewMessage(watermill.NewUUID(), bn.payload))
		}
		if err := pub.Publish(topic, msgs...); err != nil {
			return r, err
		}
	}
	clk.stop(&r)
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
	clk := startClock()
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
	clk.stop(&r)
	return r, nil
}

// busAll measures the Bus: publishing n events in batches (-batch) from
// one goroutine, n single events from 16 goroutines, consuming them at
// concurrency 16 and (n1 of them) at concurrency 1, and, for reference, n
// events in Publish calls of 1,000, as many as the raw baseline keeps in
// flight. With -only publish, only the single publisher's rows.
func (bn *bench) busAll(n, n1 int, sfx string) (rows []row, err error) {
	cur := row{name: busPubName, n: n}
	defer func() {
		if err != nil {
			rows = append(rows, row{name: cur.name})
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
	for _, b := range []struct{ queue, key string }{
		{"c16", "bench.batch"}, {"c1", "bench.single"}, {"ref", "bench.ref"}, {"warmup", "bench.warmup"},
	} {
		if err = bn.topic(exchange, "topic", svc+"."+b.queue, b.key); err != nil {
			return
		}
	}
	p, err := eventbus.New(ctx, eventbus.Config{ServiceName: bn.name("pub"), URL: url, Logger: quiet})
	if err != nil {
		return
	}
	defer p.Close(ctx)
	// Events are created before the clock starts, as the raw baseline's
	// messages are; Publish still validates and encodes them.
	data := json.RawMessage(bn.payload)
	mk := func(name string, n int) []eventbus.Event {
		evs := make([]eventbus.Event, n)
		for i := range evs {
			evs[i], err = eventbus.NewEvent(name, data, eventbus.WithSource("bench"))
			if err != nil {
				panic(err)
			}
		}
		return evs
	}
	// The raw baseline opens its channel and puts it in confirm mode
	// before its clock starts; the bus opens its pooled publishing
	// channels on first use, so one Publish per channel opens them first.
	for _, ev := range mk("bench.warmup", bn.publishChannels()) {
		if err = p.Publish(ctx, ev); err != nil {
			return
		}
	}
	batches := func(r *row, evs []eventbus.Event, size int) error {
		clk := startClock()
		for i := 0; i < len(evs); i += size {
			if err := p.Publish(ctx, evs[i:min(i+size, len(evs))]...); err != nil {
				return err
			}
		}
		clk.stop(r)
		return nil
	}
	batchEvs := mk("bench.batch", n)
	if err = batches(&cur, batchEvs, bn.batch); err != nil {
		return
	}
	rows = append(rows, cur)

	if !bn.publishOnly {
		cur = row{name: bus16Name, n: n}
		singleEvs := mk("bench.single", n)
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		clk := startClock()
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
		clk.stop(&cur)
		close(errs)
		if err = <-errs; err != nil {
			return
		}
		rows = append(rows, cur)

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
			clk := startClock()
			if err := b.Start(ctx); err != nil {
				return err
			}
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				return fmt.Errorf("%s: only %d of %d handled", r.name, count.Load(), target)
			}
			clk.stop(r)
			return nil
		}
		cur = row{name: busC16Name, n: n}
		if err = consume(&cur, "c16", "bench.batch", 16); err != nil {
			return
		}
		rows = append(rows, cur)
		cur = row{name: busC1Name, n: n1}
		if err = consume(&cur, "c1", "bench.single", 1); err != nil {
			return
		}
		rows = append(rows, cur)
	}

	// Last, so that its queue does not hold n more messages while the
	// other rows are measured.
	cur = row{name: busRefName, n: n}
	if err = batches(&cur, mk("bench.ref", n), 1000); err != nil {
		return
	}
	rows = append(rows, cur)
	return rows, nil
}

// publishChannels is the size of the bus's pool of publishing channels.
func (bn *bench) publishChannels() int {
	q, err := neturl.ParseQuery(bn.busParams)
	if err == nil {
		if n, err := strconv.Atoi(q.Get("publish_channels")); err == nil && n > 0 {
			return n
		}
	}
	return busamqp.DefaultPublishChannels
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}
