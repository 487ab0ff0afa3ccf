// Package amqp is the RabbitMQ transport of go-eventbus, registered for
// "amqp://" and "amqps://" URLs. Import it for its side effect:
//
//	import _ "github.com/paissive/go-eventbus/transports/amqp"
//
//	bus, err := eventbus.New(ctx, eventbus.Config{
//		ServiceName: "billing",
//		URL:         "amqp://guest:guest@localhost:5672/",
//	})
//
// # Topology
//
// RabbitMQ does the pattern matching, in a topic exchange:
//
//	topic exchange "events" --pattern--> exchange "billing.invoices" (fanout) --> queue "billing.invoices"
//
// The transport declares:
//
//   - one durable topic exchange, "events" unless the URL says
//     ?exchange=name; every event is published to it with its name as the
//     routing key;
//   - per subscription, a durable queue and a durable internal fanout
//     exchange, both named after the subscription group
//     "<service>.<subscription>" (for example "billing.order.#" or
//     "billing.invoices"): the queue is bound only to its exchange, and
//     the exchange is bound to the topic exchange with the subscription's
//     pattern. Instances of a service consume the same queue (competing
//     consumers), other services have their own (fan-out);
//   - one durable poison queue per service, "poison:<service>", bound to
//     nothing. Service names cannot contain ':', so this name can never
//     be a subscription's queue, whereas "<service>.poison" would be the
//     queue of the service's subscription named "poison".
//
// The subscription's own exchange is what lets a subscription change its
// pattern. AMQP 0-9-1 cannot list a queue's bindings (only the management
// plugin's HTTP API can), so a queue bound directly with its pattern kept
// the old pattern's binding after a change: events of the old pattern
// kept arriving, and Publish of one reported success. Deleting the
// subscription's exchange removes its binding whatever its key was. The
// exchange records its pattern (a hash of it) in its alternate-exchange
// argument, the one exchange argument RabbitMQ compares when an exchange
// is declared again, so declaring it with another pattern fails, which is
// how Subscribe notices a change. The argument names an exchange that
// never exists: RabbitMQ consults it only for an event the subscription's
// exchange cannot route, when its queue was deleted, and the event stays
// unroutable.
//
// When Subscribe finds the pattern changed, it switches without a moment
// in which an event of the new pattern would miss the queue: under a lock
// (an exclusive queue "<queue>@lock", which dies with its holder's
// connection), it binds a temporary exchange "<queue>@next" to the queue
// and to the topic exchange with the new pattern, deletes and declares
// again the subscription's exchange with the new pattern, then deletes
// the temporary exchange. An event reaching the queue by both routes
// meanwhile is delivered to it once (RabbitMQ delivers a message at most
// once to a queue). Instances of the new version that start together
// switch one after the other; the later ones find the pattern already
// theirs. From the switch on, events of the old pattern are unroutable
// unless another subscription matches them; those already in the queue
// reach the bus, which moves them to the poison queue as misrouted, where
// they can be listed and purged.
//
// During a rolling deploy that changes a pattern, the instance that
// subscribed last decides it: re-subscribing after a lost connection
// never changes a pattern another instance set (it logs a warning), so
// old instances do not switch it back; an old instance started (or
// restarted) after the new ones does. While both versions consume the
// queue, each poisons as misrouted the events only the other's pattern
// matches. To change a pattern with no event poisoned, give the
// subscription a new name instead (a new queue, which receives events
// only from its first start) and delete the old queue once drained. A
// crash in the middle of a switch can leave the temporary exchange,
// which carries the new pattern and is removed by the next switch.
//
// Queues of versions of this transport that bound the queue directly to
// the topic exchange lose that binding, for the current pattern, on their
// first Subscribe; a binding of a pattern changed in the same upgrade
// must be removed by hand (rabbitmqctl or the management UI). Subscription
// names containing '@' are refused: names derived from a queue's carry it,
// so they can never be a subscription's.
//
// ?prefix=name namespaces everything the transport names, so that
// applications whose services have the same names can share a vhost: the
// topic exchange becomes "<prefix>:events" (unless ?exchange= names one),
// queues and subscription exchanges "<prefix>:<service>.<subscription>"
// and the poison queue "<prefix>:poison:<service>". A prefix has the
// characters of a service name (letters, digits, '_', '-'), neither '.'
// nor ':', so a prefixed name is never another prefix's name nor an
// unprefixed one; the Kafka transport's prefix allows dots, since Kafka
// names have no other namespace to collide with.
//
// Queues are classic queues unless the URL says ?queue_type=quorum. Every
// declaration is idempotent and is repeated after each reconnection, so a
// broker restarted without its definitions gets them back. Replay
// (Transport.Redeliver) publishes to one subscription's queue through the
// default exchange, so only that subscription sees the replayed events.
//
// On the wire the body is the event's JSON data and the CloudEvents "ce_"
// attributes are AMQP headers (see driver.Encode); the native properties
// message-id, content-type, correlation-id and timestamp are filled as
// well, and every message is persistent (delivery mode 2). Events from
// other CloudEvents producers are read too: attributes with the AMQP
// binding's prefixes "cloudEvents_" and "cloudEvents:", the content-type
// property (binary mode, or structured mode with
// application/cloudevents+json) and the correlation-id property when no
// correlation attribute is present (see toMessage and driver.Decode).
//
// URL query parameters: exchange (default "events", "<prefix>:events" with
// a prefix), prefix, unroutable ("error", the default, or "accept"; see
// Guarantees), queue_type ("classic" or "quorum"), publish_channels (size
// of the pool of confirm-mode channels concurrent publishers share,
// default 4), prefetch (the deliveries each subscription's consumer
// keeps, default its concurrency + 128; see below), max_message_size (the
// largest body sent, default 134217728: set it to the broker's
// max_message_size if that was changed), and amqp091-go's own heartbeat,
// connection_timeout, channel_max, server_name_indication, certfile,
// keyfile and cacertfile. Other parameters are rejected, so a typo does
// not go unnoticed, and so is a URL amqp091-go would read as something
// else than it says (it falls back to localhost:5672 and guest/guest for
// what it does not find): one
// without "//" after the scheme, without a host, with a port that is not a
// number from 1 to 65535 or with a fragment.
//
// # Guarantees
//
// Publishing always uses publisher confirms and the mandatory flag.
// Concurrent Publish calls share the confirm windows of a small pool of
// channels (group commit; see Publisher): each channel's writer sends what
// callers queued back to back, so many confirms are in flight however
// few events each call has, and a call of events with different names
// (Bus.Publish through driver.BatchPublisher) goes out on one channel in
// order. Publish returns nil only after the broker confirmed every
// message, and reports in an *driver.PublishError every message the
// broker nacked, returned as unroutable (wrapping driver.ErrUnroutable: no
// subscription matches its name), or did not confirm before the
// connection was lost or the message's context ended. A message in that
// list may still have reached the broker (a confirm can be lost with the
// connection): delivery is at least once. The check for unroutable events
// goes through the subscriptions' exchanges: an event routed only to
// exchanges without a queue is returned as well.
//
// With ?unroutable=accept, for a publisher deployed before its consumers,
// Publish accepts an event no subscription matches: the broker drops it
// and the transport counts it (Transport.UnroutableAccepted, the
// driver.UnroutableCounter capability a metrics exporter reads). Replay
// and the poison queue still fail on an unroutable message.
//
// One bad message fails alone. Before a message is written it is checked
// against the limits whose violation would close the connection or the
// channel, and with it every message in flight on them: a header name (a
// metadata key with its "meta_" prefix) of at most 255 bytes, which
// amqp091-go cannot encode otherwise; headers and properties that fit in
// one frame of the size negotiated with the broker (131,072 bytes by
// default), beyond which RabbitMQ closes the connection with a frame
// error; a body of at most max_message_size, beyond which it closes the
// channel; a routing key of at most 255 bytes. Such a message is reported
// failed with an error wrapping driver.ErrTooLarge that names the limit
// and the sizes. This holds for Publish, Redeliver and the poison queue.
//
// Every call is bounded, also while the broker is unreachable or frozen
// (it accepts connections and never answers, or stops reading): Open
// (eventbus.New) returns by its ctx's deadline, each connection attempt
// bounded besides by 10 s; Publish by its messages' deadlines, whether it
// waits for the connection, for a channel to open or for a write the
// broker does not read; Redeliver by its ctx's; Subscribe's ctx bounds the
// setup of the subscription (queue, binding, consumer), after which the
// subscription lasts until the subscriber or the transport closes.
// Transport.Close waits at most 2 s for the broker to confirm, then drops
// the connection; a subscriber's Close likewise waits at most 2 s for the
// broker, plus the time its messages in flight take to be settled.
//
// A subscriber keeps a window of deliveries larger than the subscription's
// concurrency (the channel prefetch: ?prefetch=, default Concurrency +
// 128) and hands at most Concurrency of them to the bus at a time, in the
// broker's order, so the next delivery is already in the client when a
// handler finishes; Concurrency(1) thus handles the events in the broker's
// order without waiting a round trip for each. Deliveries in the window
// are unacknowledged: they come back to the queue when the subscriber
// closes or crashes. It acknowledges a message after its handler
// succeeded, cumulatively (one basic.ack with multiple=true covers every
// delivery up to one whose predecessors are all settled, so under load one
// frame acknowledges many), and requeues it when the bus nacks it (the
// bus's retry and poison middleware keep handler failures from looping).
// Headers that are not strings, such as RabbitMQ's x-death table or
// numbers set by other clients, are converted to strings (tables and
// arrays as JSON) instead of failing the message.
//
// The first connection is retried with backoff until the ctx given to Open
// (eventbus.New) ends, except for refused credentials or vhost, which fail
// at once. A connection lost later is re-established with backoff in the
// background; the topology is declared again and consumers resume. Publish
// during an outage waits for the connection as long as its messages'
// contexts allow. Errors and logs show the URL with its password redacted.
//
// # Why not watermill-amqp's publisher and subscriber
//
// The project asked for github.com/ThreeDotsLabs/watermill-amqp/v2, and the
// benchmark in ./bench compares against it, but the transport talks to
// github.com/rabbitmq/amqp091-go directly for every part, because each
// part of watermill-amqp v2 breaks one of the guarantees above:
//
//   - its publisher with ConfirmDelivery waits for each message's confirm
//     before sending the next, even inside one multi-message Publish (about
//     580 messages/s on the reference machine against 31,000 with many
//     confirms in flight); it fails at once with "not connected" while
//     reconnecting; it has no return handler, so unroutable messages vanish
//     while Publish reports success;
//   - its subscriber keeps one message in flight per Subscribe, whatever
//     the prefetch, so a subscription's concurrency cannot be honoured;
//   - its DefaultMarshaler fails on any header that is not a string, such
//     as x-death (watermill issue 65), and the subscriber then nacks and
//     requeues the message forever; it also adds its own UUID header to the
//     wire format;
//   - its first connection attempt is not retried, and in v2
//     QueueBind.GenerateRoutingKey receives the queue name rather than the
//     topic, so binding a queue with a pattern needs a workaround anyway.
//
// What remains useful of it (the config structs) would only wrap
// amqp091-go calls this package makes itself.
package amqp
