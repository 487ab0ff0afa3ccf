// Command bench measures, in one run on one NATS server, publishing to a
// JetStream stream with acknowledgements and consuming with a per-message
// ack, for raw nats.go (its jetstream package) and for this project's NATS
// transport through the Bus API, and prints a table with ratios. Compare
// ratios from one run, not absolute numbers across runs: the server and
// the machine are shared.
//
//	go run ./transports/nats/bench [-url nats://...] [-rounds 3] [-n 20000] [-n1 4000] [-batch 100] [-size 256] [-cpuprofile file]
//
// Each round runs every scenario once, on a fresh stream, and the table
// shows each scenario's best round, so that a burst of load from other
// processes on a shared machine does not decide a ratio; each round starts
// with a different group of scenarios, so that none always runs first.
//
// The raw baseline publishes the messages the bus sends (the CloudEvents
// headers and JSON body of driver.Encode, checked before the raw rows),
// built from the event's fields while the clock runs, as an application
// publishing events must; so the ratio measures the transport and the Bus,
// not the wire format. It publishes with nats.go's asynchronous publish in
// batches of -batch (default 100), waiting for each batch's
// acknowledgements before sending the next, as one Bus.Publish call of that
// many events must: that is the baseline of "bus publish, batches of 100".
// For reference it also publishes with up to 4,000 acknowledgements in
// flight and no batches (nats.go's default window), and the bus publishes
// in calls of 1,000 events. The bus sets a Nats-Msg-Id on every message,
// so that a retried publish is stored once, and so does the raw baseline;
// the server's tracking of those IDs costs it about a fifth of its publish
// throughput on nats-server 2.9 here, which the rows without them (raw
// without IDs, and the bus with ?dedup=false) show.
//
// Consuming: the raw baseline is a pull consumer (nats.go's Consume, which
// keeps up to 500 messages requested ahead) acking each message; the bus
// consumes the same number of events at concurrency 16 (the target is at
// least 0.8 of the baseline) and at concurrency 1, with a handler that
// does nothing. A row without the bus shows the transport's share: its
// subscriber at concurrency 16 (default prefetch) with 16 goroutines
// taking messages from its channel and acking each, as the bus's router
// and handlers would.
//
// The "µs CPU/msg" column is the bench process's CPU time (user and
// system, all goroutines and the garbage collector) per message while the
// row was measured: the client's share of the work, which competes with
// the server for the machine's cores.
//
// The URL defaults to EVENTBUS_TEST_NATS_URL, else the local server. Every
// stream the run creates is deleted at the end.
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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	_ "github.com/paissive/go-eventbus/transports/nats"
)

type row struct {
	name string
	n    int
	d    time.Duration
	cpu  time.Duration
}

func (r row) rate() float64 { return float64(r.n) / r.d.Seconds() }

func (r row) cpuPerMsg() float64 { return float64(r.cpu.Microseconds()) / float64(r.n) }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type clock struct {
	start time.Time
	cpu   time.Duration
}

func startClock() clock { return clock{start: time.Now(), cpu: cpuTime()} }

func (c clock) stop(r *row) {
	r.d = time.Since(c.start)
	r.cpu = cpuTime() - c.cpu
}

// The batch size is a flag, so these names are set in main.
var (
	rawBatchName     = "raw jetstream publish, async, batches of 100"
	rawBatchNoIDName = "raw jetstream publish, batches of 100, no IDs"
	busPubName       = "bus publish, 1 publisher, batches of 100"
	busPubNoIDName   = "bus publish, batches of 100, dedup=false"
)

const (
	rawWindowName = "raw jetstream publish, async, 4000 in flight"
	rawConName    = "raw jetstream pull consume (Consume), ack each"
	bus16Name     = "bus publish, 16 publishers, single events"
	busRefName    = "bus publish, 1 publisher, batches of 1000"
	busC16Name    = "bus consume, concurrency 16"
	trC16Name     = "transport subscriber alone, concurrency 16"
	busC1Name     = "bus consume, concurrency 1"
)

type bench struct {
	url     string
	id      string
	batch   int
	payload json.RawMessage
	nc      *nats.Conn
	js      jetstream.JetStream
	streams []string
}

