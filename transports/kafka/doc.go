// Package kafka is the Kafka transport of go-eventbus, registered for
// "kafka://" URLs. Import it for its side effect:
//
//	import _ "github.com/paissive/go-eventbus/transports/kafka"
//
//	bus, err := eventbus.New(ctx, eventbus.Config{
//		ServiceName: "billing",
//		URL:         "kafka://kafka-1:9092,kafka-2:9092/?prefix=shop",
//	})
//
// # Topic mapping
//
// Kafka has no routing keys: a consumer reads whole topics. The transport
// therefore maps event names to topics and matches each record's "ce_type"
// header against the subscription's pattern in Go, with the RabbitMQ
// topic-exchange semantics of eventbus.Pattern (driver.SubscriberConfig.Match). Records that do not match
// are acknowledged (their offsets committed) without reaching the bus. The
// name is the "ce_type" header or, for a CloudEvent in structured content
// mode (content-type application/cloudevents+json), the "type" attribute
// of its JSON body; records with neither are delivered, so the bus moves
// them to the poison queue as undecodable.
//
// mapping=single (the default) puts every event of the namespace in one
// topic, "<prefix>.events" ("events" without a prefix). Every pattern
// works, including "*.registered", "#.completed" and the zero-segment
// cases ("user.#" matches "user"), and events of one partition key keep
// their order whatever their names. The cost: every subscription reads
// every event of the namespace, so the bytes fetched and the records
// filtered grow with (events published) x (subscriptions), however
// selective the patterns are. That is cheap for the tens of thousands of
// events per second a 2-core consumer filters, and the simplest thing that
// is correct.
//
// mapping=segment puts each event in the topic of its first name segment,
// "<prefix>.events.<segment>" ("user.registered" goes to "events.user").
// A pattern with a literal first segment reads that one topic ("user.#",
// "user.*", "user.registered" read "events.user"), so a subscription
// fetches only its own domain's events. Patterns whose first segment is a
// wildcard ("*.registered", "#.completed", "#") would need every topic,
// including ones created later, and are rejected when the subscription
// starts with an error wrapping ErrPatternNotServed that names the
// mapping when the subscription is made (Bus.Subscribe). Per-key order then
// holds within one first segment.
//
// # Names
//
//   - event topics: see above, created on first use (Publish or
//     Subscribe) with ?partitions= partitions (default 8);
//   - consumer group of a subscription: its group "<service>.<subscription>",
//     prefixed with "<prefix>." when a prefix is set, so namespaces never
//     share groups;
//   - replay topic of a subscription, "<prefix>.replay.<group>" (one
//     partition): Transport.Redeliver, which serves Bus.Replay, publishes
//     there, and only that subscription's consumers read it besides the
//     event topics, so a replayed event reaches the failing subscription
//     only. A group with characters Kafka does not allow in topic names
//     (a subscription named after its pattern, "user.*") has them replaced
//     by '_' and a hash of the group appended;
//   - poison topic of a service, "<prefix>.poison.<service>": one
//     partition (so List is oldest first), compacted, keyed by
//     "<subscription>/<event ID>". Remove appends tombstones for the keys
//     and then deletes (DeleteRecords) every record below the oldest entry
//     still stored, so List reads little more than the live entries.
//
// Topics are created with the Sarama cluster admin on first use, with
// ?replication= replicas (default: 3, or fewer on a smaller cluster),
// min.insync.replicas 2 when there are at least 3 replicas, and
// max.message.bytes from ?max_message_bytes= (default 4 MiB, above
// Kafka's 1 MiB default so a 1 MiB event with its headers fits); poison
// topics get max_message_bytes + PoisonHeadroom (1 MiB), so that the
// poison record of an event at the limit (the event plus the poison
// headers, which the bus bounds to a few KiB) fits, and a poison topic
// that exists with less is raised to that. A cluster that refuses the
// creation but already has the topic is fine. Creation runs in the
// background, shared by every caller that needs the topic; a caller
// waits for it within its ctx, and a creation that failed because the
// cluster could not be reached is tried again within that ctx.
//
// # Publishing
//
// On the wire a record's headers are the CloudEvents "ce_" attributes of
// the Kafka binding (see driver.Encode), its value the event's JSON data
// and its key the event's PartitionKey, so events of one key go to one
// partition and keep their order. Events without a key are spread over
// the partitions. A record without a "ce_partitionkey" header (from a
// producer that keys records but knows nothing of the extension) gets its
// key as the event's PartitionKey.
//
// Publish never fails with driver.ErrUnroutable: Kafka has no routing, so
// an event that no subscription matches stays in its topic for the
// retention period, and a subscription created later reads it (new
// consumer groups start at the oldest offset).
//
// All Publish calls share one Sarama AsyncProducer with acks from all
// in-sync replicas (WaitForAll), one request in flight per broker (order
// within a partition survives retries) and, unless ?idempotent=false,
// idempotence, so a retried produce cannot duplicate a record; a cluster
// that refuses producer IDs gets a non-idempotent producer and a log line
// (?idempotent=true makes that an error instead). Poison records go
// through a second producer of the same kind, whose limit is
// max_message_bytes + PoisonHeadroom: Sarama's limit on a record is also
// the size up to which it fills a batch, and a batch of events above
// max_message_bytes would be refused by the event topics. A Publish call
// hands all its events to the producer at once, so Sarama batches them
// into few requests, and returns once every one was acknowledged; the
// events that failed or whose context ended first are listed in an
// *driver.PublishError (such an event may still have been written:
// delivery is at least once). Publish is safe for concurrent use.
//
// Sizes: each record is checked before it is produced against
// max_message_bytes as Kafka counts it, the record batch that holds it
// alone: the value, the key, every header and the 61-byte batch header,
// with the record's varints counted at their widest (at most 29 bytes,
// plus 8 per header, above the exact size; never below it). An event over
// the limit fails alone, with an error wrapping driver.ErrTooLarge that
// names the limit and the size; the other events of the call go on. A
// topic whose max.message.bytes is below max_message_bytes makes the
// broker refuse such records, which fail the same way.
//
// Outages: Publish rides out a broker restart, crash or freeze within each
// event's context. Failures another attempt may fix (connections refused
// or reset, no broker reachable, leader elections, request timeouts, not
// enough replicas) are retried: first by Sarama (10 retries, 100ms
// doubling to 1s, in the partition's order), then by Publish, which hands
// the event to the producer again (50ms doubling to 1s, with jitter) until
// its context ends. Failures retrying cannot fix fail the event at once:
// too large, invalid topic or record, authorisation, an unsupported
// version. While no broker can be reached, Sarama's leader lookup waits
// rather than fails: Sarama counts failed lookups in a circuit breaker
// that then fails every record of the partition for 10 seconds, which
// kept Publish calls waiting up to 16s around a 5s outage; with the wait,
// records flow again as soon as the broker is back. Measured with 5,000
// events from 10 publishers (Publish ctx 30s) and the broker cut for 5s
// (TestPublishRidesOutOutage): before, 849 events failed, 650 of them more
// than 1s after the broker was back; now none fails, none is lost, and
// the slowest Publish took 5.0 to 6.0s. A 5s freeze failed nothing before
// either (shorter than Sarama's read timeout) and fails nothing now.
//
// Order: the events of one key keep the order of a Publish call, and of
// successive calls of one goroutine (a call returns only once all its
// events are acknowledged), as long as Sarama's own retries suffice. An
// event that Sarama gives up on and Publish produces again can land after
// later events of its key that were written meanwhile. In the outage
// tests, with Publish's retries alone, 19 to 24 of the 5,000 events were
// handled after a later event of their key; with the leader lookup
// waiting, none was. Concurrent calls with events of one key have no
// order between them.
//
// # Consuming
//
// Each Subscribe is one member of the subscription's consumer group
// (Sarama ConsumerGroup, range assignment). New groups start at the oldest
// retained offset (?initial_offset=newest to start at the end), so events
// published before a subscription's first start are not lost; note that a
// new subscription therefore first reads the topic's retained history.
// Subscribe returns once the member has joined the group and got its
// partitions (at most ?join_timeout=, default 30s; after that it keeps
// joining in the background and logs a warning; join_timeout=0 returns at
// once), so Bus.Start returns when the subscriptions consume. Its ctx
// bounds only that setup: when it ends first, Subscribe fails and stops
// the member; once Subscribe returned, the subscription lasts until the
// subscriber's or the transport's Close. Kafka delays the first rebalance
// of an empty group by the broker's group.initial.rebalance.delay.ms (3s
// by default), and the router starts subscriptions one after the other:
// set it to 0 on development brokers, or use join_timeout=0 where a fast
// Start matters more.
//
// At most the subscription's Concurrency messages are delivered and not
// yet acknowledged, across all its partitions; with Concurrency 1, events
// of one key are handled in order. The read-ahead is Sarama's: each
// partition's fetched records wait in its buffer (256 records) while the
// bus handles the ones delivered. Acknowledgements may come out of order:
// a partition's committed offset advances only past records that are all
// settled, so a restart or rebalance redelivers exactly the records not
// yet acknowledged (and those after them). Offsets are committed every
// second and synchronously whenever a member gives up partitions, so the
// offsets of handled events are committed before the subscriber's Close
// returns.
//
// A nacked message is delivered again after a backoff (100ms doubling to
// 10s) without holding a concurrency slot, so the records behind it in its
// partition go on; it stays uncommitted until acknowledged. The bus only
// nacks when its own retry and poison middleware could not settle an
// event (shutdown, or a poison queue that cannot be written), so a failing
// handler never wedges a partition. An undecodable record is delivered
// like any other and poisoned by the bus.
//
// Close of a subscriber stops fetching, waits until the messages already
// delivered are acknowledged or nacked (their contexts are not cancelled:
// the bus waits for its handlers), commits and leaves the group.
// Transport.Close cancels the contexts of messages still being handled and
// leaves without committing their offsets, so the next member gets them.
// A consumer that fails (broker unreachable, topic gone) rejoins with
// backoff (100ms doubling to 10s) and logs one warning per attempt.
//
// # Deadlines
//
// Every call that takes a ctx returns by its deadline, plus the scheduling
// of a goroutine, also while the brokers are unreachable or frozen (a
// frozen broker accepts connections and never answers; Sarama would wait
// its 30s read timeout per request, and its client creation, topic
// creation and metadata calls take no ctx): Open (eventbus.New), Publish
// and Redeliver, Subscribe, and the client calls of the poison queue. The
// Sarama call runs in a goroutine and is abandoned at the deadline; it
// ends within Sarama's network timeouts, and what it opened for a caller
// that left is closed then. Transport.Close returns within CloseTimeout
// (5s): it waits that long at most for the producers to flush, the
// consumers to commit and leave their groups and the connections to
// close; Publish calls still waiting then fail with eventbus.ErrClosed (their
// records may still be written), and the rest stops in the background.
// After a cut or freeze ends, the same transport publishes and consumes
// again.
//
// # URL parameters
//
// kafka://[user:password@]host[:port][,host[:port]...]/?params, port 9092
// by default, IPv6 addresses in brackets ([::1]:9092). A URL the transport
// cannot read is refused with an error that shows it (without its
// password) and this form: no "//" ("kafka:host:9092"), an empty or
// malformed broker, a port that is not a number from 1 to 65535, a path
// or a fragment. Parameters:
//
//   - prefix: namespace of topics and consumer groups (letters, digits,
//     '.', '_', '-');
//   - mapping: single (default) or segment;
//   - partitions (default 8) and replication (default min(3, brokers)) of
//     created event topics; poison and replay topics have one partition;
//   - client_id (default "go-eventbus");
//   - version: Kafka protocol version Sarama speaks (default 2.1.0, the
//     oldest Kafka 4 accepts; kfake needs at most 2.3.0);
//   - tls=true (system roots), or eventbus.Config.TLS, which also enables
//     TLS; sasl_mechanism=PLAIN with the URL's user and password (a user
//     in the URL implies PLAIN);
//   - idempotent: auto (default), true or false;
//   - initial_offset: oldest (default) or newest;
//   - max_message_bytes (default 4 MiB, from 1 KiB to 64 MiB): the largest
//     record, as counted above, and the max.message.bytes of created event
//     and replay topics (poison topics: 1 MiB more);
//   - join_timeout (default 30s).
//
// # What comes from watermill-kafka
//
// The project is built on github.com/ThreeDotsLabs/watermill-kafka/v3 and
// IBM Sarama. This package uses watermill-kafka's Marshaler interfaces
// (its Marshaler type implements MarshalerUnmarshaler, so plain
// watermill-kafka publishers and subscribers can exchange events with a
// bus) and its UUID header name for the rare message whose UUID is not its
// event ID, and the benchmark in ./bench compares against its defaults.
// Publishing and consuming talk to Sarama directly, because watermill-kafka
// v3.0.6's Publisher and Subscriber break guarantees of driver.Transport:
//
//   - its Publisher sends with a SyncProducer one message at a time, a
//     round trip per event even inside one multi-message Publish, with
//     Sarama's default acks (leader only);
//   - its Subscriber keeps one message in flight per partition, so a
//     subscription's Concurrency cannot be honoured (Concurrency 8 on one
//     partition is 1; Concurrency 1 on 8 partitions is 8);
//   - a nacked message is re-sent after NackResendSleep, blocking its
//     partition, forever;
//   - a message that fails to unmarshal ends the consumer session, which
//     rejoins and fails on the same record again: the partition is wedged;
//   - a failing group.Consume is retried in a loop without
//     ReconnectRetrySleep (a hot loop);
//   - new consumer groups start at the newest offset unless configured;
//   - an Ack immediately followed by Close can lose the offset mark (it is
//     only marked while the session's context is alive and only committed
//     by the next auto-commit), so the event is handled again;
//   - Close cancels the contexts of messages being handled, which the bus
//     must not see during a graceful Close.
//
// # Testing
//
// The package's tests and the contract suite run against the broker
// brokertest.KafkaBrokers finds: EVENTBUS_TEST_KAFKA_BROKERS, a Kafka
// container through Docker, or an in-process franz-go kfake cluster. kfake
// speaks the Kafka protocol, including consumer groups, idempotent
// producers, CreateTopics, DeleteRecords and compaction settings, but it
// is not Kafka: replication, min.insync.replicas and broker failures are
// not exercised there.
package kafka
