package kafka

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// TestPerKeyOrder: 1,000 events of 10 keys across 8 partitions, handled
// with concurrency 1, arrive in publish order per key.
func TestPerKeyOrder(t *testing.T) {
	t.Parallel()
	u := testURL(t, "partitions", "8")
	sub, pub := newBus(t, u, "order-sub"), newBus(t, u, "order-pub")
	var mu sync.Mutex
	last := map[string]int{}
	var handled atomic.Int32
	var violations []string
	err := sub.Subscribe("acct.#", func(ctx context.Context, ev eventbus.Event) error {
		seq := seqOf(t, ev)
		mu.Lock()
		if prev, ok := last[ev.PartitionKey]; ok && seq <= prev {
			violations = append(violations, fmt.Sprintf("key %s: %d after %d", ev.PartitionKey, seq, prev))
		}
		last[ev.PartitionKey] = seq
		mu.Unlock()
		handled.Add(1)
		return nil
	}, eventbus.Concurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	const total = 1000
	evs := events(t, total, "acct.posted", func(i int) string { return fmt.Sprintf("k%d", i%10) })
	for i := 0; i < total; i += 100 {
		if err := pub.Publish(testCtx(t), evs[i:i+100]...); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every event handled", func() bool { return handled.Load() >= total },
		func() string { return fmt.Sprintf("%d handled", handled.Load()) })
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Errorf("%d order violations, e.g. %s", len(violations), violations[0])
	}
	if len(last) != 10 {
		t.Errorf("%d keys seen, want 10", len(last))
	}
}

// TestRebalanceLosesNothing: a second instance joins the group while a
// stream is being handled; every event is handled, by both instances.
func TestRebalanceLosesNothing(t *testing.T) {
	t.Parallel()
	u := testURL(t)
	pub := newBus(t, u, "rb-pub")
	c := newCounter()
	var n1, n2 atomic.Int32
	handler := func(n *atomic.Int32) eventbus.Handler {
		return func(ctx context.Context, ev eventbus.Event) error {
			n.Add(1)
			c.add(ev.ID)
			time.Sleep(time.Millisecond) // work, so the stream lasts a while
			return nil
		}
	}
	first := newBus(t, u, "rb")
	if err := first.Subscribe("tick.#", handler(&n1), eventbus.SubscriptionName("ticks"), eventbus.Concurrency(4)); err != nil {
		t.Fatal(err)
	}
	if err := first.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	const total = 2000
	evs := events(t, total, "tick.tock", func(i int) string { return fmt.Sprint(i) })
	joined := make(chan struct{})
	pubDone := make(chan error, 1)
	go func() {
		for i := 0; i < total; i += 50 {
			if i == total/2 {
				<-joined // the rest is published while the group rebalances
			}
			if err := pub.Publish(context.Background(), evs[i:i+50]...); err != nil {
				pubDone <- err
				return
			}
		}
		pubDone <- nil
	}()
	waitFor(t, "a fifth of the stream handled", func() bool { return c.distinct() >= total/5 },
		func() string { return fmt.Sprintf("%d handled", c.distinct()) })
	second := newBus(t, u, "rb")
	if err := second.Subscribe("tick.#", handler(&n2), eventbus.SubscriptionName("ticks"), eventbus.Concurrency(4)); err != nil {
		t.Fatal(err)
	}
	if err := second.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	close(joined)
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every event handled", func() bool { return c.distinct() == total },
		func() string { return missing(c, evs) })
	if n2.Load() == 0 {
		t.Errorf("the second instance handled nothing (first %d)", n1.Load())
	}
	t.Logf("first instance %d, second %d, duplicates %d", n1.Load(), n2.Load(), c.duplicates())
}

