package eventbus

import (
	"fmt"
	"time"
)

// Policy is the failure policy of a subscription: how often and how fast a
// failing handler is retried, how long one call may take, and whether
// redelivered events are skipped. A failing event that exhausts its attempts,
// or fails permanently, goes to the service's poison queue.
//
// Zero fields take the defaults of [DefaultPolicy]; a negative HandlerTimeout
// disables the timeout.
type Policy struct {
	// MaxAttempts is the number of handler calls per delivery, the first one
	// included. 1 disables retries.
	MaxAttempts int
	// InitialBackoff is the delay before the first retry.
	InitialBackoff time.Duration
	// MaxBackoff caps one delay.
	MaxBackoff time.Duration
	// Multiplier grows the delay after each failure.
	Multiplier float64
	// Jitter spreads each delay randomly to delay*(1±Jitter), in (0, 1).
	// Zero takes the default; [NoJitter] turns it off.
	Jitter float64
	// MaxElapsed stops retrying when the next attempt would start later
	// than this after the first failure.
	MaxElapsed time.Duration
	// HandlerTimeout bounds each handler call through its ctx; negative
	// disables it, and so does the default.
	HandlerTimeout time.Duration
	// IdempotencyWindow, when positive, makes the subscription skip an event
	// whose ID it already handled within the window, so at-least-once
	// redelivery does not repeat side effects. See WithIdempotencyStore.
	IdempotencyWindow time.Duration
}

// NoJitter is the Policy.Jitter that turns jitter off: retries come after
// exactly the configured delays.
const NoJitter = -1.0

// DefaultPolicy is the policy used where a field is left zero.
//
//   - 5 attempts, 100ms doubling to at most 10s, ±20% jitter: about 1.5s of
//     retries, enough to ride out a deadlock retry or a short network blip,
//     short enough that a real bug reaches the poison queue quickly and does
//     not hold a concurrency slot for long.
//   - MaxElapsed 1 minute, so a raised MaxAttempts cannot retry for hours.
//   - No HandlerTimeout: a deadline only cancels the handler's ctx, which
//     a handler blocked elsewhere ignores, and a timer per event costs about
//     a tenth of the in-memory throughput; set one per subscription where
//     handlers call services that honour ctx.
//   - Idempotency off: it costs a lookup per event and memory per ID, and
//     handlers written to be idempotent do not need it.
var DefaultPolicy = Policy{
	MaxAttempts:    5,
	InitialBackoff: 100 * time.Millisecond,
	MaxBackoff:     10 * time.Second,
	Multiplier:     2,
	Jitter:         0.2,
	MaxElapsed:     time.Minute,
	HandlerTimeout: -1,
}

func (p Policy) withDefaults() Policy {
	d := DefaultPolicy
	if p.MaxAttempts == 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.InitialBackoff == 0 {
		p.InitialBackoff = d.InitialBackoff
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = d.MaxBackoff
	}
	if p.Multiplier == 0 {
		p.Multiplier = d.Multiplier
	}
	if p.Jitter == 0 {
		p.Jitter = d.Jitter
	}
	if p.MaxElapsed == 0 {
		p.MaxElapsed = d.MaxElapsed
	}
	if p.HandlerTimeout == 0 {
		p.HandlerTimeout = d.HandlerTimeout
	}
	return p
}

func (p Policy) validate() error {
	switch {
	case p.MaxAttempts < 1:
		return fmt.Errorf("eventbus: Policy.MaxAttempts is %d; it counts handler calls and must be at least 1", p.MaxAttempts)
	case p.InitialBackoff < 0 || p.MaxBackoff < 0 || p.MaxElapsed < 0:
		return fmt.Errorf("eventbus: Policy backoff durations must not be negative")
	case p.Multiplier < 1:
		return fmt.Errorf("eventbus: Policy.Multiplier is %g; it must be at least 1", p.Multiplier)
	case p.Jitter != NoJitter && (p.Jitter < 0 || p.Jitter >= 1):
		return fmt.Errorf("eventbus: Policy.Jitter is %g; it must be in [0, 1), or NoJitter", p.Jitter)
	case p.IdempotencyWindow < 0:
		return fmt.Errorf("eventbus: Policy.IdempotencyWindow must not be negative")
	}
	return nil
}
