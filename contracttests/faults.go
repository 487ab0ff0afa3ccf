package contracttests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
)

// Faults breaks the path between a transport and its broker, for the
// suite's fault tests. A transport's test provides it through
// [Harness.Faulty], typically with a loopback proxy in front of the broker
// (internal/faultnet.Proxy) or a wrapper around an in-process broker's
// listener (internal/faultnet.Listener, given to kfake).
type Faults interface {
	// Cut closes every connection and refuses new ones, as when the broker
	// process dies: the transport sees errors at once.
	Cut()
	// Stall keeps connections open but moves no byte, and accepts new
	// connections without answering, as when the broker is frozen or
	// unreachable behind a firewall that drops packets: the transport sees
	// nothing but silence, and only deadlines end its calls.
	Stall()
	// Heal ends a cut or a stall.
	Heal()
}

// faultMargin is how much later than its ctx's deadline a call may return
// in the fault tests: the bus and transports return at the deadline, and
// the margin absorbs scheduling on a busy machine, not a wait for the
// broker.
const faultMargin = time.Second

// faultDeadline is the ctx timeout the fault tests give each call.
const faultDeadline = 2 * time.Second

// faulty returns a URL through the harness's fault injector, or skips the
// test with the reason when the transport provides none.
func (e *env) faulty() (string, Faults) {
	e.t.Helper()
	if e.h.Faulty == nil {
		e.t.Skipf("%s: the harness provides no fault injector (Harness.Faulty), so the transport's behaviour while the broker is down or frozen is not checked", e.h.Name)
	}
	return e.h.Faulty(e.t)
}

// busVia opens a bus for service on url.
func (e *env) busVia(url, service string) *eventbus.Bus {
	e.t.Helper()
	return e.busWith(eventbus.Config{ServiceName: e.service(service), URL: url})
}

// bounded runs f and fails the test unless it returns within d plus
// faultMargin; it returns f's error and how long it took.
func (e *env) bounded(what string, d time.Duration, f func(ctx context.Context) error) (time.Duration, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- f(ctx) }()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(d + faultMargin):
		e.t.Fatalf("%s with a ctx of %v has not returned after %v: calls must return by their ctx's deadline while the broker is down or frozen", what, d, d+faultMargin)
		return 0, nil
	}
}

// runningBus opens a started bus for service on url, subscribed to
// prefix+".#" with a recorder, and checks that an event goes round.
func (e *env) runningBus(url, service, prefix string) (*eventbus.Bus, *recorder) {
	e.t.Helper()
	b := e.busVia(url, service)
	r := newRecorder()
	e.subscribe(b, prefix+".#", r.handle)
	e.start(b)
	e.roundTrip(b, r, prefix+".before")
	return b, r
}

// frozenUnder opens a started bus for service on url, subscribed to
// pattern, then freezes the broker with f; the test heals it.
func (e *env) frozenUnder(url, service, pattern string, f Faults) *eventbus.Bus {
	e.t.Helper()
	c := e.busVia(url, service)
	e.subscribe(c, pattern, newRecorder().handle)
	e.start(c)
	f.Stall()
	return c
}

// roundTrip publishes an event through pub and waits until r has it.
func (e *env) roundTrip(pub *eventbus.Bus, r *recorder, name string) {
	e.t.Helper()
	ev := e.event(name, nil)
	e.publish(pub, ev)
	e.waitFor("event "+name+" after the broker healed", func() bool { return r.has(ev.ID) }, func() string { return "not delivered" })
}

// testCallsBoundedWhileStalled freezes the broker under a running bus:
// Publish, Poisoned, Replay and Close each return by their ctx's deadline
// (Publish with an error naming the events), and once the broker answers
// again the same bus publishes and consumes.
func testCallsBoundedWhileStalled(e *env) {
	url, f := e.faulty()
	b, r := e.runningBus(url, "stalled", "stall")

	f.Stall()
	ev := e.event("stall.during", nil)
	errs := e.boundedAll(
		boundedCall{"Publish while the broker is frozen", faultDeadline, func(ctx context.Context) error { return b.Publish(ctx, ev) }},
		boundedCall{"Poisoned while the broker is frozen", faultDeadline, func(ctx context.Context) error {
			_, err := b.Poisoned(ctx, eventbus.PoisonFilter{})
			return err
		}},
		boundedCall{"Replay while the broker is frozen", faultDeadline, func(ctx context.Context) error {
			_, err := b.Replay(ctx, eventbus.PoisonFilter{})
			return err
		}},
	)
	var pe *eventbus.PublishError
	if err := errs[0]; err != nil && (!errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].ID != ev.ID) {
		e.t.Errorf("Publish while frozen: %v; want nil or a *PublishError naming the event", err)
	}

	f.Heal()
	e.roundTrip(b, r, "stall.after")

	// A second bus, closed while the broker is frozen.
	c := e.frozenUnder(url, "stalled-close", "stall.close.#", f)
	defer f.Heal()
	took, err := e.bounded("Close while the broker is frozen", faultDeadline, func(ctx context.Context) error { return c.Close(ctx) })
	e.t.Logf("Close while frozen returned after %v: %v", took.Round(time.Millisecond), err)
}

