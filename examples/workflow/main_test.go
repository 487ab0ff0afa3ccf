package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/examples/internal/extest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWorkflowMemory(t *testing.T) {
	h := eventbustest.New(t)
	res, out := runScenario(t, h.URL())
	checkResult(t, res, out)

	// The harness saw the same run from the outside.
	corrA, corrB := res.Correlation["order-a"], res.Correlation["order-b"]
	for _, name := range []string{"order.placed", "payment.completed", "order.fulfilled", "notification.sent"} {
		h.WaitPublished(name, eventbustest.CorrelatedWith(corrA))
	}
	for _, name := range []string{"order.placed", "payment.completed", "fulfilment.failed", "order.cancelled", "payment.refunded", "notification.sent"} {
		h.WaitPublished(name, eventbustest.CorrelatedWith(corrB))
	}
	for _, ev := range h.Published() {
		if ev.CorrelationID != corrA && ev.CorrelationID != corrB {
			t.Errorf("%s %s has correlation %q, which is neither order's", ev.Name, ev.ID, ev.CorrelationID)
		}
	}
	p := h.WaitPoisoned("payment.completed", eventbustest.InService("fulfilment"))
	if p.Event.CorrelationID != corrB || p.Attempts != fulfilmentPolicy.MaxAttempts {
		t.Errorf("poisoned %s (correlation %s) after %d attempts, want order-b's payment after %d", p.Event.Name, p.Event.CorrelationID, p.Attempts, fulfilmentPolicy.MaxAttempts)
	}
	refund := h.WaitPublished("payment.refunded", eventbustest.CorrelatedWith(corrB))
	var r PaymentRefunded
	if err := refund.Decode(&r); err != nil || r.OrderID != "order-b" || r.AmountCents != 9900 {
		t.Errorf("refund = %+v (%v), want order-b's 9900 cents", r, err)
	}
	if n := len(h.Published()); n != 10 {
		t.Errorf("%d events were published, want 10 (4 for order-a, 6 for order-b)", n)
	}
}

func TestWorkflowRabbitMQ(t *testing.T) {
	res, out := runScenario(t, extest.AMQPURL(t, "eventbus-examples-workflow"))
	checkResult(t, res, out)
}

// TestWorkflowNATS runs the example on NATS JetStream, in a stream of its own.
func TestWorkflowNATS(t *testing.T) {
	res, out := runScenario(t, extest.NATSURL(t, "examples-workflow"))
	checkResult(t, res, out)
}

func runScenario(t *testing.T, url string) (Result, string) {
	t.Helper()
	return extest.Run(t, 20*time.Second, run, url)
}

func checkResult(t *testing.T, res Result, out string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("output:\n%s", out)
		}
	}()
	if res.Outcome["order-a"] != "fulfilled" || res.Outcome["order-b"] != "cancelled" {
		t.Errorf("outcomes = %v, want order-a fulfilled and order-b cancelled", res.Outcome)
	}
	corrA, corrB := res.Correlation["order-a"], res.Correlation["order-b"]
	if corrA == "" || corrB == "" || corrA == corrB {
		t.Fatalf("correlation IDs = %v, want two distinct ones", res.Correlation)
	}

	// Every step of an order carries the order's correlation ID, although
	// no handler passed it on explicitly.
	for order, corr := range res.Correlation {
		for _, s := range res.StepsOf(order) {
			if s.CorrelationID != corr {
				t.Errorf("%s step %s/%s has correlation %s, want %s", order, s.Service, s.Event, s.CorrelationID, corr)
			}
		}
	}
	wantA := []string{"payments/order.placed", "fulfilment/payment.completed", "notifications/order.fulfilled", "orders/notification.sent"}
	if got := succeeded(res.StepsOf("order-a")); !slices.Equal(got, wantA) {
		t.Errorf("order-a steps = %v, want %v", got, wantA)
	}
	wantB := []string{"payments/order.placed", "orders/fulfilment.failed", "payments/order.cancelled", "notifications/payment.refunded", "orders/notification.sent"}
	if got := succeeded(res.StepsOf("order-b")); !slices.Equal(got, wantB) {
		t.Errorf("order-b successful steps = %v, want %v", got, wantB)
	}

	// The failing step was retried, then poisoned.
	var failed []Step
	for _, s := range res.StepsOf("order-b") {
		if s.Err != "" {
			failed = append(failed, s)
		}
	}
	if len(failed) != fulfilmentPolicy.MaxAttempts {
		t.Errorf("order-b had %d failed steps, want %d fulfilment attempts", len(failed), fulfilmentPolicy.MaxAttempts)
	}
	for i, s := range failed {
		if s.Service != "fulfilment" || s.Attempt != i+1 || !strings.Contains(s.Err, "out of stock") {
			t.Errorf("failed step %d = %+v, want fulfilment attempt %d failing with out of stock", i, s, i+1)
		}
	}
	if len(res.Poisoned) != 1 {
		t.Fatalf("poisoned = %d events of this run, want 1", len(res.Poisoned))
	}
	p := res.Poisoned[0]
	if p.Event.Name != "payment.completed" || p.Event.CorrelationID != corrB || p.Subscription != "payment.completed" ||
		p.Attempts != fulfilmentPolicy.MaxAttempts || !strings.Contains(p.Error, "out of stock") {
		t.Errorf("poisoned = %s (correlation %s) by %s after %d attempts: %s; want order-b's payment.completed by payment.completed after %d attempts",
			p.Event.Name, p.Event.CorrelationID, p.Subscription, p.Attempts, p.Error, fulfilmentPolicy.MaxAttempts)
	}

	for _, want := range []string{
		"correlation ID " + corrA,
		"[correlation " + corrB + "] payments      order.cancelled    -> payment.refunded",
		"fulfilment: poison queue (bus.Poisoned):",
		"attempt 3 FAILED: warehouse: sku-out-of-stock is out of stock",
		"done: order-a fulfilled, order-b cancelled",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

func succeeded(steps []Step) []string {
	var out []string
	for _, s := range steps {
		if s.Err == "" {
			out = append(out, s.Service+"/"+s.Event)
		}
	}
	return out
}
