package memory_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/transports/memory"
)

// TestUnroutableAccept: by default an event no subscription matches fails
// with ErrUnroutable; with ?unroutable=accept Publish accepts it and the
// transport counts it; events that do match are delivered either way.
func TestUnroutableAccept(t *testing.T) {
	ctx := context.Background()
	name := strings.ReplaceAll(t.Name(), "/", "-")
	defer memory.Forget(name)
	strict, err := eventbus.New(ctx, eventbus.Config{ServiceName: "strict", URL: "mem://" + name})
	if err != nil {
		t.Fatal(err)
	}
	defer strict.Close(ctx)
	lax, err := eventbus.New(ctx, eventbus.Config{ServiceName: "lax", URL: "mem://" + name + "?unroutable=accept"})
	if err != nil {
		t.Fatal(err)
	}
	defer lax.Close(ctx)
	counter, ok := lax.Transport().(driver.UnroutableCounter)
	if !ok {
		t.Fatalf("%T does not implement driver.UnroutableCounter", lax.Transport())
	}

	ev, _ := eventbus.NewEvent("nobody.listens", nil)
	if err := strict.Publish(ctx, ev); !errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("default: %v; want ErrUnroutable", err)
	}
	if n := strict.Transport().(driver.UnroutableCounter).UnroutableAccepted(); n != 0 {
		t.Errorf("default transport counted %d accepted events", n)
	}
	ev2, _ := eventbus.NewEvent("nobody.listens", nil)
	if err := lax.Publish(ctx, ev, ev2); err != nil {
		t.Errorf("unroutable=accept: %v", err)
	}
	if n := counter.UnroutableAccepted(); n != 2 {
		t.Errorf("UnroutableAccepted = %d, want 2", n)
	}

	got := make(chan string, 1)
	if err := strict.Subscribe("somebody.#", func(_ context.Context, ev eventbus.Event) error { got <- ev.ID; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := strict.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ev3, _ := eventbus.NewEvent("somebody.listens", nil)
	if err := lax.Publish(ctx, ev3); err != nil {
		t.Fatal(err)
	}
	if id := <-got; id != ev3.ID {
		t.Errorf("delivered %s, want %s", id, ev3.ID)
	}
	if n := counter.UnroutableAccepted(); n != 2 {
		t.Errorf("UnroutableAccepted = %d after a routed event, want 2", n)
	}
	if _, err := eventbus.New(ctx, eventbus.Config{ServiceName: "x", URL: "mem://" + name + "?unroutable=drop"}); err == nil {
		t.Error("unroutable=drop accepted")
	}
}
