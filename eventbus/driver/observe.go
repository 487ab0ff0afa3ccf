package driver

import (
	"context"
	"time"
)

// Optional capabilities for the bus's observability. A transport (or, for
// PoisonCounter, its PoisonQueue) implements those it can; the bus
// discovers them by type assertion and does without the others.

// Describer is implemented by a transport that states what it is, for the
// attributes of the bus's OpenTelemetry spans and metrics. Without it the
// bus reports the URL scheme as the messaging system.
type Describer interface {
	// Describe returns the transport's facts. The bus calls it once, when
	// it opens the transport.
	Describe() Description
}

// Description is what a [Describer] states.
type Description struct {
	// System is the OpenTelemetry "messaging.system": "rabbitmq" and
	// "kafka" for those brokers (the conventions' names), a short
	// lower-case name of the transport's own otherwise ("memory").
	System string
	// ServerAddress and ServerPort locate the broker ("server.address",
	// "server.port") when the transport talks to one address; empty and
	// zero otherwise.
	ServerAddress string
	ServerPort    int
}

// ConnectivityReporter is implemented by a transport that tracks its
// connection to the broker, so that a readiness probe can tell whether
// the service can reach it (eventbus.Bus.Health).
type ConnectivityReporter interface {
	// Connectivity returns the connection's state as the transport last
	// saw it. It must not talk to the broker and must return at once: a
	// probe calls it, perhaps often, and must get an answer also while the
	// broker is down or frozen.
	Connectivity() Connectivity
}

// Connectivity is the state of a transport's connection.
type Connectivity struct {
	// Connected reports whether the transport can reach the broker now,
	// as far as it knows.
	Connected bool
	// Since is when Connected last changed (when the transport opened, if
	// it never did): connected since, or trying to reconnect since.
	Since time.Time
	// LastError is the last error a connection attempt or a broker
	// operation failed with, with passwords in URLs redacted (RedactURL);
	// LastErrorTime is when it happened. Both stay set after the
	// transport reconnected, for the record.
	LastError     string
	LastErrorTime time.Time
}

// PoisonCounter is implemented by a PoisonQueue that can count its
// records cheaply (one short request to the broker at most, such as a
// passive queue.declare on RabbitMQ). The bus exports the count as the
// gauge eventbus.poison.depth, read on each metrics collection; a queue
// that would have to read its records to count them does not implement
// it.
type PoisonCounter interface {
	// PoisonCount returns the number of records stored, by ctx's deadline.
	PoisonCount(ctx context.Context) (int, error)
}
