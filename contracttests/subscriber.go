package contracttests

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// closeAsync starts the subscriber's Close and returns a channel that
// receives its result.
func (s *tsub) closeAsync() <-chan error {
	done := make(chan error, 1)
	go func() {
		var err error
		ran := false
		s.subClose.Do(func() {
			ran = true
			err = s.sub.Close()
		})
		if !ran {
			err = fmt.Errorf("contracttests: subscriber of %s closed twice by the suite", s.label)
		}
		done <- err
	}()
	return done
}

// testCompetingConsumers: two subscribers of one group, each with a
// concurrency of 1, share the group's messages. Work is shared when both
// hold a message at the same time, which the test establishes by holding
// (not acknowledging) what each receives: with one message unacknowledged,
// a subscriber may take no other, so the next must go to the other one.
// A message held by one subscriber must never reach the other. Then every
// message is delivered; redeliveries of acknowledged ones are counted
// (at least once allows them) and logged.
func testCompetingConsumers(e *env) {
	svc := e.service("cc")
	led := newLedger()
	a := e.tsubscribe(e.transport(svc), led, svc, "workers", "job.#", 1)
	b := e.tsubscribe(e.transport(svc), led, svc, "workers", "job.#", 1)
	pub := e.transport(e.service("cc-pub")).Publisher()
	const total, rounds = 40, 4
	msgs := make([]*message.Message, total)
	for i := range msgs {
		// Distinct keys, so a partitioned broker spreads them over the
		// partitions of both members.
		msgs[i] = e.msg("job.run", withKey(fmt.Sprint(i)))
	}
	e.tpublish(pub, msgs...)
	done := map[string]bool{}
	for r := range rounds {
		ma := a.next(fmt.Sprintf("round %d: subscriber 1's message", r+1))
		mb := b.next(fmt.Sprintf("round %d: subscriber 2's message while subscriber 1 holds %s", r+1, ma.UUID))
		if ma.UUID == mb.UUID {
			e.t.Fatalf("round %d: both subscribers of group %s hold message %s at once; a group's message goes to one of its subscribers", r+1, a.label, ma.UUID)
		}
		a.ack(ma)
		b.ack(mb)
		done[ma.UUID], done[mb.UUID] = true, true
	}
	var rest []string
	for _, m := range msgs {
		if !done[m.UUID] {
			rest = append(rest, m.UUID)
		}
	}
	got := e.drain("the remaining messages", []*tsub{a, b}, rest)
	e.t.Logf("subscriber 1 got %d messages, subscriber 2 %d after the %d shared rounds; %d redeliveries of acknowledged messages", len(got[0]), len(got[1]), rounds, led.duplicates())
}

// testConcurrency: a subscriber of concurrency c delivers c messages
// without waiting for their acknowledgements (not one at a time), and no
// more: the next comes only once one of them is acknowledged.
func testConcurrency(e *env) {
	const c = 3
	svc := e.service("conc")
	s := e.tsubscribe(e.transport(svc), nil, svc, "limited", "conc.#", c)
	// One key: a partitioned broker must honour the concurrency within a
	// partition too.
	msgs := e.msgs(4*c, "conc.item", "one-key")
	e.tpublish(e.transport(e.service("conc-pub")).Publisher(), msgs...)
	seen := map[string]bool{}
	var held []*message.Message
	hold := func(m *message.Message) {
		held = append(held, m)
		seen[m.UUID] = true
	}
	for i := range c {
		hold(s.next(fmt.Sprintf("message %d of %d delivered before any acknowledgement (Concurrency %d)", i+1, c, c)))
	}
	if m := s.expectNothingNew(fmt.Sprintf("with %d messages unacknowledged (Concurrency %d), a further message", c, c)); m != nil {
		hold(m)
	}
	s.ack(held[0])
	held = held[1:]
	hold(s.next("the message that the first acknowledgement made room for"))
	if len(held) == c {
		if m := s.expectNothingNew(fmt.Sprintf("after one acknowledgement, again with %d unacknowledged, a further message", c)); m != nil {
			hold(m)
		}
	}
	for _, m := range held {
		s.ack(m)
	}
	var ids []string
	for _, m := range msgs {
		if !seen[m.UUID] {
			ids = append(ids, m.UUID)
		}
	}
	s.collect("the remaining messages", ids)
}

// testSubscribeReturnsWhenInPlace: a message published as soon as
// Subscribe returned reaches the subscription (Subscribe must not return
// before the broker routes to it).
func testSubscribeReturnsWhenInPlace(e *env) {
	svc := e.service("ready")
	s := e.tsubscribe(e.transport(svc), nil, svc, "ready", "ready.#", 1)
	m := e.msg("ready.now")
	e.tpublish(e.transport(e.service("ready-pub")).Publisher(), m)
	got := s.next("the message published right after Subscribe returned")
	if got.UUID != m.UUID {
		e.t.Errorf("got %s, want %s", got.UUID, m.UUID)
	}
	s.ack(got)
}

