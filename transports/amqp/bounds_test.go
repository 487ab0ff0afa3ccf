package amqp

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/internal/faultnet"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// boundMargin is how much later than its bound (its ctx's deadline, or the
// bound its documentation states) a call may return in these tests. The
// calls select on the deadline itself; the margin absorbs goroutine
// scheduling on the shared 2-core machine under -race.
const boundMargin = 500 * time.Millisecond

// returnsBy runs f and fails the test unless it returns within limit plus
// boundMargin; it returns how long f took and its error.
func returnsBy(t *testing.T, what string, limit time.Duration, f func() error) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	res := make(chan error, 1)
	go func() { res <- f() }()
	timer := time.NewTimer(limit + boundMargin)
	defer timer.Stop()
	select {
	case err := <-res:
		return time.Since(start), err
	case <-timer.C:
		t.Fatalf("%s did not return within %v + %v", what, limit, boundMargin)
		return 0, nil
	}
}

// openVia opens a transport on the test broker through px, closed when
// the test ends.
func openVia(t *testing.T, px *faultnet.Proxy, params ...string) *Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := open(ctx, driver.Config{URL: mustParse(t, isolatedURLVia(t, px.Addr(), params...)), ServiceName: unique("bounds-")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// waitConnected waits until tr is (up) or is not (!up) connected.
func waitConnected(t *testing.T, tr *Transport, up bool) {
	t.Helper()
	transporttest.WaitFor(t, 30*time.Second, fmt.Sprintf("connected=%v", up), func() bool { u, _ := tr.conn.connected(); return u == up }, func() string { return "no change" })
}

// roundTrip checks that tr works: a new subscription receives an event
// published after it.
func roundTrip(t *testing.T, tr *Transport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc := unique("rt-")
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".rt", Service: svc, Subscription: "rt", Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, "roundtrip.#")
	if err != nil {
		t.Fatalf("Subscribe after the fault: %v", err)
	}
	ev := mustEvent(t, "roundtrip.one", nil)
	msg := eventbustest.Message(ev)
	msg.SetContext(ctx)
	if err := tr.Publisher().Publish(ev.Name, msg); err != nil {
		t.Fatalf("Publish after the fault: %v", err)
	}
	select {
	case m, ok := <-ch:
		if !ok || m.UUID != ev.ID {
			t.Fatalf("received %v (open %v), want %s", m, ok, ev.ID)
		}
		m.Ack()
	case <-ctx.Done():
		t.Fatal("the event published after the fault was not delivered")
	}
}

func rawMessage(ctx context.Context, size int) *message.Message {
	m := message.NewMessage(unique("m-"), make([]byte, size))
	m.SetContext(ctx)
	return m
}

// TestOpenBoundedWhileStalled: Open against a broker that accepts the
// connection and never answers returns by its ctx's deadline (it took
// 10 s with a 3 s ctx, the handshake's own bound), with the deadline in
// its error; once the broker answers again, Open works.
func TestOpenBoundedWhileStalled(t *testing.T) {
	px := startFaultProxy(t)
	u := mustParse(t, isolatedURLVia(t, px.Addr()))
	px.Stall()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	d, err := returnsBy(t, "Open against a stalled broker", 3*time.Second, func() error {
		tr, err := open(ctx, driver.Config{URL: u, ServiceName: unique("stalled-")})
		if err == nil {
			_ = tr.Close()
		}
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "cannot connect to amqp://guest:xxxxx@"+px.Addr()) {
		t.Errorf("Open: %v; want a deadline error naming the broker, password redacted", err)
	}
	if d < 2900*time.Millisecond {
		t.Errorf("Open gave up after %v, before its ctx ended", d)
	}
	px.Heal()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	tr, err := open(ctx2, driver.Config{URL: u, ServiceName: unique("healed-")})
	if err != nil {
		t.Fatalf("Open after the broker answers again: %v", err)
	}
	defer tr.Close()
	roundTrip(t, tr)
}

// TestPublishBoundedWhileStalled: Publish returns by its messages'
// deadline while the broker is frozen, whether the call has to open its
// channel (amqp091-go's Channel takes no ctx) or a write is blocked on the
// full socket (the call is not stuck in it), and while the connection is
// cut; each message is reported failed with the deadline, and once the
// broker is back the same transport publishes and consumes.
func TestPublishBoundedWhileStalled(t *testing.T) {
	px := startFaultProxy(t)
	tr := openVia(t, px, "publish_channels", "1")
	sinkQueue(t, tr, "stall.#")
	publish := func(what string, msgs ...*message.Message) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, m := range msgs {
			m.SetContext(ctx)
		}
		_, err := returnsBy(t, what, 2*time.Second, func() error { return tr.Publisher().Publish("stall.x", msgs...) })
		var pe *driver.PublishError
		if !errors.As(err, &pe) || len(pe.Failed) != len(msgs) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v; want all %d messages failed with DeadlineExceeded", what, err, len(msgs))
		}
		return err
	}

	px.Stall()
	err := publish("Publish that opens its channel against a stalled broker", rawMessage(context.Background(), 10))
	if e := fmt.Sprint(err); !strings.Contains(e, "not sent to the broker") && !strings.Contains(e, "opening a channel: no answer from the broker") {
		t.Errorf("error %v; want it to say that the message was not sent or that the broker did not answer", err)
	}
	// Redeliver is bounded by its ctx even for a message whose own
	// context lasts longer.
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	long, lcancel := context.WithTimeout(context.Background(), time.Minute)
	_, err = returnsBy(t, "Redeliver against a stalled broker", 2*time.Second, func() error {
		return tr.Redeliver(rctx, "nobody", rawMessage(long, 10))
	})
	rcancel()
	lcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Redeliver: %v; want DeadlineExceeded", err)
	}
	px.Heal()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tr.Publisher().Publish("stall.x", rawMessage(ctx, 10)); err != nil {
		t.Fatalf("Publish after the stall: %v", err)
	}

	// 24 MiB fill the socket's buffers (4 MiB at most on this machine,
	// plus what the proxy's side holds): the write blocks.
	px.Stall()
	big := make([]*message.Message, 24)
	for i := range big {
		big[i] = rawMessage(context.Background(), 1<<20)
	}
	err = publish("Publish of 24 MiB to a stalled broker", big...)
	if !strings.Contains(fmt.Sprint(err), "the broker may still have the message") {
		t.Errorf("error %v; want it to say that the broker may have the messages written", err)
	}
	if pc := tr.pub.slots[0].current(); pc == nil || len(pc.sendLock) == 0 {
		t.Errorf("no write is blocked on the stalled socket: the test did not fill it")
	}
	publish("Publish behind a blocked write", rawMessage(context.Background(), 10))
	px.Heal()
	roundTrip(t, tr)

	px.Cut()
	waitConnected(t, tr, false)
	err = publish("Publish while the connection is cut", rawMessage(context.Background(), 10))
	if !strings.Contains(fmt.Sprint(err), "not connected to the broker") {
		t.Errorf("error %v; want it to say the transport is not connected", err)
	}
	px.Heal()
	roundTrip(t, tr)
}

