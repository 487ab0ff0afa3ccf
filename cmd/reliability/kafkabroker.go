package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/paissive/go-eventbus/internal/devkafka"
)

// kafkaBrokerCommand is the first argument that makes the program run as
// a Kafka-protocol broker instead of running a scenario: the parent
// re-executes itself this way, so that the broker is a process it can
// kill -9 and freeze.
const kafkaBrokerCommand = "kafka-broker"

// kafkaStartTimeout bounds the start of a broker process; kfake starts in
// milliseconds, reloading its data directory included.
const kafkaStartTimeout = 30 * time.Second

// kafkaBrokerMain runs a single-broker franz-go kfake cluster on -addr
// with its state in -dir (kfake.DataDir writes each produced batch and
// each offset commit there before answering, and kfake.SyncWrites fsyncs
// them), so a process killed with SIGKILL and started again on the same
// directory keeps its topics, records and committed group offsets. It
// prints "ready <addr>" once it listens and runs until its standard input
// ends (the parent closed it or died) or SIGTERM/SIGINT.
func kafkaBrokerMain(args []string) int {
	fs := flag.NewFlagSet(kafkaBrokerCommand, flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9092", "listen address (127.0.0.1:port; kfake listens on loopback)")
	dir := fs.String("dir", "", "data directory, reloaded at start if it holds a previous run's state")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	_, p, err := net.SplitHostPort(*addr)
	_, perr := strconv.Atoi(p)
	if err != nil || perr != nil || *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: reliability kafka-broker -addr 127.0.0.1:PORT -dir DIR")
		return 2
	}
	c, err := devkafka.Start(*addr, kfake.DataDir(*dir), kfake.SyncWrites())
	if err != nil {
		fmt.Fprintf(os.Stderr, "kafka-broker: %v\n", err)
		return 1
	}
	fmt.Printf("ready %s\n", c.ListenAddrs()[0])
	stdinDone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinDone)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	select {
	case <-stdinDone:
	case <-sig:
	}
	c.Close()
	return 0
}

// kafkaBroker is a private Kafka-protocol broker: this program re-executed
// as "kafka-broker" on a fixed loopback port and a data directory that
// outlives the process, so a restart on the same port finds the same
// topics, records and offsets.
type kafkaBroker struct {
	exe  string
	addr string
	dir  string
	keep bool

	cmd    *exec.Cmd
	stdin  io.Closer     // closing it ends the broker
	exited chan struct{} // closed when cmd exits
	frozen bool
}

// startKafkaBroker starts a broker on a free port with a fresh data
// directory.
func startKafkaBroker(ctx context.Context, keep bool) (*kafkaBroker, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program to run the Kafka broker: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "eventbus-rel-kafka-")
	if err != nil {
		return nil, err
	}
	b := &kafkaBroker{exe: exe, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, keep: keep}
	if err := b.launch(ctx); err != nil {
		return nil, errors.Join(err, b.close())
	}
	return b, nil
}

// url is the broker's kafka:// URL.
func (b *kafkaBroker) url() string { return "kafka://" + b.addr }

// launch starts the broker process and waits for its "ready" line.
func (b *kafkaBroker) launch(ctx context.Context) error {
	cmd := exec.Command(b.exe, kafkaBrokerCommand, "-addr", b.addr, "-dir", b.dir)
	cmd.Stderr = os.Stderr
	// Its own process group: a Ctrl-C in the terminal reaches only the
	// parent, which then closes the broker in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the Kafka broker process: %w", err)
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && !strings.HasPrefix(line, "ready ") {
			err = fmt.Errorf("unexpected first line %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, stdout)
	}()
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	b.cmd, b.stdin, b.exited = cmd, stdin, exited
	ctx, cancel := context.WithTimeout(ctx, kafkaStartTimeout)
	defer cancel()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("the Kafka broker process did not start on %s: %w", b.addr, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the Kafka broker process did not start on %s: %w", b.addr, ctx.Err())
	}
}

func (b *kafkaBroker) running() bool {
	if b.cmd == nil {
		return false
	}
	select {
	case <-b.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the broker process and waits until it is gone.
func (b *kafkaBroker) kill(ctx context.Context) error {
	if !b.running() {
		return errNotRunning
	}
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-b.exited:
		b.frozen = false
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// signal sends SIGSTOP or SIGCONT to the broker process.
func (b *kafkaBroker) signal(sig syscall.Signal) error {
	if !b.running() {
		return errNotRunning
	}
	if err := b.cmd.Process.Signal(sig); err != nil {
		return err
	}
	b.frozen = sig == syscall.SIGSTOP
	return nil
}

// fault returns the outage of a Kafka scenario: kill -9 of the broker
// process and a new one on the same port and data ("kill"), or
// SIGSTOP/SIGCONT of the process ("freeze").
func (b *kafkaBroker) fault(kind string) (fault, error) {
	switch kind {
	case "kill":
		return fault{
			downWhat: "kill -9 of the broker process",
			upWhat:   "starting the broker again on the same port and data",
			down:     b.kill,
			up:       b.launch,
		}, nil
	case "freeze":
		return fault{
			downWhat: "SIGSTOP to the broker process",
			upWhat:   "SIGCONT to the broker process",
			down:     func(context.Context) error { return b.signal(syscall.SIGSTOP) },
			up:       func(context.Context) error { return b.signal(syscall.SIGCONT) },
		}, nil
	}
	return fault{}, fmt.Errorf("no Kafka fault %q", kind)
}

// close ends the broker process (closing its stdin, SIGKILL after 10 s)
// and removes its data directory unless keep is set.
func (b *kafkaBroker) close() error {
	var err error
	if b.running() {
		if b.frozen {
			_ = b.cmd.Process.Signal(syscall.SIGCONT)
		}
		_ = b.stdin.Close()
		select {
		case <-b.exited:
		case <-time.After(10 * time.Second):
			_ = b.cmd.Process.Kill()
			<-b.exited
			err = fmt.Errorf("the Kafka broker process did not stop within 10 s and was killed")
		}
	}
	if b.keep {
		fmt.Fprintf(os.Stderr, "reliability: kept the private Kafka broker's data in %s\n", b.dir)
		return err
	}
	return errors.Join(err, os.RemoveAll(b.dir))
}
