package contracttests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// testPublishedMeansAccepted: Publish returns nil only once the broker has
// the messages, so closing the publishing transport right after Publish
// returned loses none of them. A publisher that returns while its
// messages still wait in a local buffer (to be sent in the background)
// loses them here, unless its Close happens to flush them.
func testPublishedMeansAccepted(e *env) {
	svc := e.service("accepted")
	s := e.tsubscribe(e.transport(svc), nil, svc, "accepted", "accepted.#", 8)
	pubTr := e.transport(e.service("accepted-pub"))
	var msgs []*message.Message
	for i := range 4 {
		batch := e.msgs(50, fmt.Sprintf("accepted.batch%d", i), fmt.Sprint(i))
		if err := pubTr.Publisher().Publish(fmt.Sprintf("accepted.batch%d", i), batch...); err != nil {
			e.t.Fatalf("Publish of batch %d: %v", i, err)
		}
		msgs = append(msgs, batch...)
	}
	// At once: nothing may still be on its way.
	e.closeTransport("closing the publishing transport right after Publish returned", pubTr)
	s.collect("messages whose Publish returned nil before the publisher closed", msgIDs(msgs))
}

// testPublishAfterClose: a closed transport's publisher fails with an
// error wrapping ErrClosed, and so do Redeliver and a new subscription;
// Close may be called again. (The bus answers its own Publish after Close
// without calling the transport, so this is checked on the transport.)
func testPublishAfterClose(e *env) {
	svc := e.service("after-close")
	tr := e.transport(svc)
	// A subscription, so that nothing fails for want of a route.
	s := e.tsubscribe(e.transport(svc), nil, svc, "open", "closed.#", 1)
	e.closeTransport("Close", tr)
	m := e.msg("closed.transport")
	if err := tr.Publisher().Publish("closed.transport", m); !errors.Is(err, driver.ErrClosed) {
		e.t.Errorf("Publish after the transport's Close: got %v, want an error wrapping ErrClosed", err)
	}
	if err := tr.Redeliver(e.ctx(), s.cfg.Group, e.msg("closed.transport")); !errors.Is(err, driver.ErrClosed) {
		e.t.Errorf("Redeliver after the transport's Close: got %v, want an error wrapping ErrClosed", err)
	}
	cfg := subscriberConfig(svc, "late", "closed.#", 1)
	sub, err := tr.NewSubscriber(cfg)
	if err == nil {
		var ch <-chan *message.Message
		ch, err = sub.Subscribe(e.ctx(), "closed.#")
		if err == nil {
			go func() {
				for m := range ch {
					m.Nack()
				}
			}()
			_ = e.boundedErr("the Close of a subscription made after the transport's Close", sub.Close)
		}
	}
	if !errors.Is(err, driver.ErrClosed) {
		e.t.Errorf("NewSubscriber and Subscribe after the transport's Close: got %v, want an error wrapping ErrClosed", err)
	}
	e.closeTransport("a second Close", tr)
	// The other transport of the service was not affected, and the
	// message published after Close was not delivered.
	fence := e.msg("closed.fence")
	e.tpublish(e.transport(e.service("after-close-pub")).Publisher(), fence)
	for {
		got := s.next("the fence")
		s.ack(got)
		if got.UUID == m.UUID {
			e.t.Errorf("the message published after Close (which failed) was delivered")
		}
		if got.UUID == fence.UUID {
			break
		}
	}
}

// testUnroutable: a message no subscription matches fails alone with an
// error wrapping ErrUnroutable, unless the transport keeps such messages.
func testUnroutable(e *env) {
	if e.h.RetainsUnroutable {
		e.t.Skipf("%s keeps events no subscription matches (Harness.RetainsUnroutable); PublishErrorWhileDown checks its publish errors", e.h.Name)
	}
	pub := e.transport(e.service("unroutable")).Publisher()
	m := e.msg("nobody.listens")
	err := pub.Publish("nobody.listens", m)
	var pe *driver.PublishError
	if !errors.Is(err, driver.ErrUnroutable) || !errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].UUID != m.UUID {
		e.t.Errorf("Publish with no matching subscription: got %v, want a *PublishError naming %s and wrapping ErrUnroutable", err, m.UUID)
	}
}

