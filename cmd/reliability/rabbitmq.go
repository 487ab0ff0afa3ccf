package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// debianRabbitMQBin is where the Debian package keeps the real start
// scripts. /usr/sbin/rabbitmq-server there is a wrapper that, run as root,
// switches to the rabbitmq user and that user's home and cookie, and
// writes its output to /var/log/rabbitmq, which a private node must not
// do; the scripts in this directory take the environment as given.
const debianRabbitMQBin = "/usr/lib/rabbitmq/bin"

// rabbitStartTimeout bounds a node's boot. On the reference machine a
// node boots in about 8 s, also after kill -9 (it recovers its message
// store).
const rabbitStartTimeout = 2 * time.Minute

// rabbitNode is a private RabbitMQ node the program starts, faults and
// stops, so the machine's own broker (rabbit@localhost on 5672) is never
// touched. Everything it writes is in its own temporary directory: the
// Mnesia database and message store, logs, pid file, an empty plugin list,
// a config file that listens on a free loopback port, and the Erlang
// cookie rabbitmqctl needs (HOME points to the directory). The node name
// is eventbus-rel-<pid>-<random>@localhost and its distribution port is
// another free port, bound to loopback.
type rabbitNode struct {
	name           string
	dir            string
	port, distPort int
	server, ctl    string
	env            []string
	keep           bool

	cmd    *exec.Cmd     // the running rabbitmq-server script
	exited chan struct{} // closed when cmd exits
	frozen int           // OS pid stopped with SIGSTOP, 0 if none
}

// findRabbitMQ returns the rabbitmq-server and rabbitmqctl scripts to run:
// the given paths, else the Debian package's real scripts, else the ones
// on PATH (the generic Unix release and Homebrew install those).
func findRabbitMQ(server, ctl string) (string, string, error) {
	if server == "" {
		if _, err := os.Stat(filepath.Join(debianRabbitMQBin, "rabbitmq-server")); err == nil {
			server = filepath.Join(debianRabbitMQBin, "rabbitmq-server")
		} else if p, err := exec.LookPath("rabbitmq-server"); err == nil {
			server = p
		} else {
			return "", "", fmt.Errorf("rabbitmq-server not found in %s or on PATH: install RabbitMQ, give -rabbitmq-server, or run against your own broker with -url, -stop-cmd and -start-cmd", debianRabbitMQBin)
		}
	}
	if ctl == "" {
		ctl = filepath.Join(filepath.Dir(server), "rabbitmqctl")
	}
	if _, err := os.Stat(ctl); err != nil {
		return "", "", fmt.Errorf("rabbitmqctl not found next to %s: give -rabbitmqctl", server)
	}
	return server, ctl, nil
}

// startRabbitNode creates and boots a private node, returning once it
// answers AMQP connections.
func startRabbitNode(ctx context.Context, server, ctl string, keep bool) (n *rabbitNode, err error) {
	dir, err := os.MkdirTemp("", "eventbus-rel-rabbitmq-")
	if err != nil {
		return nil, err
	}
	n = &rabbitNode{dir: dir, server: server, ctl: ctl, keep: keep}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.close())
		}
	}()
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	n.name = fmt.Sprintf("eventbus-rel-%d-%s@localhost", os.Getpid(), hex.EncodeToString(suffix[:]))
	if n.port, err = freePort(); err != nil {
		return n, err
	}
	for n.distPort == 0 || n.distPort == n.port {
		if n.distPort, err = freePort(); err != nil {
			return n, err
		}
	}
	var cookie [20]byte
	_, _ = rand.Read(cookie[:])
	files := []struct {
		name, text string
		mode       os.FileMode
	}{
		{"enabled_plugins", "[].\n", 0o644},
		// The package's /etc/rabbitmq/rabbitmq.conf may name 5672: this
		// file replaces it.
		{"rabbitmq.conf", fmt.Sprintf("listeners.tcp.local = 127.0.0.1:%d\n", n.port), 0o644},
		// Replaces /etc/rabbitmq/rabbitmq-env.conf, which sets the shared
		// node's name.
		{"rabbitmq-env.conf", "", 0o644},
		{".erlang.cookie", strings.ToUpper(hex.EncodeToString(cookie[:])), 0o400},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.text), f.mode); err != nil {
			return n, err
		}
	}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "HOME" || strings.HasPrefix(k, "RABBITMQ_") || strings.HasPrefix(k, "ERL_") {
			continue
		}
		n.env = append(n.env, kv)
	}
	n.env = append(n.env,
		"HOME="+dir, // the Erlang cookie of the node and of rabbitmqctl
		"RABBITMQ_NODENAME="+n.name,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(n.port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(n.distPort),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "node.pid"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"ERL_EPMD_ADDRESS=127.0.0.1",
	)
	if err := n.launch(); err != nil {
		return n, err
	}
	if err := n.waitBooted(ctx); err != nil {
		return n, err
	}
	return n, nil
}

// url is the node's AMQP URL (the guest user may connect from loopback).
func (n *rabbitNode) url() string {
	return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.port)
}

