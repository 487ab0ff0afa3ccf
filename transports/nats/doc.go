// Package nats is the NATS JetStream transport of go-eventbus, registered
// for "nats://" and "tls://" URLs. Import it for its side effect:
//
//	import _ "github.com/paissive/go-eventbus/transports/nats"
//
//	bus, err := eventbus.New(ctx, eventbus.Config{
//		ServiceName: "billing",
//		URL:         "nats://nats-1:4222,nats-2:4222/?stream=shop",
//	})
//
// It is built on github.com/nats-io/nats.go and its jetstream package, and
// uses only the public driver API (eventbus/driver). It needs a server with
// JetStream (nats-server -js); it works with nats-server 2.9 and later, and
// serves some patterns more cheaply from 2.10 on (see Patterns).
//
// # Mapping
//
// A namespace, ?stream= (default "events"), is two streams, created on
// first use when they do not exist (an existing stream is used as it is, so
// an operator may change its limits; it must capture the subjects below):
//
//   - the event stream "<stream>": an event named "user.registered" is
//     stored on the subject "<stream>.user.registered"; the stream also
//     captures "<stream>_large.>", the chunks of large events (see Large
//     events). It keeps events by limits (retention "limits"), at most
//     ?max_age= (default 7 days, Kafka's default retention), whether or not
//     every subscription has handled them; ?storage= file (default) or
//     memory, ?replicas= (default 1), a duplicate window of 2 minutes.
//   - the poison stream "<stream>_poison": a service's poison records on
//     "<stream>_poison.<service>", kept until replayed or purged.
//
// A subscription group "<service>.<subscription>" is one durable pull
// consumer of the event stream, shared by every instance of the service:
// each message goes to one instance. Its name is "<service>~<subscription>"
// with the subscription's characters other than letters, digits, '_' and
// '-' replaced by '_' and, when that happened, '~' and 12 hex digits of the
// group's SHA-256 appended, so distinct groups never share a consumer
// ("billing~invoices", "billing~user___~3f1a09c4b2e7" for "user.#"). Its
// filter subjects come from the pattern; it acknowledges explicitly, never
// gives up redelivering (the bus's policy poisons), and has no
// consumer-wide limit on unacknowledged messages (each instance bounds its
// own). A new consumer starts at the stream's first event (?deliver=all,
// the default) or at the next one (?deliver=new). Consumers stay when
// their services stop, as RabbitMQ's queues do; delete a subscription that
// is gone for good with "nats consumer rm <stream> <name>".
//
// JetStream stores whatever a stream's subjects capture, whether or not a
// consumer will read it, and a publish cannot tell: like Kafka, the
// transport never reports driver.ErrUnroutable from Publish (the contract
// suite's Harness.RetainsUnroutable), and a subscription made later with
// deliver=all receives the events published before it.
//
// Bus.Replay (driver.Transport.Redeliver) publishes an event again on the
// subject it was delivered on (the Nats-Subject metadata a delivered
// message carries when that subject is not its name's, as for a foreign
// producer's message, which its poison record keeps; else its name) with the
// header Eventbus-Group naming the group: that group's consumer handles it,
// every other group's consumer skips it (acknowledges it unseen). A group
// without a consumer makes the replay fail with ErrUnroutable.
//
// # Patterns
//
// Patterns have RabbitMQ topic-exchange semantics exactly: '*' is one
// segment, '#' zero or more, so "user.#" matches "user", "#.completed"
// matches "completed" and "a.#.b" matches "a.b". NATS subject wildcards
// differ: '*' is one token, '>' one or more and only last. A consumer's
// filter subjects are therefore chosen to select every matching name, and
// the subscriber checks each delivered name against the pattern in Go
// (driver.SubscriberConfig.Match) when they may select more, acknowledging
// the others without handing them to the bus:
//
//	pattern                          filter subjects               checked in Go
//	user.registered, user.*, *, *.b  <stream>.user.* (the same)    no
//	#, #.#, *.#, #.*, user.#.*       <stream>.>, <stream>.user.>   no
//	user.#, user.*.#  (NATS 2.10+)   <stream>.user, <stream>.user.> no
//	user.#            (NATS 2.9)     <stream>.>                    yes
//	a.b.#             (NATS 2.9)     <stream>.a.>                  yes
//	#.completed, a.#.b, #.b.#        <stream>.>, <stream>.a.>      yes
//
// "P.#" is exactly the two subjects "P" and "P.>", which one consumer takes
// from NATS 2.10 on; a 2.9 server takes one filter subject per consumer,
// and there "user.#" reads the whole namespace. The cost of a check in Go
// is the delivery and acknowledgement of each event the filter selects and
// the pattern does not match: a subscription to "#.completed" reads every
// event of the namespace, about 50,000 non-matching events/s at
// Concurrency 1 on the 2-core machine (nats-server 2.9; the skipped events
// count toward the adaptive prefetch, without which it was 8,600/s). Kafka's transport pays the same for every
// pattern (mapping=single); on NATS 2.10 and later it is paid only by
// patterns with a literal after a '#'. A subscription whose pattern
// changes (same SubscriptionName) has its consumer's filter subjects
// updated, and so does one whose server was upgraded to 2.10.
//
// # Wire format
//
// A message's headers are the event's "ce_" CloudEvents attributes and
// "meta_" metadata (driver.Encode), its body the JSON data, so any NATS
// client reads an event as a CloudEvent in binary mode. nats.go cannot
// carry every header faithfully: it refuses keys that are not printable
// ASCII or contain ':' and other separators, trims values and turns line
// breaks into spaces, and the server acts on keys beginning with "Nats-".
// Such headers, and any beginning with "Eventbus-", travel instead as
// base64 of a JSON object in the one header Eventbus-Escaped, and come
// back unchanged. The transport's own headers, removed before the bus sees
// a message:
//
//   - Nats-Msg-Id: unique per message and Publish call, the same for that
//     call's retries, so the stream stores a message sent again after a
//     lost acknowledgement once (within its 2-minute duplicate window);
//     ?dedup=false leaves it out: the server's tracking of the IDs cost it
//     about a fifth of its publish throughput (nats-server 2.9 on the
//     2-core machine), and a retried message may then be stored twice
//     (poison records and chunks always carry one);
//   - Eventbus-Uuid: the Watermill UUID when it is not the event ID (a raw
//     message published through Publisher());
//   - Eventbus-Group: the one group a replayed event is for;
//   - Eventbus-Large, Eventbus-Chunk: see Large events.
//
// A delivered message carries its subject in the metadata key
// Nats-Subject. A foreign message without an event ID gets
// "<stream>:<sequence>" as its UUID, the same on every delivery.
//
// # Large events
//
// A NATS server refuses a message larger than its max_payload (1 MiB
// unless configured, as on most servers), headers included, and JetStream
// stores at most 64 KiB of headers per message. An event may be up to
// ?max_message_bytes= (default 4 MiB, counted as NATS counts it: headers
// and body). The body of an event larger than max_payload is stored first,
// in chunks of max_payload less 1 KiB, as messages of the same stream on a
// subject of its own ("<stream>_large.<id>") that no consumer filters on;
// then the event is published with its headers, an empty body and the
// header Eventbus-Large naming the chunks. A consumer reads them (the
// stream's message-get API, a request per chunk) before it hands the event
// on. The chunks live as long as the stream keeps messages; a message whose
// chunks the stream's limits removed is handed on with an empty body, so
// the bus poisons it as undecodable with its headers. Poison records and
// replays of large events travel the same way; a poison record's chunks
// ("<stream>_poison.<service>.large.<id>") are deleted with it. An event
// over max_message_bytes, or with more than 64 KiB of headers, fails alone
// with an error wrapping driver.ErrTooLarge that names the limit. Poison
// records may be PoisonHeadroom (1 MiB) larger than max_message_bytes.
//
// # Publishing
//
// Publish hands every message of the call to nats.go's asynchronous
// publish before it waits for any acknowledgement (up to 16,384 are
// pending on a connection), then waits for each stream acknowledgement,
// within each message's context; it returns nil only when the stream
// acknowledged every message, and otherwise a *driver.PublishError naming
// the messages that failed. A message is sent again, with the same
// Nats-Msg-Id, after failures another attempt may fix: the connection
// dropped (nats.go fails every pending acknowledgement when it starts
// reconnecting) or is reconnecting (the message then waits in nats.go's
// 8 MiB reconnect buffer), no acknowledgement within 5 s, no stream
// answering (a restarting server; the transport then creates its streams
// again if they are gone, as after a restart with memory storage), too
// many publishes pending, or a 5xx error of the stream; with a backoff of
// 20 ms doubling to 1 s. Other failures fail the message at once. A
// message whose context ends first is reported failed, though the server
// may still store it (delivery is at least once).
//
// # Consuming
//
// Each Subscribe pulls from the group's consumer. It asks the server for
// as many messages as it has credit for (Concurrency plus ?prefetch=,
// less the messages it holds, less those already asked for), in pull
// requests that wait up to 30 s and carry a heartbeat every 2 s; requests
// the server lost (a reconnection, 5 s without a heartbeat) are asked
// again, and the consumer is looked up (and created) again when the server
// says it is gone or stays silent. Up to Concurrency workers, started as
// messages arrive, each hand one message to the bus at a time and settle
// it: an ack once the bus acked it, a nak with a delay once the bus nacked
// it (100 ms doubling with each delivery to 10 s: the bus nacks only when
// it could not settle an event itself, and then a hot loop would not
// help). With Concurrency 1 events are handled in stream order.
//
// Prefetch: messages received beyond Concurrency wait in the subscriber
// for a free worker; they count as unacknowledged on the server and no
// other instance of the group gets them meanwhile. Each pull request is a
// round trip, so a subscriber that asks only for free slots waits for the
// server between events: on the 2-core machine, at Concurrency 16 with
// handlers doing nothing, it handled about 22,000 events/s without
// prefetch and about 47,000 with 256 or more. By default the prefetch
// adapts: about 50 ms of work at the rate the bus settles the
// subscription's events, from Concurrency (until a rate is measured, and
// for slow handlers) to 1,024; so slow handlers keep few events from the
// other instances and fast ones are fed without pauses. ?prefetch=N fixes
// it; ?prefetch=0 keeps exactly Concurrency messages unacknowledged.
//
// The server delivers a message again when it is not acknowledged within
// AckWait (?ack_wait=, default 10 s rather than JetStream's 30 s, so that
// the events a broken connection or a crashed instance held come back
// sooner). A handler that runs longer, or a message waiting longer for a
// worker, is not delivered again: every AckWait/3 the subscriber tells the
// server it is in progress.
//
// Close of a subscriber stops taking messages, unsubscribes (draining what
// the server had already sent), gives back at once (nak) what it received
// and did not hand out, waits until the bus settled the messages it handed
// out (their contexts are not cancelled) and flushes the acknowledgements
// to the server (at most 2 s). Transport.Close cancels the contexts of
// messages still being handled and naks them and every message held, so
// they are delivered again at once rather than after AckWait.
//
// # Connection and deadlines
//
// One NATS connection per transport, named after the service. Open
// retries it with backoff until its ctx ends, so a service may start
// before its server; refused credentials and certificates that do not
// verify fail at once. nats.go reconnects for ever (200 ms between rounds,
// with jitter), pings every 10 s and counts the connection lost after two
// unanswered pings. Every call that takes a ctx returns by its deadline,
// also while the server is down or frozen: Open (each attempt is bounded
// by the ctx and 5 s, and the socket of an abandoned one closed), Publish
// and Redeliver, Subscribe, and the poison queue's calls (JetStream API
// requests bounded by the ctx). Transport.Close returns within about 4 s
// while the server is frozen: a connection that does not close within 2 s
// has its socket closed, and the server delivers what it held again after
// AckWait.
//
// # Poison queue
//
// Add publishes the record to "<stream>_poison.<service>" and waits for
// the acknowledgement, with the record's poison ID as its Nats-Msg-Id, so
// a retried Add stores it once. Scan notes the stream's last sequence and
// reads the service's records up to it, oldest first, one message-get
// request each (the next message on the subject from a sequence), in pages;
// it deletes the records visit names (and their chunks) before reading the
// next page; records added meanwhile are beyond the noted sequence. Purge
// deletes the service's records up to the stream's last sequence in one
// purge request (reading them first only if the service has large records,
// to delete their chunks).
//
// # Operators' tools and health
//
// The transport implements the driver's optional capabilities. A tap
// (driver.Tapper, `eventbus tail`) is an ephemeral consumer without
// acknowledgements, from the stream's end or, with FromBeginning, its
// first event, filtered like a subscription and deleted when the tap
// closes (the server removes one whose client is gone after 30 s); it
// ends when the connection drops, since the server does not send again
// what it sent into a broken connection. Topology (driver.TopologyReader,
// `eventbus topology`) lists the stream, the service's consumers with
// their filter subjects and pending events, and its poison records,
// through the JetStream API. Connectivity (Bus.Health) follows nats.go's
// connection callbacks, Describe names the system "nats", and the poison
// queue counts its records with one stream-info request.
//
// # URL parameters
//
// nats://[user:password@]host[:port][,host[:port]...][/?param=value&...],
// port 4222 by default; tls:// for TLS. A URL the transport cannot read is
// refused with an error that shows it without its secrets: no "//", a
// path or fragment, a bad port, an unknown parameter, a parameter given
// twice, a user without a password (NATS reads that as a token, which
// errors would show: put it in ?token=). Parameters:
//
//   - stream: the namespace (default "events"): 1 to 64 letters, digits and
//     '-' (the derived names use '_');
//   - replicas (1 to 5, default 1), storage (file or memory), max_age (a
//     duration, default 168h, 0 for none): of streams the transport
//     creates;
//   - deliver: all (default) or new, where a new consumer starts;
//   - ack_wait (1s to 12h, default 10s);
//   - max_message_bytes (1 KiB to 64 MiB, default 4 MiB);
//   - prefetch (0 to 10,000; default adaptive, Concurrency to 1,024);
//   - dedup (default true): set Nats-Msg-Id on events;
//   - token, or creds (the path of a credentials file), or the URL's
//     user:password;
//   - tls=true (system roots), tls_ca (a CA file), tls_cert and tls_key (a
//     client certificate); eventbus.Config.TLS also turns TLS on.
//
// # Testing
//
// The package's tests and the contract suite run against the server
// brokertest.NATSURL finds: EVENTBUS_TEST_NATS_URL, else the server on
// 127.0.0.1:4222 when it has JetStream, else an in-process
// github.com/nats-io/nats-server/v2 per test (EVENTBUS_TEST_NATS_URL=
// embedded asks for that one). Faults go through internal/faultnet's proxy
// in front of the server; restarts use an in-process server stopped and
// started on the same port and store. Run the tests on a 2.9 and a current
// server: they serve "P.#" patterns differently.
package nats
