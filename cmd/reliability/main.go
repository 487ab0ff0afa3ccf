// Command reliability checks that go-eventbus loses nothing while its
// broker goes away and comes back under load, and that Publish rides out
// the outage.
//
//	go run ./cmd/reliability -scenario kafka-kill
//	go run ./cmd/reliability -scenario all
//	go run ./cmd/reliability -url amqp://user:pass@host:5672/ \
//		-stop-cmd 'sudo systemctl stop rabbitmq-server' -start-cmd 'sudo systemctl start rabbitmq-server'
//
// # What it does
//
// It opens a subscriber bus (service "rel-sub", subscription "events" on
// the pattern "reliability.#", Concurrency 16) whose handler records each
// event ID it is given, and a publisher bus (service "rel-pub") from which
// -publishers goroutines (default 4) publish -events events (default
// 10,000) in Publish calls of -batch events (default 1; 100 is the other
// interesting value), each call with its own ctx of -publish-timeout
// (30 s), paced at -rate events per second (1,000; 0 for as fast as
// Publish returns) so that the outage lands in the middle of the
// traffic. When the publishers reach the middle event, the broker goes
// away for -outage (5 s) and comes back. After the last Publish returned
// and the broker is back, the program waits until every event Publish
// accepted was handled and no delivery came for -settle (2 s), at most
// -drain-timeout (60 s), then closes both buses and prints the timeline
// and these counts:
//
//   - published ok: Publish returned nil for the event;
//   - failed: Publish reported the event failed (a *eventbus.PublishError
//     names the failed events of a batch; any other error fails them all);
//   - failed after recovery: failed, and reported later than -grace (1 s)
//     after the broker was back, which is the first moment a new
//     connection got a protocol answer (an AMQP handshake, a Kafka
//     ApiVersions response; probed every 20 ms; a TCP accept does not
//     count, since the kernel accepts for a frozen process);
//   - lost: Publish returned nil, yet the event was never handled before
//     the drain deadline;
//   - duplicated: handled more than once (allowed by at-least-once
//     delivery, reported for information);
//   - handled although reported failed: the broker had stored an event
//     whose Publish failed (allowed: a failure is not a guarantee of
//     absence);
//   - Publish calls that returned later than their ctx deadline plus 1 s.
//
// The run fails (exit status 1) when an event was lost, when the broker
// did not answer again, or, on Kafka, when an event failed after
// recovery. Exit status 2 means bad flags.
//
// # Scenarios
//
// By default every scenario starts a private broker that only this
// program uses, so a shared broker is never stopped, and removes it at the
// end (also on Ctrl-C; -keep keeps its files):
//
//   - rabbitmq-stop: rabbitmqctl stop_app, then start_app;
//   - rabbitmq-kill: kill -9 of the node's Erlang VM, then the node is
//     started again on the same data (it boots in about 8 s);
//   - rabbitmq-freeze: SIGSTOP of the node's VM, then SIGCONT;
//   - kafka-kill: kill -9 of the Kafka-protocol broker process, then a new
//     one on the same port and data directory;
//   - kafka-freeze: SIGSTOP of the broker process, then SIGCONT;
//   - all: the five above, one after the other.
//
// The private RabbitMQ node runs the installed rabbitmq-server (the
// Debian package's /usr/lib/rabbitmq/bin scripts, else rabbitmq-server on
// PATH, or -rabbitmq-server) with its own node name
// (eventbus-rel-<pid>-<random>@localhost), a free AMQP port and a free
// distribution port on 127.0.0.1, no plugins, and its database, logs,
// pid file, config and Erlang cookie in a temporary directory (HOME
// points there, so rabbitmqctl -n <node> finds the cookie). The package's
// /etc/rabbitmq files are not read. Killed with SIGKILL itself, the
// program cannot stop the node: "HOME=<dir> rabbitmqctl -n <node> stop"
// does.
//
// The private Kafka-protocol broker is this program re-executed as
// "reliability kafka-broker -addr 127.0.0.1:PORT -dir DIR": a one-broker
// franz-go kfake cluster with kfake.DataDir, which appends every produced
// batch and every offset commit to files in DIR before answering, so a
// process killed with SIGKILL and started again on the same port and
// directory keeps its topics, records and committed consumer-group
// offsets (TestKafkaBrokerKeepsRecordsAndOffsetsAcrossKill checks it; in
// a run, a lost record counts as lost and lost offsets would show as
// thousands of duplicates). kfake.SyncWrites adds an fsync per batch,
// which only matters if the machine itself crashes. The broker ends when
// its standard input ends (the parent closes it) or on SIGTERM. kfake is
// not Kafka: replication and leader election are not exercised.
//
// # Your own broker
//
// -url names a broker the program does not start, with -stop-cmd and
// -start-cmd the shell commands that take it away and bring it back
// (kill -9, systemctl, docker stop/start, a firewall rule). The scenario
// is then called "custom"; the Kafka rule applies when the URL is
// kafka://. The buses use the queue or consumer group "rel-sub.events"
// (and the exchange or topic "events", unless the URL says otherwise, for
// example ?exchange= or ?prefix=), which stay behind; events that an
// earlier run left in them are counted apart and ignored.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// settings are the flags of a run.
type settings struct {
	scenario               string
	url, stopCmd, startCmd string

	events, publishers, batch, concurrency int
	rate                                   float64

	outage, publishTimeout, drainTimeout, settle, grace, recoveryTimeout time.Duration

	rabbitmqServer, rabbitmqctl string
	keep                        bool
	logger                      *slog.Logger
}

