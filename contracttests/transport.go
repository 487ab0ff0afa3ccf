package contracttests

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// The transport-level harness: tests that drive a transport's publisher
// and subscribers directly, without a Bus, because the Bus hides what they
// check (it drops events that do not match a subscription, answers
// Publish after Close itself, waits for its own handlers).

// quietWindow is how long a test waits to conclude that something does not
// happen (a message beyond the concurrency limit, a Close that must not
// return yet). Only absence needs it: every presence check waits on a
// condition. A transport that breaks such a rule does so at once (it hands
// over a prefetched message, returns from Close without waiting), which
// 300 ms shows on a busy machine.
const quietWindow = 300 * time.Millisecond

// closeBound is how long Transport.Close may take while the broker is
// unreachable or frozen ("within a few seconds"): the built-in transports
// wait at most 2 s (RabbitMQ) and 5 s (Kafka) for the broker.
const closeBound = 10 * time.Second

// ledger records, for one subscription group, the messages the test
// acknowledged, so that a redelivery of one of them (which at-least-once
// delivery allows while the subscription runs) is recognised, counted and
// acknowledged again instead of failing the test.
type ledger struct {
	mu    sync.Mutex
	acked map[string]int
	dups  int
}

func newLedger() *ledger { return &ledger{acked: map[string]int{}} }

func (l *ledger) ack(id string) {
	l.mu.Lock()
	l.acked[id]++
	l.mu.Unlock()
}

func (l *ledger) wasAcked(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked[id] > 0
}

func (l *ledger) duplicate() {
	l.mu.Lock()
	l.dups++
	l.mu.Unlock()
}

func (l *ledger) duplicates() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dups
}

// tsub is one subscriber of a subscription group, read by the test. Every
// receive is bounded and checks that the channel is open, so a transport
// that closes the channel or delivers nothing fails the test with a
// message, never with a nil message.
type tsub struct {
	e     *env
	label string // the group, for messages
	cfg   driver.SubscriberConfig
	sub   message.Subscriber
	ch    <-chan *message.Message
	led   *ledger

	mu       sync.Mutex
	held     map[*message.Message]bool // received, not yet acked or nacked
	closed   atomic.Bool               // the channel was seen closed
	subClose sync.Once
}

// tsubscribe makes a subscriber of the group service.sub on tr, subscribes
// it to pattern and returns once Subscribe returned. Messages of the
// group's ledger are recognised as redeliveries. When the test ends, the
// messages it still holds are nacked and the subscriber is closed (before
// its transport, which was opened earlier).
func (e *env) tsubscribe(tr driver.Transport, led *ledger, service, sub, pattern string, concurrency int) *tsub {
	e.t.Helper()
	return e.tsubscribeCtx(e.ctx(), tr, led, service, sub, pattern, concurrency)
}

// tsubscribeCtx is tsubscribe with ctx for Subscribe.
func (e *env) tsubscribeCtx(ctx context.Context, tr driver.Transport, led *ledger, service, sub, pattern string, concurrency int) *tsub {
	e.t.Helper()
	cfg := subscriberConfig(service, sub, pattern, concurrency)
	s, err := tr.NewSubscriber(cfg)
	if err != nil {
		e.t.Fatalf("NewSubscriber(%s, %q): %v", cfg.Group, pattern, err)
	}
	ch, err := s.Subscribe(ctx, pattern)
	if err != nil {
		e.t.Fatalf("Subscribe(%s, %q): %v", cfg.Group, pattern, err)
	}
	if led == nil {
		led = newLedger()
	}
	ts := &tsub{e: e, label: cfg.Group, cfg: cfg, sub: s, ch: ch, led: led, held: map[*message.Message]bool{}}
	e.t.Cleanup(func() {
		ts.releaseAll()
		done := make(chan struct{})
		go func() {
			defer close(done)
			ts.close()
		}()
		select {
		case <-done:
		case <-time.After(e.timeout):
			e.t.Errorf("closing the subscriber of %s after the test: Close has not returned after %v", ts.label, e.timeout)
		}
	})
	return ts
}

// close closes the subscriber once; later calls return at once.
func (s *tsub) close() {
	s.subClose.Do(func() {
		if err := s.sub.Close(); err != nil {
			s.e.t.Errorf("closing the subscriber of %s: %v", s.label, err)
		}
	})
}

// releaseAll nacks the messages the test still holds.
func (s *tsub) releaseAll() {
	s.mu.Lock()
	held := s.held
	s.held = map[*message.Message]bool{}
	s.mu.Unlock()
	for m := range held {
		m.Nack()
	}
}

// recv waits up to d for the next message. ok is false on timeout;
// a closed channel fails the test.
func (s *tsub) recv(what string, d time.Duration) (*message.Message, bool) {
	s.e.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case m, open := <-s.ch:
		if !open {
			s.closed.Store(true)
			s.e.t.Fatalf("%s: the channel of subscription %s was closed (the subscriber must deliver until its Close or its transport's)", what, s.label)
		}
		if m == nil {
			s.e.t.Fatalf("%s: subscription %s delivered a nil message", what, s.label)
		}
		s.mu.Lock()
		s.held[m] = true
		s.mu.Unlock()
		return m, true
	case <-timer.C:
		return nil, false
	}
}

