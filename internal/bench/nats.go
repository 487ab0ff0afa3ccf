package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	_ "github.com/paissive/go-eventbus/transports/nats" // nats:// for the bus rows
)

// NATSConfig configures the NATS table.
type NATSConfig struct {
	URL   string
	N     int // events per measurement
	Size  int
	Batch int // events per Publish call and per raw batch; default 100
}

// Short names of the NATS rows.
const (
	natsRawBatch  = "raw batches"
	natsRawNoID   = "raw batches, no IDs"
	natsRawWindow = "raw window"
	natsBusBatch  = "bus batches"
	natsBusNoID   = "bus batches, dedup=false"
	natsBus16     = "bus 16 goroutines"
	natsRawCon    = "pull consume"
	natsTransport = "transport subscriber C16"
	natsRouter    = "transport under a router C16"
	natsBusC16    = "bus consume C16"
	natsBusC1     = "bus consume C1"
)

type natsBench struct {
	cfg     NATSConfig
	id      string
	payload json.RawMessage
	nc      *nats.Conn
	js      jetstream.JetStream
	server  string
	seq     atomic.Int64
	// consume is the stream of N events the bus published, which every
	// consume row reads from the start with a consumer of its own.
	consume string
}

// NATSTable returns the NATS JetStream table: publishing acknowledged by
// the stream, consuming with an ack per message; the bus next to nats.go's
// jetstream package on the same server.
func NATSTable(cfg NATSConfig) *Table {
	if cfg.N <= 0 {
		cfg.N = 20000
	}
	if cfg.Size <= 0 {
		cfg.Size = 256
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	b := &natsBench{cfg: cfg}
	n, batch := cfg.N, cfg.Batch
	t := &Table{
		Name:     "nats",
		Setup:    b.setup,
		Teardown: b.teardown,
		Notes: []string{
			fmt.Sprintf("Every publish is acknowledged by a file-storage stream. The raw client sends the bus's wire format (its CloudEvents headers, built from the event's fields while the clock runs) and a Nats-Msg-Id, as the bus does, so that a retried publish is stored once; "+
				"it publishes asynchronously in batches of %d, waiting for each batch's acknowledgements before the next, as one Bus.Publish call of %d events must. "+
				"The server's tracking of message IDs costs it part of its publish rate, which the rows without IDs show.", batch, batch),
			"Consume rows read the same stream of N events with a new durable consumer each and are clocked from the first message to the last. " +
				"The raw consumer is nats.go's Consume (a pull consumer keeping up to 500 messages requested) acking each message; the transport's row takes the transport's subscriber without the bus, 16 goroutines reading its channel and acking, as the bus's router and handlers do. The router row puts the same subscriber under a bare Watermill router whose handler only counts: the bus consumes through such a router, so that row is as fast as the bus can be on this transport.",
		},
		Rows: []*Scenario{
			{Name: fmt.Sprintf("nats.go PublishMsgAsync, batches of %d, Nats-Msg-Id", batch), Short: natsRawBatch,
				Run: func(context.Context) (Result, error) { return b.rawPublish(n, batch, true) }},
			{Name: fmt.Sprintf("nats.go PublishMsgAsync, batches of %d, no Nats-Msg-Id", batch), Short: natsRawNoID, Compare: []string{natsRawBatch},
				Run: func(context.Context) (Result, error) { return b.rawPublish(n, batch, false) }},
			{Name: "nats.go PublishMsgAsync, 4,000 in flight (its default window; ceiling)", Short: natsRawWindow, Compare: []string{natsRawBatch},
				Run: func(context.Context) (Result, error) { return b.rawPublish(n, 0, true) }},
			{Name: fmt.Sprintf("bus publish, %d events per call", batch), Short: natsBusBatch, Compare: []string{natsRawBatch},
				Targets: []Target{{natsRawBatch, 0.8}},
				Run:     func(context.Context) (Result, error) { return b.busPublish(n, batch, 1, "") }},
			{Name: fmt.Sprintf("bus publish, %d events per call, ?dedup=false", batch), Short: natsBusNoID, Compare: []string{natsRawNoID},
				Run: func(context.Context) (Result, error) { return b.busPublish(n, batch, 1, "dedup=false") }},
			{Name: "bus publish, 16 goroutines, one event per call", Short: natsBus16, Compare: []string{natsRawBatch},
				Run: func(context.Context) (Result, error) { return b.busPublish(n, 1, 16, "") }},
			{Name: "nats.go pull consumer (Consume), ack each", Short: natsRawCon,
				Run: func(context.Context) (Result, error) { return b.rawConsume(n) }},
			{Name: "transport's subscriber without the bus, Concurrency 16, ack each", Short: natsTransport, Compare: []string{natsRawCon},
				Run: func(context.Context) (Result, error) { return b.transportConsume(n, 16, false) }},
			{Name: "transport's subscriber under a bare Watermill router, Concurrency 16, handler only counts (the bus's floor)", Short: natsRouter, Compare: []string{natsRawCon, natsTransport},
				Run: func(context.Context) (Result, error) { return b.transportConsume(n, 16, true) }},
			{Name: "bus consume, Concurrency(16)", Short: natsBusC16, Compare: []string{natsRawCon, natsTransport, natsRouter},
				Targets: []Target{{natsRawCon, 0.8}},
				Run:     func(context.Context) (Result, error) { return b.busConsume(n, 16) }},
			{Name: "bus consume, Concurrency(1)", Short: natsBusC1, Compare: []string{natsRawCon},
				Run: func(context.Context) (Result, error) { return b.busConsume(n/4, 1) }},
		},
	}
	t.Title = fmt.Sprintf("NATS JetStream (%s), %d-byte payloads", driver.RedactURL(cfg.URL), cfg.Size)
	return t
}

func (b *natsBench) setup(ctx context.Context) error {
	b.id = uniqueID()
	b.payload = jsonPayload(b.cfg.Size)
	var err error
	if b.nc, err = nats.Connect(b.cfg.URL, nats.Name("go-eventbus bench")); err != nil {
		return fmt.Errorf("cannot connect to %s: %w", driver.RedactURL(b.cfg.URL), err)
	}
	if b.js, err = jetstream.New(b.nc); err != nil {
		return err
	}
	b.server = b.nc.ConnectedServerVersion()
	// The raw rows must send what the bus sends.
	ev := b.events("bench.item", 1)[0]
	if err := sameNATSWire(ev, natsMessage("x", ev, true)); err != nil {
		return err
	}
	b.consume = b.stream("consume")
	bus, err := b.openBus(ctx, b.consume, "", "bench")
	if err != nil {
		return err
	}
	defer bus.Close(ctx)
	evs := b.events("bench.item", b.cfg.N)
	for i := 0; i < len(evs); i += 500 {
		if err := bus.Publish(ctx, evs[i:min(i+500, len(evs))]...); err != nil {
			return err
		}
	}
	return nil
}

func (b *natsBench) teardown() {
	if b.nc == nil {
		return
	}
	b.deleteStream(b.consume)
	b.nc.Close()
}

// stream returns a new stream name of the run.
func (b *natsBench) stream(what string) string {
	return fmt.Sprintf("bench-%s-%s%d", b.id, what, b.seq.Add(1))
}

// natsURL is the transport's URL for stream, with extra parameters.
func (b *natsBench) natsURL(stream, params string) string {
	u := b.cfg.URL
	if !strings.Contains(u, "?") {
		u = strings.TrimSuffix(u, "/") + "/?"
	} else {
		u += "&"
	}
	u += "stream=" + stream
	if params != "" {
		u += "&" + params
	}
	return u
}

func (b *natsBench) openBus(ctx context.Context, stream, params, service string) (*eventbus.Bus, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return eventbus.New(ctx, eventbus.Config{ServiceName: service, URL: b.natsURL(stream, params), Logger: slog.New(slog.DiscardHandler)})
}

// deleteStream deletes a stream of the run and its poison stream.
func (b *natsBench) deleteStream(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range []string{name, name + "_poison"} {
		_ = b.js.DeleteStream(ctx, s) // ErrStreamNotFound for a poison stream never made
	}
}

// deleteConsumers deletes the consumers of the consume stream, so that
// those of earlier rows do not accumulate on the server.
func (b *natsBench) deleteConsumers() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := b.js.Stream(ctx, b.consume)
	if err != nil {
		return
	}
	names := s.ConsumerNames(ctx)
	for name := range names.Name() {
		_ = s.DeleteConsumer(ctx, name)
	}
}

