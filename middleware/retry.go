package middleware

import (
	"context"
	"log/slog"
	"math"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cenkalti/backoff/v5"

	"github.com/paissive/go-eventbus/internal/logkeys"
	"github.com/paissive/go-eventbus/internal/wire"
)

// Retry calls a failing handler again with exponential backoff and jitter.
// Permanent errors (see [IsPermanent]) are returned at once. The delays
// between calls are exactly those of a backoff.ExponentialBackOff with these
// settings: Watermill's Retry ignores Multiplier without MaxInterval and
// shifts its delays when OnRetryHook is set, so it is not used.
//
// When it gives up, the error it returns wraps the handler's last one
// (errors.Is and errors.As see through it) and tells Poison how many calls
// failed and when. When the message's ctx ends during a wait (the bus is
// closing), it returns the ctx's error instead, so the message comes back.
//
// Waiting happens in the handler's goroutine and holds no lock, so it delays
// only this message: other messages of the subscription (up to its
// concurrency) and other subscriptions go on.
type Retry struct {
	// MaxAttempts is the number of handler calls in all, the first one
	// included; 1 disables retries.
	MaxAttempts int
	// InitialInterval is the delay before the second call.
	InitialInterval time.Duration
	// Multiplier grows the delay after each further failure.
	Multiplier float64
	// MaxInterval caps a single delay; zero means no cap.
	MaxInterval time.Duration
	// RandomizationFactor spreads each delay to delay*(1±factor), so that
	// consumers that failed together do not retry in lock step.
	RandomizationFactor float64
	// MaxElapsedTime, when positive, stops retrying when the next call
	// would start later than this after the first failure. (Measuring from
	// the first failure spares a clock read on every successful call.)
	MaxElapsedTime time.Duration
	// Logger, when set, receives one debug line per retry.
	Logger *slog.Logger
}

// Middleware returns the middleware.
func (r Retry) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		var start time.Time // of the first failure; not read on success
		var b *backoff.ExponentialBackOff
		for attempt := 1; ; attempt++ {
			out, err := h(msg)
			if err == nil {
				return out, nil
			}
			now := time.Now()
			if attempt == 1 {
				start = now
			}
			if IsPermanent(err) || attempt >= r.MaxAttempts {
				return out, &retriedError{err: err, attempts: attempt, first: start, last: now}
			}
			if b == nil {
				maxInterval := r.MaxInterval
				if maxInterval <= 0 {
					// backoff.ExponentialBackOff with a zero MaxInterval
					// never grows the delay (the Multiplier is ignored).
					// A quarter of the largest Duration leaves room for
					// the jitter without overflowing.
					maxInterval = math.MaxInt64 / 4
				}
				b = &backoff.ExponentialBackOff{
					InitialInterval:     r.InitialInterval,
					RandomizationFactor: r.RandomizationFactor,
					Multiplier:          r.Multiplier,
					MaxInterval:         maxInterval,
				}
				b.Reset()
			}
			delay := b.NextBackOff()
			if r.MaxElapsedTime > 0 && now.Add(delay).Sub(start) > r.MaxElapsedTime {
				return out, &retriedError{err: err, attempts: attempt, first: start, last: now}
			}
			if r.Logger != nil {
				r.Logger.Debug("eventbus: retrying handler", logkeys.EventName, msg.Metadata[wire.Type], logkeys.EventID, msg.UUID,
					logkeys.Attempt, attempt+1, logkeys.Delay, delay, logkeys.Error, err)
			}
			if werr := sleep(msg.Context(), delay); werr != nil {
				// The bus is shutting down: leave the message unacked so it
				// comes back, rather than poisoning it.
				return out, werr
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