// testRedeliverReachesOneGroup: Redeliver sends to one subscription group,
// not to every group whose pattern matches; a message it sends never
// reaches the others (the fence, published to both afterwards, shows they
// had their chance).
func testRedeliverReachesOneGroup(e *env) {
	svc := e.service("redeliver")
	tr := e.transport(svc)
	a := e.tsubscribe(tr, nil, svc, "failing", "redeliver.#", 1)
	b := e.tsubscribe(tr, nil, svc, "healthy", "redeliver.#", 1)
	m := e.msg("redeliver.me")
	if err := tr.Redeliver(e.ctx(), a.cfg.Group, m); err != nil {
		e.t.Fatalf("Redeliver to %s: %v", a.cfg.Group, err)
	}
	got := a.next("the redelivered message at its group")
	if got.UUID != m.UUID {
		e.t.Errorf("group %s got %s, want the redelivered %s", a.label, got.UUID, m.UUID)
	}
	a.ack(got)
	fence := e.msg("redeliver.fence")
	e.tpublish(tr.Publisher(), fence)
	for {
		got := b.next("the fence at the other group")
		b.ack(got)
		if got.UUID == m.UUID {
			e.t.Errorf("a message redelivered to group %s reached group %s", a.label, b.label)
		}
		if got.UUID == fence.UUID {
			break
		}
	}
}

// roundTripT publishes one message through pub and waits until s has it.
func (e *env) roundTripT(what string, pub message.Publisher, s *tsub, name string) {
	e.t.Helper()
	m := e.msg(name)
	e.tpublish(pub, m)
	for {
		got := s.next(what)
		s.ack(got)
		if got.UUID == m.UUID {
			return
		}
	}
}

// publishWithin publishes msgs through pub with a ctx of d on each
// message and fails the test unless Publish returns by d plus
// faultMargin; it returns Publish's error.
func (e *env) publishWithin(what string, pub message.Publisher, d time.Duration, msgs []*message.Message) error {
	e.t.Helper()
	took, err := e.bounded(what, d, func(ctx context.Context) error {
		in := make([]*message.Message, len(msgs))
		for i, m := range msgs {
			in[i] = withCtx(ctx, m)
		}
		return pub.Publish(msgs[0].Metadata.Get(driver.HeaderType), in...)
	})
	e.t.Logf("%s returned after %v: %v", what, took.Round(time.Millisecond), err)
	return err
}

// expectAllFailed fails the test unless err reports every one of msgs
// failed, in a well-formed error.
func (e *env) expectAllFailed(what string, err error, msgs []*message.Message) {
	e.t.Helper()
	if err == nil {
		e.t.Errorf("%s returned nil: the broker cannot have accepted the messages, so Publish must report them failed", what)
		return
	}
	failed, bad := failedIDs(err, msgs)
	if bad != "" {
		e.t.Errorf("%s: malformed *PublishError (%s): %v", what, bad, err)
	}
	for _, m := range msgs {
		if failed[m.UUID] == nil {
			e.t.Errorf("%s: message %s is not reported failed (error: %v)", what, m.UUID, err)
		}
	}
}

// testPublishBoundedWhileFrozen freezes the broker: a Publish returns by
// its messages' deadline (flow control, a full queue or an unanswered
// connection must not hold it longer) and reports every message failed,
// since the broker cannot have confirmed them; once the broker answers
// again, the same transport publishes and delivers.
func testPublishBoundedWhileFrozen(e *env) {
	url, f := e.faulty()
	svc := e.service("frozen")
	tr := e.transportVia(url, svc)
	s := e.tsubscribe(tr, nil, svc, "frozen", "frozen.#", 4)
	pub := tr.Publisher()
	e.roundTripT("a message before the freeze", pub, s, "frozen.before")
	f.Stall()
	defer f.Heal()
	msgs := e.msgs(3, "frozen.during", "k")
	err := e.publishWithin("Publish while the broker is frozen", pub, faultDeadline, msgs)
	e.expectAllFailed("Publish while the broker is frozen", err, msgs)
	f.Heal()
	e.roundTripT("a message after the broker answers again", pub, s, "frozen.after")
}

// testPublishErrorWhileDown cuts the broker: a Publish whose messages'
// deadline passes before it is back reports every message failed by that
// deadline (on every transport: one that keeps unroutable events has no
// other publish error the suite can provoke); once the broker is back,
// the same transport reconnects, publishes and delivers.
func testPublishErrorWhileDown(e *env) {
	url, f := e.faulty()
	svc := e.service("down")
	tr := e.transportVia(url, svc)
	s := e.tsubscribe(tr, nil, svc, "down", "down.#", 4)
	pub := tr.Publisher()
	e.roundTripT("a message before the outage", pub, s, "down.before")
	f.Cut()
	defer f.Heal()
	msgs := e.msgs(3, "down.during", "k")
	err := e.publishWithin("Publish while the broker is down", pub, faultDeadline, msgs)
	e.expectAllFailed("Publish while the broker is down", err, msgs)
	f.Heal()
	e.roundTripT("a message after the broker is back (reconnection)", pub, s, "down.after")
}

