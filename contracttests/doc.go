// Package contracttests is the conformance suite for go-eventbus
// transports: a transport that passes [Run] keeps every guarantee that
// the doc comments of package eventbus/driver (Transport, SubscriberConfig,
// PoisonQueue, Driver) and the README's delivery semantics state, and
// behaves, through the Bus, like the built-in ones.
//
// A transport's own test calls it with a [Harness] that hands out broker
// URLs, and, where the test can break the path to the broker, a fault
// injector:
//
//	func TestContract(t *testing.T) {
//		contracttests.Run(t, contracttests.Harness{
//			Name: "mybroker",
//			URL:  func(t testing.TB) string { return "mybroker://localhost/" + t.Name() },
//			Faulty: func(t testing.TB) (string, contracttests.Faults) {
//				px := startProxy(t) // e.g. internal/faultnet.NewProxy
//				return "mybroker://" + px.Addr() + "/" + t.Name(), px
//			},
//		})
//	}
//
// # How the suite tests
//
// Most guarantees are checked at the transport level: the tests open
// transports with driver.Open and drive their Publisher and subscribers
// (NewSubscriber, Subscribe, Ack, Nack, Close) directly, because the Bus
// hides the faults they look for: it drops events that do not match a
// subscription, answers Publish after Close and Publish with a cancelled
// ctx itself, and waits for its own handlers. The other tests go through
// the Bus, for what only the combination shows (retries, poison queue,
// replay, correlation, graceful Close of a bus).
//
// At least once: a transport may deliver a message it already delivered
// and saw acknowledged, while a subscription runs (a broker redelivers
// after a lost acknowledgement). The suite tolerates such redeliveries
// wherever the interface allows them (it acknowledges them and counts
// them; it compares sets, not lists; it checks invariants such as "one
// poison record per delivery" rather than exact counts) and fails on them
// where the interface forbids them: after a subscriber's Close that
// settled every acknowledgement (NoRedeliveryAfterGracefulClose,
// RestartMidStreamLosesNothing), and for a message one subscriber of a
// group still holds (CompetingConsumers).
//
// Waits are deterministic: every receive is bounded by Harness.Timeout and
// checks that the channel is open (a closed channel or a timeout is a
// failure with a message, never a nil message); "work was shared" and
// "mid-stream" are established by holding messages or blocking handlers
// until the test releases them. Only the absence of something (a message
// beyond the concurrency limit, a Close that must not return yet) needs a
// window: 300 ms, which a transport that breaks the rule does not survive.
//
// Tests that need a fault injector (Harness.Faulty) are skipped, with the
// reason, for a harness without one; a test that needs a poison queue is
// skipped when the transport has none (PoisonQueue returns an error
// wrapping ErrUnsupported).
//
// The suite's own tests run it against the memory transport behind a
// wrapper with one deliberate fault at a time (brokenmem_test.go) and
// check that the test named below fails, for the right reason, without
// crashing; the wrapper without faults, the wrapper redelivering every
// tenth acknowledged message and the wrapper keeping unroutable messages
// (as Kafka does) pass the whole suite.
//
// # Guarantees and their tests
//
// driver.Transport and its Publisher:
//
//   - safe for concurrent use: ConcurrentPublishers (eight goroutines on one
//     publisher, under the race detector), CompetingConsumers.
//   - Publish returns nil only once the broker has durably accepted every
//     message: PublishedMeansAccepted (the publishing transport is closed
//     as soon as Publish returns, and nothing is lost), PublishErrorWhileDown
//     and PublishBoundedWhileFrozen (nil is wrong while the broker cannot
//     answer).
//   - honours each message's Context and returns by the messages' deadline
//     even when the broker is unreachable or frozen, reporting the messages
//     whose wait was cut short: PublishBoundedWhileFrozen,
//     PublishErrorWhileDown, CallsBoundedWhileStalled, CallsBoundedWhileDown;
//     a Publish whose ctx outlasts a short outage succeeds:
//     PublishRidesOutAShortOutage.
//   - a *PublishError names only messages of the call, each with its error;
//     any other error fails them all: PublishErrorWhileDown,
//     PublishBoundedWhileFrozen, Unroutable, OversizedEventFailsAlone.
//   - a message over a broker limit fails alone with ErrTooLarge:
//     OversizedEventFailsAlone.
//   - no subscription matches: ErrUnroutable (unless
//     Harness.RetainsUnroutable): Unroutable; a transport that keeps such
//     messages still reports publish errors: PublishErrorWhileDown.
//   - operations on a closed transport fail with ErrClosed (Publish,
//     Redeliver, Subscribe), and Close may be called again:
//     PublishAfterClose.
//
// driver.Transport.NewSubscriber, the subscribers and SubscriberConfig:
//
//   - NewSubscriber does not talk to the broker: TransportCallsBoundedWhileFrozen.
//   - every message whose name matches the pattern, and only those, with
//     RabbitMQ topic semantics including the zero-segment '#' cases, names
//     with '-', '_', digits and upper case (which differ from lower case),
//     single-character segments and 255-byte names: Patterns.
//   - different groups each receive every matching message: Patterns (a
//     group per pattern), FanOutAcrossServices.
//   - subscribers of one group share its messages, each to one of them:
//     CompetingConsumers.
//   - at most Concurrency messages unacknowledged per subscriber, and that
//     many delivered without waiting for acknowledgements: Concurrency.
//   - Subscribe returns once the subscription is in place (a message
//     published right after reaches it): SubscribeReturnsWhenInPlace; with
//     an error when its ctx ends first: TransportCallsBoundedWhileFrozen.
//   - the subscription outlives Subscribe's ctx, until the subscriber's or
//     the transport's Close: SubscriptionOutlivesSubscribeContext.
//   - both Closes close the channel; a subscriber's Close may be called
//     more than once, also after its transport's: CloseClosesChannel.
//   - a nacked message is delivered again, also when nacked while its
//     subscriber closes: RedeliveryAfterNack.
//   - a message outstanding when its transport closes is delivered again to
//     the next subscriber of the group, and its context is cancelled:
//     RedeliveryAfterCrash, CloseDeadlineRedelivers.
//   - a subscriber's Close does not cancel the contexts of messages in
//     flight, and returns only once they are settled (or the transport
//     closed): SubscriberCloseWaitsForAcks, RedeliveryAfterCrash,
//     CloseWaitsForHandlers.
//   - what was acknowledged before a graceful Close is not delivered again:
//     NoRedeliveryAfterGracefulClose, RestartMidStreamLosesNothing.
//   - Subscribe leaves nothing running when it fails: not observable here;
//     the built-in transports check it with goleak in their test packages.
//
// driver.Transport.Redeliver, PoisonQueue and Close:
//
//   - Redeliver reaches one group only: RedeliverReachesOneGroup,
//     ReplayReachesOnlyFailingSubscription; it returns by its ctx's
//     deadline and fails while the broker cannot accept:
//     TransportCallsBoundedWhileFrozen.
//   - PoisonQueue: each Add a new record; Scan oldest first, in pages of at
//     most pageSize, deleting exactly the indexes visit returns, not
//     visiting records added during it, stopping at visit's error; Purge:
//     PoisonQueueScan, PurgePoison, ReplayIntoFailingHandler.
//   - Add of a record over a broker limit fails with ErrTooLarge (or
//     stores it intact): PoisonRecordTooLarge, LongErrorPoisonedOnce.
//   - every PoisonQueue method returns by its ctx's deadline while the
//     broker is frozen, and Add does not report success then:
//     TransportCallsBoundedWhileFrozen, CallsBoundedWhileStalled.
//   - Close returns within a few seconds (10 s here) while the broker is
//     frozen: TransportCallsBoundedWhileFrozen; unacknowledged messages
//     come back: RedeliveryAfterCrash.
//   - Driver.Open returns by its ctx's deadline while the broker is down or
//     frozen: CallsBoundedWhileDown, TransportCallsBoundedWhileFrozen; after
//     a cut or a freeze the same transport publishes and consumes again:
//     PublishErrorWhileDown, PublishBoundedWhileFrozen,
//     CallsBoundedWhileStalled, CallsBoundedWhileDown.
//
// The README's delivery semantics, through the Bus:
//
//   - the broker keeps a subscription's events while no instance runs:
//     KeepsEventsWhileNoInstance, RestartMidStreamLosesNothing.
//   - at least once: an error, a panic or a crash means the event is
//     handled again, then poisoned: RedeliveryAfterHandlerError,
//     RetriesThenPoison, PermanentErrorSkipsRetries, PanicIsPoisoned,
//     RedeliveryAfterCrash, RetryDelaysFollowBackoff,
//     IdempotencySkipsDuplicates.
//   - Publish works without Start, Subscribe before and after Start:
//     PublishWithoutStart, SubscribeBeforeAndAfterStart; Subscribe after
//     Start while the broker is down waits for it (or fails) and then
//     consumes, and Close ends such a wait by its own deadline:
//     SubscribeAfterStartWhileDown.
//   - correlation and causation across hops: CorrelationAcrossHops.
//   - Close waits for handlers in flight within its ctx; the events it did
//     not wait for come back: CloseWaitsForHandlers, CloseDeadlineRedelivers,
//     RestartMidStreamLosesNothing.
//   - the wire format carries every envelope field and awkward metadata,
//     1 MiB payloads, and a message that is not an event goes to the poison
//     queue without stopping the consumer: EnvelopeRoundTrip, LargePayload,
//     UndecodableMessage.
//   - replay, purge and the poison record: ReplayReachesOnlyFailingSubscription,
//     ReplayIntoFailingHandler, PurgePoison, LongErrorPoisonedOnce.
//
// # Faults each test catches
//
// The suite's own tests (TestBrokenTransports) break the memory transport
// one way at a time; each fault makes the test named fail:
//
//	fault of the transport                                      failing test
//	delivers messages its pattern does not match                Patterns
//	'#' matches one or more segments, not zero or more          Patterns
//	routes names in lower case                                  Patterns
//	routes names by their first 200 bytes                       Patterns
//	one message at a time whatever the Concurrency              Concurrency
//	64 messages unacknowledged whatever the Concurrency         Concurrency
//	a queue per subscriber instead of per group                 CompetingConsumers, KeepsEventsWhileNoInstance
//	Subscribe returns before the subscription is bound          SubscribeReturnsWhenInPlace
//	the subscription ends with Subscribe's ctx                  SubscriptionOutlivesSubscribeContext
//	Close does not close the channel                            CloseClosesChannel
//	a subscriber's Close does not wait for acknowledgements     SubscriberCloseWaitsForAcks
//	a subscriber's Close cancels the messages' contexts         SubscriberCloseWaitsForAcks
//	acknowledgements sent late, not flushed by Close            NoRedeliveryAfterGracefulClose
//	a nacked message is dropped                                 RedeliveryAfterNack (fails, no crash)
//	the transport's Close acknowledges what is in flight        RedeliveryAfterCrash (fails, no crash)
//	Publish returns before the broker has the messages          PublishedMeansAccepted
//	the publisher still publishes after Close                   PublishAfterClose
//	Redeliver publishes to every matching group                 RedeliverReachesOneGroup
//	Publish blocked past its messages' deadline                 PublishBoundedWhileFrozen
//	Publish errors swallowed (transport keeping unroutables)    PublishErrorWhileDown
package contracttests
