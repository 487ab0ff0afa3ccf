package driver_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	cebinding "github.com/cloudevents/sdk-go/v2/binding/spec"
	ceevent "github.com/cloudevents/sdk-go/v2/event"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

func fullEvent(t *testing.T) driver.Envelope {
	t.Helper()
	return driver.Envelope{
		ID: "3f0c2a4e-0000-4000-8000-000000000001", Name: "order.payment.completed", Source: "billing", Type: "integration",
		Time: time.Date(2025, 1, 2, 3, 4, 5, 600700800, time.UTC), DataVersion: "3", CorrelationID: "corr-1",
		CausationID: "cause-1", PartitionKey: "customer-7", Metadata: map[string]string{"tenant": "acme"},
		Data: []byte(`{"amount":12.5,"currency":"EUR","note":"naïve café ☕"}`),
	}
}

// assertEventEqual fails unless got and want carry the same event.
func assertEventEqual(t *testing.T, got, want driver.Envelope) {
	t.Helper()
	if !got.Time.Equal(want.Time) {
		t.Errorf("Time = %v, want %v", got.Time, want.Time)
	}
	got.Time, want.Time = time.Time{}, time.Time{}
	if len(got.Metadata) == 0 && len(want.Metadata) == 0 {
		got.Metadata, want.Metadata = nil, nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("envelope = %+v\nwant %+v", got, want)
	}
}