// testTransportCallsBoundedWhileFrozen freezes the broker under an open
// transport: NewSubscriber answers at once (it does not talk to the
// broker); Subscribe, Redeliver and the poison queue's methods return by
// their ctx's deadline, Subscribe and Redeliver with an error (nothing can
// be in place or accepted); Close returns within a few seconds. A
// transport opened while the broker is frozen returns by its ctx's
// deadline too, and once the broker answers again a new transport works.
func testTransportCallsBoundedWhileFrozen(e *env) {
	url, f := e.faulty()
	svc := e.service("frozen-calls")
	tr := e.transportVia(url, svc)
	s := e.tsubscribe(tr, nil, svc, "frozen", "fz.#", 1)
	e.roundTripT("a message before the freeze", tr.Publisher(), s, "fz.before")
	pq, pqErr := tr.PoisonQueue()
	f.Stall()
	defer f.Heal()

	cfg := subscriberConfig(svc, "late", "fz.#", 1)
	var sub message.Subscriber
	if _, err := e.bounded("NewSubscriber while the broker is frozen", 0, func(context.Context) error {
		var err error
		sub, err = tr.NewSubscriber(cfg)
		return err
	}); err != nil {
		e.t.Errorf("NewSubscriber while the broker is frozen: %v; it must not talk to the broker", err)
	}
	if sub != nil {
		e.t.Cleanup(func() { _ = sub.Close() })
	}
	calls := []boundedCall{
		{"Redeliver while the broker is frozen", faultDeadline, func(ctx context.Context) error {
			return tr.Redeliver(ctx, s.cfg.Group, withCtx(ctx, e.msg("fz.redelivered")))
		}},
		{"Open while the broker is frozen", faultDeadline, func(ctx context.Context) error {
			t2, err := driver.Open(ctx, url, driver.Config{ServiceName: svc, Logger: e.log})
			if err == nil {
				_ = t2.Close()
			}
			return err
		}},
	}
	if sub != nil {
		calls = append(calls, boundedCall{"Subscribe while the broker is frozen", faultDeadline, func(ctx context.Context) error {
			ch, err := sub.Subscribe(ctx, "fz.#")
			if err == nil {
				go func() {
					for m := range ch {
						m.Nack()
					}
				}()
			}
			return err
		}})
	}
	if pqErr == nil {
		calls = append(calls,
			boundedCall{"PoisonQueue.Add while the broker is frozen", faultDeadline, func(ctx context.Context) error {
				rec := poisonRecord("frozen", "s")
				rec.SetContext(ctx)
				return pq.Add(ctx, rec)
			}},
			boundedCall{"PoisonQueue.Scan while the broker is frozen", faultDeadline, func(ctx context.Context) error {
				return pq.Scan(ctx, 10, func([]*message.Message) ([]int, error) { return nil, nil })
			}},
			boundedCall{"PoisonQueue.Purge while the broker is frozen", faultDeadline, func(ctx context.Context) error { return pq.Purge(ctx) }},
		)
	}
	errs := e.boundedAll(calls...)
	// A call that cannot have reached the broker must not report success.
	for i, c := range calls {
		switch {
		case errs[i] != nil:
		case strings.HasPrefix(c.what, "Redeliver"):
			e.t.Errorf("%s returned nil: the broker cannot have accepted the message", c.what)
		case strings.HasPrefix(c.what, "Subscribe"):
			e.t.Errorf("%s returned nil: the subscription cannot be in place, so Subscribe must fail when its ctx ends", c.what)
		case strings.HasPrefix(c.what, "PoisonQueue.Add"):
			e.t.Errorf("%s returned nil: the record cannot be stored durably", c.what)
		}
	}
	e.closeTransport("the transport's Close while the broker is frozen", tr)
	f.Heal()
	tr2 := e.transportVia(url, svc)
	s2 := e.tsubscribe(tr2, nil, svc, "after", "fz.#", 1)
	e.roundTripT("a message through a new transport after the broker answers again", tr2.Publisher(), s2, "fz.after")
}