// TestRestartResumesFromCommittedOffset: a subscriber that handled part of
// a stream and closed is followed by a new instance, which handles the
// rest and none of what the first one handled (its offsets were committed
// before Close returned).
func TestRestartResumesFromCommittedOffset(t *testing.T) {
	t.Parallel()
	u := testURL(t)
	pub := newBus(t, u, "rs-pub")
	const total, concurrency = 600, 4
	evs := events(t, total, "job.done", func(i int) string { return fmt.Sprint(i % 16) })
	if err := pub.Publish(testCtx(t), evs...); err != nil {
		t.Fatal(err)
	}
	firstSeen := newCounter()
	release := make(chan struct{})
	first := newBus(t, u, "rs")
	err := first.Subscribe("job.#", func(ctx context.Context, ev eventbus.Event) error {
		firstSeen.add(ev.ID)
		if firstSeen.distinct() >= total/3 {
			<-release // hold the rest in flight until Close
		}
		return nil
	}, eventbus.SubscriptionName("jobs"), eventbus.Concurrency(concurrency))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a third handled", func() bool { return firstSeen.distinct() >= total/3 },
		func() string { return fmt.Sprintf("%d handled", firstSeen.distinct()) })
	closed := make(chan error, 1)
	go func() { closed <- first.Close(testCtx(t)) }()
	close(release)
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	handledFirst := firstSeen.ids()

	second := newBus(t, u, "rs")
	all := newCounter()
	var again atomic.Int32
	err = second.Subscribe("job.#", func(ctx context.Context, ev eventbus.Event) error {
		if handledFirst[ev.ID] {
			again.Add(1)
		}
		all.add(ev.ID)
		return nil
	}, eventbus.SubscriptionName("jobs"), eventbus.Concurrency(concurrency))
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	rest := total - len(handledFirst)
	waitFor(t, "the rest handled", func() bool { return all.distinct()-int(again.Load()) >= rest },
		func() string { return fmt.Sprintf("%d of %d", all.distinct(), rest) })
	// The first instance finished its in-flight events before Close
	// returned, so none of them may come back.
	if n := again.Load(); n > 0 {
		t.Errorf("the second instance handled %d event(s) the first had handled; want 0 after a graceful Close", n)
	}
	t.Logf("first instance handled %d, second %d", len(handledFirst), all.distinct())
}

// TestSegmentMapping: with mapping=segment, events land in the topic of
// their first segment, patterns with a literal first segment (zero-segment
// cases included) work, and a pattern starting with a wildcard is
// rejected when the subscription is made.
func TestSegmentMapping(t *testing.T) {
	t.Parallel()
	u := testURL(t, "mapping", "segment")
	b := newBus(t, u, "seg")
	userAll, userOne := newCounter(), newCounter()
	rec := func(c *counter) eventbus.Handler {
		return func(ctx context.Context, ev eventbus.Event) error { c.add(ev.Name); return nil }
	}
	if err := b.Subscribe("user.#", rec(userAll)); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("user.*", rec(userOne)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	var evs []eventbus.Event
	for _, n := range []string{"user", "user.registered", "user.profile.updated", "order.created"} {
		evs = append(evs, events(t, 1, n, nil)...)
	}
	if err := b.Publish(testCtx(t), evs...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "user.# events", func() bool { return userAll.distinct() == 3 }, func() string { return fmt.Sprint(userAll.ids()) })
	waitFor(t, "user.* events", func() bool { return userOne.distinct() == 1 && userOne.has("user.registered") }, func() string { return fmt.Sprint(userOne.ids()) })

	// The topics exist per first segment.
	tr := b.Transport().(*Transport)
	for _, want := range []string{"events.user", "events.order"} {
		if _, ok := tr.topics.Load(tr.names.join(want)); !ok {
			t.Errorf("topic %s was not created", tr.names.join(want))
		}
	}

	// Bus.Subscribe passes the pattern in SubscriberConfig, so the
	// rejection comes when the subscription is made, before any Start.
	for _, p := range []string{"#.completed", "*.registered", "#"} {
		err := b.Subscribe(p, func(context.Context, eventbus.Event) error { return nil })
		if !errors.Is(err, ErrPatternNotServed) || !strings.Contains(err.Error(), "mapping=segment") {
			t.Errorf("Bus.Subscribe(%q) under mapping=segment: got %v, want ErrPatternNotServed", p, err)
		}
	}
	// A transport used without the bus rejects it at NewSubscriber.
	for _, p := range []string{"#.completed", "*.registered", "#"} {
		_, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "seg.x", Service: "seg", Subscription: "x", Concurrency: 1, Pattern: p, Match: matcher(p)})
		if !errors.Is(err, ErrPatternNotServed) || !strings.Contains(err.Error(), "mapping=segment") {
			t.Errorf("NewSubscriber(%q) under mapping=segment: got %v, want ErrPatternNotServed", p, err)
		}
	}
}

