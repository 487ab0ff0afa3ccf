package middleware

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/wire"
)

// limitStore refuses records whose headers exceed max bytes, as RabbitMQ
// does with a header table over its frame size.
type limitStore struct {
	mu   sync.Mutex
	max  int
	msgs []*message.Message
	seen int // Add calls
}

func (s *limitStore) Add(_ context.Context, m *message.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen++
	size := 0
	for k, v := range m.Metadata {
		size += len(k) + len(v)
	}
	if size > s.max {
		return fmt.Errorf("record of %d bytes over the limit of %d: %w", size, s.max, wire.ErrTooLarge)
	}
	s.msgs = append(s.msgs, m)
	return nil
}

func failWith(err error) message.HandlerFunc {
	return func(*message.Message) ([]*message.Message, error) { return nil, err }
}

// TestPoisonCutsLongErrors: a 300 KiB handler error is stored as its first
// 8 KiB, with the full length in a header, so the record fits.
func TestPoisonCutsLongErrors(t *testing.T) {
	store := &limitStore{max: 64 << 10}
	p := Poison{Store: store, Service: "s", Subscription: "sub"}
	long := strings.Repeat("é", 150<<10) // 300 KiB of two-byte runes
	msg := newMsg("ev-long")
	msg.SetContext(context.Background())
	if _, err := p.Middleware(failWith(permanentErr{long}))(msg); err != nil {
		t.Fatalf("returned %v; want nil (stored, acked)", err)
	}
	if len(store.msgs) != 1 || store.seen != 1 {
		t.Fatalf("%d records stored in %d attempts, want 1 in 1", len(store.msgs), store.seen)
	}
	md := store.msgs[0].Metadata
	if got := md[wire.PoisonError]; len(got) > wire.MaxPoisonError || len(got) < wire.MaxPoisonError-4 || !utf8.ValidString(got) {
		t.Errorf("stored error of %d bytes (valid UTF-8: %v), want at most %d, whole runes", len(got), utf8.ValidString(got), wire.MaxPoisonError)
	}
	if md[wire.PoisonErrorTruncated] != fmt.Sprint(len(long)) {
		t.Errorf("%s = %q, want %d", wire.PoisonErrorTruncated, md[wire.PoisonErrorTruncated], len(long))
	}
	if md[wire.PoisonID] == "" {
		t.Error("the record has no poison ID")
	}
}

// TestPoisonStoresAReducedRecordWhenTooLarge: a message whose headers
// leave no room for the poison headers is stored as a reduced record, once,
// and Unwrap gives back the original message with the poison headers.
func TestPoisonStoresAReducedRecordWhenTooLarge(t *testing.T) {
	store := &limitStore{max: 100 << 10}
	p := Poison{Store: store, Service: "s", Subscription: "sub", Pattern: "order.#"}
	msg := newMsg("ev-big")
	msg.Metadata.Set("meta_blob", strings.Repeat("b", 100<<10-200)) // just fits without poison headers
	msg.SetContext(context.Background())
	var c calls
	h := p.Middleware(func(*message.Message) ([]*message.Message, error) {
		c.add()
		return nil, permanentErr{"bad"}
	})
	if _, err := h(msg); err != nil {
		t.Fatalf("returned %v; want nil (stored, acked)", err)
	}
	if c.count() != 1 || len(store.msgs) != 1 || store.seen != 2 {
		t.Fatalf("handler called %d times, %d records stored in %d attempts; want 1, 1 in 2", c.count(), len(store.msgs), store.seen)
	}
	rec := store.msgs[0]
	if rec.Metadata[wire.PoisonWrapped] == "" || rec.Metadata["meta_blob"] != "" {
		t.Fatalf("stored record is not reduced: headers %v", len(rec.Metadata))
	}
	orig, err := Unwrap(rec)
	if err != nil {
		t.Fatal(err)
	}
	if orig.UUID != msg.UUID || string(orig.Payload) != string(msg.Payload) || orig.Metadata["meta_blob"] != msg.Metadata["meta_blob"] ||
		orig.Metadata["ce_type"] != "order.placed" || orig.Metadata[wire.PoisonReason] != ReasonPermanent || orig.Metadata[wire.PoisonSubscription] != "sub" {
		t.Errorf("unwrapped %s: payload %q, %d headers, reason %q", orig.UUID, orig.Payload, len(orig.Metadata), orig.Metadata[wire.PoisonReason])
	}
}

// TestPoisonStoreFailuresBackOff: consecutive store failures lengthen the
// pause before the message goes back (no hot loop), and a stored record
// resets it.
func TestPoisonStoreFailuresBackOff(t *testing.T) {
	store := &memStore{fails: 3}
	p := Poison{Store: store, Service: "s", Subscription: "sub", FailureDelay: 20 * time.Millisecond}
	var failed []error
	p.OnStoreFailed = func(err error) { failed = append(failed, err) }
	h := p.Middleware(failWith(permanentErr{"bad"}))
	var pauses []time.Duration
	for range 4 {
		msg := newMsg("ev")
		msg.SetContext(context.Background())
		start := time.Now()
		_, err := h(msg)
		pauses = append(pauses, time.Since(start))
		if len(pauses) <= 3 && !errors.Is(err, errStore) {
			t.Fatalf("attempt %d: %v, want the store's error so the message comes back", len(pauses), err)
		}
	}
	want := []time.Duration{20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond}
	for i, w := range want {
		if pauses[i] < w {
			t.Errorf("pause after failure %d: %v, want at least %v", i+1, pauses[i], w)
		}
	}
	if pauses[3] > 20*time.Millisecond {
		t.Errorf("a stored record waited %v", pauses[3])
	}
	if len(failed) != 3 || len(store.stored()) != 1 {
		t.Errorf("%d failures reported, %d stored; want 3 and 1", len(failed), len(store.stored()))
	}
}

func TestFirstLineBoundsLogLines(t *testing.T) {
	if got := firstLine(strings.Repeat("x", 10000)); len(got) > maxLogError+64 {
		t.Errorf("a 10,000-byte error gives a log line of %d bytes", len(got))
	}
	if got := firstLine("a\nb"); got != "a ... (more in the poison record)" {
		t.Errorf("firstLine = %q", got)
	}
}
