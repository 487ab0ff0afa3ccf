// Command workflow is the original event bus's "event-driven workflow"
// example in Go: an order goes through payment, fulfilment and notification,
// each step a different service reacting to the previous step's event. One
// correlation ID ties all events of an order together, without any handler
// passing it on: events published with the handler's ctx inherit it.
//
// A second order contains an item that is out of stock. Its fulfilment step
// fails, is retried (3 attempts, 20ms backoff) and then lands in the
// fulfilment service's poison queue. Listing that queue (bus.Poisoned), the
// fulfilment service reports the failure, and the saga compensates: the
// order is cancelled and the payment refunded.
//
//	go run ./examples/workflow
//
// It runs on the in-process broker unless EVENTBUS_URL names another, e.g.
// EVENTBUS_URL=amqp://guest:guest@localhost:5672/ for the local RabbitMQ.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	_ "github.com/paissive/go-eventbus/transports/amqp"
	_ "github.com/paissive/go-eventbus/transports/kafka"
	_ "github.com/paissive/go-eventbus/transports/memory"
	_ "github.com/paissive/go-eventbus/transports/nats"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := run(ctx, os.Stdout, os.Getenv("EVENTBUS_URL")); err != nil {
		fmt.Fprintln(os.Stderr, "workflow:", err)
		os.Exit(1)
	}
}

// The data of the workflow's events, validated by their schemas.
type (
	// Item is one line of an order.
	Item struct {
		SKU string `json:"sku" validate:"required"`
		Qty int    `json:"qty" validate:"min=1"`
	}
	// OrderPlaced starts the workflow.
	OrderPlaced struct {
		OrderID    string `json:"order_id" validate:"required"`
		Customer   string `json:"customer" validate:"required,email"`
		Items      []Item `json:"items" validate:"min=1,dive"`
		TotalCents int    `json:"total_cents" validate:"min=1"`
	}
	// PaymentCompleted says the order was paid.
	PaymentCompleted struct {
		OrderID     string `json:"order_id" validate:"required"`
		PaymentID   string `json:"payment_id" validate:"required"`
		AmountCents int    `json:"amount_cents" validate:"min=1"`
		Items       []Item `json:"items" validate:"min=1,dive"`
	}
	// OrderFulfilled says the goods were shipped.
	OrderFulfilled struct {
		OrderID  string `json:"order_id" validate:"required"`
		Tracking string `json:"tracking" validate:"required"`
	}
	// FulfilmentFailed reports an order the fulfilment service gave up on.
	FulfilmentFailed struct {
		OrderID string `json:"order_id" validate:"required"`
		Reason  string `json:"reason" validate:"required"`
	}
	// OrderCancelled is the first compensating event.
	OrderCancelled struct {
		OrderID string `json:"order_id" validate:"required"`
		Reason  string `json:"reason" validate:"required"`
	}
	// PaymentRefunded is the second compensating event.
	PaymentRefunded struct {
		OrderID     string `json:"order_id" validate:"required"`
		PaymentID   string `json:"payment_id" validate:"required"`
		AmountCents int    `json:"amount_cents" validate:"min=1"`
	}
	// NotificationSent tells the orders service the customer knows.
	NotificationSent struct {
		OrderID string `json:"order_id" validate:"required"`
		Message string `json:"message" validate:"required"`
	}
)

var (
	orderPlaced      = eventbus.MustSchema[OrderPlaced]("order.placed", eventbus.SchemaVersion("1"))
	paymentCompleted = eventbus.MustSchema[PaymentCompleted]("payment.completed", eventbus.SchemaVersion("1"))
	orderFulfilled   = eventbus.MustSchema[OrderFulfilled]("order.fulfilled", eventbus.SchemaVersion("1"))
	fulfilmentFailed = eventbus.MustSchema[FulfilmentFailed]("fulfilment.failed", eventbus.SchemaVersion("1"))
	orderCancelled   = eventbus.MustSchema[OrderCancelled]("order.cancelled", eventbus.SchemaVersion("1"))
	paymentRefunded  = eventbus.MustSchema[PaymentRefunded]("payment.refunded", eventbus.SchemaVersion("1"))
	notificationSent = eventbus.MustSchema[NotificationSent]("notification.sent", eventbus.SchemaVersion("1"))
)

// outOfStock is the SKU the warehouse never has.
const outOfStock = "sku-out-of-stock"

// fulfilmentPolicy retries the fulfilment step quickly, then poisons it.
var fulfilmentPolicy = eventbus.Policy{MaxAttempts: 3, InitialBackoff: 20 * time.Millisecond}

