package eventbus

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Transport is the extension point for brokers: a small layer over Watermill
// publishers and subscribers that the [Bus] drives. A transport moves
// messages in the wire format of [EncodeMessage]; it never needs to decode
// events, except to read the event name from the "ce_type" header when its
// broker cannot route by name. The contracttests package checks that a
// transport behaves like the built-in ones.
type Transport interface {
	// Publisher returns the publisher for all events. The bus calls
	// Publish(name, msgs...) with the event name as topic and only messages
	// of that name. Publish must return nil only once the broker has durably
	// accepted every message, honour each message's Context for
	// cancellation, be safe for concurrent use, and may return a
	// *PublishError naming the message UUIDs that failed (any other error
	// fails the whole call). It returns by the messages' deadline (plus a
	// few milliseconds) even when the broker is unreachable or frozen; a
	// message whose wait was cut short is reported failed, though the broker
	// may still have it. A message that exceeds a limit of the broker fails
	// alone with an error wrapping [ErrTooLarge]. The bus closes it through
	// Close.
	Publisher() message.Publisher

	// NewSubscriber returns a subscriber for one durable subscription,
	// without talking to the broker.
	//
	// Its Subscribe(ctx, pattern) must deliver every message whose event
	// name matches the pattern (see [Pattern]), and share them among all
	// subscribers of the same Group, each message to one of them, with at
	// most Concurrency messages unacknowledged at a time per subscriber.
	// ctx bounds only the setup: Subscribe returns once the subscription
	// is in place, so that messages published after it returns reach it,
	// or with an error when ctx ends first (leaving nothing running). The
	// subscription then lasts until the subscriber's or the transport's
	// Close, which close the channel.
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
	// has the guarantees of Publish and returns by ctx's deadline.
	Redeliver(ctx context.Context, group string, msgs ...*message.Message) error

	// Close releases the transport. Unacknowledged messages come back to
	// their subscriptions. It returns within a few seconds even when the
	// broker is unreachable or frozen.
	Close() error
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
	// Pattern is the pattern the bus will pass to Subscribe, so that a
	// transport can reject one it cannot serve when the subscription is
	// made.
	Pattern string
	// Concurrency is how many messages may be delivered and not yet
	// acknowledged at once (at least 1).
	Concurrency int
}

// PoisonQueue stores events a service could not handle, durably, until they
// are replayed or purged. Each Add stores a new record, even for a message
// already stored: a replayed event that fails again is a second record, and
// deleting the first must not touch it. Every method returns by ctx's
// deadline, also while the broker is down or frozen.
type PoisonQueue interface {
	// Add stores msg (with its poison headers) as a new record; nil means
	// it is stored durably. Every message the bus adds carries a unique
	// HeaderPoisonID, which a transport may use as the record's key. A
	// record larger than the broker accepts fails with an error wrapping
	// [ErrTooLarge], so that the bus can store a reduced record instead.
	Add(ctx context.Context, msg *message.Message) error

	// Scan visits the records stored when it starts, oldest first, in
	// pages of at most pageSize, and deletes exactly the records of a page
	// whose indexes visit returns, before it visits the next page. Records
	// added while it runs are not visited, so a replayed event poisoned
	// again is neither visited twice nor deleted. When visit returns an
	// error, Scan deletes the records visit returned, then stops and
	// returns that error; other records of the page stay stored. Scan never
	// holds more than one page of messages in memory. Concurrent Scans may
	// each miss the records another one holds at the moment.
	Scan(ctx context.Context, pageSize int, visit func(page []*message.Message) (del []int, err error)) error

	// Purge deletes every record stored when it starts.
	Purge(ctx context.Context) error
}

// Driver opens transports for one URL scheme; see [Register].
type Driver interface {
	Open(ctx context.Context, cfg TransportConfig) (Transport, error)
}

// TransportConfig is what a driver receives to open a transport.
type TransportConfig struct {
	// URL is the parsed broker URL; its scheme selected the driver.
	URL *url.URL
	// ServiceName owns the transport's poison queue and names its groups.
	ServiceName string
	// Logger receives the transport's log lines; never nil.
	Logger *slog.Logger
	// TLS, when not nil, configures TLS for schemes that use it.
	TLS *tls.Config
}

// DriverFunc adapts a function to [Driver].
type DriverFunc func(ctx context.Context, cfg TransportConfig) (Transport, error)

// Open calls f.
func (f DriverFunc) Open(ctx context.Context, cfg TransportConfig) (Transport, error) {
	return f(ctx, cfg)
}

var (
	driversMu sync.RWMutex
	drivers   = map[string]Driver{}
)

// knownImports names the package that registers each built-in scheme, for
// the error a program gets when it forgot the import.
var knownImports = map[string]string{
	"mem":   "github.com/paissive/go-eventbus/transports/memory",
	"amqp":  "github.com/paissive/go-eventbus/transports/amqp",
	"amqps": "github.com/paissive/go-eventbus/transports/amqp",
	"kafka": "github.com/paissive/go-eventbus/transports/kafka",
}

// Register makes a driver available for a URL scheme, the way database/sql
// drivers register: call it from the transport package's init. It panics if
// the scheme is registered twice or the driver is nil.
func Register(scheme string, d Driver) {
	driversMu.Lock()
	defer driversMu.Unlock()
	if d == nil {
		panic("eventbus: Register driver is nil")
	}
	if _, dup := drivers[scheme]; dup {
		panic("eventbus: Register called twice for scheme " + scheme)
	}
	drivers[scheme] = d
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	driversMu.RLock()
	defer driversMu.RUnlock()
	s := make([]string, 0, len(drivers))
	for k := range drivers {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// OpenTransport opens the transport that cfg.URL names, without a bus. The
// bus uses it; so do tests that need the transport's raw publisher.
func OpenTransport(ctx context.Context, cfg Config) (Transport, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		// url.Parse's error repeats the URL, password included.
		return nil, fmt.Errorf("eventbus: cannot parse URL %s", RedactURL(cfg.URL))
	}
	if u.Opaque != "" || u.Scheme == "" {
		// "amqp:user:pass@host:5679" parses with everything in the opaque
		// part; a transport reading Host would connect to its default.
		return nil, fmt.Errorf("eventbus: URL %s is not of the form scheme://[user:password@]host[:port][/path]; write it with \"//\" after the scheme, as in amqp://user:password@host:5672/", RedactURL(cfg.URL))
	}
	driversMu.RLock()
	d, ok := drivers[u.Scheme]
	driversMu.RUnlock()
	if !ok {
		if imp, known := knownImports[u.Scheme]; known {
			return nil, fmt.Errorf("eventbus: no transport registered for %q URLs (%s); add `import _ %q` to the program", u.Scheme, RedactURL(cfg.URL), imp)
		}
		return nil, fmt.Errorf("eventbus: no transport registered for %q URLs (%s); registered schemes: %v", u.Scheme, RedactURL(cfg.URL), Schemes())
	}
	t, err := d.Open(ctx, TransportConfig{URL: u, ServiceName: cfg.ServiceName, Logger: cfg.Logger, TLS: cfg.TLS})
	if err != nil {
		return nil, fmt.Errorf("eventbus: opening %s: %w", RedactURL(cfg.URL), err)
	}
	return t, nil
}
