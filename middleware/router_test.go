package middleware

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/paissive/go-eventbus/internal/wire"
)

// TestOnWatermillRouter runs the middleware in the bus's order on a plain
// Watermill router with a GoChannel pub/sub, whose Publish blocks until the
// message is acknowledged, so a returned Publish proves the ack.
func TestOnWatermillRouter(t *testing.T) {
	logger := watermill.NopLogger{}
	pubsub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, logger)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	store := &memStore{fails: 1} // the first poisoning fails: the message comes back

	var mu sync.Mutex
	callsByID := map[string]int{}
	traces := map[string]Causation{}
	h := router.AddConsumerHandler("billing.invoices", "events", pubsub, func(m *message.Message) error {
		mu.Lock()
		callsByID[m.UUID]++
		n := callsByID[m.UUID]
		tr, _ := CausationFromContext(m.Context())
		traces[m.UUID] = tr
		mu.Unlock()
		switch m.UUID {
		case "bad":
			return errFlaky
		case "panics":
			panic("handler bug")
		case "flaky":
			if n < 3 {
				return errFlaky
			}
		}
		return nil
	})
	h.AddMiddleware(
		Correlation,
		Poison{Store: store, Service: "billing", Subscription: "invoices", Pattern: "#", FailureDelay: time.Millisecond}.Middleware,
		Retry{MaxAttempts: 3, InitialInterval: time.Millisecond, Multiplier: 2}.Middleware,
		Timeout(10*time.Second),
		Recoverer,
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(ctx) }()
	<-router.Running()

	for _, id := range []string{"bad", "good", "panics", "flaky"} {
		if err := pubsub.Publish("events", newMsg(id)); err != nil {
			t.Fatalf("publishing %s: %v", id, err)
		}
	}

	mu.Lock()
	if callsByID["bad"] != 6 {
		t.Errorf("bad: %d calls, want 3, then 3 more after the failed poisoning", callsByID["bad"])
	}
	if callsByID["good"] != 1 || callsByID["flaky"] != 3 || callsByID["panics"] != 3 {
		t.Errorf("calls = %v", callsByID)
	}
	if traces["good"] != (Causation{CorrelationID: "corr-good", EventID: "good"}) {
		t.Errorf("trace of good = %+v", traces["good"])
	}
	mu.Unlock()

	stored := store.stored()
	if len(stored) != 2 {
		t.Fatalf("%d messages poisoned, want bad and panics", len(stored))
	}
	for i, want := range []struct{ id, reason string }{{"bad", ReasonRetriesExhausted}, {"panics", ReasonPanic}} {
		md := stored[i].Metadata
		if stored[i].UUID != want.id || md[wire.PoisonReason] != want.reason || md[wire.PoisonAttempts] != "3" || md["meta_tenant"] != "acme" {
			t.Errorf("poisoned %s: %v", stored[i].UUID, md)
		}
	}

	if err := router.Close(); err != nil {
		t.Error(err)
	}
	if err := <-runErr; err != nil {
		t.Error(err)
	}
	if err := pubsub.Close(); err != nil {
		t.Error(err)
	}
}
