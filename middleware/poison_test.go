package middleware

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/wire"
)

func testPoison(store *memStore) Poison {
	return Poison{Store: store, Service: "billing", Subscription: "invoices", Pattern: "order.#", FailureDelay: 10 * time.Millisecond}
}

// chain applies middleware outermost first, like the bus.
func chain(h message.HandlerFunc, mw ...message.HandlerMiddleware) message.HandlerFunc {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

func TestPoisonStoresFailedMessage(t *testing.T) {
	retry := Retry{MaxAttempts: 3, InitialInterval: 5 * time.Millisecond, Multiplier: 1}
	cases := []struct {
		label    string
		handler  message.HandlerFunc
		reason   string
		attempts int
		errText  []string
	}{
		{"retries exhausted", func(*message.Message) ([]*message.Message, error) { return nil, errFlaky }, ReasonRetriesExhausted, 3, []string{"flaky"}},
		{"permanent", func(*message.Message) ([]*message.Message, error) { return nil, permanentErr{"bad payload"} }, ReasonPermanent, 1, []string{"bad payload"}},
		{"panic", func(*message.Message) ([]*message.Message, error) { panic("kaboom") }, ReasonPanic, 3, []string{"kaboom", "goroutine", "poison_test.go"}},
		{"custom reason", func(*message.Message) ([]*message.Message, error) { return nil, reasonErr{"undecodable"} }, "undecodable", 3, []string{"custom failure"}},
		{"custom permanent reason", func(*message.Message) ([]*message.Message, error) {
			return nil, errors.Join(permanentErr{"p"}, reasonErr{"schema"})
		}, "schema", 1, []string{"p", "custom failure"}},
	}
	for _, tc := range cases {
		t.Run(tc.label, func(t *testing.T) {
			store := &memStore{}
			var c calls
			h := chain(func(m *message.Message) ([]*message.Message, error) {
				c.add()
				return tc.handler(m)
			}, testPoison(store).Middleware, retry.Middleware, Recoverer)
			msg := newMsg("ev-1")
			ctx := context.WithValue(context.Background(), ctxKey{}, "orig")
			msg.SetContext(ctx)
			before := time.Now()
			out, err := h(msg)
			after := time.Now()
			if err != nil || out != nil {
				t.Fatalf("returned %v, %v; want nil, nil so the message is acked", out, err)
			}
			if c.count() != tc.attempts {
				t.Errorf("handler called %d times, want %d", c.count(), tc.attempts)
			}
			if msg.Context() != ctx {
				t.Error("the message's ctx was not restored")
			}
			stored := store.stored()
			if len(stored) != 1 {
				t.Fatalf("%d messages stored, want 1", len(stored))
			}
			p := stored[0]
			if p == msg {
				t.Error("the original message was stored, not a copy")
			}
			if _, ok := msg.Metadata[wire.PoisonReason]; ok {
				t.Error("the original message gained poison headers")
			}
			if p.UUID != "ev-1" || string(p.Payload) != `{"n":1}` {
				t.Errorf("stored %s %s", p.UUID, p.Payload)
			}
			for k, v := range msg.Metadata {
				if p.Metadata[k] != v {
					t.Errorf("stored header %s = %q, want %q", k, p.Metadata[k], v)
				}
			}
			md := p.Metadata
			if md[wire.PoisonReason] != tc.reason {
				t.Errorf("reason = %q, want %q", md[wire.PoisonReason], tc.reason)
			}
			if md[wire.PoisonAttempts] != strconv.Itoa(tc.attempts) {
				t.Errorf("attempts = %q, want %d", md[wire.PoisonAttempts], tc.attempts)
			}
			for _, w := range tc.errText {
				if !strings.Contains(md[wire.PoisonError], w) {
					t.Errorf("error header %q lacks %q", md[wire.PoisonError], w)
				}
			}
			if md[wire.PoisonService] != "billing" || md[wire.PoisonSubscription] != "invoices" || md[wire.PoisonPattern] != "order.#" {
				t.Errorf("service, subscription, pattern = %q, %q, %q", md[wire.PoisonService], md[wire.PoisonSubscription], md[wire.PoisonPattern])
			}
			first, err1 := time.Parse(time.RFC3339, md[wire.PoisonFirstFailure])
			last, err2 := time.Parse(time.RFC3339, md[wire.PoisonLastFailure])
			if err1 != nil || err2 != nil {
				t.Fatalf("failure times are not RFC 3339: %v, %v", err1, err2)
			}
			if !strings.HasSuffix(md[wire.PoisonFirstFailure], "Z") {
				t.Errorf("first failure %q is not UTC", md[wire.PoisonFirstFailure])
			}
			if first.Before(before) || last.After(after) || last.Before(first) {
				t.Errorf("first %v, last %v not within %v..%v in order", first, last, before, after)
			}
			if tc.attempts > 1 && !last.After(first) {
				t.Errorf("first and last failure are equal (%v) after %d attempts", first, tc.attempts)
			}
		})
	}
}

type ctxKey struct{}

func TestPoisonWithoutRetry(t *testing.T) {
	store := &memStore{}
	h := testPoison(store).Middleware(func(*message.Message) ([]*message.Message, error) { return nil, errFlaky })
	if _, err := h(newMsg("m")); err != nil {
		t.Fatal(err)
	}
	stored := store.stored()
	if len(stored) != 1 || stored[0].Metadata[wire.PoisonAttempts] != "1" || stored[0].Metadata[wire.PoisonFirstFailure] == "" {
		t.Errorf("stored %v", stored)
	}
}

func TestPoisonPassesSuccess(t *testing.T) {
	store := &memStore{}
	produced := []*message.Message{message.NewMessage("out", nil)}
	h := testPoison(store).Middleware(func(*message.Message) ([]*message.Message, error) { return produced, nil })
	out, err := h(newMsg("m"))
	if err != nil || len(out) != 1 || out[0] != produced[0] {
		t.Errorf("returned %v, %v", out, err)
	}
	if len(store.stored()) != 0 {
		t.Error("a successful message was poisoned")
	}
}

func TestPoisonStoreFailureReturnsError(t *testing.T) {
	store := &memStore{fails: 1}
	p := testPoison(store)
	p.FailureDelay = 50 * time.Millisecond
	h := p.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, errFlaky })
	start := time.Now()
	_, err := h(newMsg("m"))
	if !errors.Is(err, errFlaky) || !errors.Is(err, errStore) {
		t.Errorf("returned %v, want both the handler's and the store's error", err)
	}
	if elapsed := time.Since(start); elapsed < p.FailureDelay {
		t.Errorf("returned after %v, before the FailureDelay of %v", elapsed, p.FailureDelay)
	}
	if len(store.stored()) != 0 {
		t.Error("stored although the store failed")
	}
	// The redelivery is stored.
	if _, err := h(newMsg("m")); err != nil {
		t.Errorf("second delivery: %v", err)
	}
	if len(store.stored()) != 1 {
		t.Error("the redelivered message was not stored")
	}
}