func (b *natsBench) events(name string, n int) []eventbus.Event {
	return makeEvents(name, n, 1, b.payload)
}

// natsMessage is the message a raw nats.go client sends for ev: the bus's
// headers, filled from the event's fields, and with id a Nats-Msg-Id.
func natsMessage(subject string, ev eventbus.Event, id bool) *nats.Msg {
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

// sameNATSWire checks that the raw message carries exactly the headers
// the bus sends for ev: the event's and a Nats-Msg-Id.
func sameNATSWire(ev eventbus.Event, m *nats.Msg) error {
	md := driver.Encode(driver.Envelope{
		ID: ev.ID, Name: ev.Name, Source: ev.Source, Type: ev.Type.String(), Time: ev.Time,
		CorrelationID: ev.CorrelationID, Data: ev.Data,
	}).Metadata
	md[jetstream.MsgIDHeader] = m.Header.Get(jetstream.MsgIDHeader)
	if len(md) != len(m.Header) {
		return fmt.Errorf("raw NATS headers %v differ from the bus's %v", m.Header, md)
	}
	for k, v := range md {
		if m.Header.Get(k) != v {
			return fmt.Errorf("raw NATS header %s=%q differs from the bus's %q", k, m.Header.Get(k), v)
		}
	}
	return nil
}

// rawPublish publishes n events to a new stream with nats.go: in batches
// of batch, waiting for each batch's acknowledgements, or with batch 0
// all at once within nats.go's window of acknowledgements in flight.
func (b *natsBench) rawPublish(n, batch int, ids bool) (Result, error) {
	stream := b.stream("raw")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := b.js.CreateStream(ctx, jetstream.StreamConfig{
		Name: stream, Subjects: []string{stream + ".>"},
		Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy,
	}); err != nil {
		return Result{}, err
	}
	defer b.deleteStream(stream)
	js, err := jetstream.New(b.nc)
	if err != nil {
		return Result{}, err
	}
	subject := stream + ".bench.item"
	evs := b.events("bench.item", n)
	clk := StartClock()
	if batch == 0 {
		for _, ev := range evs {
			if _, err := js.PublishMsgAsync(natsMessage(subject, ev, ids)); err != nil {
				return Result{}, err
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return Result{}, errors.New("acknowledgements missing")
		}
		return clk.Stop(n), nil
	}
	futs := make([]jetstream.PubAckFuture, 0, batch)
	for i := 0; i < n; i += batch {
		futs = futs[:0]
		for _, ev := range evs[i:min(i+batch, n)] {
			f, err := js.PublishMsgAsync(natsMessage(subject, ev, ids))
			if err != nil {
				return Result{}, err
			}
			futs = append(futs, f)
		}
		for _, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return Result{}, err
			case <-ctx.Done():
				return Result{}, ctx.Err()
			}
		}
	}
	return clk.Stop(n), nil
}

