package driver

import "context"

// TopologyReader is an optional capability of a [Transport]: describing a
// service's subscriptions as the broker holds them (queues and their
// depth, consumer groups and their lag), for operator tools such as
// `eventbus topology`. Tools discover it by type assertion on the
// transport; a transport without it makes them say so.
//
// Brokers differ in what a client can see: Kafka's admin protocol lists
// topics, groups and offsets, while AMQP 0-9-1 cannot list queues or
// bindings at all (it can only look up a queue by name). A transport
// describes what it can and says in [Topology.Notes] what it could not
// see and how to see it.
type TopologyReader interface {
	// Topology describes q.Service's objects at the broker. It returns by
	// ctx's deadline, also while the broker is down or frozen, and
	// changes nothing at the broker (it creates no queue or topic).
	Topology(ctx context.Context, q TopologyQuery) (*Topology, error)
}

// TopologyQuery says whose objects to describe.
type TopologyQuery struct {
	// Service is the service whose subscriptions and poison queue are
	// described.
	Service string
	// Subscriptions are subscriptions the caller knows the service has,
	// with their patterns when known ("" otherwise). A transport that
	// cannot list the broker's objects describes these; one that can
	// marks the service's objects that none of them explains as orphans
	// when the list is not empty.
	Subscriptions []SubscriptionRef
	// Admin names a broker-specific administration interface the
	// transport may use to list what its client protocol cannot; see the
	// transport's documentation. Empty means the client protocol only.
	Admin string
}

// SubscriptionRef names one subscription of a service.
type SubscriptionRef struct {
	Name    string
	Pattern string // "" when unknown
	// Hint marks a subscription a tool found (in poison records) rather
	// than one the operator named: it is looked up like the others, but
	// not reported missing, and hints alone never make other objects
	// orphans.
	Hint bool
}

// Topology is what a transport found.
type Topology struct {
	// Broker says where the objects are (an exchange, a topic prefix),
	// without credentials.
	Broker string
	// Objects are the service's objects, subscriptions first, in a stable
	// order.
	Objects []TopologyObject
	// Notes say what the transport could not see, and how an operator
	// can see it.
	Notes []string
}

// Kinds of [TopologyObject].
const (
	KindExchange      = "exchange"       // a RabbitMQ exchange
	KindQueue         = "queue"          // a subscription's queue
	KindPoisonQueue   = "poison-queue"   // the service's poison queue or topic
	KindTopic         = "topic"          // a topic a subscription reads
	KindConsumerGroup = "consumer-group" // a subscription's consumer group
	KindReplayTopic   = "replay-topic"   // a subscription's replay topic
	KindStream        = "stream"         // a stream of events (NATS JetStream)
	KindConsumer      = "consumer"       // a subscription's durable consumer of a stream
)

// TopologyObject is one broker object.
type TopologyObject struct {
	Kind string
	Name string
	// Subscription is the subscription the object serves, when known.
	Subscription string
	// Bindings are the patterns the object is bound with (RabbitMQ), or
	// the topics a consumer group reads (Kafka); nil when unknown.
	Bindings []string
	// Messages is how many messages wait: a queue's depth, a consumer
	// group's lag summed over its partitions, a topic's or poison
	// queue's record count; -1 when unknown.
	Messages int64
	// Consumers is how many consumers read it (queue consumers, group
	// members); -1 when unknown.
	Consumers int
	// Missing is set for an object the service should have (a
	// subscription the query named) that the broker does not hold.
	Missing bool
	// Orphan is set for an object of the service that no subscription
	// explains: a queue or group of a subscription the service no longer
	// has, a binding left by an old pattern, a replay topic without its
	// group.
	Orphan bool
	// Note explains Missing, Orphan or anything else worth telling.
	Note string
}