func main() {
	defURL := os.Getenv("EVENTBUS_TEST_NATS_URL")
	if defURL == "" || defURL == "embedded" {
		defURL = "nats://127.0.0.1:4222"
	}
	url := flag.String("url", defURL, "server URL")
	rounds := flag.Int("rounds", 3, "rounds; each scenario reports its best round")
	n := flag.Int("n", 20000, "messages per raw and bus measurement")
	n1 := flag.Int("n1", 4000, "messages for the bus consumer at concurrency 1")
	size := flag.Int("size", 256, "payload bytes")
	batch := flag.Int("batch", 100, "events per Publish call (and per raw batch)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to this file")
	flag.Parse()
	log.SetFlags(0)
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
	var b [4]byte
	_, _ = rand.Read(b[:])
	bn := &bench{url: *url, id: hex.EncodeToString(b[:]), batch: max(*batch, 1), payload: jsonPayload(*size)}
	rawBatchName = fmt.Sprintf("raw jetstream publish, async, batches of %d", bn.batch)
	rawBatchNoIDName = fmt.Sprintf("raw jetstream publish, batches of %d, no IDs", bn.batch)
	busPubName = fmt.Sprintf("bus publish, 1 publisher, batches of %d", bn.batch)
	busPubNoIDName = fmt.Sprintf("bus publish, batches of %d, dedup=false", bn.batch)
	var err error
	if bn.nc, err = nats.Connect(*url); err != nil {
		log.Fatalf("bench: cannot connect to %s: %v", driver.RedactURL(*url), err)
	}
	defer bn.nc.Close()
	if bn.js, err = jetstream.New(bn.nc); err != nil {
		log.Fatal(err)
	}
	defer bn.cleanup()

	best := map[string]row{}
	add := func(r row) {
		fmt.Fprintf(os.Stderr, "  %-50s %8.0f msg/s %6.1f µs CPU/msg\n", r.name, r.rate(), r.cpuPerMsg())
		if b, ok := best[r.name]; !ok || r.rate() > b.rate() {
			best[r.name] = r
		}
	}
	type group struct {
		label string
		run   func(stream string) ([]row, error)
	}
	groups := []group{
		{"raw", func(s string) ([]row, error) { return bn.raw(s, *n) }},
		{"bus", func(s string) ([]row, error) { return bn.bus(s, *n, *n1) }},
	}
	fmt.Fprintf(os.Stderr, "bench on %s (nats-server %s), %d-byte payloads, %d round(s)\n", driver.RedactURL(*url), bn.nc.ConnectedServerVersion(), *size, *rounds)
	for round := 1; round <= *rounds; round++ {
		fmt.Fprintf(os.Stderr, "round %d\n", round)
		for k := range groups {
			g := groups[(round-1+k)%len(groups)]
			stream := fmt.Sprintf("bench-%s-%s%d", bn.id, g.label, round)
			var rs []row
			pprof.Do(context.Background(), pprof.Labels("scenario", g.label), func(context.Context) {
				rs, err = g.run(stream)
			})
			if err != nil {
				bn.cleanup()
				log.Fatalf("bench: %s: %v", g.label, err)
			}
			for _, r := range rs {
				add(r)
			}
		}
		bn.cleanup()
	}

	fmt.Println()
	fmt.Printf("nats-server %s; best of %d round(s), %d-byte payloads, file storage; publishes acknowledged by the stream, deliveries acked one by one\n\n", bn.nc.ConnectedServerVersion(), *rounds, *size)
	fmt.Printf("| %-50s | %7s | %8s | %8s | %11s | %-30s |\n", "scenario", "msgs", "seconds", "msg/s", "µs CPU/msg", "ratio")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 52), strings.Repeat("-", 9), strings.Repeat("-", 10), strings.Repeat("-", 10), strings.Repeat("-", 13), strings.Repeat("-", 32))
	rawBatch, rawCon := best[rawBatchName], best[rawConName]
	for _, name := range []string{rawBatchName, rawBatchNoIDName, rawWindowName, rawConName, busPubName, busPubNoIDName, bus16Name, busRefName, trC16Name, busC16Name, busC1Name} {
		r, ok := best[name]
		if !ok {
			continue
		}
		ratio := ""
		switch name {
		case rawBatchName, rawConName:
			ratio = "1 (baseline)"
		case rawBatchNoIDName, rawWindowName, busPubName, bus16Name, busRefName:
			ratio = fmt.Sprintf("%.2f× raw batches", r.rate()/rawBatch.rate())
		case busPubNoIDName:
			ratio = fmt.Sprintf("%.2f× raw batches without IDs", r.rate()/best[rawBatchNoIDName].rate())
		case busC16Name, busC1Name, trC16Name:
			ratio = fmt.Sprintf("%.2f× raw consume", r.rate()/rawCon.rate())
		}
		fmt.Printf("| %-50s | %7d | %8.2f | %8.0f | %11.1f | %-30s |\n", r.name, r.n, r.d.Seconds(), r.rate(), r.cpuPerMsg(), ratio)
	}
	fmt.Println()
	check := func(what string, got, want float64) {
		verdict := "met"
		if got < want {
			verdict = "MISSED"
		}
		fmt.Printf("target: %-58s %6.2f (want >= %g): %s\n", what, got, want, verdict)
	}
	check(fmt.Sprintf("bus publish (batches of %d) / raw async publish, same batches", bn.batch), best[busPubName].rate()/rawBatch.rate(), 0.8)
	check("the same, both without Nats-Msg-Id (dedup=false)", best[busPubNoIDName].rate()/best[rawBatchNoIDName].rate(), 0.8)
	check("bus consume at concurrency 16 / raw pull consume, ack each", best[busC16Name].rate()/rawCon.rate(), 0.8)
}

