package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/IBM/sarama"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// target is the broker a scenario runs against and the fault it suffers.
type target struct {
	url      string
	describe string
	fault    fault
	// close stops a private broker and removes its files; nil for a
	// broker the program did not start.
	close func() error
}

// fault is one way of taking a broker away (down) and bringing it back
// (up). down returns once the broker is gone (the node stopped, the
// process dead or stopped); up returns once the broker has been told to
// come back, which is not yet when it answers: the workload measures
// that with [probe].
type fault struct {
	downWhat, upWhat string
	down, up         func(ctx context.Context) error
}

// commandFault runs shell commands for the outage, for a broker the user
// runs themselves.
func commandFault(stopCmd, startCmd string) fault {
	run := func(ctx context.Context, cmd string) error {
		c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
		if err := c.Run(); err != nil {
			return fmt.Errorf("command %q: %w", cmd, err)
		}
		return nil
	}
	return fault{
		downWhat: "running -stop-cmd " + stopCmd,
		upWhat:   "running -start-cmd " + startCmd,
		down:     func(ctx context.Context) error { return run(ctx, stopCmd) },
		up:       func(ctx context.Context) error { return run(ctx, startCmd) },
	}
}

// probeTimeout bounds one probe: a frozen broker's kernel still accepts
// TCP connections, so only a protocol answer within this time counts.
const probeTimeout = time.Second

// probe reports whether the broker at rawURL answers a new connection at
// the protocol level: an AMQP handshake up to connection.open-ok, or a
// Kafka ApiVersions request answered by the first broker of the URL. A TCP
// accept alone does not count, because the kernel accepts connections for
// a frozen (SIGSTOP) process.
func probe(ctx context.Context, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("broker URL %s: %w", driver.RedactURL(rawURL), err)
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		switch u.Scheme {
		case "amqp", "amqps":
			done <- probeAMQP(rawURL)
		case "kafka":
			done <- probeKafka(u)
		default:
			done <- fmt.Errorf("scheme %q: the program knows amqp://, amqps:// and kafka://", u.Scheme)
		}
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// The probe's own dial and read deadlines end it shortly.
		return ctx.Err()
	}
}

func probeAMQP(rawURL string) error {
	conn, err := amqp091.DialConfig(rawURL, amqp091.Config{Dial: amqp091.DefaultDial(probeTimeout)})
	if err != nil {
		return err
	}
	return conn.Close()
}

func probeKafka(u *url.URL) error {
	host, _, _ := strings.Cut(u.Host, ",")
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, "9092")
	}
	cfg := sarama.NewConfig()
	cfg.Net.DialTimeout, cfg.Net.ReadTimeout, cfg.Net.WriteTimeout = probeTimeout, probeTimeout, probeTimeout
	if v := u.Query().Get("version"); v != "" {
		if ver, err := sarama.ParseKafkaVersion(v); err == nil {
			cfg.Version = ver
		}
	}
	if u.Query().Get("tls") == "true" {
		cfg.Net.TLS.Enable = true
		cfg.Net.TLS.Config = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if u.User != nil {
		cfg.Net.SASL.Enable = true
		cfg.Net.SASL.Mechanism = sarama.SASLTypePlaintext
		cfg.Net.SASL.User = u.User.Username()
		cfg.Net.SASL.Password, _ = u.User.Password()
	}
	b := sarama.NewBroker(host)
	if err := b.Open(cfg); err != nil {
		return err
	}
	defer b.Close()
	resp, err := b.ApiVersions(&sarama.ApiVersionsRequest{})
	if err != nil {
		return err
	}
	if resp.ErrorCode != int16(sarama.ErrNoError) {
		return sarama.KError(resp.ErrorCode)
	}
	return nil
}

// waitAnswering probes rawURL every pollInterval until the broker answers
// and returns the moment it did, or ctx's error.
func waitAnswering(ctx context.Context, rawURL string) (time.Time, error) {
	const pollInterval = 20 * time.Millisecond
	var last error
	for {
		if err := probe(ctx, rawURL); err == nil {
			return time.Now(), nil
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%w (last attempt: %v)", ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// errNotRunning is returned when a fault is applied to a private broker
// process that is not running.
var errNotRunning = errors.New("the broker process is not running")