// TestSubscribeSetupBounded: Subscribe returns by its ctx's deadline while
// the connection is cut and while the broker is frozen (where declaring
// the queue waited for the broker), and a later Subscribe on the same
// transport works once the broker is back.
func TestSubscribeSetupBounded(t *testing.T) {
	px := startFaultProxy(t)
	tr := openVia(t, px)
	svc := unique("setup-")
	subscribe := func(what string) error {
		t.Helper()
		sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".s", Service: svc, Subscription: "s", Concurrency: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = returnsBy(t, what, 2*time.Second, func() error {
			_, err := sub.Subscribe(ctx, "setup.#")
			return err
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v; want DeadlineExceeded", what, err)
		}
		return err
	}

	px.Cut()
	waitConnected(t, tr, false)
	if err := subscribe("Subscribe while the connection is cut"); !strings.Contains(fmt.Sprint(err), "not connected to the broker") {
		t.Errorf("error %v; want it to say the transport is not connected", err)
	}
	px.Heal()
	waitConnected(t, tr, true)
	px.Stall()
	if err := subscribe("Subscribe against a stalled broker"); !strings.Contains(fmt.Sprint(err), "no answer from the broker") {
		t.Errorf("error %v; want it to say the broker did not answer", err)
	}
	px.Heal()
	roundTrip(t, tr)
}

// TestSubscriptionOutlivesSetupCtx: the ctx given to Subscribe bounds only
// the setup; the subscription goes on after it ends, until the subscriber
// closes.
func TestSubscriptionOutlivesSetupCtx(t *testing.T) {
	url := isolatedURL(t)
	svc := unique("outlive-")
	tr, err := open(context.Background(), driver.Config{URL: mustParse(t, url), ServiceName: svc})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".s", Service: svc, Subscription: "s", Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sub.Subscribe(ctx, "outlive.#")
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	ev := mustEvent(t, "outlive.one", nil)
	if err := tr.Publisher().Publish(ev.Name, eventbustest.Message(ev)); err != nil {
		t.Fatal(err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("the subscription ended with its setup ctx")
		}
		m.Ack()
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery")
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-ch; ok {
		t.Error("the channel is still open after the subscriber's Close")
	}
}

// TestCloseBoundedWhileStalled: with the broker frozen, a consumer running
// and a Publish blocked writing to the full socket, a subscriber's Close
// returns within its bound (closeTimeout, for the cancel),
// Transport.Close within closeTimeout with an error
// saying that the broker did not confirm, and the blocked Publish returns
// too.
func TestCloseBoundedWhileStalled(t *testing.T) {
	px := startFaultProxy(t)
	tr := openVia(t, px, "publish_channels", "1")
	sinkQueue(t, tr, "closing.#")
	svc := unique("closing-")
	newSub := func() message.Subscriber {
		sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".s", Service: svc, Subscription: "s", Concurrency: 4})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.Subscribe(context.Background(), "closing.#"); err != nil {
			t.Fatal(err)
		}
		return sub
	}
	sub1, sub2 := newSub(), newSub()
	if err := tr.Publisher().Publish("closing.x", rawMessage(context.Background(), 10)); err != nil {
		t.Fatal(err)
	}

	px.Stall()
	if _, err := returnsBy(t, "a subscriber's Close against a stalled broker", closeTimeout, sub1.Close); err != nil {
		t.Errorf("subscriber Close: %v", err)
	}
	pubDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		big := make([]*message.Message, 24)
		for i := range big {
			big[i] = rawMessage(ctx, 1<<20)
		}
		pubDone <- tr.Publisher().Publish("closing.x", big...)
	}()
	transporttest.WaitFor(t, 10*time.Second, "a write under way", func() bool {
		pc := tr.pub.slots[0].current()
		return pc != nil && len(pc.sendLock) == 1
	}, func() string { return "none" })
	_, err := returnsBy(t, "Transport.Close against a stalled broker", closeTimeout, tr.Close)
	if err == nil || !strings.Contains(err.Error(), "did not confirm the close within 2s") {
		t.Errorf("Close: %v; want an error saying the broker did not confirm", err)
	}
	select {
	case err := <-pubDone:
		if err == nil {
			t.Error("the blocked Publish succeeded")
		}
	case <-time.After(boundMargin):
		t.Error("the blocked Publish did not return when the transport closed")
	}
	if _, err := returnsBy(t, "the other subscriber's Close after the transport's", 0, sub2.Close); err != nil {
		t.Errorf("subscriber Close: %v", err)
	}
}