func jsonPayload(size int) json.RawMessage {
	pad := max(size-len(`{"p":""}`), 0)
	b, _ := json.Marshal(map[string]string{"p": strings.Repeat("x", pad)})
	return b
}

// createStream creates a stream as the transport does, recorded for
// cleanup.
func (bn *bench) createStream(name string) (jetstream.Stream, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := bn.js.CreateStream(ctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{name + ".>", name + "_large.>"},
		Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy,
	})
	if err == nil {
		bn.streams = append(bn.streams, name)
	}
	return s, err
}

func (bn *bench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range bn.streams {
		for _, name := range []string{s, s + "_poison"} {
			if err := bn.js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				log.Printf("bench: deleting stream %s: %v", name, err)
			}
		}
	}
	bn.streams = nil
}

// events makes n events of name, before any clock starts.
func (bn *bench) events(name string, n int) []eventbus.Event {
	evs := make([]eventbus.Event, n)
	for i := range evs {
		ev, err := eventbus.NewEvent(name, bn.payload, eventbus.WithSource("bench"))
		if err != nil {
			log.Fatal(err)
		}
		ev.CorrelationID = ev.ID // as Bus.Publish sets it
		evs[i] = ev
	}
	return evs
}

// rawMessage builds the message a raw client sends for ev: the bus's
// headers, filled straight from the event's fields, and with id a
// Nats-Msg-Id as the bus sets one (unless ?dedup=false).
func rawMessage(subject string, ev eventbus.Event, id bool) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: ev.Data, Header: nats.Header{
		driver.HeaderSpecVersion:   {"1.0"},
		driver.HeaderID:            {ev.ID},
		driver.HeaderSource:        {ev.Source},
		driver.HeaderType:          {ev.Name},
		driver.HeaderTime:          {ev.Time.UTC().Format(time.RFC3339Nano)},
		driver.HeaderEventType:     {ev.Type.String()},
		driver.HeaderContentType:   {"application/json"},
		driver.HeaderCorrelationID: {ev.CorrelationID},
	}}
	if id {
		m.Header[jetstream.MsgIDHeader] = []string{nuid.Next()}
	}
	return m
}

// sameWire checks that the raw message carries exactly the headers the bus
// sends for ev: the event's and a Nats-Msg-Id.
func sameWire(ev eventbus.Event, m *nats.Msg) error {
	md := driver.Encode(driver.Envelope{
		ID: ev.ID, Name: ev.Name, Source: ev.Source, Type: ev.Type.String(), Time: ev.Time,
		CorrelationID: ev.CorrelationID, Data: ev.Data,
	}).Metadata
	if m.Header.Get(jetstream.MsgIDHeader) == "" {
		return errors.New("raw message without a Nats-Msg-Id")
	}
	md[jetstream.MsgIDHeader] = m.Header.Get(jetstream.MsgIDHeader)
	if len(md) != len(m.Header) {
		return fmt.Errorf("raw headers %v differ from the bus's %v", m.Header, md)
	}
	for k, v := range md {
		if m.Header.Get(k) != v {
			return fmt.Errorf("raw header %s=%q differs from the bus's %q", k, m.Header.Get(k), v)
		}
	}
	return nil
}

// raw measures raw nats.go: publishing in batches, publishing with the
// default window, and consuming what the batches stored.
func (bn *bench) raw(stream string, n int) ([]row, error) {
	s, err := bn.createStream(stream)
	if err != nil {
		return nil, err
	}
	subject := stream + ".raw.event"
	evs := bn.events("raw.event", n)
	if err := sameWire(evs[0], rawMessage(subject, evs[0], true)); err != nil {
		return nil, err
	}
	js, err := jetstream.New(bn.nc)
	if err != nil {
		return nil, err
	}
	inBatches := func(r *row, subject string, evs []eventbus.Event, ids bool) error {
		clk := startClock()
		futs := make([]jetstream.PubAckFuture, 0, bn.batch)
		for i := 0; i < len(evs); i += bn.batch {
			futs = futs[:0]
			for _, ev := range evs[i:min(i+bn.batch, len(evs))] {
				f, err := js.PublishMsgAsync(rawMessage(subject, ev, ids))
				if err != nil {
					return err
				}
				futs = append(futs, f)
			}
			for _, f := range futs {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					return err
				}
			}
		}
		clk.stop(r)
		return nil
	}
	batches := row{name: rawBatchName, n: n}
	if err := inBatches(&batches, subject, evs, true); err != nil {
		return nil, err
	}
	noIDs := row{name: rawBatchNoIDName, n: n}
	if err := inBatches(&noIDs, stream+".raw.noid", bn.events("raw.noid", n), false); err != nil {
		return nil, err
	}

	window := row{name: rawWindowName, n: n}
	wevs := bn.events("raw.window", n)
	clk := startClock()
	for _, ev := range wevs {
		if _, err := js.PublishMsgAsync(rawMessage(stream+".raw.window", ev, true)); err != nil {
			return nil, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return nil, errors.New("raw window: acknowledgements missing")
	}
	clk.stop(&window)

	con := row{name: rawConName, n: n}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "raw", FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		return nil, err
	}
	var count atomic.Int64
	done := make(chan struct{})
	clk = startClock()
	cc, err := c.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if count.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		return nil, err
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		cc.Stop()
		return nil, fmt.Errorf("raw consume: %d of %d", count.Load(), n)
	}
	clk.stop(&con)
	cc.Stop()
	return []row{batches, noIDs, window, con}, nil
}