func TestEncodeMessageHeaders(t *testing.T) {
	ev := fullEvent(t)
	msg := driver.Encode(ev)
	if msg.UUID != ev.ID {
		t.Errorf("UUID = %q, want the event ID %q", msg.UUID, ev.ID)
	}
	if string(msg.Payload) != string(ev.Data) {
		t.Errorf("Payload = %s, want %s", msg.Payload, ev.Data)
	}
	want := map[string]string{
		"ce_specversion":   "1.0",
		"ce_id":            ev.ID,
		"ce_source":        "billing",
		"ce_type":          "order.payment.completed",
		"ce_time":          "2025-01-02T03:04:05.6007008Z",
		"ce_eventtype":     "integration",
		"ce_dataversion":   "3",
		"ce_correlationid": "corr-1",
		"ce_causationid":   "cause-1",
		"ce_partitionkey":  "customer-7",
		"content-type":     "application/json",
		"ce_tenant":        "acme",
	}
	for k, v := range want {
		if got, ok := msg.Metadata[k]; !ok || got != v {
			t.Errorf("header %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	if len(msg.Metadata) != len(want) {
		t.Errorf("headers = %v, want exactly %v", msg.Metadata, want)
	}
	// The exported names are the wire names.
	for name, h := range map[string]string{
		"ce_specversion": driver.HeaderSpecVersion, "ce_id": driver.HeaderID, "ce_source": driver.HeaderSource,
		"ce_type": driver.HeaderType, "ce_time": driver.HeaderTime, "ce_eventtype": driver.HeaderEventType,
		"ce_dataversion": driver.HeaderDataVersion, "ce_correlationid": driver.HeaderCorrelationID,
		"ce_causationid": driver.HeaderCausationID, "ce_partitionkey": driver.HeaderPartitionKey,
		"content-type": driver.HeaderContentType, "meta_": driver.MetadataPrefix,
	} {
		if name != h {
			t.Errorf("header constant %q, want %q", h, name)
		}
	}
}

func TestEncodeMessageOmitsEmptyOptionalHeaders(t *testing.T) {
	ev := driver.Envelope{ID: "i", Name: "a", Source: "s", Type: "domain", Time: time.Now(), Data: []byte("null")}
	msg := driver.Encode(ev)
	for _, h := range []string{driver.HeaderDataVersion, driver.HeaderCausationID, driver.HeaderPartitionKey} {
		if _, ok := msg.Metadata[h]; ok {
			t.Errorf("header %s present for an empty field", h)
		}
	}
	ev.Data = nil
	if msg := driver.Encode(ev); string(msg.Payload) != "null" {
		t.Errorf("empty Data encodes as %q, want null", msg.Payload)
	}
}

func TestWireRoundTrip(t *testing.T) {
	long := strings.Repeat("λ-long value ", 5000)
	now := time.Now().UTC()
	events := map[string]driver.Envelope{}
	events["full"] = fullEvent(t)
	events["minimal"] = driver.Envelope{ID: "m", Name: "a", Source: "s", Type: "notification", Time: now, Data: []byte(`{}`)}
	events["awkward"] = driver.Envelope{
		ID: "id with spaces ü", Name: strings.Repeat("x", 255), Source: "service with spaces/and:colons ✓", Type: "system",
		Time: now, CorrelationID: "日本語", PartitionKey: long,
		Metadata: map[string]string{
			"": "empty key", "empty": "", "ce_id": "not the id", "ce_type": "not.the.type", "ce_specversion": "0.3",
			"content-type": "text/plain", "x-death": "[{count:1}]", "meta_nested": "prefix twice", "poison_reason": "user value",
			"Mixed-Case Key": "ünïcödé ✓", "long": long,
		},
		Data: []byte(`{"s":"\u0000 \"quoted\" \\ ☃ 🎉","n":[1,2.5e10,null,true],"empty":""}`),
	}

	for label, ev := range events {
		t.Run(label, func(t *testing.T) {
			msg := driver.Encode(ev)
			// Simulate the trip through a broker: only UUID, headers and
			// payload survive.
			received := message.NewMessage(msg.UUID, append([]byte(nil), msg.Payload...))
			for k, v := range msg.Metadata {
				received.Metadata[k] = v
			}
			got, err := driver.Decode(received)
			if err != nil {
				t.Fatal(err)
			}
			assertEventEqual(t, got, ev)
			if got.Time.Location() != time.UTC {
				t.Errorf("decoded Time %v is not UTC", got.Time)
			}
		})
	}
}

func TestWireRoundTripTimeZone(t *testing.T) {
	ev := fullEvent(t)
	ev.Time = time.Date(2025, 6, 1, 12, 0, 0, 1, time.FixedZone("CEST", 2*3600))
	got, err := driver.Decode(driver.Encode(ev))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(ev.Time) || got.Time.Location() != time.UTC {
		t.Errorf("Time = %v, want %v in UTC", got.Time, ev.Time)
	}
}

func TestDecodeMessageErrors(t *testing.T) {
	type mutate func(*message.Message)
	del := func(h string) mutate { return func(m *message.Message) { delete(m.Metadata, h) } }
	set := func(h, v string) mutate { return func(m *message.Message) { m.Metadata[h] = v } }
	body := func(b string) mutate { return func(m *message.Message) { m.Payload = []byte(b) } }
	cases := []struct {
		label    string
		change   mutate
		mentions []string
		sentinel error // besides ErrInvalidEvent
	}{
		{"no specversion", del("ce_specversion"), []string{"lacks", "ce_specversion"}, nil},
		{"no id", del("ce_id"), []string{"lacks", "ce_id"}, nil},
		{"empty id", set("ce_id", ""), []string{"lacks", "ce_id"}, nil},
		{"no source", del("ce_source"), []string{"lacks", "ce_source"}, nil},
		{"no type", del("ce_type"), []string{"lacks", "ce_type"}, nil},
		{"bad specversion", set("ce_specversion", "0.3"), []string{"ce_specversion", `"0.3"`}, nil},
		{"bad content type", set("content-type", "text/plain"), []string{"content-type", "text/plain"}, nil},
		{"bad time", set("ce_time", "yesterday"), []string{"ce_time", "yesterday"}, nil},
		{"time without zone", set("ce_time", "2025-01-02T03:04:05"), []string{"ce_time"}, nil},
		{"unknown event type", set("ce_eventtype", "weird"), []string{"weird"}, nil},
		{"invalid name", set("ce_type", "a..b"), []string{"a..b", "segment 2"}, eventbus.ErrInvalidName},
		{"wildcard name", set("ce_type", "user.*"), []string{"user.*"}, eventbus.ErrInvalidName},
		{"non-JSON body", body("<xml/>"), []string{"not JSON"}, nil},
		{"structured body not an object", func(m *message.Message) {
			m.Metadata["content-type"] = "application/cloudevents+json"
			m.Payload = []byte(`[1]`)
		}, []string{"not a JSON object"}, nil},
		{"batch", set("content-type", "application/cloudevents-batch+json"), []string{"batched", "one event per message"}, nil},
		{"bad content type with charset", set("content-type", "text/plain; charset=utf-8"), []string{"content-type", "text/plain", "JSON data only"}, nil},
		{"truncated JSON body", body(`{"a":`), []string{"not JSON"}, nil},
		{"marked incomplete by the transport", func(m *message.Message) {
			m.Metadata[driver.HeaderIncomplete] = "the body is lost"
			m.Payload = nil
		}, []string{"incomplete", "the body is lost"}, nil},
	}
	for _, tc := range cases {
		msg := driver.Encode(fullEvent(t))
		tc.change(msg)
		ev, err := driver.Decode(msg)
		if err == nil {
			t.Errorf("%s: DecodeMessage = %+v, want an error", tc.label, ev)
			continue
		}
		if !errors.Is(err, eventbus.ErrInvalidEvent) {
			t.Errorf("%s: error %v does not wrap ErrInvalidEvent", tc.label, err)
		}
		if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: error %v does not wrap %v", tc.label, err, tc.sentinel)
		}
		if !strings.Contains(err.Error(), msg.UUID) {
			t.Errorf("%s: error %q does not name the message %s", tc.label, err, msg.UUID)
		}
		for _, w := range tc.mentions {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %s", tc.label, err, w)
			}
		}
	}

	// Raw bytes from a foreign producer: every required header is named.
	_, err := driver.Decode(message.NewMessage("raw-1", []byte("hello")))
	if !errors.Is(err, eventbus.ErrInvalidEvent) {
		t.Fatalf("raw message: %v", err)
	}
	for _, h := range []string{"ce_specversion", "ce_id", "ce_type", "ce_source"} {
		if !strings.Contains(err.Error(), h) {
			t.Errorf("raw message error %q does not name %s", err, h)
		}
	}
	// The optional attributes are not required.
	for _, h := range []string{"ce_time", "ce_eventtype"} {
		if strings.Contains(err.Error(), h) {
			t.Errorf("raw message error %q names the optional %s", err, h)
		}
	}
}

