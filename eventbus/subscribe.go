package eventbus

import (
	"context"
	"fmt"
)

// Handler handles one event. Returning nil acknowledges it; an error means
// the event is retried and then poisoned (see [Policy]); wrap it with
// [Permanent] to skip the retries. ctx is cancelled when the handler's
// timeout expires or the bus stops waiting for it in Close.
type Handler func(ctx context.Context, ev Event) error

// Middleware wraps a handler: it can act before and after the handler,
// change the ctx it runs with, or return an error instead of calling it
// (a permanent one skips the retries). It runs once per attempt, inside the
// bus's retry and poison policy, so it sees every call and every failure.
//
//	func tenantOnly(next eventbus.Handler) eventbus.Handler {
//		return func(ctx context.Context, ev eventbus.Event) error {
//			if ev.Metadata["tenant"] == "" {
//				return eventbus.Permanent(errors.New("event without a tenant"))
//			}
//			return next(ctx, ev)
//		}
//	}
type Middleware func(Handler) Handler

// SubscribeOption configures one subscription.
type SubscribeOption func(*subscription) error

// SubscriptionName sets the subscription's name. Together with the service
// name it is the subscription's durable identity ("<service>.<name>"): the
// broker keeps its events while no instance runs, and instances with the
// same name share them. The default is the pattern itself, so two
// subscriptions of one service to the same pattern need distinct names.
func SubscriptionName(name string) SubscribeOption {
	return func(s *subscription) error {
		if name == "" || len(name) > 150 {
			return fmt.Errorf("eventbus: subscription name must be 1 to 150 bytes, got %d", len(name))
		}
		for _, r := range name {
			if r < 0x21 || r == 0x7f {
				return fmt.Errorf("eventbus: subscription name %q contains a space or control character", name)
			}
		}
		s.name = name
		return nil
	}
}

// MaxConcurrency is the largest Concurrency a subscription accepts. Each
// unit of concurrency is a handler that may run at once and, on some
// transports, a worker and a buffered delivery; beyond a few thousand,
// handlers wait on whatever they call rather than on the bus.
const MaxConcurrency = 10_000

// Concurrency sets how many events of the subscription may be handled at
// once in this instance (default 1, at most [MaxConcurrency]). Events of
// one subscription are then handled in no particular order.
func Concurrency(n int) SubscribeOption {
	return func(s *subscription) error {
		if n < 1 || n > MaxConcurrency {
			return fmt.Errorf("eventbus: Concurrency(%d): must be from 1 to %d", n, MaxConcurrency)
		}
		s.concurrency = n
		return nil
	}
}

// WithPolicy overrides the bus's failure policy for this subscription; zero
// fields take the defaults of [DefaultPolicy].
func WithPolicy(p Policy) SubscribeOption {
	return func(s *subscription) error {
		p = p.withDefaults()
		if err := p.validate(); err != nil {
			return err
		}
		s.policy = p
		return nil
	}
}

// Use adds middleware to this subscription's handler, outermost first,
// inside the bus's Config.Middleware.
func Use(mw ...Middleware) SubscribeOption {
	return func(s *subscription) error {
		for _, m := range mw {
			if m == nil {
				return fmt.Errorf("eventbus: Use with a nil middleware")
			}
		}
		s.middleware = append(s.middleware, mw...)
		return nil
	}
}
