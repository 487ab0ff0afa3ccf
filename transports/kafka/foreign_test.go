package kafka

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	kafkasarama "github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	cebinding "github.com/cloudevents/sdk-go/v2/binding"
	ceevent "github.com/cloudevents/sdk-go/v2/event"

	"github.com/paissive/go-eventbus/eventbus"
)

// recorder keeps the events a handler received, by ID.
type recorder struct {
	mu  sync.Mutex
	evs map[string]eventbus.Event
}

func newRecorder() *recorder { return &recorder{evs: map[string]eventbus.Event{}} }

func (r *recorder) handle(_ context.Context, ev eventbus.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs[ev.ID] = ev
	return nil
}

func (r *recorder) get(id string) (eventbus.Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ev, ok := r.evs[id]
	return ev, ok
}

// TestForeignCloudEventsSDK sends events with the CloudEvents Go SDK's
// Kafka protocol binding (kafka_sarama), as a service that knows nothing
// of the bus would, and checks that each is handled, not poisoned, with
// what it carried:
//
//   - binary mode with only the required attributes: no time, no
//     eventtype, no data (a record with a null value);
//   - binary mode with JSON data and extensions the bus does not know
//     (traceparent, subject, an integer, a boolean), and a record key set
//     with kafka_sarama.WithMessageKey but no partitionkey extension: the
//     key becomes the partition key;
//   - structured mode (binding.WithForceStructured): the attributes and
//     data in a JSON body, with content type application/cloudevents+json.
//
// A second subscription whose pattern matches none of them must not
// poison them either: the transport filters structured records by the
// "type" in their body, as it filters binary ones by ce_type.
func TestForeignCloudEventsSDK(t *testing.T) {
	t.Parallel()
	u := testURL(t, "partitions", "1")
	b := newBus(t, u, "foreign-sdk")
	rec, others := newRecorder(), newRecorder()
	if err := b.Subscribe("order.#", rec.handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe("other.#", others.handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	tr := b.Transport().(*Transport)
	cfg := sarama.NewConfig()
	cfg.Version = DefaultVersion
	sender, err := kafkasarama.NewSender(tr.opts.brokers, cfg, tr.names.join("events"))
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close(context.Background())
	send := func(ctx context.Context, ev ceevent.Event) {
		t.Helper()
		if err := ev.Validate(); err != nil {
			t.Fatal(err)
		}
		if err := sender.Send(ctx, cebinding.ToMessage(&ev)); err != nil {
			t.Fatalf("sending %s with the CloudEvents SDK: %v", ev.ID(), err)
		}
	}

	minimal := ceevent.New()
	minimal.SetID("sdk-min")
	minimal.SetSource("urn:sdk")
	minimal.SetType("order.minimal")
	send(testCtx(t), minimal)

	when := time.Date(2026, 7, 8, 9, 10, 11, 120_000_000, time.UTC)
	rich := ceevent.New()
	rich.SetID("sdk-rich")
	rich.SetSource("urn:sdk")
	rich.SetType("order.rich")
	rich.SetTime(when)
	rich.SetSubject("order-12")
	rich.SetExtension("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	rich.SetExtension("attempt", 2)
	rich.SetExtension("urgent", false)
	if err := rich.SetData(ceevent.ApplicationJSON, map[string]any{"order_id": "o-12"}); err != nil {
		t.Fatal(err)
	}
	send(kafkasarama.WithMessageKey(testCtx(t), sarama.StringEncoder("customer-12")), rich)

	structured := ceevent.New()
	structured.SetID("sdk-structured")
	structured.SetSource("urn:sdk")
	structured.SetType("order.structured")
	structured.SetExtension("tenant", "acme")
	structured.SetExtension("partitionkey", "customer-13")
	if err := structured.SetData(ceevent.ApplicationJSON, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	send(cebinding.WithForceStructured(testCtx(t)), structured)

	// Sent after them on the one partition: once the other subscription
	// handled it, it has seen (and filtered) the three.
	marker := events(t, 1, "other.marker", nil)[0]
	if err := b.Publish(testCtx(t), marker); err != nil {
		t.Fatal(err)
	}

	checks := map[string]func(eventbus.Event) string{
		"sdk-min": func(ev eventbus.Event) string {
			if ev.Source != "urn:sdk" || ev.Type != eventbus.Domain || !ev.Time.IsZero() || len(ev.Data) != 0 || len(ev.Metadata) != 0 || ev.PartitionKey != "" {
				return fmt.Sprintf("%+v; want the default kind, no time, no data, no metadata, no key", ev)
			}
			return ""
		},
		"sdk-rich": func(ev eventbus.Event) string {
			wantMD := map[string]string{"subject": "order-12", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "attempt": "2", "urgent": "false"}
			if !maps.Equal(ev.Metadata, wantMD) || !ev.Time.Equal(when) || ev.PartitionKey != "customer-12" || string(ev.Data) != `{"order_id":"o-12"}` {
				return fmt.Sprintf("metadata %v, time %v, partition key %q, data %s; want %v, %v, the record key, the data", ev.Metadata, ev.Time, ev.PartitionKey, ev.Data, wantMD, when)
			}
			return ""
		},
		"sdk-structured": func(ev eventbus.Event) string {
			if !maps.Equal(ev.Metadata, map[string]string{"tenant": "acme"}) || ev.PartitionKey != "customer-13" || string(ev.Data) != "[1,2]" {
				return fmt.Sprintf("metadata %v, partition key %q, data %s", ev.Metadata, ev.PartitionKey, ev.Data)
			}
			return ""
		},
	}
	poisoned := func() string {
		ps, err := b.Poisoned(testCtx(t), eventbus.PoisonFilter{})
		var why []string
		for _, p := range ps {
			why = append(why, fmt.Sprintf("%s (%s): %s %v", p.Event.ID, p.Subscription, p.Reason, p.DecodeError))
		}
		return fmt.Sprintf("poisoned: %v (%v)", why, err)
	}
	for id, check := range checks {
		waitFor(t, "SDK event "+id+" handled", func() bool { _, ok := rec.get(id); return ok }, poisoned)
		ev, _ := rec.get(id)
		if problem := check(ev); problem != "" {
			t.Errorf("%s: %s", id, problem)
		}
	}
	waitFor(t, "the marker handled by the other subscription", func() bool { _, ok := others.get(marker.ID); return ok }, poisoned)
	if ps, err := b.Poisoned(testCtx(t), eventbus.PoisonFilter{}); err != nil || len(ps) != 0 {
		t.Errorf("%s; want none", poisoned())
	}
	others.mu.Lock()
	n := len(others.evs)
	others.mu.Unlock()
	if n != 1 {
		t.Errorf("the other subscription handled %d events, want only the marker", n)
	}
}

// TestRecordKeyIsPartitionKey: the record key becomes the partition key of
// an event without a ce_partitionkey header, the header wins over the key,
// and poison records (whose key is the poison topic's own) never get one.
func TestRecordKeyIsPartitionKey(t *testing.T) {
	mk := func(key string, headers ...string) *sarama.ConsumerMessage {
		rec := &sarama.ConsumerMessage{Topic: "t", Value: []byte("{}")}
		if key != "" {
			rec.Key = []byte(key)
		}
		for i := 0; i+1 < len(headers); i += 2 {
			rec.Headers = append(rec.Headers, &sarama.RecordHeader{Key: []byte(headers[i]), Value: []byte(headers[i+1])})
		}
		return rec
	}
	if got := decodeEvent(mk("k-1")).Metadata["ce_partitionkey"]; got != "k-1" {
		t.Errorf("key without header: partition key %q, want the key", got)
	}
	if got := decodeEvent(mk("k-1", "ce_partitionkey", "h-1")).Metadata["ce_partitionkey"]; got != "h-1" {
		t.Errorf("key and header: partition key %q, want the header", got)
	}
	if _, ok := decodeEvent(mk("")).Metadata["ce_partitionkey"]; ok {
		t.Error("no key: a partition key appeared")
	}
	if _, ok := decode(mk("sub/id-1")).Metadata["ce_partitionkey"]; ok {
		t.Error("poison record: its key became a partition key")
	}
	if msg, err := (Marshaler{}).Unmarshal(mk("k-2")); err != nil || msg.Metadata["ce_partitionkey"] != "k-2" {
		t.Errorf("Marshaler.Unmarshal: %v, %v; want the key as partition key", msg, err)
	}
}

// TestEventNameOfStructuredRecords: the subscription filter reads the
// event name from ce_type, or from the body of a structured-mode record.
func TestEventNameOfStructuredRecords(t *testing.T) {
	for label, tc := range map[string]struct {
		rec  *sarama.ConsumerMessage
		name string
		ok   bool
	}{
		"binary": {&sarama.ConsumerMessage{Headers: []*sarama.RecordHeader{{Key: []byte("ce_type"), Value: []byte("a.b")}}}, "a.b", true},
		"structured": {&sarama.ConsumerMessage{
			Headers: []*sarama.RecordHeader{{Key: []byte("content-type"), Value: []byte("application/cloudevents+json; charset=UTF-8")}},
			Value:   []byte(`{"specversion":"1.0","type":"c.d","id":"1","source":"s"}`),
		}, "c.d", true},
		"structured without type": {&sarama.ConsumerMessage{
			Headers: []*sarama.RecordHeader{{Key: []byte("content-type"), Value: []byte("application/cloudevents+json")}},
			Value:   []byte(`{"type":7}`),
		}, "", false},
		"raw": {&sarama.ConsumerMessage{Value: []byte(`{"type":"e.f"}`)}, "", false},
	} {
		if name, ok := eventName(tc.rec); name != tc.name || ok != tc.ok {
			t.Errorf("%s: %q, %v; want %q, %v", label, name, ok, tc.name, tc.ok)
		}
	}
}
