package middleware

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
)

// Poison reasons recorded in the poison_reason header.
const (
	ReasonPermanent        = "permanent"
	ReasonRetriesExhausted = "retries-exhausted"
	ReasonUndecodable      = "undecodable"
	ReasonPanic            = "panic"
)

// IsPermanent reports whether err, or an error it wraps, has a method
// Permanent() bool that reports true. Such errors are not retried.
func IsPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

// Reason classifies err for the poison queue: an error's own
// PoisonReason() string if it has one, "panic" for recovered panics,
// "permanent" for permanent errors, else "retries-exhausted".
func Reason(err error) string {
	var r interface{ PoisonReason() string }
	if errors.As(err, &r) {
		return r.PoisonReason()
	}
	var p wmmiddleware.RecoveredPanicError
	if errors.As(err, &p) {
		return ReasonPanic
	}
	if IsPermanent(err) {
		return ReasonPermanent
	}
	return ReasonRetriesExhausted
}

// failures counts a message's failed handler calls across retries, so that
// the poison queue can record attempts and failure times.
type failures struct {
	mu          sync.Mutex
	attempts    int
	first, last time.Time
}

type failuresKey struct{}

func (f *failures) record(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attempts == 0 {
		f.first = now
	}
	f.attempts++
	f.last = now
}

func (f *failures) snapshot() (int, time.Time, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts, f.first, f.last
}

// failuresCtx carries the failure record in the same allocation as the
// ctx that holds it.
type failuresCtx struct {
	context.Context
	f failures
}

func (c *failuresCtx) Value(key any) any {
	if key == (failuresKey{}) {
		return &c.f
	}
	return c.Context.Value(key)
}

func failuresFrom(ctx context.Context) *failures {
	f, _ := ctx.Value(failuresKey{}).(*failures)
	return f
}

// Timeout gives each handler call its own deadline through the message's
// ctx. Unlike Watermill's Timeout it restores the previous ctx afterwards,
// so that a retry after a timed-out attempt gets a fresh deadline instead of
// the expired one. A zero or negative d disables it.
func Timeout(d time.Duration) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		if d <= 0 {
			return h
		}
		return func(msg *message.Message) ([]*message.Message, error) {
			orig := msg.Context()
			ctx, cancel := context.WithTimeout(orig, d)
			defer cancel()
			msg.SetContext(ctx)
			defer msg.SetContext(orig)
			return h(msg)
		}
	}
}

// Recoverer turns a panic in the handler into an error that carries the
// panic value and the stack (Watermill's RecoveredPanicError), so the event
// is retried and then poisoned like any failure while the consumer goes on.
func Recoverer(h message.HandlerFunc) message.HandlerFunc {
	return wmmiddleware.Recoverer(h)
}
