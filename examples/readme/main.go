// Command readme is the program the README shows, line for line: a service
// with two subscriptions to "user.registered", a plain and a typed one,
// publishes a plain and a schema-validated event on the in-process broker,
// and prints what its handlers got. Its test runs it, so the README's code always compiles and
// works.
//
//	go run ./examples/readme
package main

import (
	"context"
	"fmt"
	"log"

	"github.com/paissive/go-eventbus/eventbus"
	_ "github.com/paissive/go-eventbus/transports/amqp"   // amqp://, amqps://
	_ "github.com/paissive/go-eventbus/transports/memory" // mem://
)

// UserRegistered is the data of "user.registered"; validate tags play the
// part of the original's pydantic model.
type UserRegistered struct {
	UserID   string `json:"user_id" validate:"required"`
	Username string `json:"username" validate:"required"`
	Email    string `json:"email" validate:"required,email"`
}

var userRegistered = eventbus.MustSchema[UserRegistered]("user.registered")

func main() {
	if err := run(context.Background()); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "my-service", URL: "mem://readme"})
	if err != nil {
		return err
	}
	defer bus.Close(context.Background())

	done := make(chan struct{}, 4)
	err = bus.Subscribe("user.registered", func(ctx context.Context, ev eventbus.Event) error {
		var data map[string]string
		if err := ev.Decode(&data); err != nil {
			return eventbus.Permanent(err) // retrying cannot fix bad data
		}
		fmt.Println("User registered:", data["username"])
		done <- struct{}{}
		return nil // acknowledge
	})
	if err != nil {
		return err
	}
	err = bus.Subscribe("user.registered", userRegistered.Handler(
		func(ctx context.Context, u UserRegistered, ev eventbus.Event) error {
			fmt.Println("Typed handler:", u.Username, u.Email)
			done <- struct{}{}
			return nil
		}), eventbus.SubscriptionName("typed"), eventbus.Concurrency(8))
	if err != nil {
		return err
	}
	if err := bus.Start(ctx); err != nil { // returns once the subscriptions consume
		return err
	}

	ev, err := eventbus.NewEvent("user.registered", map[string]string{
		"user_id": "123", "username": "john_doe", "email": "john.doe@example.com",
	}) // source: the service name; type: Domain
	if err != nil {
		return err
	}
	typed, err := userRegistered.NewEvent(
		UserRegistered{UserID: "124", Username: "jane_doe", Email: "jane.doe@example.com"})
	if err != nil {
		return err // invalid data is refused here, before anything is sent
	}
	if err := bus.Publish(ctx, ev, typed); err != nil { // nil once the broker has both
		return err
	}
	for range 4 { // each subscription handles both events
		<-done
	}
	return nil
}
