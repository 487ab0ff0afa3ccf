package driver

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Tapper is an optional capability of a [Transport]: tap subscriptions,
// which see the events published while they run without taking any away
// from the durable subscriptions. Operator tools (`eventbus tail`) and
// tests discover it by type assertion on the transport:
//
//	if tp, ok := tr.(driver.Tapper); ok { tap, err := tp.Tap(ctx, cfg) ... }
//
// A transport without it makes such tools say so instead of guessing.
// Brokers implement it with what they have for a throwaway reader: an
// exclusive, auto-delete queue bound with the patterns (RabbitMQ), a
// partition consumer outside any consumer group (Kafka), an ephemeral
// consumer without acknowledgements (NATS JetStream), a group that is not
// durable (memory).
type Tapper interface {
	// Tap opens a tap for the events whose names match cfg.Match. It
	// returns once the tap is in place, so that every matching event
	// published after it returns reaches the tap, or with an error when
	// ctx ends first (leaving nothing behind); ctx bounds only the setup.
	// The tap lasts until its Close or the transport's Close, which close
	// its channel.
	//
	// A tap must not change what any durable subscription receives: every
	// subscription still gets every event it matches. It is at most once
	// and needs no acknowledgement: a message it delivered is never
	// delivered again, and one published while the tap's reader lags is
	// kept for it (by the broker or a bounded buffer) rather than dropped,
	// as long as the tap is open.
	Tap(ctx context.Context, cfg TapConfig) (Tap, error)
}

// TapConfig says which events a tap sees.
type TapConfig struct {
	// Patterns are the patterns (RabbitMQ topic-exchange semantics, as in
	// [SubscriberConfig]) a tap's events match; the caller has validated
	// them. At least one.
	Patterns []string
	// Match reports whether an event name matches any of Patterns;
	// transports that filter in process use it.
	Match func(name string) bool
	// FromBeginning asks for the events the broker still retains from
	// before the tap was opened, oldest first, before the new ones. A
	// broker that keeps no history of delivered events (RabbitMQ, memory)
	// fails Tap with an error wrapping [ErrUnsupported].
	FromBeginning bool
}

// Tap is an open tap subscription.
type Tap interface {
	// Messages returns the channel of the tap's messages, in the wire
	// format of [Encode] (plus whatever headers the broker added). It is
	// closed by Close, by the transport's Close, or when the tap cannot go
	// on (its connection lost: a tap is not re-established, since the
	// events published meanwhile would be missing); Err then says why.
	Messages() <-chan *message.Message
	// Err returns why the channel was closed when it was not closed by
	// Close or the transport's Close, and nil otherwise.
	Err() error
	// Close stops the tap and releases what it holds at the broker. It
	// may be called more than once.
	Close() error
}
