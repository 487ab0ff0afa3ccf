package middleware

import (
	"container/list"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/logkeys"
)

// IdempotencyStore remembers which events a subscription handled. It is
// small on purpose, so that a Redis (SET key NX PX) or SQL table
// implementation is a few lines.
type IdempotencyStore interface {
	// Seen reports whether key was marked and has not expired.
	Seen(ctx context.Context, key string) (bool, error)
	// Mark records key as handled for ttl.
	Mark(ctx context.Context, key string, ttl time.Duration) error
}

// Idempotency skips a message whose key (by default the event ID, prefixed
// with Scope) was marked as handled within Window: it is acknowledged
// without calling the handler. A key is marked only after the handler
// succeeded, so a failed or poisoned event is still handled when it comes
// back or is replayed. Two concurrent deliveries of one event may both run;
// the guarantee is against redelivery after success.
type Idempotency struct {
	Store  IdempotencyStore
	Window time.Duration
	// Scope prefixes keys, normally the subscription group, so that two
	// subscriptions handling one event do not skip each other.
	Scope string
	// Key derives the key from a message; nil means the message UUID,
	// which the bus sets to the event ID.
	Key    func(*message.Message) string
	Logger *slog.Logger
}

// Middleware returns the middleware.
func (m Idempotency) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		key := msg.UUID
		if m.Key != nil {
			key = m.Key(msg)
		}
		key = m.Scope + "/" + key
		seen, err := m.Store.Seen(msg.Context(), key)
		if err != nil {
			// A store outage must not drop events: handle them, accepting
			// that a duplicate may repeat its side effects.
			if m.Logger != nil {
				m.Logger.Warn("eventbus: idempotency store unavailable; handling event without the duplicate check", logkeys.EventID, msg.UUID, logkeys.Error, err)
			}
		} else if seen {
			if m.Logger != nil {
				m.Logger.Debug("eventbus: skipping already handled event", logkeys.EventID, msg.UUID)
			}
			return nil, nil
		}
		out, herr := h(msg)
		if herr == nil {
			if err := m.Store.Mark(msg.Context(), key, m.Window); err != nil && m.Logger != nil {
				m.Logger.Warn("eventbus: cannot mark event as handled", logkeys.EventID, msg.UUID, logkeys.Error, err)
			}
		}
		return out, herr
	}
}

// MemoryIdempotencyStore is an in-process IdempotencyStore: an LRU of at
// most MaxEntries keys, each forgotten after its ttl. It protects one
// process; use a shared store when instances of a service must see each
// other's marks.
type MemoryIdempotencyStore struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recently marked
	items map[string]*list.Element
	now   func() time.Time
}

type idemEntry struct {
	key     string
	expires time.Time
}

// NewMemoryIdempotencyStore returns a store holding at most maxEntries keys
// (100,000 when maxEntries <= 0).
func NewMemoryIdempotencyStore(maxEntries int) *MemoryIdempotencyStore {
	if maxEntries <= 0 {
		maxEntries = 100_000
	}
	return &MemoryIdempotencyStore{max: maxEntries, order: list.New(), items: make(map[string]*list.Element), now: time.Now}
}

// Seen implements IdempotencyStore.
func (s *MemoryIdempotencyStore) Seen(_ context.Context, key string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.items[key]
	if !ok {
		return false, nil
	}
	if s.now().After(el.Value.(*idemEntry).expires) {
		s.order.Remove(el)
		delete(s.items, key)
		return false, nil
	}
	return true, nil
}

// Mark implements IdempotencyStore.
func (s *MemoryIdempotencyStore) Mark(_ context.Context, key string, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp := s.now().Add(ttl)
	if el, ok := s.items[key]; ok {
		el.Value.(*idemEntry).expires = exp
		s.order.MoveToFront(el)
		return nil
	}
	s.items[key] = s.order.PushFront(&idemEntry{key: key, expires: exp})
	for s.order.Len() > s.max {
		old := s.order.Back()
		s.order.Remove(old)
		delete(s.items, old.Value.(*idemEntry).key)
	}
	return nil
}

// Len returns the number of keys held, expired ones included until they
// are looked up or evicted.
func (s *MemoryIdempotencyStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}
