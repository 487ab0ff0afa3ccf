package eventbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"sync/atomic"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	_ "github.com/paissive/go-eventbus/transports/memory"
)

// A service creates one bus with its name and a broker URL. Importing a
// transport package registers its URL scheme; "mem://" is the in-process
// broker, "amqp://guest:guest@localhost:5672/" would be RabbitMQ.
func ExampleNew() {
	ctx := context.Background()
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "billing", URL: "mem://example-new"})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close(ctx)
	fmt.Println(bus.ServiceName())

	// A scheme whose transport is not imported names the missing import.
	_, err = eventbus.New(ctx, eventbus.Config{ServiceName: "billing", URL: "kafka://localhost:9092"})
	fmt.Println(err)
	// Output:
	// billing
	// eventbus: no transport registered for "kafka" URLs (kafka://localhost:9092); add `import _ "github.com/paissive/go-eventbus/transports/kafka"` to the program
}

// Handlers subscribe to patterns: "*" matches one segment, "#" any number.
// Start returns once the subscriptions consume.
func ExampleBus_Subscribe() {
	ctx := context.Background()
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "marketing", URL: "mem://example-subscribe"})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close(ctx)

	handled := make(chan string)
	err = bus.Subscribe("user.*", func(ctx context.Context, ev eventbus.Event) error {
		var user struct {
			Name string `json:"name"`
		}
		if err := ev.Decode(&user); err != nil {
			return eventbus.Permanent(err) // malformed data: no retries, straight to the poison queue
		}
		handled <- ev.Name + ": " + user.Name
		return nil // acknowledged; an error would be retried
	}, eventbus.Concurrency(4))
	if err != nil {
		log.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		log.Fatal(err)
	}

	ev, err := eventbus.NewEvent("user.registered", map[string]string{"name": "ada"}, eventbus.WithSource("users"))
	if err != nil {
		log.Fatal(err)
	}
	if err := bus.Publish(ctx, ev); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-handled)
	// Output: user.registered: ada
}

// Publish returns once the broker has accepted every event. An event
// published with a handler's ctx continues the handled event's correlation.
func ExampleBus_Publish() {
	ctx := context.Background()
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "orders", URL: "mem://example-publish"})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close(ctx)

	paid := make(chan eventbus.Event)
	err = bus.Subscribe("order.placed", func(ctx context.Context, ev eventbus.Event) error {
		next, err := eventbus.NewEvent("payment.requested", ev.Data, eventbus.WithSource("orders"))
		if err != nil {
			return err
		}
		return bus.Publish(ctx, next) // the handler's ctx carries the correlation
	})
	if err != nil {
		log.Fatal(err)
	}
	err = bus.Subscribe("payment.requested", func(ctx context.Context, ev eventbus.Event) error {
		paid <- ev
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		log.Fatal(err)
	}

	placed, err := eventbus.NewEvent("order.placed", map[string]int{"total_cents": 4200}, eventbus.WithSource("orders"), eventbus.WithCorrelationID("order-42"))
	if err != nil {
		log.Fatal(err)
	}
	if err := bus.Publish(ctx, placed); err != nil {
		log.Fatal(err)
	}
	ev := <-paid
	fmt.Println(ev.Name, string(ev.Data))
	fmt.Println("correlation:", ev.CorrelationID)
	fmt.Println("caused by order.placed:", ev.CausationID == placed.ID)

	// An event that no subscription matches is an error, not a silent loss.
	lost, _ := eventbus.NewEvent("order.lost", nil, eventbus.WithSource("orders"))
	err = bus.Publish(ctx, lost)
	fmt.Println(errors.Is(err, eventbus.ErrUnroutable))
	// Output:
	// payment.requested {"total_cents":4200}
	// correlation: order-42
	// caused by order.placed: true
	// true
}

// UserRegistered is the data of "user.registered" events; validator tags
// are the schema's rules.
type UserRegistered struct {
	UserID   string `json:"user_id" validate:"required"`
	Username string `json:"username" validate:"required"`
	Email    string `json:"email" validate:"required,email"`
}