// Step is one handler call of the workflow.
type Step struct {
	Service string
	// Event is the name of the handled event, OrderID the order it is about.
	Event, OrderID string
	// CorrelationID and CausationID are those of the handled event.
	CorrelationID, CausationID string
	// Attempt counts the calls for this event in this service.
	Attempt int
	// Published names the event the step published; Err is the step's
	// failure.
	Published string
	Err       string
}

// Result is what the scenario observed.
type Result struct {
	// Correlation maps each order ID to its correlation ID.
	Correlation map[string]string
	// Steps lists the handler calls in the order they ended.
	Steps []Step
	// Poisoned holds this run's entries of the fulfilment poison queue.
	Poisoned []eventbus.PoisonedEvent
	// Outcome maps each order ID to how it ended: "fulfilled" or
	// "cancelled".
	Outcome map[string]string
}

// StepsOf returns the steps of one order.
func (r Result) StepsOf(orderID string) []Step {
	var out []Step
	for _, s := range r.Steps {
		if s.OrderID == orderID {
			out = append(out, s)
		}
	}
	return out
}

// workflow is the state shared by the four services of one run.
type workflow struct {
	out io.Writer

	mu       sync.Mutex
	res      Result
	attempts map[string]int // by service + event ID
	progress chan struct{}  // signalled when a step was recorded
}

// ours reports whether ev belongs to an order of this run. On a durable
// broker, events left over from an interrupted earlier run may still be
// queued; they are acknowledged and ignored.
func (w *workflow) ours(ev eventbus.Event) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range w.res.Correlation {
		if c == ev.CorrelationID {
			return true
		}
	}
	return false
}

// step wraps a typed handler of one service: it skips foreign events,
// numbers the attempts, records the step in the trace and the result, and
// then publishes the event fn returned, if any, with the handler's ctx: so
// the event inherits the correlation ID. Recording before publishing keeps
// the trace in causal order.
func step[T any](w *workflow, bus *eventbus.Bus, s *eventbus.Schema[T], orderOf func(T) string,
	fn func(data T) (next eventbus.Event, err error),
) eventbus.Handler {
	service := bus.ServiceName()
	return s.Handler(func(ctx context.Context, data T, ev eventbus.Event) error {
		if !w.ours(ev) {
			fmt.Fprintf(w.out, "%-13s skipping %s %s left over from an earlier run\n", service, ev.Name, ev.ID)
			return nil
		}
		w.mu.Lock()
		w.attempts[service+ev.ID]++
		attempt := w.attempts[service+ev.ID]
		w.mu.Unlock()
		next, err := fn(data)
		st := Step{
			Service: service, Event: ev.Name, OrderID: orderOf(data),
			CorrelationID: eventbus.CorrelationID(ctx), CausationID: ev.CausationID,
			Attempt: attempt, Published: next.Name,
		}
		line := fmt.Sprintf("[correlation %s] %-13s %-18s", st.CorrelationID, service, ev.Name)
		switch {
		case err != nil:
			st.Err = err.Error()
			line += fmt.Sprintf(" attempt %d FAILED: %v", attempt, err)
		case next.Name != "":
			line += " -> " + next.Name
		default:
			w.mu.Lock()
			line += " -> order closed: " + w.res.Outcome[st.OrderID]
			w.mu.Unlock()
		}
		fmt.Fprintln(w.out, line)
		w.mu.Lock()
		w.res.Steps = append(w.res.Steps, st)
		w.mu.Unlock()
		if err != nil || next.Name == "" {
			w.notify()
			return err
		}
		if err := bus.Publish(ctx, next); err != nil {
			fmt.Fprintf(w.out, "[correlation %s] %-13s publishing %s failed: %v\n", st.CorrelationID, service, next.Name, err)
			return err
		}
		w.notify()
		return nil
	})
}

// notify wakes run up to check whether the orders are closed.
func (w *workflow) notify() {
	select {
	case w.progress <- struct{}{}:
	default:
	}
}

// closedOrders counts the orders whose final step was recorded.
func (w *workflow) closedOrders() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, st := range w.res.Steps {
		if st.Service == "orders" && st.Event == notificationSent.Name() && st.Err == "" {
			n++
		}
	}
	return n
}

// newEvent makes an event of a schema from the bus's service.
func newEvent[T any](bus *eventbus.Bus, s *eventbus.Schema[T], data T, opts ...eventbus.EventOption) (eventbus.Event, error) {
	return s.NewEvent(data, opts...)
}

