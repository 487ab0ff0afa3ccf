package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"time"
)

// Main runs the benchmark with the command-line arguments args and
// returns the exit code; cmd is how the command is invoked, for the usage
// line. Flags:
//
//	-only amqp,kafka,memory,nats,growth
//	                                what to run (default amqp,kafka,memory,nats;
//	                                growth is the cost-growth matrix)
//	-growth                         add the cost-growth matrix
//	-growth-transports memory,...   limit it to some of memory, amqp,
//	                                kafka-single, kafka-segment
//	-rounds 3                       rounds per table (medians need 3)
//	-scale 1                        multiplies the events per measurement
//	-size 256                       payload bytes of the comparison tables
//	-amqp-url URL                   RabbitMQ (default $EVENTBUS_TEST_AMQP_URL,
//	                                else amqp://guest:guest@127.0.0.1:5672/)
//	-kafka-brokers host:port,...    Kafka (default $EVENTBUS_TEST_KAFKA_BROKERS,
//	                                else an in-process kfake cluster)
//	-nats-url URL                   NATS with JetStream (default
//	                                $EVENTBUS_TEST_NATS_URL, else
//	                                nats://127.0.0.1:4222)
//	-batch 100                      events per Publish call in the NATS table
//	-bus-params k=v&...             extra URL parameters for the RabbitMQ bus
//	-json file                      write every figure as JSON (the chart's input)
//	-cpuprofile file                CPU profile; samples carry scenario=<row>
//	-trace file                     execution trace (go tool trace)
//	-rows word,...                  only the rows whose short name contains a word
//
// Tables go to stdout in Markdown, progress to stderr.
func Main(args []string, cmd string) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	only := fs.String("only", "amqp,kafka,memory,nats", "comma-separated: amqp, kafka, memory, nats, growth")
	growth := fs.Bool("growth", false, "also run the cost-growth matrix (1, 10 and 100 subscriptions; 256 B, 16 KiB and 1 MiB payloads)")
	growthOnly := fs.String("growth-transports", "", "limit the growth matrix to these: memory, amqp, kafka-single, kafka-segment")
	rounds := fs.Int("rounds", 3, "rounds per table; the tables show medians")
	scale := fs.Float64("scale", 1, "multiplies the number of events per measurement")
	size := fs.Int("size", 256, "payload bytes in the comparison tables")
	amqpURL := fs.String("amqp-url", envOr("EVENTBUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"), "RabbitMQ URL")
	kafkaBrokers := fs.String("kafka-brokers", os.Getenv("EVENTBUS_TEST_KAFKA_BROKERS"), "Kafka brokers, host:port,...; empty: an in-process kfake cluster")
	natsURL := fs.String("nats-url", natsDefaultURL(), "NATS server with JetStream")
	batch := fs.Int("batch", 100, "events per Publish call (and per raw batch) in the NATS table")
	busParams := fs.String("bus-params", "", "extra URL query parameters for the RabbitMQ bus, e.g. prefetch=64")
	jsonOut := fs.String("json", "", "write the figures as JSON to this file")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile; samples carry the label scenario=<row>")
	traceOut := fs.String("trace", "", "write an execution trace (go tool trace) of the run")
	rows := fs.String("rows", "", "run only the rows whose short names contain one of these comma-separated words (and the rows they are compared with)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	what := strings.Split(*only, ",")
	if *growth && !slices.Contains(what, "growth") {
		what = append(what, "growth")
	}
	for _, w := range what {
		switch w {
		case "amqp", "kafka", "memory", "nats", "growth":
		default:
			fmt.Fprintf(os.Stderr, "%s: -only %q: want amqp, kafka, memory, nats or growth\n", cmd, w)
			return 2
		}
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if *traceOut != "" {
		f, err := os.Create(*traceOut)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := trace.Start(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer trace.Stop()
	}
	n := func(def int) int { return max(int(math.Round(float64(def)*(*scale))), 10) }
	ctx := context.Background()
	rep := &Report{Command: cmd + " " + strings.Join(args, " ")}
	out := io.Writer(os.Stdout)
	fmt.Fprintf(out, "## go-eventbus benchmark, %s\n\n", time.Now().UTC().Format(time.RFC3339))
	var kafka *kafkaCluster
	defer func() {
		if kafka != nil {
			kafka.close()
		}
	}()
	brokers := func() ([]string, error) {
		if kafka == nil {
			var err error
			if kafka, err = startKafka(*kafkaBrokers); err != nil {
				return nil, err
			}
		}
		return kafka.brokers, nil
	}
	for _, w := range what {
		var t *Table
		switch w {
		case "amqp":
			t = AMQPTable(AMQPConfig{URL: *amqpURL, N: n(8000), Size: *size, BusParams: *busParams})
		case "kafka":
			bs, err := brokers()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			t = KafkaTable(KafkaConfig{Brokers: bs, Where: kafka.where, N: n(20000), Size: *size})
		case "memory":
			t = MemoryTable(MemoryConfig{N: n(200000), Size: *size})
		case "nats":
			t = NATSTable(NATSConfig{URL: *natsURL, N: n(20000), Size: *size, Batch: *batch})
		case "growth":
			bs, err := brokers()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			var only []string
			if *growthOnly != "" {
				only = strings.Split(*growthOnly, ",")
			}
			g, err := RunGrowth(ctx, GrowthConfig{AMQPURL: *amqpURL, KafkaBrokers: bs, KafkaWhere: kafka.where, Rounds: *rounds, Scale: *scale, Transports: only}, os.Stderr)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			g.Print(out)
			rep.Growth = g
			continue
		}
		if *rows != "" {
			t.Rows = selectRows(t.Rows, strings.Split(*rows, ","))
		}
		tr, err := t.Run(ctx, *rounds, os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		tr.Print(out)
		rep.Tables = append(rep.Tables, tr)
	}
	if *jsonOut != "" {
		if err := rep.WriteJSON(*jsonOut); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// selectRows keeps the rows whose short name contains one of words, and
// the rows those are compared with.
func selectRows(all []*Scenario, words []string) []*Scenario {
	keep := map[string]bool{}
	for _, s := range all {
		for _, w := range words {
			if w != "" && strings.Contains(s.Short, w) {
				keep[s.Short] = true
				for _, c := range s.Compare {
					keep[c] = true
				}
			}
		}
	}
	var rows []*Scenario
	for _, s := range all {
		if keep[s.Short] {
			s.Compare = slices.DeleteFunc(slices.Clone(s.Compare), func(c string) bool { return !keep[c] })
			s.Targets = slices.DeleteFunc(slices.Clone(s.Targets), func(t Target) bool { return !keep[t.Against] })
			rows = append(rows, s)
		}
	}
	return rows
}

// natsDefaultURL is $EVENTBUS_TEST_NATS_URL unless it asks the tests for
// an in-process server ("embedded"), else the local server.
func natsDefaultURL() string {
	if u := os.Getenv("EVENTBUS_TEST_NATS_URL"); u != "" && u != "embedded" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