// A schema binds an event name to a Go type: events it creates carry
// validated data and its version, and handlers get the data parsed and
// validated.
func ExampleNewSchema() {
	userRegistered, err := eventbus.NewSchema[UserRegistered]("user.registered", eventbus.SchemaVersion("2"))
	if err != nil {
		log.Fatal(err)
	}

	ev, err := userRegistered.NewEvent(UserRegistered{UserID: "123", Username: "john_doe", Email: "john.doe@example.com"}, eventbus.WithSource("users"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ev.Name, ev.DataVersion, string(ev.Data))

	data, err := userRegistered.Parse(ev)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(data.Username)

	// Invalid data is refused, with the JSON names of the fields. The
	// error is permanent, so a handler returning it (as Schema.Handler
	// does) is not retried.
	_, err = userRegistered.NewEvent(UserRegistered{UserID: "124", Email: "jane-at-example"}, eventbus.WithSource("users"))
	fmt.Println(err)
	fmt.Println(errors.Is(err, eventbus.ErrPermanent))
	var invalid *eventbus.ValidationError
	if errors.As(err, &invalid) {
		for _, f := range invalid.Fields {
			fmt.Printf("%s breaks %q\n", f.Path, f.Rule)
		}
	}
	// Output:
	// user.registered 2 {"user_id":"123","username":"john_doe","email":"john.doe@example.com"}
	// john_doe
	// eventbus: data of user.registered is invalid: username: required; email: must be an email address
	// true
	// username breaks "required"
	// email breaks "email"
}

// OrderPlaced is version 2 of the data of "order.placed": version 1 called
// total_cents "amount".
type OrderPlaced struct {
	CustomerID string `json:"customer_id" validate:"required"`
	TotalCents int    `json:"total_cents" validate:"gt=0"`
}

// A schema reads the older major versions its upcasters carry forward,
// and any minor version of its own major (fields it does not know are
// ignored). A newer major is a permanent error: the event waits in the
// poison queue for a consumer that knows it.
func ExampleUpcast() {
	orderPlaced := eventbus.MustSchema[OrderPlaced]("order.placed",
		eventbus.SchemaVersion("2"),
		eventbus.Upcast(1, func(data json.RawMessage) (json.RawMessage, error) {
			var v1 map[string]any
			if err := json.Unmarshal(data, &v1); err != nil {
				return nil, err
			}
			v1["total_cents"] = v1["amount"]
			delete(v1, "amount")
			return json.Marshal(v1)
		}))

	for _, ev := range []eventbus.Event{
		{ID: "e1", Name: "order.placed", DataVersion: "1", Data: json.RawMessage(`{"customer_id":"c1","amount":1250}`)},
		{ID: "e2", Name: "order.placed", DataVersion: "2.1", Data: json.RawMessage(`{"customer_id":"c2","total_cents":990,"coupon":"X"}`)},
		{ID: "e3", Name: "order.placed", DataVersion: "3", Data: json.RawMessage(`{"customer_id":"c3","total":{"cents":5}}`)},
	} {
		order, err := orderPlaced.Parse(ev)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("%s %+v\n", ev.DataVersion, order)
	}
	// Output:
	// 1 {CustomerID:c1 TotalCents:1250}
	// 2.1 {CustomerID:c2 TotalCents:990}
	// eventbus: order.placed data version 3.0 is newer than this consumer's schema (2.x); deploy a consumer that knows version 3, then replay the poison queue
}

// Patterns have RabbitMQ topic semantics on every transport, including the
// cases where "#" matches zero segments.
func ExampleCompilePattern() {
	for _, pattern := range []string{"user.registered", "user.*", "user.#", "*.registered", "#.completed"} {
		p, err := eventbus.CompilePattern(pattern)
		if err != nil {
			log.Fatal(err)
		}
		var matched []string
		for _, name := range []string{"user", "user.registered", "user.profile.updated", "completed", "order.payment.completed"} {
			if p.Match(name) {
				matched = append(matched, name)
			}
		}
		fmt.Printf("%-16s %v\n", pattern, matched)
	}

	_, err := eventbus.CompilePattern("user.re*")
	fmt.Println(err)
	// Output:
	// user.registered  [user.registered]
	// user.*           [user.registered]
	// user.#           [user user.registered user.profile.updated]
	// *.registered     [user.registered]
	// #.completed      [completed order.payment.completed]
	// eventbus: invalid pattern: pattern "user.re*": segment 2 "re*" mixes '*' with other characters; a wildcard must be a whole segment
}

// A handler's failures are retried, then the event waits in the service's
// poison queue: list it, replay it after the fix (to the failing
// subscription only), or purge it.
func ExampleBus_Replay() {
	ctx := context.Background()
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "invoicing", URL: "mem://example-replay",
		Policy: eventbus.Policy{MaxAttempts: 2, InitialBackoff: time.Millisecond}})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close(ctx)
	var fixed atomic.Bool
	handled := make(chan string, 1)
	err = bus.Subscribe("invoice.#", func(ctx context.Context, ev eventbus.Event) error {
		if !fixed.Load() {
			return errors.New("tax service unreachable")
		}
		handled <- ev.Name
		return nil
	}, eventbus.SubscriptionName("invoices"))
	if err != nil {
		log.Fatal(err)
	}
	if err := bus.Start(ctx); err != nil {
		log.Fatal(err)
	}
	ev, _ := eventbus.NewEvent("invoice.created", map[string]int{"total_cents": 990})
	if err := bus.Publish(ctx, ev); err != nil {
		log.Fatal(err)
	}
	for {
		if ps, _ := bus.Poisoned(ctx, eventbus.PoisonFilter{IDs: []string{ev.ID}}); len(ps) == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}

	poisoned, err := bus.Poisoned(ctx, eventbus.PoisonFilter{Limit: 100}) // oldest first, nothing removed
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range poisoned {
		fmt.Printf("%s: %s after %d attempts in %s: %s\n", p.Event.Name, p.Reason, p.Attempts, p.Subscription, p.Error)
	}
	fixed.Store(true) // the fix is deployed
	n, err := bus.Replay(ctx, eventbus.PoisonFilter{Subscription: "invoices"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("replayed:", n, "handled:", <-handled)
	_, err = bus.PurgePoison(ctx, eventbus.PoisonFilter{Reason: eventbus.ReasonUndecodable}) // the zero filter purges all
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// invoice.created: retries-exhausted after 2 attempts in invoices: tax service unreachable
	// replayed: 1 handled: invoice.created
}
