// Command quickstart is the original event bus's basic and schema usage in
// Go: a service subscribes to "user.registered", starts the bus, publishes
// one plain event and one schema-validated event, and prints what its
// handlers received.
//
//	go run ./examples/quickstart
//
// It runs on the in-process broker unless EVENTBUS_URL names another, e.g.
// EVENTBUS_URL=amqp://guest:guest@localhost:5672/ for the local RabbitMQ,
// EVENTBUS_URL=kafka://localhost:9092 for Kafka or
// EVENTBUS_URL=nats://127.0.0.1:4222 for NATS JetStream.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	_ "github.com/paissive/go-eventbus/transports/amqp"
	_ "github.com/paissive/go-eventbus/transports/kafka"
	_ "github.com/paissive/go-eventbus/transports/memory"
	_ "github.com/paissive/go-eventbus/transports/nats"
)

// UserRegistered is the data of a "user.registered" event; the validate
// tags play the part of the original's pydantic model.
type UserRegistered struct {
	UserID   string `json:"user_id" validate:"required"`
	Username string `json:"username" validate:"required"`
	Email    string `json:"email" validate:"required,email"`
}

var userRegistered = eventbus.MustSchema[UserRegistered]("user.registered", eventbus.SchemaVersion("1"))

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := run(ctx, os.Stdout, os.Getenv("EVENTBUS_URL")); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

// run publishes two events and returns once both were handled.
func run(ctx context.Context, out io.Writer, url string) error {
	if url == "" {
		url = "mem://"
	}
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "my-service", URL: url})
	if err != nil {
		return err
	}
	defer bus.Close(context.Background())

	// The events are made first so that the handlers can tell them from
	// events other runs left in a durable broker's queues.
	// It says which version of the user.registered data it carries, which
	// the schema handler checks (a versioned schema rejects unversioned
	// events unless it declares AssumeVersion).
	ev, err := eventbus.NewEvent("user.registered", map[string]string{
		"user_id": "123", "username": "john_doe", "email": "john.doe@example.com",
	}, eventbus.WithSource("my-service"), eventbus.WithDataVersion("1"))
	if err != nil {
		return err
	}
	typed, err := userRegistered.NewEvent(UserRegistered{UserID: "124", Username: "jane_doe", Email: "jane.doe@example.com"}, eventbus.WithSource("my-service"))
	if err != nil {
		return err
	}
	mine := map[string]bool{ev.ID: true, typed.ID: true}

	var mu sync.Mutex // handlers run concurrently; keep their lines whole
	handled := make(chan struct{}, 4)
	// Basic usage: the handler reads the raw data.
	err = bus.Subscribe("user.registered", func(ctx context.Context, ev eventbus.Event) error {
		if !mine[ev.ID] {
			return nil
		}
		var data map[string]any
		if err := ev.Decode(&data); err != nil {
			return eventbus.Permanent(err)
		}
		mu.Lock()
		fmt.Fprintf(out, "basic handler: user registered: %v (event %s, correlation %s)\n", data["username"], ev.ID, eventbus.CorrelationID(ctx))
		mu.Unlock()
		handled <- struct{}{}
		return nil
	}, eventbus.SubscriptionName("basic"))
	if err != nil {
		return err
	}
	// Schema usage: the handler gets the validated, typed data.
	err = bus.Subscribe("user.registered", userRegistered.Handler(func(ctx context.Context, u UserRegistered, ev eventbus.Event) error {
		if !mine[ev.ID] {
			return nil
		}
		mu.Lock()
		fmt.Fprintf(out, "schema handler: user registered: %s <%s> (schema version %q)\n", u.Username, u.Email, ev.DataVersion)
		mu.Unlock()
		handled <- struct{}{}
		return nil
	}), eventbus.SubscriptionName("typed"))
	if err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil {
		return err
	}

	if err := bus.Publish(ctx, ev, typed); err != nil {
		return err
	}
	// Each event reaches both subscriptions: four handler calls.
	for range 4 {
		select {
		case <-handled:
		case <-ctx.Done():
			return fmt.Errorf("waiting for handlers: %w", ctx.Err())
		}
	}
	fmt.Fprintln(out, "all events handled")
	return nil
}
