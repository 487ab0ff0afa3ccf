package driver

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/url"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Transport is one open connection to a broker, as the bus uses it: a small
// layer over Watermill publishers and subscribers. Implementations must be
// safe for concurrent use.
type Transport interface {
	// Publisher returns the publisher for all events. The bus calls
	// Publish(name, msgs...) with the event name as topic and only messages
	// of that name. Publish must return nil only once the broker has durably
	// accepted every message, honour each message's Context for
	// cancellation, be safe for concurrent use, and may return a
	// *PublishError naming the messages that failed (any other error fails
	// the whole call). It returns by the messages' deadline (plus a few
	// milliseconds) even when the broker is unreachable or frozen; a
	// message whose wait was cut short is reported failed, though the broker
	// may still have it. A message that exceeds a limit of the broker fails
	// alone with an error wrapping [ErrTooLarge]. The bus closes it through
	// Close.
	Publisher() message.Publisher

	// NewSubscriber returns a subscriber for one durable subscription,
	// without talking to the broker.
	//
	// Its Subscribe(ctx, pattern) must deliver every message whose event
	// name matches the pattern (cfg.Match; the pattern is cfg.Pattern), and
	// share them among all subscribers of the same Group, each message to
	// one of them, with at most Concurrency messages handed to the bus and
	// not yet acknowledged or nacked by it at a time per subscriber (a
	// transport may keep more buffered from the broker, read ahead and
	// unacknowledged, so that the next message is at hand when a handler
	// finishes). ctx bounds only the setup: Subscribe returns
	// once the subscription is in place, so that messages published after
	// it returns reach it, or with an error when ctx ends first (leaving
	// nothing running). The subscription then lasts until the subscriber's
	// or the transport's Close, which close the channel.
	//
	// An unacknowledged message, whether nacked or outstanding when the
	// subscriber or transport closes, must be delivered again. Messages'
	// contexts must not be cancelled by the subscriber's Close, only by the
	// transport's: the bus waits for handlers in flight. The subscriber's
	// Close must return only once the acknowledgements of delivered
	// messages are settled with the broker (or the transport closed), and
	// may be called more than once.
	NewSubscriber(cfg SubscriberConfig) (message.Subscriber, error)

	// PoisonQueue returns the durable store for events that this service
	// could not handle, or an error wrapping ErrUnsupported.
	PoisonQueue() (PoisonQueue, error)

	// Redeliver sends msgs to one subscription group only, not to every
	// subscription matching their names; it serves poison-queue replay. It
	// has the guarantees of Publish and returns by ctx's deadline. The
	// messages are the ones the transport's poison queue returned, with
	// every header it stored: a transport that needs more than the event
	// to route one (its original subject, topic or routing key) keeps
	// that in the poison record and reads it back here.
	Redeliver(ctx context.Context, group string, msgs ...*message.Message) error

	// Close releases the transport. Unacknowledged messages come back to
	// their subscriptions. It returns within a few seconds even when the
	// broker is unreachable or frozen.
	Close() error
}

// BatchPublisher is an optional interface of the publisher a Transport
// returns: one call publishes messages of several names. Bus.Publish uses
// it for a call whose events have different names, so that all of them
// are in flight at once, in the order of the call; without it the bus
// publishes them name by name, each group waiting for the one before (a
// Publish of 100 events with 100 names then takes 100 round trips).
type BatchPublisher interface {
	// PublishBatch publishes msgs[i] under the event name topics[i]
	// (len(topics) == len(msgs)), with every guarantee of
	// Publisher().Publish. Messages keep the order of the call wherever
	// one Publish call of one name would keep it (one channel on
	// RabbitMQ, one partition on Kafka).
	PublishBatch(topics []string, msgs []*message.Message) error
}

// SubscriberConfig identifies one durable subscription.
type SubscriberConfig struct {
	// Group is the durable identity, "<service>.<subscription>": subscribers
	// with equal Group compete for messages; different groups each receive
	// every matching message.
	Group string
	// Service and Subscription are the two parts of Group, for transports
	// that name broker objects after them.
	Service, Subscription string
	// Pattern is the subscription's pattern, with RabbitMQ topic-exchange
	// semantics: segments separated by '.', "*" matches exactly one
	// segment, "#" zero or more. The bus has validated it. A transport
	// rejects here a pattern it cannot serve.
	Pattern string
	// Match reports whether an event name matches Pattern; transports that
	// filter in process (brokers that cannot route by name) use it rather
	// than implement the semantics again.
	Match func(name string) bool
	// Concurrency is how many messages may be handed to the bus and not
	// yet acknowledged at once (at least 1). It bounds what the bus holds,
	// not what the transport fetches (see NewSubscriber on read-ahead).
	Concurrency int
}

// Config is what a driver receives to open a transport.
type Config struct {
	// URL is the parsed broker URL; its scheme selected the driver.
	URL *url.URL
	// ServiceName owns the transport's poison queue and names its groups.
	ServiceName string
	// Logger receives the transport's log lines; never nil when the bus
	// opens the transport.
	Logger *slog.Logger
	// TLS, when not nil, configures TLS for schemes that use it.
	TLS *tls.Config
}

// Driver opens transports for one URL scheme; see [Register].
type Driver interface {
	// Open connects to the broker cfg.URL names and returns by ctx's
	// deadline, also while the broker is unreachable or frozen.
	Open(ctx context.Context, cfg Config) (Transport, error)
}

// OpenFunc adapts a function to [Driver].
type OpenFunc func(ctx context.Context, cfg Config) (Transport, error)

// Open calls f.
func (f OpenFunc) Open(ctx context.Context, cfg Config) (Transport, error) {
	return f(ctx, cfg)
}