// scenarios are the built-in scenarios: the broker each needs and its
// fault.
var scenarios = []struct{ name, broker, fault string }{
	{"rabbitmq-stop", "rabbitmq", "stop"},
	{"rabbitmq-kill", "rabbitmq", "kill"},
	{"rabbitmq-freeze", "rabbitmq", "freeze"},
	{"kafka-kill", "kafka", "kill"},
	{"kafka-freeze", "kafka", "freeze"},
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == kafkaBrokerCommand {
		os.Exit(kafkaBrokerMain(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the scenarios args ask for and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	s, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "reliability: %v\n", err)
		return 2
	}
	names := []string{s.scenario}
	switch {
	case s.url != "":
		names = []string{"custom"}
	case s.scenario == "all":
		names = names[:0]
		for _, sc := range scenarios {
			names = append(names, sc.name)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	type line struct {
		name  string
		c     counts
		ok    bool
		error string
	}
	var summary []line
	status := 0
	for _, name := range names {
		if ctx.Err() != nil {
			break
		}
		res, err := runScenario(ctx, s, name)
		if err != nil {
			fmt.Fprintf(stderr, "reliability: %v\n", err)
			summary = append(summary, line{name: name, error: err.Error()})
			status = 1
			continue
		}
		c := tally(res)
		printReport(stdout, res, c)
		ok := len(problems(res, c)) == 0
		if !ok {
			status = 1
		}
		summary = append(summary, line{name: name, c: c, ok: ok})
	}
	if len(summary) > 1 {
		fmt.Fprintln(stdout, "\n== summary")
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "scenario\tok\tfailed\tfailed after recovery\tlost\tduplicated\tverdict")
		for _, l := range summary {
			switch {
			case l.error != "":
				fmt.Fprintf(tw, "%s\t\t\t\t\t\tERROR: %s\n", l.name, l.error)
			default:
				v := "PASS"
				if !l.ok {
					v = "FAIL"
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\n", l.name, l.c.publishedOK, l.c.failed, l.c.failedAfterRecovery, l.c.lost, l.c.duplicated, v)
			}
		}
		_ = tw.Flush()
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "reliability: interrupted")
		status = 1
	}
	return status
}

// parseFlags reads and checks the flags.
func parseFlags(args []string, stderr io.Writer) (settings, error) {
	var s settings
	fs := flag.NewFlagSet("reliability", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var names []string
	for _, sc := range scenarios {
		names = append(names, sc.name)
	}
	fs.StringVar(&s.scenario, "scenario", "", "what happens to the broker: "+strings.Join(names, ", ")+", or all")
	fs.StringVar(&s.url, "url", "", "run against this broker (amqp://, amqps:// or kafka://) instead of a private one; needs -stop-cmd and -start-cmd")
	fs.StringVar(&s.stopCmd, "stop-cmd", "", "with -url: shell command that takes the broker away")
	fs.StringVar(&s.startCmd, "start-cmd", "", "with -url: shell command that brings the broker back")
	fs.IntVar(&s.events, "events", 10000, "events to publish")
	fs.IntVar(&s.publishers, "publishers", 4, "publishing goroutines")
	fs.IntVar(&s.batch, "batch", 1, "events per Publish call")
	fs.IntVar(&s.concurrency, "concurrency", 16, "the subscription's Concurrency")
	fs.Float64Var(&s.rate, "rate", 1000, "events per second over all publishers, so the outage falls in the middle of the traffic; 0: as fast as Publish returns")
	fs.DurationVar(&s.outage, "outage", 5*time.Second, "how long the broker stays away (a killed RabbitMQ node then needs its boot time too)")
	fs.DurationVar(&s.publishTimeout, "publish-timeout", 30*time.Second, "ctx timeout of each Publish call")
	fs.DurationVar(&s.grace, "grace", time.Second, "a failure reported later than this after the broker answered again counts as failed after recovery")
	fs.DurationVar(&s.drainTimeout, "drain-timeout", time.Minute, "how long to wait, after the last Publish, for the accepted events to be handled")
	fs.DurationVar(&s.settle, "settle", 2*time.Second, "once every accepted event was handled, wait for this long without a delivery, to count late duplicates")
	fs.DurationVar(&s.recoveryTimeout, "recovery-timeout", 2*time.Minute, "how long to wait for the broker to answer again after the outage")
	fs.StringVar(&s.rabbitmqServer, "rabbitmq-server", "", "rabbitmq-server script for the private node (default: "+debianRabbitMQBin+"/rabbitmq-server, else on PATH)")
	fs.StringVar(&s.rabbitmqctl, "rabbitmqctl", "", "rabbitmqctl script (default: next to rabbitmq-server)")
	fs.BoolVar(&s.keep, "keep", false, "keep the private broker's files (data, logs) and print where they are")
	logLevel := fs.String("log", "error", "the buses' log level: debug, info, warn, error or off (to stderr)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: reliability -scenario NAME [flags]\n       reliability -url URL -stop-cmd CMD -start-cmd CMD [flags]\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	if fs.NArg() > 0 {
		return s, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case s.url != "" && (s.stopCmd == "" || s.startCmd == ""):
		return s, errors.New("-url needs -stop-cmd and -start-cmd, the shell commands that take the broker away and bring it back")
	case s.url == "" && (s.stopCmd != "" || s.startCmd != ""):
		return s, errors.New("-stop-cmd and -start-cmd apply to -url only; the built-in scenarios fault their private broker themselves")
	case s.url != "" && s.scenario != "" && s.scenario != "custom":
		return s, fmt.Errorf("-scenario %s starts a private broker; with -url the outage is -stop-cmd/-start-cmd (leave -scenario out)", s.scenario)
	case s.url == "" && s.scenario == "":
		return s, fmt.Errorf("give -scenario (%s, or all), or -url with -stop-cmd and -start-cmd", strings.Join(names, ", "))
	case s.url == "" && s.scenario != "all" && !knownScenario(s.scenario):
		return s, fmt.Errorf("unknown -scenario %q; known: %s, all", s.scenario, strings.Join(names, ", "))
	case s.events < 1 || s.publishers < 1 || s.batch < 1 || s.concurrency < 1:
		return s, errors.New("-events, -publishers, -batch and -concurrency must be at least 1")
	case s.rate < 0:
		return s, errors.New("-rate must not be negative")
	case s.outage <= 0 || s.publishTimeout <= 0 || s.drainTimeout <= 0 || s.recoveryTimeout <= 0 || s.settle < 0 || s.grace < 0:
		return s, errors.New("-outage, -publish-timeout, -drain-timeout and -recovery-timeout must be positive; -settle and -grace not negative")
	}
	if s.url != "" {
		u, err := url.Parse(s.url)
		if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps" && u.Scheme != "kafka") {
			return s, fmt.Errorf("-url %s: want an amqp://, amqps:// or kafka:// URL", driver.RedactURL(s.url))
		}
		s.scenario = "custom"
	}
	var level slog.Level
	switch *logLevel {
	case "off":
		s.logger = slog.New(slog.DiscardHandler)
	default:
		if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
			return s, fmt.Errorf("-log %q: want debug, info, warn, error or off", *logLevel)
		}
		s.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	return s, nil
}

func knownScenario(name string) bool {
	for _, sc := range scenarios {
		if sc.name == name {
			return true
		}
	}
	return false
}

// openTarget starts the scenario's private broker, or takes the user's
// broker for "custom".
func openTarget(ctx context.Context, s settings, name string) (target, error) {
	if name == "custom" {
		return target{
			url:      s.url,
			describe: "your broker at " + driver.RedactURL(s.url),
			fault:    commandFault(s.stopCmd, s.startCmd),
		}, nil
	}
	var kind, fault string
	for _, sc := range scenarios {
		if sc.name == name {
			kind, fault = sc.broker, sc.fault
		}
	}
	switch kind {
	case "rabbitmq":
		server, ctl, err := findRabbitMQ(s.rabbitmqServer, s.rabbitmqctl)
		if err != nil {
			return target{}, err
		}
		n, err := startRabbitNode(ctx, server, ctl, s.keep)
		if err != nil {
			return target{}, err
		}
		f, err := n.fault(fault)
		if err != nil {
			return target{}, errors.Join(err, n.close())
		}
		return target{
			url:      n.url(),
			describe: fmt.Sprintf("private RabbitMQ node %s on 127.0.0.1:%d (%s)", n.name, n.port, server),
			fault:    f,
			close:    n.close,
		}, nil
	case "kafka":
		b, err := startKafkaBroker(ctx, s.keep)
		if err != nil {
			return target{}, err
		}
		f, err := b.fault(fault)
		if err != nil {
			return target{}, errors.Join(err, b.close())
		}
		return target{
			url:      b.url(),
			describe: fmt.Sprintf("private Kafka-protocol broker (franz-go kfake, DataDir + SyncWrites) on %s", b.addr),
			fault:    f,
			close:    b.close,
		}, nil
	}
	return target{}, fmt.Errorf("unknown scenario %q", name)
}
