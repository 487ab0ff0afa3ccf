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
// RabbitMQ does the pattern matching, so the topology is the classic one of
// a topic exchange:
//
//   - one durable topic exchange, "events" unless the URL says
//     ?exchange=name; every event is published to it with its name as the
//     routing key;
//   - one durable queue per subscription, named after the subscription
//     group "<service>.<subscription>" (for example "billing.order.#" or
//     "billing.invoices"), bound to the exchange with the subscription's
//     pattern as binding key; instances of a service consume the same queue
//     (competing consumers), other services have their own (fan-out);
//   - one durable poison queue per service, "poison:<service>", not bound to
//     the exchange. Service names cannot contain ':', so this name can never
//     be a subscription's queue, whereas "<service>.poison" would be the
//     queue of the service's subscription named "poison" (and "a.b.poison"
//     that of service "a"'s subscription "b.poison").
//
// Queues are classic queues unless the URL says ?queue_type=quorum. Every
// declaration is idempotent and is repeated after each reconnection, so a
// broker restarted without its definitions gets them back. Replay
// (Transport.Redeliver) publishes to one subscription's queue through the
// default exchange, so only that subscription sees the replayed events.
//
// On the wire the body is the event's JSON data and the CloudEvents "ce_"
// attributes are AMQP headers (see eventbus.EncodeMessage); the native
// properties message-id, content-type, correlation-id and timestamp are
// filled as well, and every message is persistent (delivery mode 2).
//
// URL query parameters: exchange (default "events"), queue_type ("classic"
// or "quorum"), publish_channels (size of the pool of confirm-mode channels
// concurrent publishers share, default 4), prefetch (the deliveries each
// subscription's consumer keeps, default its concurrency + 128; see
// below), max_message_size (the largest
// body sent, default 134217728: set it to the broker's max_message_size if
// that was changed), and amqp091-go's own heartbeat, connection_timeout,
// channel_max, server_name_indication, certfile, keyfile and cacertfile.
// Other parameters are rejected, so a typo does not go unnoticed, and so is
// a URL amqp091-go would read as something else than it says (it falls
// back to localhost:5672 and guest/guest for what it does not find): one
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
// connection): delivery is at least once.
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