func TestDecodeMessageAccepts(t *testing.T) {
	for label, change := range map[string]func(*message.Message){
		"no content-type":        func(m *message.Message) { delete(m.Metadata, "content-type") },
		"content-type with args": func(m *message.Message) { m.Metadata["content-type"] = "application/json; charset=utf-8" },
		"RFC 3339 without fraction": func(m *message.Message) {
			m.Metadata["ce_time"] = "2025-01-02T04:04:05+01:00"
		},
		"upper-case event type": func(m *message.Message) { m.Metadata["ce_eventtype"] = "INTEGRATION" },
		"foreign headers":       func(m *message.Message) { m.Metadata["x-death"] = "1"; m.Metadata["_watermill_x"] = "y" },
	} {
		msg := driver.Encode(fullEvent(t))
		change(msg)
		ev, err := driver.Decode(msg)
		if err != nil {
			t.Errorf("%s: %v", label, err)
			continue
		}
		if len(ev.Metadata) != 1 || ev.Metadata["tenant"] != "acme" {
			t.Errorf("%s: Metadata = %q, want only tenant", label, ev.Metadata)
		}
	}
}

// toCloudEvent maps the headers of a message in binary content mode to a
// CloudEvents SDK event, the way a CloudEvents Kafka consumer reads them.
func toCloudEvent(t *testing.T, msg *message.Message) ceevent.Event {
	t.Helper()
	versions := cebinding.WithPrefix("ce_")
	v := versions.Version(msg.Metadata[versions.PrefixedSpecVersionName()])
	if v == nil {
		t.Fatalf("the CloudEvents SDK knows no spec version %q", msg.Metadata[versions.PrefixedSpecVersionName()])
	}
	ce := ceevent.New()
	ce.Context = v.NewContext()
	for k, val := range msg.Metadata {
		if k == versions.PrefixedSpecVersionName() || !strings.HasPrefix(k, "ce_") {
			continue
		}
		if err := v.SetAttribute(ce.Context, k, val); err != nil {
			t.Fatalf("setting CloudEvents attribute from %s=%q: %v", k, val, err)
		}
	}
	if ct, ok := msg.Metadata["content-type"]; ok {
		ce.SetDataContentType(ct)
	}
	ce.DataEncoded = msg.Payload
	return ce
}

func TestWireIsCloudEvents(t *testing.T) {
	ev := fullEvent(t)
	ce := toCloudEvent(t, driver.Encode(ev))
	if err := ce.Validate(); err != nil {
		t.Fatalf("the encoded event is not a valid CloudEvent: %v", err)
	}
	if ce.SpecVersion() != "1.0" || ce.ID() != ev.ID || ce.Source() != ev.Source || ce.Type() != ev.Name ||
		!ce.Time().Equal(ev.Time) || ce.DataContentType() != "application/json" {
		t.Errorf("CloudEvent attributes = %v, want those of %+v", ce.Context, ev)
	}
	for ext, want := range map[string]string{
		"eventtype": "integration", "dataversion": "3", "correlationid": "corr-1",
		"causationid": "cause-1", "partitionkey": "customer-7",
	} {
		if got := ce.Extensions()[ext]; got != want {
			t.Errorf("extension %s = %v, want %q", ext, got, want)
		}
	}
	var data map[string]any
	if err := ce.DataAs(&data); err != nil || data["currency"] != "EUR" {
		t.Errorf("CloudEvent data = %v, %v", data, err)
	}

	// The check has teeth: without a required attribute Validate fails.
	for _, h := range []string{"ce_id", "ce_source", "ce_type"} {
		msg := driver.Encode(ev)
		delete(msg.Metadata, h)
		if err := toCloudEvent(t, msg).Validate(); err == nil {
			t.Errorf("CloudEvent without %s validates", h)
		}
	}
}

