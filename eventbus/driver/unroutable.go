package driver

// UnroutableCounter is an optional capability of a transport whose Publish
// can be told to accept events that no subscription matches instead of
// failing them with [ErrUnroutable] (?unroutable=accept on the memory and
// RabbitMQ transports: a publisher deployed before its consumers). Such
// events reach nobody; the count makes them visible. A tool or metrics
// exporter finds it by type assertion on the bus's transport:
//
//	if c, ok := bus.Transport().(driver.UnroutableCounter); ok {
//		n := c.UnroutableAccepted()
//	}
//
// Transports whose brokers keep such events (Kafka topics, NATS streams),
// where a subscription created later can still read them, do not
// implement it.
type UnroutableCounter interface {
	// UnroutableAccepted returns how many events Publish accepted since the
	// transport opened although no subscription matched them. It only
	// grows, and is 0 while the transport fails such events.
	UnroutableAccepted() uint64
}
