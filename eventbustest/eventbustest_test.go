package eventbustest_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbustest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type userRegistered struct {
	UserID string `json:"user_id"`
}

func TestHandledAndPublishedByHandler(t *testing.T) {
	h := eventbustest.New(t, eventbustest.WithServiceName("mailer"))
	h.Subscribe("user.registered", func(ctx context.Context, ev eventbus.Event) error {
		var u userRegistered
		if err := ev.Decode(&u); err != nil {
			return eventbus.Permanent(err)
		}
		mail, err := eventbus.NewEvent("mail.sent", map[string]string{"to": u.UserID}, eventbus.WithSource("mailer"), eventbus.WithType(eventbus.Notification))
		if err != nil {
			return err
		}
		return h.Bus.Publish(ctx, mail)
	})

	ev := h.NewEvent("user.registered", userRegistered{UserID: "42"})
	h.Publish(ev)

	if got := h.WaitHandled("user.*"); got.ID != ev.ID {
		t.Errorf("WaitHandled returned event %s, want %s", got.ID, ev.ID)
	}
	mail := h.WaitPublished("mail.sent", eventbustest.CausedBy(ev.ID))
	if mail.CorrelationID != ev.ID {
		t.Errorf("mail.sent correlation = %q, want the handled event's (%q)", mail.CorrelationID, ev.ID)
	}
	if mail.Source != "mailer" {
		t.Errorf("mail.sent source = %q, want mailer", mail.Source)
	}
	// The test's own publish is recorded too.
	if got := h.WaitPublished("user.registered"); got.ID != ev.ID {
		t.Errorf("published user.registered = %s, want %s", got.ID, ev.ID)
	}
	calls := h.Handled()
	if len(calls) != 1 || calls[0].Subscription != "user.registered" || calls[0].Service != "mailer" || calls[0].Attempt != 1 || calls[0].Err != nil {
		t.Errorf("Handled() = %v, want one successful first call by mailer/user.registered", calls)
	}
}

func TestWaitIsSatisfiedByEarlierEvents(t *testing.T) {
	h := eventbustest.New(t)
	done := make(chan struct{})
	h.Subscribe("ping", func(context.Context, eventbus.Event) error {
		close(done)
		return nil
	})
	h.Publish(h.NewEvent("ping", nil, eventbus.WithType(eventbus.System)))
	<-done
	// The call has returned; the record follows immediately after, and the
	// wait must find it however late it starts.
	h.WaitHandled("ping")
	h.WaitHandled("#")
}

func TestRetriedThenPoisoned(t *testing.T) {
	h := eventbustest.New(t, eventbustest.WithPolicy(eventbus.Policy{MaxAttempts: 3, InitialBackoff: time.Millisecond}))
	boom := errors.New("warehouse unavailable")
	h.Subscribe("order.#", func(context.Context, eventbus.Event) error { return boom }, eventbus.SubscriptionName("ship"))

	ev := h.NewEvent("order.placed", map[string]int{"qty": 1})
	h.Publish(ev)

	p := h.WaitPoisoned("order.*", eventbustest.BySubscription("ship"))
	if p.Event.ID != ev.ID || p.Attempts != 3 || !strings.Contains(p.Error, boom.Error()) {
		t.Errorf("poisoned %s after %d attempts (%s), want %s after 3 attempts (%v)", p.Event.ID, p.Attempts, p.Error, ev.ID, boom)
	}
	calls := h.Handled()
	if len(calls) != 3 {
		t.Fatalf("Handled() = %v, want 3 failed calls", calls)
	}
	for i, c := range calls {
		if c.Attempt != i+1 || !errors.Is(c.Err, boom) || c.Subscription != "ship" {
			t.Errorf("call %d = %v, want attempt %d failing with %v by ship", i, c, i+1, boom)
		}
	}
	if got := h.Poisoned(); len(got) != 1 {
		t.Errorf("Poisoned() = %d events, want 1", len(got))
	}
}

func TestPanicIsRecordedAsFailure(t *testing.T) {
	h := eventbustest.New(t, eventbustest.WithPolicy(eventbus.Policy{MaxAttempts: 1}))
	h.Subscribe("job", func(context.Context, eventbus.Event) error { panic("nil map") })
	h.Publish(h.NewEvent("job", nil, eventbus.WithType(eventbus.System)))
	h.WaitPoisoned("job")
	calls := h.Handled()
	if len(calls) != 1 || calls[0].Err == nil || !strings.Contains(calls[0].Err.Error(), "panic: nil map") {
		t.Errorf("Handled() = %v, want one call failing with the panic", calls)
	}
}

