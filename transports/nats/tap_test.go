package nats

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestTapLargeEventsAndReplays: a tap shows a large event (its body in
// chunks) whole, does not show an event replayed to one group, and Close
// deletes its consumer from the server.
func TestTapLargeEventsAndReplays(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("tap-"))
	if err := b.Subscribe("tap.#", func(context.Context, eventbus.Event) error { return nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	tr := transportOf(t, b)
	tp, err := tr.Tap(ctx, driver.TapConfig{Patterns: []string{"tap.#"}, Match: matcher("tap.#")})
	if err != nil {
		t.Fatal(err)
	}
	events, _ := tr.streams()
	consumers := func() int {
		n := 0
		for range events.ConsumerNames(ctx).Name() {
			n++
		}
		return n
	}
	if got := consumers(); got != 2 {
		t.Fatalf("%d consumers on the stream with a subscription and a tap, want 2", got)
	}
	large := mustEvent(t, "tap.large", bigData(1500<<10, 3))
	small := mustEvent(t, "tap.small", map[string]int{"n": 1})
	if err := b.Publish(ctx, large, small); err != nil {
		t.Fatal(err)
	}
	// A replay to the subscription's group is not shown.
	replay := driver.Encode(driver.Envelope{ID: "replayed-1", Name: "tap.replayed", Source: "test", Type: "domain", Time: time.Now(), Data: []byte(`{}`)})
	if err := tr.Redeliver(ctx, tr.service+".tap.#", replay); err != nil {
		t.Fatalf("Redeliver: %v", err)
	}
	fence := mustEvent(t, "tap.fence", nil)
	if err := b.Publish(ctx, fence); err != nil {
		t.Fatal(err)
	}
	seen := map[string]driver.Envelope{}
	for len(seen) < 3 {
		select {
		case m, ok := <-tp.Messages():
			if !ok {
				t.Fatalf("tap closed: %v", tp.Err())
			}
			env, err := driver.Decode(m)
			if err != nil {
				t.Fatalf("tap delivered a message that is not an event: %v", err)
			}
			seen[env.Name] = env
		case <-ctx.Done():
			t.Fatalf("tap saw %d of 3 events", len(seen))
		}
	}
	if got := seen["tap.large"]; !bytes.Equal(got.Data, large.Data) {
		t.Errorf("large event through the tap: %d bytes, want %d intact", len(got.Data), len(large.Data))
	}
	if _, ok := seen["tap.replayed"]; ok {
		t.Error("the tap showed an event replayed to one group")
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-tp.Messages(); ok {
		t.Error("the tap's channel is open after Close")
	}
	if err := tp.Err(); err != nil {
		t.Errorf("Err after Close = %v, want nil", err)
	}
	if got := consumers(); got != 1 {
		t.Errorf("%d consumers after the tap closed, want the subscription's only", got)
	}
}

// TestTapEndsWhenTheConnectionIsLost: a cut connection ends a tap (what
// the server sent meanwhile is gone): its channel closes and Err says why.
// Opening a tap on a closed transport fails with ErrClosed.
func TestTapEndsWhenTheConnectionIsLost(t *testing.T) {
	url, px := faultyURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: unique("tapcut-")})
	if err != nil {
		t.Fatal(err)
	}
	tp, err := tr.(*Transport).Tap(ctx, driver.TapConfig{Patterns: []string{"cut.*"}, Match: matcher("cut.*")})
	if err != nil {
		t.Fatal(err)
	}
	px.Cut()
	select {
	case _, ok := <-tp.Messages():
		if ok {
			t.Fatal("a message arrived on a tap whose connection was cut")
		}
	case <-ctx.Done():
		t.Fatal("the tap is still open 30s after its connection was cut")
	}
	if err := tp.Err(); err == nil || !strings.Contains(err.Error(), "connection to the server was lost") {
		t.Errorf("Err = %v, want the lost connection", err)
	}
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	px.Heal()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.(*Transport).Tap(ctx, driver.TapConfig{Patterns: []string{"cut.*"}, Match: matcher("cut.*")}); err == nil {
		t.Error("Tap on a closed transport succeeded")
	}
}

// TestTapCloseBoundedWhileFrozen: a tap's Close returns within about 2 s
// while the server accepts and never answers.
func TestTapCloseBoundedWhileFrozen(t *testing.T) {
	url, px := faultyURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: unique("tapfrozen-")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	tp, err := tr.(*Transport).Tap(ctx, driver.TapConfig{Patterns: []string{"frozen.#"}, Match: matcher("frozen.#")})
	if err != nil {
		t.Fatal(err)
	}
	px.Stall()
	start := time.Now()
	if err := tp.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v while the server was frozen, want at most about 2s", d)
	}
	px.Heal()
}
