package middleware

import (
	"context"
	"errors"
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
	// ReasonMisrouted marks an event a broker delivered to a subscription
	// whose pattern its name does not match (its "ce_type" disagrees with
	// the routing key it was published with).
	ReasonMisrouted = "misrouted"
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

// retriedError is what Retry returns when it gives up: the handler's last
// error, with the number of calls made and when the first and last of them
// failed, which Poison records. Passing them in the error rather than in
// the message's ctx costs nothing on the path where the handler succeeds.
type retriedError struct {
	err         error
	attempts    int
	first, last time.Time
}

func (e *retriedError) Error() string { return e.err.Error() }
func (e *retriedError) Unwrap() error { return e.err }

// failureRecord returns how many handler calls err reports as failed and
// when: Retry's record if err carries one, else a single failure now.
func failureRecord(err error) (attempts int, first, last time.Time) {
	var r *retriedError
	if errors.As(err, &r) {
		return r.attempts, r.first, r.last
	}
	now := time.Now()
	return 1, now, now
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