func TestCompetingConsumersAndFanOut(t *testing.T) {
	h := eventbustest.New(t)
	workers := []*eventbus.Bus{h.NewBus("worker"), h.NewBus("worker")}
	audit := h.NewBus("audit")
	var mu sync.Mutex
	perInstance := map[int]int{}
	for i, w := range workers {
		err := w.Subscribe("job.*", func(context.Context, eventbus.Event) error {
			mu.Lock()
			perInstance[i]++
			mu.Unlock()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := audit.Subscribe("#", func(context.Context, eventbus.Event) error { return nil }); err != nil {
		t.Fatal(err)
	}

	const n = 10
	evs := make([]eventbus.Event, n)
	for i := range evs {
		evs[i] = h.NewEvent("job.created", map[string]int{"n": i})
	}
	h.Publish(evs...)

	h.WaitHandledN("job.created", n, eventbustest.InService("worker"))
	h.WaitHandledN("#", n, eventbustest.InService("audit"), eventbustest.BySubscription("#"))
	seen := map[string]int{}
	for _, c := range h.Handled() {
		if c.Service == "worker" {
			seen[c.Event.ID]++
		}
	}
	for _, ev := range evs {
		if seen[ev.ID] != 1 {
			t.Errorf("event %s handled %d times by the worker service, want once", ev.ID, seen[ev.ID])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if perInstance[0]+perInstance[1] != n {
		t.Errorf("instances handled %v, want %d in all", perInstance, n)
	}
}

// Code under test that opens its own bus with h.URL() is watched too: its
// publishes are recorded and its poison queue can be read with InService.
func TestForeignServiceOnHarnessURL(t *testing.T) {
	h := eventbustest.New(t)
	ctx := t.Context()
	other, err := eventbus.New(ctx, eventbus.Config{ServiceName: "billing", URL: h.URL(), Policy: eventbus.Policy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close(context.Background()) })
	err = other.Subscribe("invoice.requested", func(context.Context, eventbus.Event) error {
		return eventbus.Permanent(errors.New("no customer"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ev := h.NewEvent("invoice.requested", map[string]string{"customer": "c-1"}, eventbus.WithType(eventbus.Integration))
	h.Publish(ev)
	p := h.WaitPoisoned("invoice.*", eventbustest.InService("billing"), eventbustest.CorrelatedWith(ev.ID))
	if p.Event.ID != ev.ID || p.Attempts != 1 {
		t.Errorf("poisoned %s after %d attempts, want %s after 1", p.Event.ID, p.Attempts, ev.ID)
	}
}

// fatalTB captures the first Fatal of the harness instead of failing the
// test, and ends the calling goroutine as testing.T does.
type fatalTB struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.msg = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fatalTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

func (f *fatalTB) reset() {
	f.mu.Lock()
	f.msg = ""
	f.mu.Unlock()
}

func (f *fatalTB) message() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.msg
}

// call runs fn in a goroutine, as a Fatal ends it, and waits for it.
func call(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

func TestFailureMessageListsWhatHappened(t *testing.T) {
	ftb := &fatalTB{TB: t}
	h := eventbustest.New(ftb, eventbustest.WithServiceName("shop"), eventbustest.WithPolicy(eventbus.Policy{MaxAttempts: 1}))
	h.Subscribe("user.registered", func(context.Context, eventbus.Event) error { return nil })
	h.Subscribe("payment.#", func(context.Context, eventbus.Event) error { return errors.New("card declined") })
	user := h.NewEvent("user.registered", userRegistered{UserID: "7"})
	pay := h.NewEvent("payment.requested", map[string]int{"cents": 100})
	h.Publish(user, pay)
	h.WaitHandled("user.registered")
	h.WaitPoisoned("payment.requested")

	var got eventbus.Event
	call(func() { got = h.WaitHandled("order.*", eventbustest.Within(50*time.Millisecond)) })
	msg := ftb.message()
	if got.ID != "" || msg == "" {
		t.Fatalf("WaitHandled for an event that never came returned %+v and did not fail the test", got)
	}
	for _, want := range []string{
		`no event matching "order.*" was handled within 50ms`,
		"handled (2 calls): [",
		"user.registered(id " + user.ID[:8] + ") by shop/user.registered",
		"payment.requested(id " + pay.ID[:8] + ") by shop/payment.# FAILED: card declined",
		"published (2): [",
		"from shop",
		"poisoned (1): [payment.requested(id " + pay.ID[:8] + ") by payment.# after 1 attempt(s): card declined]",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("failure message lacks %q:\n%s", want, msg)
		}
	}

	ftb.reset()
	call(func() {
		h.WaitPublished("mail.sent", eventbustest.CorrelatedWith("c-9"), eventbustest.Within(time.Millisecond))
	})
	if msg := ftb.message(); !strings.Contains(msg, `no event matching "mail.sent" (correlation c-9) was published within 1ms`) {
		t.Errorf("WaitPublished failure message = %q", msg)
	}

	ftb.reset()
	call(func() { h.WaitHandledN("user.*", 2, eventbustest.Within(time.Millisecond)) })
	if msg := ftb.message(); !strings.Contains(msg, `only 1 of 2 events matching "user.*" were handled within 1ms`) {
		t.Errorf("WaitHandledN failure message = %q", msg)
	}

	ftb.reset()
	call(func() { h.WaitPoisoned("user.registered", eventbustest.Within(time.Millisecond)) })
	if msg := ftb.message(); !strings.Contains(msg, `no event matching "user.registered" was poisoned within 1ms`) {
		t.Errorf("WaitPoisoned failure message = %q", msg)
	}

	ftb.reset()
	call(func() { h.WaitHandled("bad..pattern") })
	if msg := ftb.message(); !strings.Contains(msg, "invalid pattern") {
		t.Errorf("bad pattern failure message = %q", msg)
	}
}
