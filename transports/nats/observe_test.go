package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/syncbuf"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestConnectivity: while a proxy in front of the server is cut, the
// transport, and the bus's Health, report it disconnected since the cut,
// with the error, and the lost connection is logged at Warn with the
// redacted URL; once healed it reports connected. Asking never waits for
// the server. Describe names the system and the server, and the poison
// queue counts the service's records.
func TestConnectivity(t *testing.T) {
	u, px := faultyURL(t)
	var logs syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := eventbus.New(ctx, eventbus.Config{
		ServiceName: unique("health-"), URL: u,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Policy: eventbus.Policy{MaxAttempts: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	if err := b.Subscribe("health.#", func(context.Context, eventbus.Event) error {
		return eventbus.Permanent(errors.New("poison it"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tr := transportOf(t, b)
	if c := tr.Connectivity(); !c.Connected || c.Since.IsZero() {
		t.Fatalf("connected transport reports %+v", c)
	}
	if h := b.Health(); !h.Ready || !h.Connected {
		t.Errorf("Health while connected: %+v", h)
	}
	if d := tr.Describe(); d.System != "nats" || d.ServerAddress != "127.0.0.1" || d.ServerPort == 0 {
		t.Errorf("Describe = %+v, want nats and the proxy's address", d)
	}
	for range 2 {
		if err := b.Publish(ctx, mustEvent(t, "health.check", nil)); err != nil {
			t.Fatal(err)
		}
	}
	transporttest.WaitFor(t, 10*time.Second, "the poison queue counts the poisoned events", func() bool {
		n, err := tr.pq.PoisonCount(ctx)
		return err == nil && n == 2
	}, func() string { n, err := tr.pq.PoisonCount(ctx); return fmt.Sprint(n, " ", err) })

	cut := time.Now()
	px.Cut()
	transporttest.WaitFor(t, 10*time.Second, "reported disconnected", func() bool {
		start := time.Now()
		c := tr.Connectivity()
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Fatalf("Connectivity took %v while the server is cut", d)
		}
		return !c.Connected
	}, func() string { return fmt.Sprintf("%+v", tr.Connectivity()) })
	if c := tr.Connectivity(); c.Since.Before(cut) || c.LastError == "" {
		t.Errorf("while cut: %+v, want disconnected since the cut, with the error", c)
	}
	if h := b.Health(); h.Ready || h.Connected || h.LastError == "" {
		t.Errorf("Health while cut: %+v", h)
	}
	transporttest.WaitFor(t, 10*time.Second, "the lost connection logged", func() bool {
		return strings.Contains(logs.String(), "connection to the server lost; reconnecting")
	}, logs.String)
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "reconnect") && (!strings.Contains(line, "level=WARN") || !strings.Contains(line, "url=\"nats://127.0.0.1:")) {
			t.Errorf("reconnection line lacks its level or the URL: %s", line)
		}
	}
	px.Heal()
	transporttest.WaitFor(t, 20*time.Second, "reported connected", func() bool { return tr.Connectivity().Connected },
		func() string { return fmt.Sprintf("%+v", tr.Connectivity()) })
	if h := b.Health(); !h.Ready || !h.Connected {
		t.Errorf("Health after healing: %+v", h)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if c := tr.Connectivity(); c.Connected {
		t.Errorf("closed transport reports %+v", c)
	}
}

// TestConnectAttemptsLogged: New against a port nobody listens on logs
// each failed attempt at Warn with the attempt, the next delay and the
// redacted URL, and gives up at its ctx's deadline with the last error.
func TestConnectAttemptsLogged(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nobody listens there now: every dial is refused
	var logs syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = eventbus.New(ctx, eventbus.Config{
		ServiceName: "unreachable", URL: "nats://user:s3cret@" + addr,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err == nil {
		t.Fatal("New connected to a port nobody listens on")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("New returned after %v, its ctx ended after 1.5s", d)
	}
	if strings.Contains(err.Error(), "s3cret") || strings.Contains(logs.String(), "s3cret") {
		t.Errorf("the password shows in the error or the log:\n%v\n%s", err, logs.String())
	}
	var lines int
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, "cannot connect to the server; retrying") {
			continue
		}
		lines++
		if !strings.Contains(line, "level=WARN") || !strings.Contains(line, "attempt=") || !strings.Contains(line, "delay=") || !strings.Contains(line, "url=nats://user:xxxxx@") {
			t.Errorf("attempt line lacks its level, attempt, delay or the redacted URL: %s", line)
		}
	}
	if lines < 2 {
		t.Errorf("%d attempt lines logged in 1.5s, want one per attempt:\n%s", lines, logs.String())
	}
}
