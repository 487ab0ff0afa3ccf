package eventbus

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Handler handles one event. Returning nil acknowledges it; an error means
// the event is retried and then poisoned (see [Policy]); wrap it with
// [Permanent] to skip the retries. ctx is cancelled when the handler's
// timeout expires or the bus stops waiting for it in Close.
type Handler func(ctx context.Context, ev Event) error

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

// SubscriptionMiddleware adds Watermill middleware for this subscription,
// run inside the bus's own middleware (after the recoverer, just around the
// handler), in the order given.
func SubscriptionMiddleware(m ...message.HandlerMiddleware) SubscribeOption {
	return func(s *subscription) error {
		s.middleware = append(s.middleware, m...)
		return nil
	}
}

// HandlerTimeout sets this subscription's deadline per handler call,
// keeping the rest of its policy (the bus's, or the one given with
// WithPolicy, in whichever order the options come). The handler's ctx is cancelled when
// it expires; the call then counts as a failure and is retried.
func HandlerTimeout(d time.Duration) SubscribeOption {
	return func(s *subscription) error {
		if d <= 0 {
			return fmt.Errorf("eventbus: HandlerTimeout(%v): must be positive", d)
		}
		s.timeout = d
		return nil
	}
}
