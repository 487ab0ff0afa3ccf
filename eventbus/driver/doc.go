// Package driver is what a go-eventbus transport implements: the seam
// between the portable [eventbus.Bus] and one broker. A service author never
// imports it; a transport author finds everything here and nothing else.
//
// A transport is a [Transport] (a Watermill publisher, subscribers for
// durable subscription groups, a poison queue and a redelivery to one
// group) opened by a [Driver] that its package registers for a URL scheme
// from init, the way database/sql drivers register:
//
//	func init() { driver.Register("mybroker", driver.OpenFunc(open)) }
//
// The transport moves messages in the wire format of [Encode]: CloudEvents
// 1.0 in binary content mode with "ce_" headers. It never needs to decode
// events, except to read the event name when its broker cannot route by
// name: the [HeaderType] header or, for a CloudEvent in structured content
// mode ([ContentTypeStructured]) from another producer, the "type" of its
// JSON body. [Decode] reads what any CloudEvents producer may send; a
// transport helps it by turning what its broker carries natively into
// headers when the message lacks them (the RabbitMQ transport's
// content-type and correlation-id properties, the Kafka transport's record
// key as "ce_partitionkey").
//
// The division of labour follows gocloud.dev/pubsub: the bus owns policy
// (retries, poison, correlation, middleware, instrumentation); a transport
// moves messages and states broker facts, reporting failures per message
// and wrapping the shared errors ([ErrClosed], [ErrUnroutable],
// [ErrTooLarge], [ErrUnsupported]) so that every transport's errors look
// alike to users.
//
// Every method's doc comment states its contract: when it may return, what
// it must do with a cancelled ctx, what it must do while the broker is down
// or frozen. Those sentences are what
// github.com/paissive/go-eventbus/contracttests checks: a transport proves
// itself by passing contracttests.Run.
package driver