// testSubscriptionOutlivesSubscribeContext: Subscribe's ctx bounds only
// the setup; ending it once Subscribe returned does not end the
// subscription.
func testSubscriptionOutlivesSubscribeContext(e *env) {
	svc := e.service("outlives")
	ctx, cancel := context.WithCancel(context.Background())
	s := e.tsubscribeCtx(ctx, e.transport(svc), nil, svc, "outlives", "outlives.#", 1)
	cancel()
	pub := e.transport(e.service("outlives-pub")).Publisher()
	for i := range 2 {
		m := e.msg("outlives.ctx")
		e.tpublish(pub, m)
		got := s.next(fmt.Sprintf("message %d published after Subscribe's ctx was cancelled", i+1))
		if got.UUID != m.UUID {
			e.t.Errorf("got %s, want %s", got.UUID, m.UUID)
		}
		s.ack(got)
	}
}

// testCloseClosesChannel: a subscriber's Close closes its channel and may
// be called again; the transport's Close closes the channels of the
// subscribers still open, and their Close still returns afterwards.
func testCloseClosesChannel(e *env) {
	svc := e.service("closing")
	tr := e.transport(svc)
	s1 := e.tsubscribe(tr, nil, svc, "first", "closing.#", 1)
	s2 := e.tsubscribe(tr, nil, svc, "second", "closing.#", 1)
	m := e.msg("closing.check")
	e.tpublish(tr.Publisher(), m)
	s1.ack(s1.next("a message before Close"))
	s2.ack(s2.next("a message before Close"))

	if err := e.boundedErr("the subscriber's Close", func() error { return s1.sub.Close() }); err != nil {
		e.t.Errorf("subscriber Close: %v", err)
	}
	s1.expectClosed("after the subscriber's Close", e.timeout)
	if err := e.boundedErr("a second Close of the subscriber", func() error { return s1.sub.Close() }); err != nil {
		e.t.Errorf("second subscriber Close: %v", err)
	}
	e.closeTransport("the transport's Close", tr)
	s2.expectClosed("after the transport's Close", closeBound)
	if err := e.boundedErr("the Close of a subscriber whose transport closed", func() error { return s2.sub.Close() }); err != nil {
		e.t.Logf("subscriber Close after its transport's: %v", err)
	}
}

// boundedErr runs f and fails the test unless it returns within the
// suite's timeout.
func (e *env) boundedErr(what string, f func() error) error {
	e.t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(e.timeout):
		e.t.Fatalf("%s has not returned after %v", what, e.timeout)
		return nil
	}
}

// testSubscriberCloseWaitsForAcks: a subscriber's Close returns only once
// the messages it delivered are settled, and does not cancel their
// contexts meanwhile (the bus waits for its handlers during a graceful
// Close).
func testSubscriberCloseWaitsForAcks(e *env) {
	svc := e.service("settle")
	s := e.tsubscribe(e.transport(svc), nil, svc, "settle", "settle.#", 1)
	m := e.msg("settle.me")
	e.tpublish(e.transport(e.service("settle-pub")).Publisher(), m)
	got := s.next("the message")
	closed := s.closeAsync()
	select {
	case err := <-closed:
		e.t.Fatalf("the subscriber's Close returned (%v) while a message it delivered was unacknowledged; it must wait until the acknowledgement is settled", err)
	case <-time.After(quietWindow):
	}
	if err := got.Context().Err(); err != nil {
		e.t.Errorf("the subscriber's Close cancelled the context of a message in flight (%v); only the transport's Close may", err)
	}
	s.ack(got)
	select {
	case err := <-closed:
		if err != nil {
			e.t.Errorf("subscriber Close: %v", err)
		}
	case <-time.After(e.timeout):
		e.t.Fatalf("the subscriber's Close has not returned %v after the last message was acknowledged", e.timeout)
	}
	s.expectClosed("after the subscriber's Close", e.timeout)
}

// testNoRedeliveryAfterGracefulClose: messages acknowledged before a
// subscriber's Close returned are settled: the next subscriber of the
// group does not get them again. At least once allows redeliveries while a
// subscription runs, not after a graceful Close that settled everything.
// The next subscriber's fence, published after them with the same key,
// and a quiet window after it show that it had its chance to get them.
func testNoRedeliveryAfterGracefulClose(e *env) {
	svc := e.service("settled")
	tr1 := e.transport(svc)
	s1 := e.tsubscribe(tr1, nil, svc, "settled", "settled.#", 2)
	pub := e.transport(e.service("settled-pub")).Publisher()
	msgs := e.msgs(10, "settled.item", "k")
	e.tpublish(pub, msgs...)
	s1.collect("every message, acknowledged", msgIDs(msgs))
	if err := e.boundedErr("the subscriber's Close", func() error { return s1.sub.Close() }); err != nil {
		e.t.Errorf("subscriber Close: %v", err)
	}
	e.closeTransport("the transport's Close after the subscriber's", tr1)

	s2 := e.tsubscribe(e.transport(svc), newLedger(), svc, "settled", "settled.#", 2)
	fence := e.msg("settled.fence", withKey("k"))
	e.tpublish(pub, fence)
	acked := map[string]bool{}
	for _, m := range msgs {
		acked[m.UUID] = true
	}
	again := 0
	for {
		m := s2.receive("the fence at the next subscriber")
		s2.ack(m)
		if acked[m.UUID] {
			again++
		}
		if m.UUID == fence.UUID {
			break
		}
	}
	// A redelivery is not ordered with the fence on every broker (a
	// message given back as a transport closes may be requeued after it):
	// whatever comes within the quiet window counts too.
	for {
		m, ok := s2.recv("after the fence", quietWindow)
		if !ok {
			break
		}
		s2.ack(m)
		if acked[m.UUID] {
			again++
		}
	}
	if again > 0 {
		e.t.Errorf("%d of %d messages acknowledged before a graceful Close were delivered again to the next subscriber of the group", again, len(msgs))
	}
}