// TestChannelHelpersWhileStalled: openChannel and within return by their
// ctx's deadline when the broker does not answer, closeChannel within
// closeTimeout, and all work again once it answers.
func TestChannelHelpersWhileStalled(t *testing.T) {
	px := startFaultProxy(t)
	tr := openVia(t, px)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch1, _, err := tr.openChannel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ch2, _, err := tr.openChannel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q := unique("helpers-")
	declared.add(tr.Exchange(), q)

	px.Stall()
	short, cancelShort := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelShort()
	_, err = returnsBy(t, "openChannel against a stalled broker", 2*time.Second, func() error {
		_, _, err := tr.openChannel(short)
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "opening a channel: no answer from the broker") {
		t.Errorf("openChannel: %v; want DeadlineExceeded saying the broker did not answer", err)
	}
	short2, cancelShort2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelShort2()
	_, err = returnsBy(t, "within against a stalled broker", 2*time.Second, func() error {
		return tr.within(short2, ch1, "queue.declare", func() error { return tr.declareQueue(ch1, q) })
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "queue.declare: no answer from the broker") {
		t.Errorf("within: %v; want DeadlineExceeded saying the broker did not answer", err)
	}
	returnsBy(t, "closeChannel against a stalled broker", closeTimeout, func() error {
		tr.closeChannel(context.Background(), ch2)
		return nil
	})

	px.Heal()
	ch3, _, err := tr.openChannel(ctx)
	if err != nil {
		t.Fatalf("openChannel after the stall: %v", err)
	}
	if err := tr.within(ctx, ch3, "queue.declare", func() error { return tr.declareQueue(ch3, q) }); err != nil {
		t.Fatalf("within after the stall: %v", err)
	}
	tr.closeChannel(ctx, ch3)
	if !ch3.IsClosed() {
		t.Error("closeChannel returned before the channel closed on a healthy broker")
	}
}

// TestFrozenConnectionIsReplaced: a Publish without a deadline, blocked
// writing to a frozen broker's full socket, is released once the
// heartbeats tell that the connection is dead; it then waits for the next
// connection (it has no deadline) and sends the rest of its messages on
// it. amqp091-go's shutdown of the dead connection waits for the lock the
// blocked writer holds, so before the transport closed the socket itself
// both waited for ever and the transport never reconnected.
func TestFrozenConnectionIsReplaced(t *testing.T) {
	px := startFaultProxy(t)
	// Heartbeats every 0.5 s: amqp091-go gives up on a connection that
	// sent nothing for 1.5 s.
	tr := openVia(t, px, "publish_channels", "1", "heartbeat", "1")
	q := sinkQueue(t, tr, "frozen.#")
	if err := tr.Publisher().Publish("frozen.x", rawMessage(context.Background(), 10)); err != nil {
		t.Fatal(err)
	}
	gen := generation(t, tr)
	px.Stall()
	done := make(chan error, 1)
	big := make([]*message.Message, 24)
	for i := range big {
		big[i] = rawMessage(context.Background(), 1<<20)
	}
	go func() { done <- tr.Publisher().Publish("frozen.x", big...) }()
	var pc *pubChannel
	transporttest.WaitFor(t, 10*time.Second, "a write under way", func() bool {
		pc = tr.pub.slots[0].current()
		return pc != nil && len(pc.sendLock) == 1
	}, func() string { return "none" })
	waitConnected(t, tr, false)
	// Still frozen: only the transport can release the writer.
	transporttest.WaitFor(t, 10*time.Second, "the blocked write released", func() bool { return len(pc.sendLock) == 0 }, func() string { return "still blocked" })
	px.Heal()
	waitConnected(t, tr, true)
	if g := generation(t, tr); g == gen {
		t.Errorf("connected on generation %d, want a new connection", g)
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the Publish blocked on the dead connection's socket did not return")
	}
	var pe *driver.PublishError
	failed := 0
	if errors.As(err, &pe) {
		failed = len(pe.Failed)
	} else if err != nil {
		t.Fatalf("Publish: %v; want a PublishError naming the messages lost with the connection", err)
	}
	if failed == 0 || failed == len(big) {
		t.Errorf("%d of %d messages failed; want those in flight on the dead connection only", failed, len(big))
	}
	if n := queueLength(t, q); n < 1+len(big)-failed {
		t.Errorf("the queue holds %d messages; want at least the %d confirmed", n, 1+len(big)-failed)
	}
	t.Logf("%d of %d messages failed with the connection: %v", failed, len(big), err)
	roundTrip(t, tr)
}