// TestWireFormat: a record carries the event's partition key as its key
// and the CloudEvents attributes as headers, and a raw Sarama consumer can
// read it.
func TestWireFormat(t *testing.T) {
	t.Parallel()
	u := testURL(t)
	b := newBus(t, u, "wire")
	ev := events(t, 1, "wire.check", func(int) string { return "customer-7" })[0]
	if err := b.Publish(testCtx(t), ev); err != nil {
		t.Fatal(err)
	}
	tr := b.Transport().(*Transport)
	if !tr.pub.Idempotent() {
		t.Error("the producer is not idempotent; kfake and Kafka >= 0.11 grant producer IDs")
	}
	topic := tr.names.join("events")
	cfg := sarama.NewConfig()
	cfg.Version = DefaultVersion
	consumer, err := sarama.NewConsumer(tr.opts.brokers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	parts, err := consumer.Partitions(topic)
	if err != nil || len(parts) != DefaultPartitions {
		t.Fatalf("partitions of %s: %v, %v; want %d", topic, parts, err, DefaultPartitions)
	}
	got := make(chan *sarama.ConsumerMessage, len(parts))
	for _, p := range parts {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.AsyncClose()
		go func() {
			for m := range pc.Messages() {
				got <- m
			}
		}()
	}
	select {
	case rec := <-got:
		if string(rec.Key) != "customer-7" {
			t.Errorf("record key %q, want the partition key", rec.Key)
		}
		for k, want := range map[string]string{"ce_id": ev.ID, "ce_type": "wire.check", "ce_specversion": "1.0", "ce_partitionkey": "customer-7", "content-type": "application/json"} {
			if v, _ := header(rec, k); v != want {
				t.Errorf("header %s = %q, want %q", k, v, want)
			}
		}
		if _, ok := header(rec, UUIDHeader); ok {
			t.Errorf("record of an event carries %s; the ID travels in ce_id", UUIDHeader)
		}
	case <-time.After(testTimeout):
		t.Fatal("no record")
	}
}

// TestNackDoesNotBlockPartition: a nacked message comes back after a
// backoff while the next record of the same partition is delivered, and
// the committed offset only passes both once both are acknowledged.
func TestNackDoesNotBlockPartition(t *testing.T) {
	t.Parallel()
	u := testURL(t, "partitions", "1")
	pub := newBus(t, u, "nack-pub")
	evs := events(t, 2, "nk.item", func(int) string { return "same" })
	if err := pub.Publish(testCtx(t), evs...); err != nil {
		t.Fatal(err)
	}
	open := func() (driver.Transport, <-chan *message.Message) {
		tr, err := driver.Open(testCtx(t), u, driver.Config{ServiceName: "nack", Logger: quietLogger})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "nack.items", Service: "nack", Subscription: "items", Concurrency: 1, Pattern: "nk.#", Match: matcher("nk.#")})
		if err != nil {
			t.Fatal(err)
		}
		ch, err := sub.Subscribe(testCtx(t), "nk.#")
		if err != nil {
			t.Fatal(err)
		}
		return tr, ch
	}
	receive := func(ch <-chan *message.Message) *message.Message {
		t.Helper()
		select {
		case m := <-ch:
			return m
		case <-time.After(testTimeout):
			t.Fatal("nothing received")
		}
		return nil
	}
	tr, ch := open()
	a := receive(ch)
	if a.UUID != evs[0].ID {
		t.Fatalf("first delivery %s, want %s", a.UUID, evs[0].ID)
	}
	a.Nack()
	b := receive(ch)
	if b.UUID != evs[1].ID {
		t.Fatalf("after a nack got %s, want the next record %s", b.UUID, evs[1].ID)
	}
	b.Ack()
	a2 := receive(ch)
	if a2.UUID != evs[0].ID {
		t.Fatalf("redelivery %s, want %s", a2.UUID, evs[0].ID)
	}
	a2.Ack()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	// A new member of the group starts after both records.
	later := events(t, 1, "nk.item", func(int) string { return "same" })
	if err := pub.Publish(testCtx(t), later...); err != nil {
		t.Fatal(err)
	}
	tr2, ch2 := open()
	defer tr2.Close()
	if m := receive(ch2); m.UUID != later[0].ID {
		t.Errorf("after a restart got %s, want only the new event %s", m.UUID, later[0].ID)
	} else {
		m.Ack()
	}
}

