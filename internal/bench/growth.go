package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/transports/memory"
)

// GrowthConfig configures the cost-growth matrix.
type GrowthConfig struct {
	AMQPURL      string
	KafkaBrokers []string
	KafkaWhere   string
	Rounds       int
	// Scale multiplies the events per measurement.
	Scale float64
	// Transports limits the matrix to these ("memory", "amqp",
	// "kafka-single", "kafka-segment"); empty means all.
	Transports []string
}

// Growth dimensions: every event has one of growthNames names (the first
// segment differs, so that mapping=segment puts each name in a topic of
// its own), and subscription i matches the events of name i mod 10, a
// tenth of them.
var (
	growthSubs     = []int{1, 10, 100}
	growthPayloads = []int{256, 16 << 10, 1 << 20}
)

const growthNames = 10

// growthEvents is how many events one measurement publishes for a payload
// size (before -scale).
func growthEvents(size int) int {
	switch {
	case size <= 1<<10:
		return 4000
	case size <= 64<<10:
		return 1000
	default:
		return 20
	}
}

// GrowthCell is one transport with one number of subscriptions and one
// payload size.
type GrowthCell struct {
	Transport     string    `json:"transport"`
	Subscriptions int       `json:"subscriptions"`
	Payload       int       `json:"payload_bytes"`
	Events        int       `json:"events"`     // published per round
	Deliveries    int       `json:"deliveries"` // handled per round
	Rates         []float64 `json:"events_per_s"`
	CPU           []float64 `json:"cpu_us_per_event"`
}

// EventsPerSecond is the median rate.
func (c *GrowthCell) EventsPerSecond() float64 { return Median(c.Rates) }

// CPUPerEvent is the median CPU time per published event, in µs.
func (c *GrowthCell) CPUPerEvent() float64 { return Median(c.CPU) }

// GrowthReport is the cost-growth matrix.
type GrowthReport struct {
	Rounds    int           `json:"rounds"`
	LoadStart [3]float64    `json:"load_start"`
	LoadEnd   [3]float64    `json:"load_end"`
	CPUs      int           `json:"cpus"`
	Started   time.Time     `json:"started"`
	Seconds   float64       `json:"seconds"`
	Cells     []*GrowthCell `json:"cells"`
	Notes     []string      `json:"notes"`
}

// growthTransport opens buses of one transport for the matrix.
type growthTransport struct {
	name string
	// url returns a fresh namespace's URL (queues, topics, brokers), so
	// that each number of subscriptions starts empty.
	url     func() string
	cleanup func()
	// queues, when set, is told the queues a run declares (RabbitMQ).
	queues func(names ...string)
}

// RunGrowth measures publish → handle with 1, 10 and 100 subscriptions,
// each matching a tenth of the events, on every transport, with payloads
// of 256 B, 16 KiB and 1 MiB. Each (transport, subscriptions) pair is set
// up once and measured Rounds times per payload size, the sizes
// interleaved.
func RunGrowth(ctx context.Context, cfg GrowthConfig, progress io.Writer) (*GrowthReport, error) {
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
	}
	if cfg.Scale <= 0 {
		cfg.Scale = 1
	}
	rep := &GrowthReport{Rounds: cfg.Rounds, CPUs: runtime.NumCPU(), Started: time.Now(), LoadStart: LoadAverage()}
	rep.Notes = []string{
		"Every event has one of 10 names with distinct first segments (g0.event ... g9.event); subscription i has the pattern g<i mod 10>.#, so each subscription matches a tenth of the events and an event reaches S/10 subscriptions (with 1 subscription, a tenth of the events reach it and the rest are published to nobody).",
		"events/s is events published per second, from the first Publish until every matching subscription has handled every event; µs CPU/event is the process's CPU time per published event (with kfake and the memory transport the broker runs in the process; RabbitMQ's own CPU is not counted).",
	}
	id := uniqueID()
	var transports []growthTransport
	want := func(name string) bool {
		if len(cfg.Transports) == 0 {
			return true
		}
		for _, t := range cfg.Transports {
			if t == name {
				return true
			}
		}
		return false
	}
	seq := 0
	if want("memory") {
		transports = append(transports, growthTransport{name: "memory", url: func() string {
			seq++
			return fmt.Sprintf("mem://growth-%s-%d", id, seq)
		}})
	}
	if want("amqp") && cfg.AMQPURL != "" {
		var exchanges, queues []string
		transports = append(transports, growthTransport{name: "amqp", url: func() string {
			seq++
			ex := fmt.Sprintf("bench-%s-growth-%d", id, seq)
			exchanges = append(exchanges, ex)
			return cfg.AMQPURL + sep(cfg.AMQPURL) + "exchange=" + ex
		}, queues: func(qs ...string) { queues = append(queues, qs...) },
			cleanup: func() { amqpCleanup(cfg.AMQPURL, exchanges, queues) }})
	}
	for _, mapping := range []string{"single", "segment"} {
		if want("kafka-"+mapping) && len(cfg.KafkaBrokers) > 0 {
			transports = append(transports, growthTransport{name: "kafka-" + mapping, url: func() string {
				seq++
				return "kafka://" + strings.Join(cfg.KafkaBrokers, ",") + fmt.Sprintf("/?partitions=8&mapping=%s&prefix=growth-%s-%d", mapping, id, seq)
			}})
		}
	}
	for _, tr := range transports {
		for _, subs := range growthSubs {
			cells, err := growthRun(ctx, tr, subs, cfg, id, progress)
			if err != nil {
				if tr.cleanup != nil {
					tr.cleanup()
				}
				return nil, fmt.Errorf("growth: %s with %d subscriptions: %w", tr.name, subs, err)
			}
			rep.Cells = append(rep.Cells, cells...)
		}
		if tr.cleanup != nil {
			tr.cleanup()
		}
	}
	rep.LoadEnd = LoadAverage()
	rep.Seconds = time.Since(rep.Started).Seconds()
	return rep, nil
}

