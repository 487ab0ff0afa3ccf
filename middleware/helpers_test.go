package middleware

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// permanentErr is permanent by the method the middleware looks for, without
// the eventbus package.
type permanentErr struct{ msg string }

func (e permanentErr) Error() string   { return e.msg }
func (e permanentErr) Permanent() bool { return true }

// notPermanentErr has the method but says false.
type notPermanentErr struct{}

func (notPermanentErr) Error() string   { return "transient" }
func (notPermanentErr) Permanent() bool { return false }

// reasonErr names its own poison reason.
type reasonErr struct{ reason string }

func (e reasonErr) Error() string        { return "custom failure" }
func (e reasonErr) PoisonReason() string { return e.reason }

// calls records handler calls and their times.
type calls struct {
	mu    sync.Mutex
	times []time.Time
}

func (c *calls) add() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.times = append(c.times, time.Now())
	return len(c.times)
}

func (c *calls) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.times)
}

func (c *calls) snapshot() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.times...)
}

// failing returns a handler that records its calls and returns err.
func failing(c *calls, err error) message.HandlerFunc {
	return func(*message.Message) ([]*message.Message, error) {
		c.add()
		return nil, err
	}
}

// memStore is a PoisonStore that can be told to fail.
type memStore struct {
	mu    sync.Mutex
	msgs  []*message.Message
	fails int // fail this many Adds first
}

var errStore = errors.New("poison store down")

func (s *memStore) Add(_ context.Context, m *message.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fails > 0 {
		s.fails--
		return errStore
	}
	s.msgs = append(s.msgs, m)
	return nil
}

func (s *memStore) stored() []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message.Message(nil), s.msgs...)
}

// newMsg returns a message with event headers.
func newMsg(id string) *message.Message {
	m := message.NewMessage(id, []byte(`{"n":1}`))
	m.Metadata.Set("ce_id", id)
	m.Metadata.Set("ce_type", "order.placed")
	m.Metadata.Set("ce_correlationid", "corr-"+id)
	m.Metadata.Set("meta_tenant", "acme")
	return m
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