// busPublish publishes n events to a new stream through the bus, per
// events per call, from g goroutines.
func (b *natsBench) busPublish(n, per, g int, params string) (Result, error) {
	ctx := context.Background()
	stream := b.stream("bus")
	defer b.deleteStream(stream)
	bus, err := b.openBus(ctx, stream, params, "bench")
	if err != nil {
		return Result{}, err
	}
	defer bus.Close(ctx)
	// As the raw client has its connection and stream before its clock
	// starts, so does the bus: one event first.
	if err := bus.Publish(ctx, b.events("bench.warmup", 1)...); err != nil {
		return Result{}, err
	}
	evs := b.events("bench.item", n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, g)
	clk := StartClock()
	for range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(int64(per))) - per
				if i >= n {
					return
				}
				if err := bus.Publish(ctx, evs[i:min(i+per, n)]...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	res := clk.Stop(n)
	close(errs)
	return res, <-errs
}

func (b *natsBench) rawConsume(n int) (Result, error) {
	defer b.deleteConsumers()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := b.js.Stream(ctx, b.consume)
	if err != nil {
		return Result{}, err
	}
	c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: fmt.Sprintf("raw%d", b.seq.Add(1)), FilterSubject: b.consume + ".bench.item",
		AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		return Result{}, err
	}
	clk := newConsumeClock(n)
	cc, err := c.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		clk.tick()
	})
	if err != nil {
		return Result{}, err
	}
	defer cc.Stop()
	return clk.wait()
}

// transportConsume measures the transport's subscriber with concurrency
// readers acking, or under a bare router.
func (b *natsBench) transportConsume(n, concurrency int, router bool) (Result, error) {
	defer b.deleteConsumers()
	url, cfg := b.natsURL(b.consume, ""), driver.SubscriberConfig{
		Group: fmt.Sprintf("bench.tr%d", b.seq.Add(1)), Service: "bench", Subscription: fmt.Sprintf("tr%d", b.seq.Load()),
		Concurrency: concurrency, Pattern: "bench.item", Match: mustMatch("bench.item"),
	}
	if router {
		return consumeThroughTransportRouter(url, cfg, n)
	}
	return consumeThroughTransport(url, cfg, n, concurrency)
}

func (b *natsBench) busConsume(n, concurrency int) (Result, error) {
	defer b.deleteConsumers()
	bus, err := b.openBus(context.Background(), b.consume, "", fmt.Sprintf("bench%d", b.seq.Add(1)))
	if err != nil {
		return Result{}, err
	}
	return consumeThroughBus(bus, "bench.item", n, concurrency)
}
