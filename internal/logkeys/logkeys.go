// Package logkeys holds the slog attribute keys every go-eventbus package
// uses, so that one query finds the same thing in the lines of the bus,
// the middleware and every transport (docs/observability.md lists them).
package logkeys

// Keys of the lines about events and subscriptions.
const (
	Service       = "service"        // the service name (Config.ServiceName)
	Subscription  = "subscription"   // the subscription's name
	Group         = "group"          // "<service>.<subscription>"
	Pattern       = "pattern"        // the subscription's pattern
	EventName     = "event_name"     // the event's name (ce_type)
	EventID       = "event_id"       // the event's ID (ce_id, the message UUID)
	CorrelationID = "correlation_id" // the event's correlation ID
	Reason        = "reason"         // why an event was poisoned
	Attempt       = "attempt"        // the number of the attempt about to be made (1 is the first)
	Attempts      = "attempts"       // attempts made
	Delay         = "delay"          // the wait before the next attempt
	Error         = "error"          // what failed
	HandlerError  = "handler_error"  // the handler's error, where "error" is another one
	Waited        = "waited"         // how long something was waited for
)

// Keys of the lines about transports and brokers.
const (
	Transport = "transport" // the transport: "amqp", "kafka", "memory"
	URL       = "url"       // the broker URL, always redacted (driver.RedactURL)
	Brokers   = "brokers"   // Kafka's bootstrap brokers
	Topic     = "topic"     // a Kafka topic
	Queue     = "queue"     // a RabbitMQ queue
)