// run places two orders, one of which cannot be fulfilled, and returns once
// both are closed: one fulfilled, one cancelled and refunded.
func run(ctx context.Context, out io.Writer, url string) (Result, error) {
	if url == "" {
		url = "mem://"
	}
	out = &syncWriter{w: out}
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: dropTime}))
	w := &workflow{
		out:      out,
		res:      Result{Correlation: map[string]string{}, Outcome: map[string]string{}},
		attempts: map[string]int{},
		progress: make(chan struct{}, 1),
	}

	buses := map[string]*eventbus.Bus{}
	var opened []*eventbus.Bus
	defer func() {
		for i := len(opened) - 1; i >= 0; i-- {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := opened[i].Close(cctx); err != nil {
				fmt.Fprintf(out, "closing %s: %v\n", opened[i].ServiceName(), err)
			}
			cancel()
		}
	}()
	for _, svc := range []string{"orders", "payments", "fulfilment", "notifications"} {
		b, err := eventbus.New(ctx, eventbus.Config{ServiceName: svc, URL: url, Logger: logger})
		if err != nil {
			return w.res, err
		}
		buses[svc] = b
		opened = append(opened, b)
	}
	orders, payments, fulfilment, notifications := buses["orders"], buses["payments"], buses["fulfilment"], buses["notifications"]

	// payments: charge placed orders; refund cancelled ones.
	var payMu sync.Mutex
	paid := map[string]PaymentCompleted{}
	subs := []struct {
		bus     *eventbus.Bus
		pattern string
		h       eventbus.Handler
		opts    []eventbus.SubscribeOption
	}{
		{payments, "order.placed", step(w, payments, orderPlaced, func(o OrderPlaced) string { return o.OrderID },
			func(o OrderPlaced) (eventbus.Event, error) {
				p := PaymentCompleted{OrderID: o.OrderID, PaymentID: "pay-" + o.OrderID, AmountCents: o.TotalCents, Items: o.Items}
				payMu.Lock()
				paid[o.OrderID] = p
				payMu.Unlock()
				return newEvent(payments, paymentCompleted, p)
			}), nil},
		{payments, "order.cancelled", step(w, payments, orderCancelled, func(o OrderCancelled) string { return o.OrderID },
			func(o OrderCancelled) (eventbus.Event, error) {
				payMu.Lock()
				p, ok := paid[o.OrderID]
				payMu.Unlock()
				if !ok {
					return eventbus.Event{}, eventbus.Permanent(fmt.Errorf("no payment for order %s", o.OrderID))
				}
				return newEvent(payments, paymentRefunded, PaymentRefunded{OrderID: o.OrderID, PaymentID: p.PaymentID, AmountCents: p.AmountCents})
			}), nil},
		// fulfilment: ship paid orders; the warehouse lacks one SKU, so that
		// step fails every time, is retried and then poisoned.
		{fulfilment, "payment.completed", step(w, fulfilment, paymentCompleted, func(p PaymentCompleted) string { return p.OrderID },
			func(p PaymentCompleted) (eventbus.Event, error) {
				for _, it := range p.Items {
					if it.SKU == outOfStock {
						return eventbus.Event{}, fmt.Errorf("warehouse: %s is out of stock", it.SKU)
					}
				}
				return newEvent(fulfilment, orderFulfilled, OrderFulfilled{OrderID: p.OrderID, Tracking: "TRK-" + strings.ToUpper(p.OrderID)})
			}), []eventbus.SubscribeOption{eventbus.WithPolicy(fulfilmentPolicy)}},
		// notifications: tell the customer how the order ended.
		{notifications, "order.fulfilled", step(w, notifications, orderFulfilled, func(o OrderFulfilled) string { return o.OrderID },
			func(o OrderFulfilled) (eventbus.Event, error) {
				return newEvent(notifications, notificationSent, NotificationSent{OrderID: o.OrderID, Message: "shipped, tracking " + o.Tracking})
			}), nil},
		{notifications, "payment.refunded", step(w, notifications, paymentRefunded, func(p PaymentRefunded) string { return p.OrderID },
			func(p PaymentRefunded) (eventbus.Event, error) {
				return newEvent(notifications, notificationSent, NotificationSent{OrderID: p.OrderID, Message: fmt.Sprintf("cancelled, %d cents refunded", p.AmountCents)})
			}), nil},
		// orders: cancel what could not be fulfilled (compensation), and
		// close orders once the customer was notified.
		{orders, "fulfilment.failed", step(w, orders, fulfilmentFailed, func(f FulfilmentFailed) string { return f.OrderID },
			func(f FulfilmentFailed) (eventbus.Event, error) {
				return newEvent(orders, orderCancelled, OrderCancelled(f))
			}), nil},
		{orders, "notification.sent", step(w, orders, notificationSent, func(n NotificationSent) string { return n.OrderID },
			func(n NotificationSent) (eventbus.Event, error) {
				outcome := "fulfilled"
				if strings.HasPrefix(n.Message, "cancelled") {
					outcome = "cancelled"
				}
				w.mu.Lock()
				w.res.Outcome[n.OrderID] = outcome
				w.mu.Unlock()
				return eventbus.Event{}, nil
			}), nil},
	}
	for _, s := range subs {
		if err := s.bus.Subscribe(s.pattern, s.h, s.opts...); err != nil {
			return w.res, err
		}
	}
	for _, b := range opened {
		if err := b.Start(ctx); err != nil {
			return w.res, err
		}
	}

	// Two orders: A can be fulfilled, B cannot.
	placed := []OrderPlaced{
		{OrderID: "order-a", Customer: "ada@example.com", Items: []Item{{SKU: "sku-book", Qty: 2}}, TotalCents: 4200},
		{OrderID: "order-b", Customer: "bob@example.com", Items: []Item{{SKU: "sku-book", Qty: 1}, {SKU: outOfStock, Qty: 1}}, TotalCents: 9900},
	}
	var events []eventbus.Event
	for _, o := range placed {
		ev, err := orderPlaced.NewEvent(o, eventbus.WithSource("orders"))
		if err != nil {
			return w.res, err
		}
		// Published outside a handler, the event starts a new correlation:
		// its own ID. Every event that follows from it inherits it.
		w.mu.Lock()
		w.res.Correlation[o.OrderID] = ev.ID
		w.mu.Unlock()
		fmt.Fprintf(out, "orders: placing %s (%d cents), correlation ID %s\n", o.OrderID, o.TotalCents, ev.ID)
		events = append(events, ev)
	}
	if err := orders.Publish(ctx, events...); err != nil {
		return w.res, err
	}

	// The fulfilment service sweeps its poison queue: every entry is an order
	// it gave up on, which the saga must compensate.
	corrB := w.res.Correlation["order-b"]
	poisoned, err := waitPoisoned(ctx, fulfilment, func(p eventbus.PoisonedEvent) bool { return p.Event.CorrelationID == corrB })
	if err != nil {
		return w.res, fmt.Errorf("waiting for order-b's fulfilment to be poisoned: %w", err)
	}
	fmt.Fprintln(out, "fulfilment: poison queue (bus.Poisoned):")
	for _, p := range poisoned {
		fmt.Fprintf(out, "  %s %s subscription=%s reason=%s attempts=%d error=%q correlation=%s\n",
			p.Event.Name, p.Event.ID, p.Subscription, p.Reason, p.Attempts, p.Error, p.Event.CorrelationID)
	}
	w.mu.Lock()
	w.res.Poisoned = poisoned
	w.mu.Unlock()
	for _, p := range poisoned {
		var pc PaymentCompleted
		if err := p.Event.Decode(&pc); err != nil {
			return w.res, err
		}
		// Outside a handler, the compensation names its correlation and
		// cause explicitly: the poisoned event's.
		failed, err := newEvent(fulfilment, fulfilmentFailed, FulfilmentFailed{OrderID: pc.OrderID, Reason: p.Error},
			eventbus.WithCorrelationID(p.Event.CorrelationID))
		if err != nil {
			return w.res, err
		}
		failed.CausationID = p.Event.ID
		fmt.Fprintf(out, "[correlation %s] fulfilment    (poison sweep)     -> fulfilment.failed\n", p.Event.CorrelationID)
		if err := fulfilment.Publish(ctx, failed); err != nil {
			return w.res, err
		}
	}

	for w.closedOrders() < len(placed) {
		select {
		case <-w.progress:
		case <-ctx.Done():
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.res, fmt.Errorf("waiting for the orders to close (outcomes so far %v): %w", w.res.Outcome, ctx.Err())
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	fmt.Fprintf(out, "done: order-a %s, order-b %s\n", w.res.Outcome["order-a"], w.res.Outcome["order-b"])
	res := w.res
	res.Steps = slices.Clone(res.Steps)
	return res, nil
}

// waitPoisoned lists the bus's poison queue until some entries satisfy
// match, and returns those. The poison queue has no notification, so it is
// polled.
func waitPoisoned(ctx context.Context, bus *eventbus.Bus, match func(eventbus.PoisonedEvent) bool) ([]eventbus.PoisonedEvent, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		all, err := bus.Poisoned(ctx, eventbus.PoisonFilter{})
		if err != nil {
			return nil, err
		}
		var got []eventbus.PoisonedEvent
		for _, p := range all {
			if match(p) {
				got = append(got, p)
			}
		}
		if len(got) > 0 {
			return got, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), fmt.Errorf("%d unrelated event(s) in the poison queue", len(all)))
		}
	}
}

// dropTime removes the time from log lines, to keep the trace short.
func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// syncWriter serialises writes: handlers run concurrently.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
