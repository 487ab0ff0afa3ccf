package kafka

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/eventbustest"
)

// sizedEvent returns an event named name whose record, as the transport
// counts it against max_message_bytes (see recordSize), is exactly size
// bytes. The bus would fill in CorrelationID when publishing, which adds
// a header, so it is set here.
func sizedEvent(t testing.TB, name string, size int) eventbus.Event {
	t.Helper()
	// A fixed time: ce_time is RFC 3339 with trailing zeros trimmed, so
	// its length varies from one instant to the next.
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	mk := func(pad int) eventbus.Event {
		ev, err := eventbus.NewEvent(name, map[string]string{"pad": strings.Repeat("x", pad)}, eventbus.WithSource("kafka-test"))
		if err != nil {
			t.Fatal(err)
		}
		ev.Time = at
		ev.CorrelationID = ev.ID
		return ev
	}
	measure := func(ev eventbus.Event) int {
		return recordSize(encode("events", eventbustest.Message(ev)))
	}
	base := measure(mk(0))
	if size < base {
		t.Fatalf("an event cannot be smaller than %d bytes", base)
	}
	// The pad is a JSON string of x's: one more x, one more byte of
	// value; the value's length varint is counted at its widest.
	ev := mk(size - base)
	if got := measure(ev); got != size {
		t.Fatalf("made an event of %d bytes, want %d", got, size)
	}
	return ev
}