// receive returns the next message, failing the test when none comes
// within the suite's timeout.
func (s *tsub) receive(what string) *message.Message {
	s.e.t.Helper()
	m, ok := s.recv(what, s.e.timeout)
	if !ok {
		s.e.t.Fatalf("%s: subscription %s received nothing within %v", what, s.label, s.e.timeout)
	}
	return m
}

// next returns the next message that is not a redelivery of one the
// group's ledger shows acknowledged; such redeliveries are acknowledged
// and counted as duplicates.
func (s *tsub) next(what string) *message.Message {
	s.e.t.Helper()
	for {
		m := s.receive(what)
		if !s.redelivered(m) {
			return m
		}
	}
}

// redelivered acknowledges and counts m if it is a redelivery of a
// message already acknowledged.
func (s *tsub) redelivered(m *message.Message) bool {
	if !s.led.wasAcked(m.UUID) {
		return false
	}
	s.led.duplicate()
	s.ack(m)
	return true
}

// nextWithin is next with a shorter wait; ok is false when nothing new
// came within d.
func (s *tsub) nextWithin(what string, d time.Duration) (*message.Message, bool) {
	s.e.t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, false
		}
		m, ok := s.recv(what, left)
		if !ok {
			return nil, false
		}
		if !s.redelivered(m) {
			return m, true
		}
	}
}

// expectNothingNew fails the test when a message that is not a redelivery
// of an acknowledged one arrives within quietWindow; it returns that
// message (nil when none came), which the test then holds.
func (s *tsub) expectNothingNew(what string) *message.Message {
	s.e.t.Helper()
	if m, ok := s.nextWithin(what, quietWindow); ok {
		s.e.t.Errorf("%s: subscription %s received %s (%s)", what, s.label, m.UUID, m.Metadata.Get(driver.HeaderType))
		return m
	}
	return nil
}

// ack acknowledges m and records it in the ledger.
func (s *tsub) ack(m *message.Message) {
	s.mu.Lock()
	delete(s.held, m)
	s.mu.Unlock()
	s.led.ack(m.UUID)
	m.Ack()
}

// nack nacks m.
func (s *tsub) nack(m *message.Message) {
	s.mu.Lock()
	delete(s.held, m)
	s.mu.Unlock()
	m.Nack()
}

// collect acknowledges everything it receives until every one of ids was
// received; it returns how often each ID came, redeliveries included.
func (s *tsub) collect(what string, ids []string) map[string]int {
	s.e.t.Helper()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	got := map[string]int{}
	deadline := time.Now().Add(s.e.timeout)
	for missing := len(want); missing > 0; {
		left := time.Until(deadline)
		m, ok := s.recv(what, max(left, 0))
		if !ok {
			s.e.t.Fatalf("%s: subscription %s has %d of %d messages after %v; %s", what, s.label, len(ids)-missing, len(ids), s.e.timeout, missingIDs(want, got))
		}
		if want[m.UUID] && got[m.UUID] == 0 {
			missing--
		}
		got[m.UUID]++
		s.ack(m)
	}
	return got
}

// expectClosed waits for the channel to be closed, acknowledging what
// still arrives, and fails the test if it stays open for d.
func (s *tsub) expectClosed(what string, d time.Duration) {
	s.e.t.Helper()
	if s.closed.Load() {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case m, open := <-s.ch:
			if !open {
				s.closed.Store(true)
				return
			}
			s.e.t.Errorf("%s: subscription %s delivered %s after it was closed", what, s.label, m.UUID)
			m.Nack()
		case <-timer.C:
			s.e.t.Fatalf("%s: the channel of subscription %s is still open %v later (Close must close it)", what, s.label, d)
		}
	}
}

func missingIDs(want map[string]bool, got map[string]int) string {
	var miss []string
	for id := range want {
		if got[id] == 0 {
			miss = append(miss, id)
		}
	}
	sort.Strings(miss)
	if len(miss) > 5 {
		return fmt.Sprintf("%d missing, e.g. %s", len(miss), strings.Join(miss[:5], ", "))
	}
	return "missing: " + strings.Join(miss, ", ")
}

// msg makes a message in the wire format for an event of the given name,
// with the suite's timeout as its context (a Publish must honour it).
func (e *env) msg(name string, opts ...func(*driver.Envelope)) *message.Message {
	env := driver.Envelope{
		ID: uuid.NewString(), Name: name, Source: "contract-tests", Type: "domain",
		Time: time.Now().UTC(), Data: []byte(`{"test":true}`),
	}
	env.CorrelationID = env.ID
	for _, o := range opts {
		o(&env)
	}
	m := driver.Encode(env)
	m.SetContext(e.ctx())
	return m
}