// testRedeliveryAfterNack: a nacked message is delivered again, also when
// it is nacked while its subscriber closes (then to the next subscriber of
// the group).
func testRedeliveryAfterNack(e *env) {
	svc := e.service("nack")
	s := e.tsubscribe(e.transport(svc), nil, svc, "nacks", "nack.#", 1)
	m := e.msg("nack.me")
	e.tpublish(e.transport(e.service("nack-pub")).Publisher(), m)
	first := s.next("first delivery")
	if first.UUID != m.UUID {
		e.t.Fatalf("first delivery: got %s, want %s", first.UUID, m.UUID)
	}
	s.nack(first)
	again := s.next("delivery after the nack")
	if again.UUID != m.UUID {
		e.t.Fatalf("delivery after the nack: got %s, want %s", again.UUID, m.UUID)
	}
	closed := s.closeAsync()
	s.nack(again)
	select {
	case err := <-closed:
		if err != nil {
			e.t.Errorf("subscriber Close: %v", err)
		}
	case <-time.After(e.timeout):
		e.t.Fatalf("the subscriber's Close has not returned %v after its last message was nacked", e.timeout)
	}
	next := e.tsubscribe(e.transport(svc), nil, svc, "nacks", "nack.#", 1)
	last := next.next("delivery to the next subscriber of a message nacked while its subscriber closed")
	if last.UUID != m.UUID {
		e.t.Fatalf("next subscriber: got %s, want %s", last.UUID, m.UUID)
	}
	next.ack(last)
}

// testRedeliveryAfterCrash: a message outstanding when its transport
// closes (a crash, or a Close that gave up: no acknowledgement) has its
// context cancelled and goes to the next subscriber of the group; the
// subscriber's Close that was waiting for it returns.
func testRedeliveryAfterCrash(e *env) {
	svc := e.service("crash")
	tr := e.transport(svc)
	s1 := e.tsubscribe(tr, nil, svc, "crashy", "crash.#", 1)
	m := e.msg("crash.test")
	e.tpublish(e.transport(e.service("crash-pub")).Publisher(), m)
	got := s1.next("delivery to the consumer that crashes")
	if got.UUID != m.UUID {
		e.t.Fatalf("crashing consumer got %s, want %s", got.UUID, m.UUID)
	}
	// The subscriber's Close waits for the message, until its transport
	// closes.
	closed := s1.closeAsync()
	e.closeTransport("closing the transport with a message outstanding", tr)
	select {
	case <-closed:
	case <-time.After(closeBound):
		e.t.Errorf("a subscriber's Close waiting for an unacknowledged message has not returned %v after its transport closed", closeBound)
	}
	select {
	case <-got.Context().Done():
	case <-time.After(e.timeout):
		e.t.Errorf("the context of a message outstanding when its transport closed is not cancelled after %v", e.timeout)
	}
	s1.expectClosed("after the transport's Close", closeBound)
	s2 := e.tsubscribe(e.transport(svc), nil, svc, "crashy", "crash.#", 1)
	again := s2.next("redelivery to the next subscriber")
	if again.UUID != m.UUID {
		e.t.Fatalf("next subscriber got %s, want %s", again.UUID, m.UUID)
	}
	s2.ack(again)
}

// testKeepsEventsWhileNoInstance: a subscription is durable: messages
// published while none of its subscribers runs wait for the next one.
func testKeepsEventsWhileNoInstance(e *env) {
	svc := e.service("durable")
	tr1 := e.transport(svc)
	s1 := e.tsubscribe(tr1, nil, svc, "durable", "durable.#", 1)
	if err := e.boundedErr("the subscriber's Close", func() error { return s1.sub.Close() }); err != nil {
		e.t.Errorf("subscriber Close: %v", err)
	}
	e.closeTransport("the transport's Close", tr1)
	msgs := e.msgs(5, "durable.item", "k")
	e.tpublish(e.transport(e.service("durable-pub")).Publisher(), msgs...)
	s2 := e.tsubscribe(e.transport(svc), nil, svc, "durable", "durable.#", 1)
	s2.collect("messages published while the subscription had no subscriber", msgIDs(msgs))
}