// TestRecordSizeLimit: the whole record (value, key, headers and the
// batch header) is checked against max_message_bytes before producing: an
// event of exactly the limit is published and handled; one byte more
// fails alone, with an error wrapping driver.ErrTooLarge that names the
// limit and the size, while the other events of the same Publish call are
// published and handled.
func TestRecordSizeLimit(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	u := testURL(t, "max_message_bytes", strconv.Itoa(limit))
	pub, sub := newBus(t, u, "size-pub"), newBus(t, u, "size-sub")
	c := newCounter()
	if err := sub.Subscribe("size.#", func(_ context.Context, ev eventbus.Event) error {
		c.add(ev.ID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	small1, atLimit, over, small2 := sizedEvent(t, "size.check", 1000), sizedEvent(t, "size.check", limit),
		sizedEvent(t, "size.check", limit+1), sizedEvent(t, "size.check", 2000)
	err := pub.Publish(testCtx(t), small1, atLimit, over, small2)
	var pe *eventbus.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish returned %v, want a *PublishError for the event over the limit", err)
	}
	if len(pe.Failed) != 1 || pe.Failed[0].ID != over.ID {
		t.Fatalf("failed events %v, want only %s (the one over the limit)", pe.Failed, over.ID)
	}
	ferr := pe.Failed[0].Err
	if !errors.Is(ferr, driver.ErrTooLarge) {
		t.Errorf("the event over the limit failed with %v, want an error wrapping ErrTooLarge", ferr)
	}
	for _, want := range []string{strconv.Itoa(limit), strconv.Itoa(limit + 1)} {
		if !strings.Contains(ferr.Error(), want) {
			t.Errorf("the error %q does not name %s", ferr, want)
		}
	}
	t.Logf("over the limit: %v", ferr)
	evs := []eventbus.Event{small1, atLimit, small2}
	waitFor(t, "the events within the limit handled", func() bool { return allHandled(c, evs) },
		func() string { return missing(c, evs) })
	if c.has(over.ID) {
		t.Error("the event over the limit was handled")
	}
}

// TestEventAtLimitCanBePoisoned: an event of exactly max_message_bytes,
// whose handler fails, is stored in the poison queue with the poison
// headers on top, because the poison topic and its producer allow
// max_message_bytes + PoisonHeadroom; the poison topic is created with
// that max.message.bytes.
func TestEventAtLimitCanBePoisoned(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	u := testURL(t, "max_message_bytes", strconv.Itoa(limit))
	b := newBus(t, u, "size-poison")
	ev := sizedEvent(t, "big.one", limit)
	if err := b.Subscribe("big.#", func(context.Context, eventbus.Event) error {
		return eventbus.Permanent(errors.New("cannot handle this one"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(testCtx(t), ev); err != nil {
		t.Fatal(err)
	}
	var got []eventbus.PoisonedEvent
	waitFor(t, "the event at the limit in the poison queue", func() bool {
		ps, err := b.Poisoned(testCtx(t), eventbus.PoisonFilter{})
		if err != nil {
			t.Logf("Poisoned: %v", err)
		}
		got = ps
		return len(ps) == 1
	}, func() string { return fmt.Sprintf("%d poisoned", len(got)) })
	if got[0].Event.ID != ev.ID || len(got[0].Payload) != len(ev.Data) {
		t.Errorf("poisoned %s with %d bytes of data, want %s with %d", got[0].Event.ID, len(got[0].Payload), ev.ID, len(ev.Data))
	}
	tr := b.Transport().(*Transport)
	if got, want := topicMaxBytes(t, tr, tr.names.poisonTopic("size-poison")), limit+PoisonHeadroom; got != want {
		t.Errorf("poison topic max.message.bytes = %d, want %d", got, want)
	}
	if got, want := topicMaxBytes(t, tr, tr.names.join("events")), limit; got != want {
		t.Errorf("event topic max.message.bytes = %d, want %d", got, want)
	}
}

func topicMaxBytes(t testing.TB, tr *Transport, topic string) int {
	t.Helper()
	entries, err := describeTopic(tr.admin, topic, "max.message.bytes")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name == "max.message.bytes" {
			n, err := strconv.Atoi(e.Value)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("topic %s has no max.message.bytes", topic)
	return 0
}

// TestPoisonTopicRaised: a poison topic that exists with a smaller
// max.message.bytes (created by an older version, or by hand) is raised
// to max_message_bytes + PoisonHeadroom when the transport first uses it.
func TestPoisonTopicRaised(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	u := testURL(t, "max_message_bytes", strconv.Itoa(limit))
	tr, err := openTransport(t, testCtx(t), u, "raised")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	topic := tr.names.poisonTopic("raised")
	small := strconv.Itoa(limit)
	if err := tr.admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1,
		ConfigEntries: map[string]*string{"max.message.bytes": &small}}, false); err != nil {
		t.Fatal(err)
	}
	if err := tr.ensureTopic(testCtx(t), topic, 1, true); err != nil {
		t.Fatal(err)
	}
	if got, want := topicMaxBytes(t, tr, topic), limit+PoisonHeadroom; got != want {
		t.Errorf("poison topic max.message.bytes = %d, want %d", got, want)
	}
}

// TestURLStrictness: URLs the transport cannot read are refused with an
// error that shows the URL (without its password) and how to write one;
// readable ones give the expected broker list.
func TestURLStrictness(t *testing.T) {
	for _, bad := range []struct{ url, says string }{
		{"kafka:broker:9092", `no "//"`},
		{"kafka:admin:s3cret@broker:9092", `no "//"`},
		{"kafka://admin:s3cret@h1:x,h2:9092", `port "x" is not a number`},
		{"kafka://h1:9092,,h2:9092", "empty entry"},
		{"kafka://h1:0", "port \"0\""},
		{"kafka://h1:99999", "port \"99999\""},
		{"kafka://:9092", "no host"},
		{"kafka://h1:9092/orders", "unexpected path"},
		{"kafka://h1:9092/#x", "unexpected fragment"},
		{"kafka:///", "names no broker"},
		{"kafka://::1:9092", "IPv6 addresses go in brackets"},
	} {
		u, err := url.Parse(bad.url)
		if err != nil {
			t.Fatalf("url.Parse(%s): %v", bad.url, err)
		}
		_, err = parseOptions(u)
		if err == nil {
			t.Errorf("parseOptions(%s) succeeded", bad.url)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, bad.says) || !strings.Contains(msg, urlForm) || !strings.Contains(msg, driver.RedactURL(bad.url)) {
			t.Errorf("parseOptions(%s): %q, want it to say %q, show the URL as %q and how to write one", bad.url, msg, bad.says, driver.RedactURL(bad.url))
		}
		if strings.Contains(msg, "s3cret") {
			t.Errorf("parseOptions(%s) shows the password: %q", bad.url, msg)
		}
	}
	// Through the public API too, for a URL url.Parse refuses as well.
	for _, bad := range []string{"kafka:admin:s3cret@broker:9092", "kafka://admin:s3cret@h1:9092,h2:x"} {
		_, err := driver.Open(context.Background(), bad, driver.Config{ServiceName: "strict", Logger: quietLogger})
		if err == nil {
			t.Errorf("OpenTransport(%s) succeeded", bad)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("OpenTransport(%s) shows the password: %v", bad, err)
		}
	}
	for raw, want := range map[string]string{
		"kafka://h1":                   "h1:9092",
		"kafka://h1:9093/":             "h1:9093",
		"kafka://a:1,b,127.0.0.1:9093": "a:1,b:9092,127.0.0.1:9093",
		"kafka://[::1]:9093":           "[::1]:9093",
		"kafka://[::1]":                "[::1]:9092",
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("url.Parse(%s): %v", raw, err)
		}
		o, err := parseOptions(u)
		if err != nil {
			t.Errorf("parseOptions(%s): %v", raw, err)
			continue
		}
		if got := strings.Join(o.brokers, ","); got != want {
			t.Errorf("parseOptions(%s) brokers %s, want %s", raw, got, want)
		}
	}
}
