package middleware

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/wire"
)

// PoisonStore is where Poison puts messages; eventbus.PoisonQueue
// implementations satisfy it.
type PoisonStore interface {
	Add(ctx context.Context, msg *message.Message) error
}

// Poison moves a message whose handler finally failed to a durable store and
// acknowledges it, so one bad event cannot block or loop a subscription. The
// stored copy keeps every header and gains the poison_* headers: reason,
// error, attempts, service, subscription, pattern, first and last failure.
//
// If the store fails, the error is returned after FailureDelay, so the
// message is not acknowledged (it comes back) and a broken store does not
// turn into a hot redelivery loop. A handler that stopped because its ctx
// was cancelled (the bus is closing) is not poisoned either.
type Poison struct {
	Store                          PoisonStore
	Service, Subscription, Pattern string
	// FailureDelay is the pause before giving a message back after the
	// store failed; zero means one second.
	FailureDelay time.Duration
	Logger       *slog.Logger
}

// Middleware returns the middleware.
func (p Poison) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		// The ctx before the handler: a middleware inside may leave its own,
		// cancelled one behind.
		orig := msg.Context()
		out, err := h(msg)
		if err == nil {
			return out, nil
		}
		if orig.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			return nil, err
		}
		attempts, first, last := failureRecord(err)
		poisoned := msg.Copy()
		md := poisoned.Metadata
		md[wire.PoisonReason] = Reason(err)
		md[wire.PoisonError] = err.Error()
		md[wire.PoisonAttempts] = strconv.Itoa(attempts)
		md[wire.PoisonService] = p.Service
		md[wire.PoisonSubscription] = p.Subscription
		md[wire.PoisonPattern] = p.Pattern
		md[wire.PoisonFirstFailure] = first.UTC().Format(time.RFC3339Nano)
		md[wire.PoisonLastFailure] = last.UTC().Format(time.RFC3339Nano)
		if serr := p.Store.Add(orig, poisoned); serr != nil {
			if p.Logger != nil {
				p.Logger.Error("eventbus: cannot store event in poison queue; it will be redelivered", "message_id", msg.UUID, "subscription", p.Subscription, "error", serr, "handler_error", err)
			}
			delay := p.FailureDelay
			if delay <= 0 {
				delay = time.Second
			}
			_ = sleep(orig, delay)
			return nil, errors.Join(err, serr)
		}
		if p.Logger != nil {
			p.Logger.Warn("eventbus: event moved to poison queue", "message_id", msg.UUID, "subscription", p.Subscription, "reason", md[wire.PoisonReason], "attempts", attempts, "error", firstLine(err.Error()))
		}
		return nil, nil
	}
}

// firstLine keeps log lines short: a panic's error carries the whole stack,
// which the poison record keeps in full.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " (more in the poison record)"
	}
	return s
}