// bus measures the Bus: publishing in batches from one goroutine, single
// events from 16, and in calls of 1,000; consuming at concurrency 16 and 1.
func (bn *bench) bus(stream string, n, n1 int) (rows []row, err error) {
	if _, err := bn.createStream(stream); err != nil {
		return nil, err
	}
	url := bn.url + sep(bn.url) + "stream=" + stream
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := eventbus.New(ctx, eventbus.Config{ServiceName: "bench-pub", URL: url, Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer p.Close(ctx)
	// As the raw client has its connection and stream before its clock
	// starts, so does the bus: one event first.
	if err := p.Publish(ctx, bn.events("bench.warmup", 1)...); err != nil {
		return nil, err
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
	pub := row{name: busPubName, n: n}
	if err := batches(&pub, bn.events("bench.batch", n), bn.batch); err != nil {
		return nil, err
	}
	rows = append(rows, pub)

	pn, err := eventbus.New(ctx, eventbus.Config{ServiceName: "bench-pub", URL: url + "&dedup=false", Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer pn.Close(ctx)
	if err := pn.Publish(ctx, bn.events("bench.warmup", 1)...); err != nil {
		return nil, err
	}
	noID := row{name: busPubNoIDName, n: n}
	nevs := bn.events("bench.noid", n)
	clk0 := startClock()
	for i := 0; i < n; i += bn.batch {
		if err := pn.Publish(ctx, nevs[i:min(i+bn.batch, n)]...); err != nil {
			return nil, err
		}
	}
	clk0.stop(&noID)
	rows = append(rows, noID)

	single := row{name: bus16Name, n: n}
	evs := bn.events("bench.single", n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	clk := startClock()
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				if err := p.Publish(ctx, evs[i-1]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	clk.stop(&single)
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	rows = append(rows, single)

	ref := row{name: busRefName, n: n}
	if err := batches(&ref, bn.events("bench.ref", n), 1000); err != nil {
		return nil, err
	}
	rows = append(rows, ref)

	consume := func(r *row, sub, pattern string, conc int) error {
		b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "bench-sub", URL: url, Logger: quiet})
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
	tr := row{name: trC16Name, n: n}
	if err := bn.transportAlone(&tr, url, "bench.ref", 16); err != nil {
		return nil, err
	}
	rows = append(rows, tr)
	c16 := row{name: busC16Name, n: n}
	if err := consume(&c16, "c16", "bench.batch", 16); err != nil {
		return nil, err
	}
	rows = append(rows, c16)
	c1 := row{name: busC1Name, n: n1}
	if err := consume(&c1, "c1", "bench.single", 1); err != nil {
		return nil, err
	}
	rows = append(rows, c1)
	return rows, nil
}

// transportAlone consumes r.n events of the pattern through the
// transport's own subscriber, without the bus: conc goroutines take
// messages from its channel and ack each.
func (bn *bench) transportAlone(r *row, url, pattern string, conc int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: "bench-tr"})
	if err != nil {
		return err
	}
	defer tr.Close()
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		return err
	}
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{
		Group: "bench-tr.alone", Service: "bench-tr", Subscription: "alone", Pattern: pattern,
		Match: p.Match, Concurrency: conc,
	})
	if err != nil {
		return err
	}
	defer sub.Close()
	var count atomic.Int64
	done := make(chan struct{})
	clk := startClock()
	ch, err := sub.Subscribe(ctx, pattern)
	if err != nil {
		return err
	}
	for range conc {
		go func() {
			for m := range ch {
				m.Ack()
				if count.Add(1) == int64(r.n) {
					close(done)
				}
			}
		}()
	}
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("%s: only %d of %d", r.name, count.Load(), r.n)
	}
	clk.stop(r)
	return nil
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	if strings.HasSuffix(u, "/") {
		return "?"
	}
	return "/?"
}