// withBody returns a valid encoded event carrying body.
func withBody(body []byte) *message.Message {
	msg := message.NewMessage("m-1", body)
	msg.Metadata = message.Metadata{
		"ce_specversion": "1.0", "ce_id": "m-1", "ce_source": "s", "ce_type": "a.b",
		"ce_time": "2025-01-02T03:04:05Z", "ce_eventtype": "domain", "content-type": "application/json",
	}
	return msg
}

// TestDecodeMessageDeeplyNestedBody: a hostile body must be rejected, not
// overflow the stack (a fatal error that would crash the consumer on every
// redelivery), and the body check must agree with encoding/json.Valid, which
// rejects nesting deeper than 10,000 levels.
func TestDecodeMessageDeeplyNestedBody(t *testing.T) {
	nested := func(depth int, closed bool) []byte {
		b := []byte(strings.Repeat("[", depth))
		if closed {
			b = append(b, strings.Repeat("]", depth)...)
		}
		return b
	}
	for _, tc := range []struct {
		label string
		body  []byte
	}{
		{"10,000 levels", nested(10_000, true)},
		{"10,001 levels", nested(10_001, true)},
		{"100,000 levels", nested(100_000, true)},
		{"16 Mi unclosed levels", nested(16<<20, false)},
		{"8 Mi levels", nested(8<<20, true)},
		{"deep object", []byte(strings.Repeat(`{"a":`, 200_000) + "1" + strings.Repeat("}", 200_000))},
	} {
		_, err := driver.Decode(withBody(tc.body))
		if want := json.Valid(tc.body); (err == nil) != want {
			t.Errorf("%s: DecodeMessage error %v, but json.Valid = %v", tc.label, err, want)
		}
	}
}

// FuzzDecodeMessageBody checks that DecodeMessage accepts exactly the
// bodies encoding/json.Valid accepts, and the empty body (no data).
func FuzzDecodeMessageBody(f *testing.F) {
	for _, seed := range []string{
		`{}`, `[]`, `null`, `true`, `-0.5e+10`, `"\u00e9"`, `{"a":[1,{"b":null}]}`, ` 1 `,
		``, `{`, `01`, `1.`, `-`, `[1,]`, `{"a":1,}`, `"\x"`, "\"\x00\"", `nul`, `1 2`, `{} {}`,
		"\"\xff\"", `[[[[[[[[`, `1e`, `.5`, `+1`, `{"a" 1}`, "\ufeff{}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		_, err := driver.Decode(withBody(body))
		// An empty body is an event without data.
		if want := len(body) == 0 || json.Valid(body); (err == nil) != want {
			t.Fatalf("DecodeMessage(%q) error %v, but json.Valid = %v", body, err, want)
		}
	})
}

func BenchmarkWire(b *testing.B) {
	ev := driver.Envelope{
		ID: "8c0e5d4a-1234-4bcd-9876-0123456789ab", Name: "order.payment.completed", Source: "billing", Type: "integration",
		Time: time.Now(), CorrelationID: "corr-1", Metadata: map[string]string{"tenant": "acme"},
		Data: []byte(`{"order_id":"o-123456","amount":12.5,"currency":"EUR","lines":[{"sku":"a","qty":1},{"sku":"b","qty":2}]}`),
	}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			driver.Encode(ev)
		}
	})
	msg := driver.Encode(ev)
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := driver.Decode(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The same event from a foreign producer in structured content mode:
	// the attributes and the data in one JSON body.
	structured := message.NewMessage(ev.ID, []byte(`{"specversion":"1.0","id":"`+ev.ID+`","source":"billing","type":"order.payment.completed",`+
		`"time":"`+ev.Time.UTC().Format(time.RFC3339Nano)+`","eventtype":"integration","correlationid":"corr-1","tenant":"acme",`+
		`"datacontenttype":"application/json","data":`+string(ev.Data)+`}`))
	structured.Metadata["content-type"] = driver.ContentTypeStructured
	b.Run("decode-structured", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := driver.Decode(structured); err != nil {
				b.Fatal(err)
			}
		}
	})
}
