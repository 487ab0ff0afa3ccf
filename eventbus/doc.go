// Package eventbus is an event bus for event-driven Go services.
//
// A service creates a [Bus] with its service name, subscribes handlers to
// event-name patterns and publishes [Event]s:
//
//	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "billing", URL: "mem://"})
//	err = bus.Subscribe("order.#", handleOrder)
//	err = bus.Start(ctx)
//	err = bus.Publish(ctx, ev)
//	defer bus.Close(ctx)
//
// Patterns follow RabbitMQ topic-exchange rules on every transport: "*"
// matches exactly one dot-separated segment and "#" matches zero or more, so
// "user.#" matches "user" and "#.completed" matches "completed".
//
// The broker is chosen by the URL scheme, the way database/sql chooses a
// driver: import the transport package for its side effect
// (github.com/paissive/go-eventbus/transports/memory for "mem://",
// .../transports/amqp for "amqp://" and "amqps://", .../transports/kafka for
// "kafka://"). Only the transports a program imports are compiled in.
//
// Delivery is at least once. An event is acknowledged only after its handler
// returned nil; errors are retried with backoff and then moved to the
// service's poison queue, from which they can be listed, replayed and purged.
// [Permanent] errors and events that fail schema validation skip the retries.
//
// On the wire every transport writes CloudEvents 1.0 in binary content mode:
// the body is the JSON data and each attribute is a "ce_" header (see the
// driver package, which also holds what a transport author implements), so
// any CloudEvents-aware client can read the events.
//
// # Observability
//
// The bus traces and measures with the OpenTelemetry API, following the
// messaging semantic conventions; nothing is recorded until the
// application installs an SDK (Config.TracerProvider, MeterProvider and
// Propagator default to the otel globals). Each published event gets a
// PRODUCER span "publish <name>" whose context travels in the
// CloudEvents distributed-tracing extension (the ce_traceparent and
// ce_tracestate headers). Each delivery to a subscription gets one
// CONSUMER span "process <name>" covering every attempt and the poison
// queue, whose parent is the producer's context, which it also links to;
// the handler's ctx carries it, so the handler's spans and the events it
// publishes nest under it. The span records the outcome (handled,
// poisoned with its reason, or returned to the broker), each retry and
// each failed attempt. Metrics: messaging.client.sent.messages,
// messaging.client.operation.duration, messaging.client.consumed.messages,
// messaging.process.duration, eventbus.retries, eventbus.poisoned,
// eventbus.poison.store_failures, eventbus.handlers.in_flight and
// eventbus.poison.depth. [Bus.Health] and [Bus.HealthHandler] serve
// readiness probes. docs/observability.md in the repository has the
// attributes, the wiring of Prometheus and OTLP exporters and the log
// keys.
package eventbus