// TestForeignRecordIsPoisoned: a record written by another producer
// without headers reaches the poison queue, and the partition goes on.
func TestForeignRecordIsPoisoned(t *testing.T) {
	t.Parallel()
	u := testURL(t, "partitions", "1")
	b := newBus(t, u, "foreign")
	c := newCounter()
	if err := b.Subscribe("ok.#", func(ctx context.Context, ev eventbus.Event) error { c.add(ev.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	tr := b.Transport().(*Transport)
	cfg := sarama.NewConfig()
	cfg.Version = DefaultVersion
	cfg.Producer.Return.Successes = true
	prod, err := sarama.NewSyncProducer(tr.opts.brokers, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, off, err := prod.SendMessage(&sarama.ProducerMessage{Topic: tr.names.join("events"), Value: sarama.StringEncoder("\x00garbage")})
	_ = prod.Close()
	if err != nil {
		t.Fatal(err)
	}
	next := events(t, 1, "ok.next", nil)[0]
	if err := b.Publish(testCtx(t), next); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the event after the foreign record", func() bool { return c.has(next.ID) }, func() string { return "not handled" })
	wantID := fmt.Sprintf("kafka:%s/0/%d", tr.names.join("events"), off)
	waitFor(t, "the foreign record poisoned", func() bool {
		ps, err := b.Poisoned(testCtx(t), eventbus.PoisonFilter{})
		return err == nil && len(ps) == 1 && ps[0].Event.ID == wantID && ps[0].Reason == "undecodable"
	}, func() string {
		ps, err := b.Poisoned(testCtx(t), eventbus.PoisonFilter{})
		return fmt.Sprintf("%+v %v", ps, err)
	})
}

// TestParseOptions checks URL parsing and its errors.
func TestParseOptions(t *testing.T) {
	good := "kafka://user:pw@a:1,b,127.0.0.1:9093/?prefix=app&mapping=segment&partitions=3&replication=2&client_id=x&version=2.3.0&tls=true&idempotent=false&initial_offset=newest&max_message_bytes=2048&join_timeout=5s"
	u, _ := url.Parse(good)
	o, err := parseOptions(u)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.brokers, ",") != "a:1,b:9092,127.0.0.1:9093" || o.prefix != "app" || o.mapping != MappingSegment ||
		o.partitions != 3 || o.replication != 2 || o.clientID != "x" || o.version != sarama.V2_3_0_0 || !o.tls ||
		o.idempotent != "false" || o.initialOffset != sarama.OffsetNewest || o.maxMessageBytes != 2048 ||
		o.joinTimeout != 5*time.Second || o.saslMechanism != sarama.SASLTypePlaintext || o.user != "user" || o.password != "pw" {
		t.Errorf("parsed %+v", o)
	}
	for _, bad := range []string{
		"kafka:///", "kafka://h/?mapping=name", "kafka://h/?partitions=0", "kafka://h/?prefix=a*b",
		"kafka://h/?bogus=1", "kafka://h/?version=x", "kafka://h/?sasl_mechanism=PLAIN", "kafka://h/?sasl_mechanism=GSSAPI",
	} {
		u, _ := url.Parse(bad)
		if _, err := parseOptions(u); err == nil {
			t.Errorf("parseOptions(%s) succeeded", bad)
		}
	}
}

// TestTopicNames checks that names derived from groups are legal and
// distinct.
func TestTopicNames(t *testing.T) {
	n := names{prefix: "p", mapping: MappingSingle}
	a, b := n.replayTopic("svc.user.*"), n.replayTopic("svc.user.#")
	if a == b || strings.ContainsAny(a+b, "*#") || !strings.HasPrefix(a, "p.replay.svc.user._-") {
		t.Errorf("replay topics %q and %q", a, b)
	}
	if got := n.replayTopic("svc.jobs"); got != "p.replay.svc.jobs" {
		t.Errorf("replay topic of a plain group: %q", got)
	}
	long := n.replayTopic(strings.Repeat("x", 300))
	if len(long) > 249 {
		t.Errorf("topic name of %d bytes", len(long))
	}
	if got, _ := (names{mapping: MappingSegment}).eventTopic("user.registered"); got != "events.user" {
		t.Errorf("segment topic %q", got)
	}
}