// withKey sets the envelope's partition key: messages of one key keep
// their order on every transport (Kafka partitions by it).
func withKey(key string) func(*driver.Envelope) {
	return func(env *driver.Envelope) { env.PartitionKey = key }
}

// msgs makes n messages of one name with one key.
func (e *env) msgs(n int, name, key string) []*message.Message {
	out := make([]*message.Message, n)
	for i := range out {
		out[i] = e.msg(name, withKey(key))
	}
	return out
}

// tpublish publishes msgs through pub, one Publish call per run of equal
// names (as the bus does), and fails the test on any error.
func (e *env) tpublish(pub message.Publisher, msgs ...*message.Message) {
	e.t.Helper()
	if err := publishRuns(pub, msgs); err != nil {
		e.t.Fatalf("Publish: %v", err)
	}
}

func publishRuns(pub message.Publisher, msgs []*message.Message) error {
	var errs []error
	for start := 0; start < len(msgs); {
		name := msgs[start].Metadata.Get(driver.HeaderType)
		end := start + 1
		for end < len(msgs) && msgs[end].Metadata.Get(driver.HeaderType) == name {
			end++
		}
		if err := pub.Publish(name, msgs[start:end]...); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		start = end
	}
	return errors.Join(errs...)
}

func msgIDs(msgs []*message.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.UUID
	}
	return out
}

// withCtx returns a copy of m whose context is ctx.
func withCtx(ctx context.Context, m *message.Message) *message.Message {
	c := m.Copy()
	c.SetContext(ctx)
	return c
}

// failedIDs checks err, a Publish error for msgs: nil, a *PublishError
// naming only messages of the call, or another error (which fails all of
// them). It returns the IDs reported failed, and a description of what is
// wrong with the error ("" when it is well formed).
func failedIDs(err error, msgs []*message.Message) (map[string]error, string) {
	failed := map[string]error{}
	if err == nil {
		return failed, ""
	}
	var pe *driver.PublishError
	if !errors.As(err, &pe) {
		for _, m := range msgs {
			failed[m.UUID] = err
		}
		return failed, ""
	}
	known := map[string]bool{}
	for _, m := range msgs {
		known[m.UUID] = true
	}
	var bad []string
	for _, f := range pe.Failed {
		if !known[f.UUID] {
			bad = append(bad, fmt.Sprintf("it names %q, which the call did not publish", f.UUID))
		}
		if f.Err == nil {
			bad = append(bad, fmt.Sprintf("it gives no error for %s", f.UUID))
		}
		failed[f.UUID] = f.Err
	}
	if len(pe.Failed) == 0 {
		bad = append(bad, "it names no message")
	}
	return failed, strings.Join(bad, "; ")
}

// transportVia opens the transport url names for service; it is closed
// when the test ends (closing it again is harmless).
func (e *env) transportVia(url, service string) driver.Transport {
	e.t.Helper()
	tr, err := driver.Open(e.ctx(), url, driver.Config{ServiceName: service, Logger: e.log})
	if err != nil {
		e.t.Fatalf("opening the transport: %v", err)
	}
	e.t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// closeTransport closes tr and fails the test unless Close returns within
// closeBound.
func (e *env) closeTransport(what string, tr driver.Transport) {
	e.t.Helper()
	if _, err := e.bounded(what, closeBound-faultMargin, func(context.Context) error { return tr.Close() }); err != nil {
		e.t.Logf("%s: %v", what, err)
	}
}

// drain receives from every subscriber at once, acknowledging each
// message, until every one of ids was received; it returns how often each
// subscriber got each ID, redeliveries included.
func (e *env) drain(what string, subs []*tsub, ids []string) []map[string]int {
	e.t.Helper()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	got := make([]map[string]int, len(subs))
	all := map[string]int{}
	cases := make([]reflect.SelectCase, len(subs)+1)
	for i, s := range subs {
		got[i] = map[string]int{}
		cases[i] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(s.ch)}
	}
	timer := time.NewTimer(e.timeout)
	defer timer.Stop()
	cases[len(subs)] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(timer.C)}
	for missing := len(want); missing > 0; {
		i, v, open := reflect.Select(cases)
		if i == len(subs) {
			e.t.Fatalf("%s: %d of %d messages received after %v; %s", what, len(ids)-missing, len(ids), e.timeout, missingIDs(want, all))
		}
		if !open {
			subs[i].closed.Store(true)
			e.t.Fatalf("%s: the channel of subscription %s was closed", what, subs[i].label)
		}
		m, _ := v.Interface().(*message.Message)
		if m == nil {
			e.t.Fatalf("%s: subscription %s delivered a nil message", what, subs[i].label)
		}
		if want[m.UUID] && all[m.UUID] == 0 {
			missing--
		}
		all[m.UUID]++
		got[i][m.UUID]++
		if subs[i].led.wasAcked(m.UUID) {
			subs[i].led.duplicate()
		}
		subs[i].ack(m)
	}
	return got
}
