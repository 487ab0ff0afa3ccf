package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

func TestIdempotencySkipsHandledEvents(t *testing.T) {
	store := NewMemoryIdempotencyStore(100)
	var c calls
	fail := true
	var mu sync.Mutex
	h := Idempotency{Store: store, Window: time.Hour, Scope: "svc.sub"}.Middleware(func(*message.Message) ([]*message.Message, error) {
		c.add()
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errFlaky
		}
		return []*message.Message{message.NewMessage("out", nil)}, nil
	})

	// A failed delivery is not marked: the redelivery runs the handler.
	if _, err := h(newMsg("ev-1")); !errors.Is(err, errFlaky) {
		t.Fatalf("first delivery: %v", err)
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	out, err := h(newMsg("ev-1"))
	if err != nil || len(out) != 1 || c.count() != 2 {
		t.Fatalf("redelivery after failure: %v, %v after %d calls", out, err, c.count())
	}
	// After success a redelivery is acknowledged without the handler.
	out, err = h(newMsg("ev-1"))
	if err != nil || out != nil || c.count() != 2 {
		t.Errorf("redelivery after success: %v, %v after %d calls; want skipped", out, err, c.count())
	}
	// Another event is handled.
	if _, err := h(newMsg("ev-2")); err != nil || c.count() != 3 {
		t.Errorf("another event: %v after %d calls", err, c.count())
	}
	// Another subscription (scope) handling the same event is not skipped.
	other := Idempotency{Store: store, Window: time.Hour, Scope: "svc.other"}.Middleware(failing(&c, nil))
	if _, err := other(newMsg("ev-1")); err != nil || c.count() != 4 {
		t.Errorf("other scope: %v after %d calls", err, c.count())
	}
	if seen, _ := store.Seen(context.Background(), "svc.sub/ev-1"); !seen {
		t.Error(`the key is not "<scope>/<id>"`)
	}
}

func TestIdempotencyCustomKey(t *testing.T) {
	var c calls
	h := Idempotency{
		Store: NewMemoryIdempotencyStore(10), Window: time.Hour, Scope: "s",
		Key: func(m *message.Message) string { return m.Metadata.Get("order") },
	}.Middleware(failing(&c, nil))
	for i, order := range []string{"o1", "o1", "o2", "o1"} {
		m := newMsg(fmt.Sprintf("ev-%d", i)) // distinct IDs
		m.Metadata.Set("order", order)
		if _, err := h(m); err != nil {
			t.Fatal(err)
		}
	}
	if c.count() != 2 {
		t.Errorf("handler called %d times, want 2 (one per order)", c.count())
	}
}

// brokenStore fails Seen and/or Mark.
type brokenStore struct {
	seenErr, markErr error
	marks            int
}

func (s *brokenStore) Seen(context.Context, string) (bool, error) { return true, s.seenErr }
func (s *brokenStore) Mark(context.Context, string, time.Duration) error {
	s.marks++
	return s.markErr
}

func TestIdempotencyStoreErrors(t *testing.T) {
	errDown := errors.New("redis down")
	// Seen fails: handle anyway rather than drop the event.
	var c calls
	store := &brokenStore{seenErr: errDown}
	h := Idempotency{Store: store, Window: time.Hour}.Middleware(failing(&c, nil))
	if _, err := h(newMsg("ev")); err != nil || c.count() != 1 {
		t.Errorf("Seen failing: %v after %d calls; want handled", err, c.count())
	}
	if store.marks != 1 {
		t.Errorf("Mark called %d times after success", store.marks)
	}
	// Mark fails: the handler's success stands.
	c = calls{}
	h = Idempotency{Store: markFails{NewMemoryIdempotencyStore(1), errDown}, Window: time.Hour}.Middleware(failing(&c, nil))
	if _, err := h(newMsg("ev")); err != nil || c.count() != 1 {
		t.Errorf("Mark failing: %v after %d calls", err, c.count())
	}
	// A failure is not marked.
	store = &brokenStore{seenErr: errDown}
	Idempotency{Store: store, Window: time.Hour}.Middleware(failing(&c, errFlaky))(newMsg("ev"))
	if store.marks != 0 {
		t.Error("a failed delivery was marked")
	}
}

type markFails struct {
	*MemoryIdempotencyStore
	err error
}

func (m markFails) Mark(context.Context, string, time.Duration) error { return m.err }

func TestMemoryIdempotencyStoreLRU(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryIdempotencyStore(3)
	for _, k := range []string{"a", "b", "c"} {
		if err := s.Mark(ctx, k, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Mark(ctx, "a", time.Hour); err != nil { // a is now the most recent
		t.Fatal(err)
	}
	if err := s.Mark(ctx, "d", time.Hour); err != nil { // evicts b, the least recent
		t.Fatal(err)
	}
	if s.Len() != 3 {
		t.Errorf("Len = %d, want 3", s.Len())
	}
	for k, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true, "x": false} {
		if seen, err := s.Seen(ctx, k); err != nil || seen != want {
			t.Errorf("Seen(%q) = %v, %v; want %v", k, seen, err, want)
		}
	}
	for i := range 10 {
		s.Mark(ctx, fmt.Sprint(i), time.Hour)
	}
	if s.Len() != 3 {
		t.Errorf("Len = %d after many marks, want 3", s.Len())
	}
	for _, k := range []string{"7", "8", "9"} {
		if seen, _ := s.Seen(ctx, k); !seen {
			t.Errorf("recent key %s evicted", k)
		}
	}
	if NewMemoryIdempotencyStore(0).max != 100_000 || NewMemoryIdempotencyStore(-1).max != 100_000 {
		t.Error("the default size is not 100,000")
	}
}

func TestMemoryIdempotencyStoreTTL(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryIdempotencyStore(10)
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	s.Mark(ctx, "short", time.Minute)
	s.Mark(ctx, "long", time.Hour)

	now = now.Add(time.Minute) // exactly at expiry: still seen
	if seen, _ := s.Seen(ctx, "short"); !seen {
		t.Error("short forgotten at its expiry instant")
	}
	now = now.Add(time.Nanosecond)
	if seen, _ := s.Seen(ctx, "short"); seen {
		t.Error("short seen after its ttl")
	}
	if s.Len() != 1 {
		t.Errorf("Len = %d; the expired key was not dropped on lookup", s.Len())
	}
	if seen, _ := s.Seen(ctx, "long"); !seen {
		t.Error("long forgotten early")
	}
	// Marking again extends the ttl.
	now = now.Add(50 * time.Minute)
	s.Mark(ctx, "long", time.Hour)
	now = now.Add(30 * time.Minute) // 81 minutes after the first mark
	if seen, _ := s.Seen(ctx, "long"); !seen {
		t.Error("re-marking did not extend the ttl")
	}
	now = now.Add(31 * time.Minute)
	if seen, _ := s.Seen(ctx, "long"); seen {
		t.Error("long seen after its extended ttl")
	}
}

func TestMemoryIdempotencyStoreConcurrent(t *testing.T) {
	s := NewMemoryIdempotencyStore(50)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				k := fmt.Sprint(g, "-", i%70)
				s.Mark(context.Background(), k, time.Hour)
				s.Seen(context.Background(), k)
			}
		}()
	}
	wg.Wait()
	if s.Len() != 50 {
		t.Errorf("Len = %d, want 50", s.Len())
	}
}