// testCallsBoundedWhileDown cuts the broker: New, Start and Publish each
// return by their ctx's deadline with an error; once it is back, Start
// succeeds and the events flow.
func testCallsBoundedWhileDown(e *env) {
	url, f := e.faulty()
	f.Cut()
	_, err := e.bounded("New while the broker is down", faultDeadline, func(ctx context.Context) error {
		b, err := eventbus.New(ctx, eventbus.Config{ServiceName: e.service("down-new"), URL: url, Logger: e.log})
		if err == nil {
			_ = b.Close(ctx)
			return errors.New("the bus opened although the broker is down")
		}
		return nil
	})
	if err != nil {
		e.t.Errorf("New: %v", err)
	}
	f.Heal()

	b := e.busVia(url, "down")
	r := newRecorder()
	e.subscribe(b, "down.#", r.handle)
	f.Cut()
	ev := e.event("down.during", nil)
	errs := e.boundedAll(
		boundedCall{"Start while the broker is down", faultDeadline, func(ctx context.Context) error { return b.Start(ctx) }},
		boundedCall{"Publish while the broker is down", faultDeadline, func(ctx context.Context) error { return b.Publish(ctx, ev) }},
	)
	if errs[0] == nil {
		e.t.Log("Start succeeded while the broker was down (the transport had the subscription ready)")
	}
	if errs[1] == nil {
		e.t.Errorf("Publish while the broker is down returned nil: the broker cannot have accepted the event")
	}
	f.Heal()
	e.start(b)
	e.roundTrip(b, r, "down.after")
}

// testSubscribeAfterStartWhileDown: Subscribe on a started bus while the
// broker is down waits for the broker (or fails), and once the broker is
// back the subscription consumes; Close while such a Subscribe waits makes
// both return by Close's deadline. Subscribe has no ctx: Close is what
// bounds it.
func testSubscribeAfterStartWhileDown(e *env) {
	url, f := e.faulty()
	b, r := e.runningBus(url, "subdown", "subdown.first")

	f.Cut()
	r2 := newRecorder()
	subscribed := make(chan error, 1)
	go func() { subscribed <- b.Subscribe("subdown.second.#", r2.handle) }()
	time.Sleep(time.Second) // the outage the Subscribe must wait out
	f.Heal()
	var err error
	select {
	case err = <-subscribed:
	case <-time.After(e.timeout):
		e.t.Fatalf("Subscribe after Start, called while the broker was down, has not returned %v after the broker came back", e.timeout)
	}
	if err != nil {
		// The transport gave up rather than wait: allowed, as long as a
		// new call succeeds now that the broker is back.
		e.t.Logf("Subscribe while the broker was down: %v", err)
		e.subscribe(b, "subdown.second.#", r2.handle)
	}
	e.roundTrip(b, r2, "subdown.second.after")
	e.roundTrip(b, r, "subdown.first.after")

	// Close ends a Subscribe that waits for a frozen broker.
	c := e.frozenUnder(url, "subdown-close", "subdown.close.first.#", f)
	defer f.Heal()
	waiting := make(chan error, 1)
	go func() { waiting <- c.Subscribe("subdown.close.second.#", newRecorder().handle) }()
	time.Sleep(500 * time.Millisecond) // Close comes while the Subscribe waits
	took, err := e.bounded("Close while a Subscribe waits for the frozen broker", faultDeadline, func(ctx context.Context) error { return c.Close(ctx) })
	e.t.Logf("Close returned after %v: %v", took.Round(time.Millisecond), err)
	select {
	case err := <-waiting:
		if err != nil && !errors.Is(err, eventbus.ErrClosed) {
			e.t.Logf("the waiting Subscribe returned %v", err)
		}
	case <-time.After(faultMargin):
		e.t.Fatalf("Subscribe waiting for a frozen broker has not returned %v after Close did", faultMargin)
	}
}

// testPublishRidesOutAShortOutage: a Publish whose ctx outlasts a short
// outage (the broker restarts) waits for the broker and succeeds, and its
// events are delivered.
func testPublishRidesOutAShortOutage(e *env) {
	url, f := e.faulty()
	b, r := e.runningBus(url, "outage", "outage")
	f.Cut()
	healed := make(chan struct{})
	go func() {
		defer close(healed)
		time.Sleep(time.Second) // the outage the Publish must ride out
		f.Heal()
	}()
	evs := make([]eventbus.Event, 20)
	for i := range evs {
		evs[i] = e.event(fmt.Sprintf("outage.e%d", i%4), map[string]int{"i": i})
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	defer cancel()
	if err := b.Publish(ctx, evs...); err != nil {
		e.t.Errorf("Publish across a 1 s outage with a %v ctx: %v", e.timeout, err)
	}
	<-healed
	e.waitFor("the events published across the outage", func() bool {
		for _, ev := range evs {
			if !r.has(ev.ID) {
				return false
			}
		}
		return true
	}, func() string { return r.missing(ids(evs)) })
}

func ids(evs []eventbus.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

// boundedCall is one call for boundedAll: f gets a ctx of d and must
// return by d plus faultMargin.
type boundedCall struct {
	what string
	d    time.Duration
	f    func(ctx context.Context) error
}

// boundedAll runs independent calls at once (each is bounded on its own,
// so running them together keeps a fault test as short as its longest
// call) and returns their errors; it fails the test, naming every call
// that had not returned by its deadline plus faultMargin.
func (e *env) boundedAll(calls ...boundedCall) []error {
	e.t.Helper()
	errs := make([]error, len(calls))
	dones := make([]chan error, len(calls))
	start := time.Now()
	for i, c := range calls {
		dones[i] = make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), c.d)
			defer cancel()
			dones[i] <- c.f(ctx)
		}()
	}
	var late []string
	for i, c := range calls {
		select {
		case errs[i] = <-dones[i]:
			e.t.Logf("%s returned after %v: %v", c.what, time.Since(start).Round(time.Millisecond), errs[i])
		case <-time.After(time.Until(start.Add(c.d + faultMargin))):
			late = append(late, fmt.Sprintf("%s (ctx of %v)", c.what, c.d))
		}
	}
	if len(late) > 0 {
		e.t.Fatalf("not returned by their ctx's deadline plus %v while the broker is down or frozen: %s", faultMargin, strings.Join(late, "; "))
	}
	return errs
}
