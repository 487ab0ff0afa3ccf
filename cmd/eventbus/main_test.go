package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/syncbuf"
)

// cliBinary is the eventbus command the tests run as a subprocess, built
// once by TestMain.
var cliBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "eventbus-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cliBinary = filepath.Join(dir, "eventbus")
	if out, err := exec.Command("go", "build", "-o", cliBinary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the eventbus command: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// goleak.VerifyTestMain would exit before the binary is removed.
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

const testTimeout = 60 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func unique(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// broker is one test's namespace on a real broker.
type broker struct {
	kind string // "amqp", "kafka" or "nats"
	url  string
}

// amqpBroker returns a URL on the local RabbitMQ with an exchange of the
// test's own; the exchange and the queues of the given services are
// deleted when the test ends (tap queues delete themselves).
func amqpBroker(t *testing.T, services ...string) broker {
	t.Helper()
	base := brokertest.AMQPURL(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	exchange := unique("cli-test-")
	q := u.Query()
	q.Set("exchange", exchange)
	u.RawQuery = q.Encode()
	t.Cleanup(func() { deleteAMQP(t, base, exchange, services) })
	return broker{kind: "amqp", url: u.String()}
}

// deleteAMQP deletes the exchange and every queue of the services.
func deleteAMQP(t *testing.T, base, exchange string, services []string) {
	conn, err := amqp091.Dial(base)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer conn.Close()
	queues := map[string]bool{}
	if out, err := exec.Command("rabbitmqctl", "-q", "list_queues", "name").Output(); err == nil {
		for _, name := range strings.Fields(string(out)) {
			for _, s := range services {
				if strings.HasPrefix(name, s+".") || name == "poison:"+s {
					queues[name] = true
				}
			}
		}
	}
	for _, s := range services {
		queues["poison:"+s] = true
	}
	for name := range queues {
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		_, _ = ch.QueueDelete(name, false, false, false)
		_ = ch.Close()
	}
	ch, err := conn.Channel()
	if err == nil {
		_ = ch.ExchangeDelete(exchange, false, false)
		_ = ch.Close()
	}
}

// kafkaBroker returns a URL on an in-process kfake cluster of the test's
// own (see brokertest) with a fresh topic prefix.
func kafkaBroker(t *testing.T) broker {
	t.Helper()
	brokers, _ := brokertest.KafkaBrokers(t)
	return broker{kind: "kafka", url: "kafka://" + strings.Join(brokers, ",") + "/?prefix=" + unique("t") + "&join_timeout=30s"}
}

// natsBroker returns a URL on the test NATS server (see brokertest) with
// a stream of the test's own, deleted when the test ends.
func natsBroker(t *testing.T) broker {
	t.Helper()
	base, _ := brokertest.NATSURL(t)
	stream := unique("cli-")
	t.Cleanup(func() {
		nc, err := nats.Connect(base)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range []string{stream, stream + "_poison"} {
			_ = js.DeleteStream(ctx, s)
		}
	})
	return broker{kind: "nats", url: strings.TrimSuffix(base, "/") + "/?stream=" + stream}
}

// eachBroker runs f against RabbitMQ and kfake.
func eachBroker(t *testing.T, services []string, f func(t *testing.T, br broker)) {
	t.Run("amqp", func(t *testing.T) { f(t, amqpBroker(t, services...)) })
	t.Run("kafka", func(t *testing.T) { f(t, kafkaBroker(t)) })
}

// eachBrokerAndNATS runs f against RabbitMQ, kfake and NATS.
func eachBrokerAndNATS(t *testing.T, services []string, f func(t *testing.T, br broker)) {
	eachBroker(t, services, f)
	t.Run("nats", func(t *testing.T) { f(t, natsBroker(t)) })
}

// quiet logs warnings and errors of the tests' buses.
var quiet = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// newBus opens a bus for service on br, closed when the test ends.
func newBus(t *testing.T, br broker, service string) *eventbus.Bus {
	t.Helper()
	b, err := eventbus.New(testCtx(t), eventbus.Config{ServiceName: service, URL: br.url, Logger: quiet,
		Policy: eventbus.Policy{MaxAttempts: 2, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}})
	if err != nil {
		t.Fatalf("eventbus.New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b
}

// result is what one run of the command did.
type result struct {
	stdout, stderr string
	code           int
}

// cli runs the command with EVENTBUS_URL set to br's URL and stdin.
func cli(t *testing.T, br broker, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*testTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliBinary, args...)
	cmd.Env = append(os.Environ(), "EVENTBUS_URL="+br.url)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running eventbus %v: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

// mustCLI runs the command and fails the test unless it exits 0.
func mustCLI(t *testing.T, br broker, stdin string, args ...string) result {
	t.Helper()
	r := cli(t, br, stdin, args...)
	if r.code != 0 {
		t.Fatalf("eventbus %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// background is a command running while the test goes on.
type background struct {
	cmd    *exec.Cmd
	stdout *syncbuf.Buffer
	stderr *syncbuf.Buffer
	done   chan struct{}
}

// start runs the command in the background and waits until its stderr
// (or stdout) shows ready.
func start(t *testing.T, br broker, ready string, args ...string) *background {
	t.Helper()
	cmd := exec.Command(cliBinary, args...)
	cmd.Env = append(os.Environ(), "EVENTBUS_URL="+br.url)
	bg := &background{cmd: cmd, stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = bg.stdout, bg.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = cmd.Wait()
		close(bg.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-bg.done
	})
	waitFor(t, "eventbus "+args[0]+" ready", func() bool {
		select {
		case <-bg.done:
			t.Fatalf("eventbus %v exited early: %v\n%s%s", args, cmd.ProcessState, bg.stdout, bg.stderr)
		default:
		}
		return strings.Contains(bg.stderr.String()+bg.stdout.String(), ready)
	}, func() string { return bg.stderr.String() })
	return bg
}

// wait waits for the command to exit and returns its exit code.
func (bg *background) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-bg.done:
	case <-time.After(testTimeout):
		t.Fatalf("eventbus %v did not exit; stderr:\n%s", bg.cmd.Args, bg.stderr)
	}
	return bg.cmd.ProcessState.ExitCode()
}

// waitFor polls cond until it holds, failing the test after testTimeout.
func waitFor(t *testing.T, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v; %s", what, testTimeout, describe())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recorder records handled events.
type recorder struct {
	mu     sync.Mutex
	events map[string]eventbus.Event
	count  map[string]int
}

func newRecorder() *recorder {
	return &recorder{events: map[string]eventbus.Event{}, count: map[string]int{}}
}

func (r *recorder) handle(_ context.Context, ev eventbus.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events[ev.ID] = ev
	r.count[ev.ID]++
	return nil
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func (r *recorder) get(id string) (eventbus.Event, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events[id], r.count[id]
}

func (r *recorder) duplicates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.count {
		n += c - 1
	}
	return n
}

// lines returns the non-empty lines of s.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}