// growthRun sets up one transport with subs subscriptions and measures
// every payload size cfg.Rounds times.
func growthRun(ctx context.Context, tr growthTransport, subs int, cfg GrowthConfig, id string, progress io.Writer) ([]*GrowthCell, error) {
	url := tr.url()
	if strings.HasPrefix(url, "mem://") {
		defer memory.Forget(strings.TrimPrefix(url, "mem://"))
	}
	quiet := slog.New(slog.DiscardHandler)
	openCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	svc := fmt.Sprintf("bench-%s-g%d", id, subs)
	consumer, err := eventbus.New(openCtx, eventbus.Config{ServiceName: svc, URL: url, Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer consumer.Close(context.Background())
	var handled atomic.Int64
	for i := range subs {
		if tr.queues != nil {
			tr.queues(fmt.Sprintf("%s.s%03d", svc, i))
		}
		pattern := fmt.Sprintf("g%d.#", i%growthNames)
		if err := consumer.Subscribe(pattern, func(context.Context, eventbus.Event) error {
			handled.Add(1)
			return nil
		}, eventbus.SubscriptionName(fmt.Sprintf("s%03d", i)), eventbus.Concurrency(4)); err != nil {
			return nil, err
		}
	}
	if err := consumer.Start(openCtx); err != nil {
		return nil, err
	}
	publisher, err := eventbus.New(openCtx, eventbus.Config{ServiceName: svc + "-pub", URL: url, Logger: quiet})
	if err != nil {
		return nil, err
	}
	defer publisher.Close(context.Background())
	cells := make([]*GrowthCell, len(growthPayloads))
	events := make([][]eventbus.Event, len(growthPayloads))
	for k, size := range growthPayloads {
		n := max(int(math.Round(float64(growthEvents(size))*cfg.Scale))/growthNames*growthNames, growthNames)
		evs := make([]eventbus.Event, n)
		payload := jsonPayload(size)
		for i := range evs {
			evs[i], err = eventbus.NewEvent(fmt.Sprintf("g%d.event", i%growthNames), payload, eventbus.WithSource("bench"))
			if err != nil {
				return nil, err
			}
		}
		events[k] = evs
		perName := make([]int, growthNames)
		for i := range subs {
			perName[i%growthNames]++
		}
		deliveries := 0
		for i := range evs {
			deliveries += perName[i%growthNames]
		}
		cells[k] = &GrowthCell{Transport: tr.name, Subscriptions: subs, Payload: size, Events: n, Deliveries: deliveries}
	}
	// Warm up: one event per name, so that topics exist and channels are
	// open before the clock starts.
	if err := growthPublish(ctx, publisher, makeEvents("g", growthNames, growthNames, jsonPayload(16))); err != nil {
		return nil, err
	}
	for round := 0; round < cfg.Rounds; round++ {
		for j := range growthPayloads {
			k := (round + j) % len(growthPayloads)
			cell := cells[k]
			var res Result
			label := fmt.Sprintf("growth %s S=%d %dB", tr.name, subs, cell.Payload)
			pprof.Do(ctx, pprof.Labels("scenario", label), func(ctx context.Context) {
				res, err = growthMeasure(ctx, publisher, events[k], cell.Deliveries, &handled)
			})
			if err != nil {
				return nil, fmt.Errorf("%d-byte payloads: %w", cell.Payload, err)
			}
			cell.Rates = append(cell.Rates, res.Rate())
			cell.CPU = append(cell.CPU, res.CPUPerEvent())
			fmt.Fprintf(progress, "  %-14s %3d subscriptions %8d B: %9.0f events/s %9.0f deliveries/s %9.1f µs CPU/event\n",
				tr.name, subs, cell.Payload, res.Rate(), res.Rate()*float64(cell.Deliveries)/float64(cell.Events), res.CPUPerEvent())
		}
	}
	return cells, nil
}

// growthMeasure publishes evs and waits until deliveries more events were
// handled than before it started.
func growthMeasure(ctx context.Context, pub *eventbus.Bus, evs []eventbus.Event, deliveries int, handled *atomic.Int64) (Result, error) {
	// The warm-up events and any redelivery of the previous round settle
	// first.
	if err := waitQuiet(handled); err != nil {
		return Result{}, err
	}
	target := handled.Load() + int64(deliveries)
	clk := StartClock()
	if err := growthPublish(ctx, pub, evs); err != nil {
		return Result{}, err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for handled.Load() < target {
		if time.Now().After(deadline) {
			return Result{}, fmt.Errorf("only %d of %d deliveries handled", handled.Load()-(target-int64(deliveries)), deliveries)
		}
		time.Sleep(200 * time.Microsecond)
	}
	return clk.Stop(len(evs)), nil
}

// waitQuiet waits until handled stops moving for 100 ms.
func waitQuiet(handled *atomic.Int64) error {
	deadline := time.Now().Add(time.Minute)
	last := handled.Load()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		n := handled.Load()
		if n == last {
			return nil
		}
		last = n
	}
	return errors.New("deliveries kept coming after the measurement")
}

// growthPublish publishes evs from one goroutine, in calls of at most 100
// events and 4 MiB; events that no subscription matches are expected (the
// brokers report them unroutable).
func growthPublish(ctx context.Context, pub *eventbus.Bus, evs []eventbus.Event) error {
	per := max(min(100, (4<<20)/max(len(evs[0].Data), 1)), 1)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for i := 0; i < len(evs); i += per {
		err := pub.Publish(ctx, evs[i:min(i+per, len(evs))]...)
		var pe *eventbus.PublishError
		if errors.As(err, &pe) {
			for _, f := range pe.Failed {
				if !errors.Is(f.Err, eventbus.ErrUnroutable) {
					return err
				}
			}
		} else if err != nil {
			return err
		}
	}
	return nil
}

// Print writes the matrix in Markdown: one row per transport and number
// of subscriptions, one column group per payload size.
func (g *GrowthReport) Print(w io.Writer) {
	fmt.Fprintln(w, "### Cost growth: publish → handle with 1, 10 and 100 subscriptions")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%d round(s), medians; load average %.2f at the start, %.2f at the end (%d CPUs); %.0f s\n\n",
		g.Rounds, g.LoadStart[0], g.LoadEnd[0], g.CPUs, g.Seconds)
	header := "| transport | subscriptions |"
	rule := "| --- | ---: |"
	for _, size := range growthPayloads {
		header += fmt.Sprintf(" %s events/s | %s µs CPU/event |", sizeName(size), sizeName(size))
		rule += " ---: | ---: |"
	}
	fmt.Fprintln(w, header)
	fmt.Fprintln(w, rule)
	type key struct {
		tr   string
		subs int
	}
	rows := map[key][]*GrowthCell{}
	var order []key
	for _, c := range g.Cells {
		k := key{c.Transport, c.Subscriptions}
		if _, ok := rows[k]; !ok {
			order = append(order, k)
		}
		rows[k] = append(rows[k], c)
	}
	for _, k := range order {
		line := fmt.Sprintf("| %s | %d |", k.tr, k.subs)
		for _, size := range growthPayloads {
			found := false
			for _, c := range rows[k] {
				if c.Payload == size {
					line += fmt.Sprintf(" %.0f | %.1f |", c.EventsPerSecond(), c.CPUPerEvent())
					found = true
				}
			}
			if !found {
				line += " | |"
			}
		}
		fmt.Fprintln(w, line)
	}
	for _, n := range g.Notes {
		fmt.Fprintf(w, "\n%s\n", n)
	}
	fmt.Fprintln(w)
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// amqpCleanup deletes the exchanges and queues a growth run declared.
func amqpCleanup(url string, exchanges, queues []string) {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	for _, q := range queues {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
	for _, e := range exchanges {
		_ = ch.ExchangeDelete(e, false, false)
	}
}