// launch starts the node's rabbitmq-server script in the foreground (its
// own process group, so a Ctrl-C in the terminal reaches only this
// program, which then stops the node in order).
func (n *rabbitNode) launch() error {
	out, err := os.OpenFile(filepath.Join(n.dir, "server.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	_ = os.Remove(filepath.Join(n.dir, "node.pid")) // the new node writes its own
	cmd := exec.Command(n.server)
	cmd.Dir, cmd.Env = n.dir, n.env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", n.server, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	n.cmd, n.exited = cmd, exited
	return nil
}

// waitBooted waits until the node answers AMQP connections.
func (n *rabbitNode) waitBooted(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, rabbitStartTimeout)
	defer cancel()
	exited := n.exited
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	go func() {
		select {
		case <-exited:
			stop(errors.New("rabbitmq-server exited"))
		case <-ctx.Done():
		}
	}()
	if _, err := waitAnswering(ctx, n.url()); err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, ctx.Err()) {
			err = cause
		}
		return fmt.Errorf("private RabbitMQ node %s did not boot: %w; see %s and %s", n.name, err,
			filepath.Join(n.dir, "server.out"), filepath.Join(n.dir, "log"))
	}
	return nil
}

// running reports whether the node's script is running.
func (n *rabbitNode) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// osPid returns the OS pid of the node's Erlang VM (beam.smp), from the
// pid file the node writes when it boots.
func (n *rabbitNode) osPid() (int, error) {
	if !n.running() {
		return 0, errNotRunning
	}
	b, err := os.ReadFile(filepath.Join(n.dir, "node.pid"))
	if err != nil {
		return 0, fmt.Errorf("reading the node's pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("the node's pid file holds %q", b)
	}
	return pid, nil
}

// rabbitmqctl runs rabbitmqctl -n <node> args.
func (n *rabbitNode) rabbitmqctl(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, n.ctl, append([]string{"-n", n.name}, args...)...)
	cmd.Dir, cmd.Env = n.dir, n.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("rabbitmqctl -n %s %s: %w: %s", n.name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// kill sends SIGKILL to the node's VM and waits until its script exited.
func (n *rabbitNode) kill(ctx context.Context) error {
	pid, err := n.osPid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d: %w", pid, err)
	}
	select {
	case <-n.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rabbitmq-server did not exit after kill -9 of its VM (pid %d): %w", pid, ctx.Err())
	}
}

// signal sends sig (SIGSTOP or SIGCONT) to the node's VM.
func (n *rabbitNode) signal(sig syscall.Signal) error {
	pid, err := n.osPid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return fmt.Errorf("kill -%v %d: %w", sig, pid, err)
	}
	n.frozen = 0
	if sig == syscall.SIGSTOP {
		n.frozen = pid
	}
	return nil
}

// fault returns the outage of a RabbitMQ scenario: stop_app/start_app
// ("stop"), kill -9 of the VM and a new boot on the same data ("kill"),
// or SIGSTOP/SIGCONT of the VM ("freeze").
func (n *rabbitNode) fault(kind string) (fault, error) {
	switch kind {
	case "stop":
		return fault{
			downWhat: "rabbitmqctl stop_app",
			upWhat:   "rabbitmqctl start_app",
			down:     func(ctx context.Context) error { return n.rabbitmqctl(ctx, "stop_app") },
			up:       func(ctx context.Context) error { return n.rabbitmqctl(ctx, "start_app") },
		}, nil
	case "kill":
		return fault{
			downWhat: "kill -9 of the node's VM",
			upWhat:   "starting the node again on the same data",
			down:     n.kill,
			up:       func(context.Context) error { return n.launch() },
		}, nil
	case "freeze":
		return fault{
			downWhat: "SIGSTOP to the node's VM",
			upWhat:   "SIGCONT to the node's VM",
			down:     func(context.Context) error { return n.signal(syscall.SIGSTOP) },
			up:       func(context.Context) error { return n.signal(syscall.SIGCONT) },
		}, nil
	}
	return fault{}, fmt.Errorf("no RabbitMQ fault %q", kind)
}

// close stops the node (thawing it first if frozen) and removes its
// directory unless keep is set. A node that does not stop within 30 s is
// killed with its process group.
func (n *rabbitNode) close() error {
	if n.frozen != 0 {
		_ = syscall.Kill(n.frozen, syscall.SIGCONT)
		n.frozen = 0
	}
	var err error
	if n.running() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		stopErr := n.rabbitmqctl(ctx, "stop")
		select {
		case <-n.exited:
		case <-ctx.Done():
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			<-n.exited
			err = fmt.Errorf("private RabbitMQ node %s did not stop within 30 s and was killed (%v)", n.name, stopErr)
		}
		cancel()
	}
	if n.keep {
		fmt.Fprintf(os.Stderr, "reliability: kept the private RabbitMQ node's files in %s\n", n.dir)
		return err
	}
	return errors.Join(err, os.RemoveAll(n.dir))
}
