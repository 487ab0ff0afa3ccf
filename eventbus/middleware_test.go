package eventbus_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/syncbuf"
	"github.com/paissive/go-eventbus/transports/memory"
)

// trail records the order in which middleware and handlers ran.
type trail struct {
	mu    sync.Mutex
	steps map[string][]string // by event name: one subscription each
	done  chan string
}

func (tr *trail) mw(name string) eventbus.Middleware {
	return func(next eventbus.Handler) eventbus.Handler {
		return func(ctx context.Context, ev eventbus.Event) error {
			tr.mu.Lock()
			tr.steps[ev.Name] = append(tr.steps[ev.Name], name)
			tr.mu.Unlock()
			return next(ctx, ev)
		}
	}
}

func (tr *trail) handler(name string) eventbus.Handler {
	return func(ctx context.Context, ev eventbus.Event) error {
		tr.mu.Lock()
		tr.steps[ev.Name] = append(tr.steps[ev.Name], name)
		tr.mu.Unlock()
		tr.done <- ev.Name
		return nil
	}
}

// TestMiddlewareOrder: Config.Middleware wraps every subscription's
// handler, outermost first; Use adds a subscription's own inside it, and
// only to that subscription.
func TestMiddlewareOrder(t *testing.T) {
	tr := &trail{steps: map[string][]string{}, done: make(chan string, 4)}
	name := "bus-test-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	b, err := eventbus.New(context.Background(), eventbus.Config{
		ServiceName: "mw", URL: "mem://" + name,
		Middleware: []eventbus.Middleware{tr.mw("bus1"), tr.mw("bus2")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	if err := b.Subscribe("with.use", tr.handler("handler"), eventbus.Use(tr.mw("sub1"), tr.mw("sub2"))); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("without.use", tr.handler("handler")); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("bad.use", nop, eventbus.Use(nil)); err == nil {
		t.Error("Subscribe with Use(nil) succeeded")
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"with.use", "without.use"} {
		ev, _ := eventbus.NewEvent(n, nil)
		if err := b.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		select {
		case <-tr.done:
		case <-time.After(10 * time.Second):
			t.Fatal("handlers not called")
		}
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if got, want := strings.Join(tr.steps["with.use"], ">"), "bus1>bus2>sub1>sub2>handler"; got != want {
		t.Errorf("with Use: %s, want %s", got, want)
	}
	if got, want := strings.Join(tr.steps["without.use"], ">"), "bus1>bus2>handler"; got != want {
		t.Errorf("without Use: %s, want %s", got, want)
	}
}

// TestPoisonLogLine: a poisoned event is one Warn line naming the event,
// its correlation ID, the service, the subscription, the reason, the
// attempts and the error, under the keys every package uses.
func TestPoisonLogLine(t *testing.T) {
	var logs syncbuf.Buffer
	name := "bus-test-" + t.Name()
	t.Cleanup(func() { memory.Forget(name) })
	b, err := eventbus.New(context.Background(), eventbus.Config{
		ServiceName: "billing", URL: "mem://" + name,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	if err := b.Subscribe("invoice.*", func(context.Context, eventbus.Event) error {
		return eventbus.Permanent(errors.New("no such customer"))
	}, eventbus.SubscriptionName("invoices")); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev, _ := eventbus.NewEvent("invoice.created", nil, eventbus.WithCorrelationID("corr-7"))
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	line := ""
	waitUntil(t, "the poison log line", func() bool {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "moved to poison queue") {
				line = l
			}
		}
		return line != ""
	})
	for _, want := range []string{"level=WARN", "event_name=invoice.created", "event_id=" + ev.ID, "correlation_id=corr-7",
		"service=billing", "subscription=invoices", "reason=permanent", "attempts=1", `error="no such customer"`} {
		if !strings.Contains(line, want) {
			t.Errorf("poison log line lacks %s: %s", want, line)
		}
	}
}
