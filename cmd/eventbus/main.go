// Command eventbus is the operator's tool for go-eventbus: it shows the
// events flowing through a broker, publishes events, lists, replays and
// purges a service's poison queue, describes a service's broker objects,
// and runs a development Kafka broker.
//
//	go install github.com/paissive/go-eventbus/cmd/eventbus@latest
//	export EVENTBUS_URL=amqp://guest:guest@localhost:5672/
//	eventbus tail 'order.#'
//	eventbus publish order.placed --data '{"order_id":"42"}'
//	eventbus poison ls --service billing --reason retries-exhausted
//	eventbus poison replay --service billing --subscription invoices
//	eventbus topology --service billing
//	eventbus dev kafka
//
// It speaks to the broker through the same transports and URLs as the
// library (--url, else EVENTBUS_URL, else the library's default RabbitMQ
// on localhost), and never prints a URL's password. `eventbus <command>
// --help` documents each command with an example; docs/operations.md has a
// session of each.
//
// Exit codes:
//
//	0    success
//	1    failure (the broker refused an operation, a tap ended, a wait timed out)
//	2    usage error (unknown command or flag, bad argument, a URL the transport does not accept)
//	3    broker unreachable (no connection within --connect-timeout, or credentials refused)
//	4    partial failure (some events published or replayed, others not: the output lists them)
//	5    the transport lacks the capability the command needs (tap, topology,
//	     a tap from the beginning on RabbitMQ)
//	130  interrupted (Ctrl-C); replay and purge finish the page in flight first
//
// The command line is built with spf13/cobra: the framework of kubectl,
// gh and docker, so its nested commands (`poison replay`), --help layout,
// examples and shell completion are what operators already know, and it
// costs two small dependencies (pflag, mousetrap). urfave/cli v3 has no
// dependencies but a less familiar help layout; kong's struct tags suit
// flat commands better than a tree of them. Progress bars are
// schollz/progressbar: maintained, no cgo, it draws on any io.Writer (so
// on stderr only, and only when stderr is a terminal) and renders
// unknown totals as a counter with a rate.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	_ "github.com/paissive/go-eventbus/transports/amqp"
	_ "github.com/paissive/go-eventbus/transports/kafka"
	_ "github.com/paissive/go-eventbus/transports/memory"
	_ "github.com/paissive/go-eventbus/transports/nats"
)

// Exit codes; see the package documentation.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitUnreachable = 3
	exitPartial     = 4
	exitUnsupported = 5
	exitInterrupted = 130
)

// exitError carries an exit code with the message printed for it.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

func usageErrorf(format string, args ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, args...))
}

// errInterrupted ends a command stopped by Ctrl-C.
var errInterrupted = errors.New("interrupted")

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot(stdin, stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	code := exitFailure
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
	case errors.Is(err, errInterrupted):
		code = exitInterrupted
	case isUsageError(err):
		code = exitUsage
	}
	msg := redactAll(err.Error())
	if !strings.HasPrefix(msg, "eventbus: ") {
		msg = "eventbus: " + msg
	}
	fmt.Fprintln(stderr, msg)
	if code == exitUsage && !strings.Contains(err.Error(), "--help") {
		fmt.Fprintln(stderr, "run 'eventbus "+commandPath(root, args)+" --help' for usage")
	}
	return code
}

// isUsageError tells cobra's and pflag's errors about the command line.
func isUsageError(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "accepts ", "requires at least", "required flag"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

// commandPath names the (sub)command args select, for the hint after a
// usage error.
func commandPath(root *cobra.Command, args []string) string {
	c, _, err := root.Find(args)
	if err != nil || c == root {
		return ""
	}
	return strings.TrimPrefix(c.CommandPath(), root.Name()+" ")
}

// globals are the flags every command shares.
type globals struct {
	url            string
	connectTimeout time.Duration
	verbose        bool
	stdin          io.Reader
	stdout, stderr io.Writer
}

func newRoot(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "eventbus",
		Short: "Operate go-eventbus services: tail, publish, poison queues, topology, a development Kafka",
		Long: `eventbus shows the events flowing through a broker, publishes events, lists,
replays and purges a service's poison queue, describes a service's broker
objects, and runs a development Kafka-protocol broker.

The broker is --url, else $EVENTBUS_URL, else ` + driver.RedactURL(eventbus.DefaultURL) + `
(the same URLs as the library: amqp://, amqps://, kafka://, mem://).
Passwords in URLs are never printed.

Exit codes: 0 success, 1 failure, 2 usage error, 3 broker unreachable,
4 partial failure, 5 capability not supported by the transport,
130 interrupted.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return withCode(exitUsage, err) })
	pf := root.PersistentFlags()
	pf.StringVar(&g.url, "url", "", "broker URL (default $EVENTBUS_URL, else "+driver.RedactURL(eventbus.DefaultURL)+")")
	pf.DurationVar(&g.connectTimeout, "connect-timeout", 15*time.Second, "how long to wait for the broker before giving up (exit code 3)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log the transport's debug lines to stderr")
	root.AddCommand(newTailCmd(g), newPublishCmd(g), newPoisonCmd(g), newTopologyCmd(g), newDevCmd(g))
	return root
}

// brokerURL is the URL the commands use.
func (g *globals) brokerURL() string {
	if g.url != "" {
		return g.url
	}
	if u := os.Getenv("EVENTBUS_URL"); u != "" {
		return u
	}
	return eventbus.DefaultURL
}

// redacted is brokerURL without its password.
func (g *globals) redacted() string { return driver.RedactURL(g.brokerURL()) }

func (g *globals) logger() *slog.Logger {
	level := slog.LevelError
	if g.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindString {
			a.Value = slog.StringValue(redactAll(a.Value.String()))
		}
		return a
	}}))
}

// open connects a bus for service, classifying failures by exit code.
func (g *globals) open(ctx context.Context, service string) (*eventbus.Bus, error) {
	ctx, cancel := context.WithTimeout(ctx, g.connectTimeout)
	defer cancel()
	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: service, URL: g.brokerURL(), Logger: g.logger()})
	if err == nil {
		return b, nil
	}
	msg := err.Error()
	switch {
	case ctx.Err() != nil || strings.Contains(msg, "cannot connect") || strings.Contains(msg, "refused"):
		return nil, withCode(exitUnreachable, fmt.Errorf("%w; check that the broker at %s runs and that --url (or EVENTBUS_URL) is right, or wait longer with --connect-timeout", err, g.redacted()))
	case strings.Contains(msg, "ServiceName"):
		return nil, usageErrorf("%v", err)
	default:
		return nil, withCode(exitUsage, fmt.Errorf("%w; fix --url (or EVENTBUS_URL)", err))
	}
}

// closeBus closes b within a few seconds.
func closeBus(b *eventbus.Bus) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = b.Close(ctx)
}

// cliService is the service name of the CLI's own bus, for the commands
// that do not act for a service.
const cliService = "eventbus-cli"

// redactAll hides the password of every URL in s.
func redactAll(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == '(' || r == ')' || r == '"' || r == ',' || r == ';' })
	for _, f := range fields {
		if i := strings.Index(f, "://"); i > 0 && strings.Contains(f[i:], "@") {
			s = strings.ReplaceAll(s, f, driver.RedactURL(f))
		}
	}
	return s
}
