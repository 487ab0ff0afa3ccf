package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// logTimes records when log lines containing a substring were written.
type logTimes struct {
	mu    sync.Mutex
	match string
	times []time.Time
}

func (l *logTimes) Enabled(context.Context, slog.Level) bool { return true }
func (l *logTimes) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logTimes) WithGroup(string) slog.Handler            { return l }
func (l *logTimes) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, l.match) {
		l.mu.Lock()
		l.times = append(l.times, r.Time)
		l.mu.Unlock()
	}
	return nil
}

func (l *logTimes) snapshot() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.times...)
}

// TestConsumerBacksOffWhenBrokerIsGone: when the cluster goes away, the
// consumer retries with growing delays (no hot loop, one log line per
// attempt), and the transport still closes promptly. It stops the broker,
// so it always runs on its own in-process cluster.
func TestConsumerBacksOffWhenBrokerIsGone(t *testing.T) {
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(func(network, _ string) (net.Listener, error) {
		return net.Listen(network, "127.0.0.1:0")
	}))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			c.Close()
		}
	}()
	logs := &logTimes{match: "retrying"}
	u := "kafka://" + strings.Join(c.ListenAddrs(), ",") + "/?prefix=gone"
	tr, err := driver.Open(testCtx(t), u, driver.Config{ServiceName: "gone", Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "gone.s", Service: "gone", Subscription: "s", Concurrency: 1, Pattern: "x.#", Match: matcher("x.#")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Subscribe(testCtx(t), "x.#"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	stopped = true
	waitFor(t, "four retries logged", func() bool { return len(logs.snapshot()) >= 4 },
		func() string { return fmt.Sprintf("%d retry log lines", len(logs.snapshot())) })
	ts := logs.snapshot()
	var gaps []string
	for i := 1; i < len(ts); i++ {
		gaps = append(gaps, ts[i].Sub(ts[i-1]).Round(time.Millisecond).String())
	}
	t.Logf("gaps between retries: %s", strings.Join(gaps, ", "))
	for i := 2; i < len(ts); i++ {
		// Each wait is at least the 100ms minimum and they grow.
		if gap := ts[i].Sub(ts[i-1]); gap < 90*time.Millisecond {
			t.Errorf("retry %d came %v after the previous one: a hot loop", i, gap)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- tr.Close() }()
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Fatal("Close hung while the broker is gone")
	}
}