func TestPoisonStoreFailureDelayEndsWithCtx(t *testing.T) {
	store := &memStore{fails: 1}
	p := testPoison(store)
	p.FailureDelay = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	var c calls
	h := p.Middleware(func(*message.Message) ([]*message.Message, error) { c.add(); return nil, errFlaky })
	msg := newMsg("m")
	msg.SetContext(ctx)
	done := make(chan error, 1)
	go func() { _, err := h(msg); done <- err }()
	waitFor(t, "the handler call", func() bool { return c.count() == 1 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, errStore) {
			t.Errorf("returned %v, want the store error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the FailureDelay did not end when the ctx was cancelled")
	}
}

func TestPoisonSkipsCancelledHandlers(t *testing.T) {
	for label, herr := range map[string]func(ctx context.Context) error{
		"ctx error":         func(ctx context.Context) error { return ctx.Err() },
		"wrapped ctx error": func(ctx context.Context) error { return errors.Join(errFlaky, ctx.Err()) },
	} {
		store := &memStore{}
		ctx, cancel := context.WithCancel(context.Background())
		h := chain(func(m *message.Message) ([]*message.Message, error) {
			cancel() // the bus is closing
			return nil, herr(m.Context())
		}, testPoison(store).Middleware, Retry{MaxAttempts: 3, InitialInterval: time.Hour}.Middleware)
		msg := newMsg("m")
		msg.SetContext(ctx)
		_, err := h(msg)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: returned %v, want context.Canceled so the message is not acked", label, err)
		}
		if len(store.stored()) != 0 {
			t.Errorf("%s: a cancelled handler was poisoned", label)
		}
	}

	// A deadline error from the handler's own timeout, with the delivery
	// ctx alive, is a failure like any other.
	store := &memStore{}
	h := chain(func(m *message.Message) ([]*message.Message, error) {
		<-m.Context().Done()
		return nil, m.Context().Err()
	}, testPoison(store).Middleware, Retry{MaxAttempts: 2, InitialInterval: time.Millisecond}.Middleware, Timeout(time.Millisecond))
	if _, err := h(newMsg("m")); err != nil {
		t.Errorf("timed-out handler: returned %v, want it poisoned", err)
	}
	if s := store.stored(); len(s) != 1 || s[0].Metadata[wire.PoisonAttempts] != "2" {
		t.Errorf("timed-out handler: stored %v", s)
	}
}

func TestReason(t *testing.T) {
	for want, err := range map[string]error{
		ReasonRetriesExhausted: errFlaky,
		ReasonPermanent:        permanentErr{"x"},
		"custom":               reasonErr{"custom"},
		ReasonPanic:            recoverErr(t),
	} {
		if got := Reason(err); got != want {
			t.Errorf("Reason(%T) = %q, want %q", err, got, want)
		}
	}
	if Reason(notPermanentErr{}) != ReasonRetriesExhausted {
		t.Error("an error with Permanent() false is classed permanent")
	}
}

func recoverErr(t *testing.T) error {
	_, err := Recoverer(func(*message.Message) ([]*message.Message, error) { panic("x") })(newMsg("m"))
	if err == nil {
		t.Fatal("Recoverer returned nil")
	}
	return err
}

// A middleware inside Poison that replaces the ctx and leaves it behind
// cancelled (as Watermill's own Timeout does) must not make a handler that
// timed out look like one stopped by shutdown: it is still poisoned.
func TestPoisonIgnoresCtxLeftByInnerMiddleware(t *testing.T) {
	store := &memStore{}
	leaveCancelled := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx, cancel := context.WithTimeout(msg.Context(), time.Millisecond)
			cancel()
			msg.SetContext(ctx)
			return h(msg)
		}
	}
	h := chain(func(m *message.Message) ([]*message.Message, error) {
		return nil, m.Context().Err()
	}, testPoison(store).Middleware, Retry{MaxAttempts: 1}.Middleware, leaveCancelled)
	msg := newMsg("m")
	msg.SetContext(context.Background())
	if _, err := h(msg); err != nil {
		t.Fatalf("returned %v; want the message poisoned and acked", err)
	}
	if s := store.stored(); len(s) != 1 {
		t.Fatalf("%d messages poisoned, want 1", len(s))
	}
}
