package driver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	cebinding "github.com/cloudevents/sdk-go/v2/binding"
	cespec "github.com/cloudevents/sdk-go/v2/binding/spec"
	ceevent "github.com/cloudevents/sdk-go/v2/event"
	cetypes "github.com/cloudevents/sdk-go/v2/types"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// headerWriter is a CloudEvents SDK binary writer that produces the headers
// of the CloudEvents Kafka binding, as the SDK's Kafka protocol binding
// does: "ce_<attribute>" for every attribute and extension in its
// canonical string form, "content-type" for datacontenttype.
type headerWriter struct {
	md   message.Metadata
	body []byte
}

func (w *headerWriter) Start(context.Context) error { return nil }
func (w *headerWriter) End(context.Context) error   { return nil }
func (w *headerWriter) SetData(r io.Reader) (err error) {
	w.body, err = io.ReadAll(r)
	return err
}

func (w *headerWriter) SetAttribute(a cespec.Attribute, v any) error {
	s, err := cetypes.Format(v)
	if err != nil {
		return err
	}
	if a.Kind() == cespec.DataContentType {
		w.md["content-type"] = s
		return nil
	}
	w.md["ce_"+a.Name()] = s
	return nil
}

func (w *headerWriter) SetExtension(name string, v any) error {
	s, err := cetypes.Format(v)
	if err != nil {
		return err
	}
	w.md["ce_"+name] = s
	return nil
}

// sdkBinary encodes ev with the CloudEvents SDK in binary content mode.
func sdkBinary(t *testing.T, ev ceevent.Event) *message.Message {
	t.Helper()
	if err := ev.Validate(); err != nil {
		t.Fatalf("the test's CloudEvent is invalid: %v", err)
	}
	w := &headerWriter{md: message.Metadata{}}
	if _, err := cebinding.Write(context.Background(), cebinding.ToMessage(&ev), nil, w); err != nil {
		t.Fatal(err)
	}
	msg := message.NewMessage("sdk-"+ev.ID(), w.body)
	msg.Metadata = w.md
	return msg
}

// sdkStructured encodes ev with the CloudEvents SDK in structured content
// mode.
func sdkStructured(t *testing.T, ev ceevent.Event) *message.Message {
	t.Helper()
	body, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	msg := message.NewMessage("sdk-"+ev.ID(), body)
	msg.Metadata = message.Metadata{"content-type": "application/cloudevents+json; charset=UTF-8"}
	return msg
}

// minimalEvent is a CloudEvent with only the required attributes.
func minimalEvent() ceevent.Event {
	ev := ceevent.New()
	ev.SetID("ce-1")
	ev.SetSource("urn:example:producer")
	ev.SetType("order.placed")
	return ev
}

// richEvent is a CloudEvent with JSON data, optional attributes and
// extensions of each type.
func richEvent(t *testing.T) ceevent.Event {
	t.Helper()
	ev := minimalEvent()
	ev.SetTime(time.Date(2026, 3, 4, 5, 6, 7, 800_000_000, time.UTC))
	ev.SetSubject("order-17")
	ev.SetDataSchema("https://example.com/order.json")
	ev.SetExtension("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	ev.SetExtension("attempt", 3)
	ev.SetExtension("urgent", true)
	ev.SetExtension("eventtype", "integration")
	ev.SetExtension("correlationid", "corr-9")
	ev.SetExtension("partitionkey", "customer-4")
	if err := ev.SetData(ceevent.ApplicationJSON, map[string]any{"order_id": "o-17", "total": 12.5}); err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestDecodeSDKMinimal: a CloudEvent with only the required attributes
// (no time, no eventtype, no data) is an event, in both content modes.
func TestDecodeSDKMinimal(t *testing.T) {
	for mode, msg := range map[string]*message.Message{
		"binary": sdkBinary(t, minimalEvent()), "structured": sdkStructured(t, minimalEvent()),
	} {
		env, err := driver.Decode(msg)
		if err != nil {
			t.Errorf("%s: %v", mode, err)
			continue
		}
		if env.ID != "ce-1" || env.Source != "urn:example:producer" || env.Name != "order.placed" {
			t.Errorf("%s: envelope %+v, want the CloudEvent's id, source and type", mode, env)
		}
		if env.Type != driver.DefaultEventType {
			t.Errorf("%s: kind %q, want the default %q", mode, env.Type, driver.DefaultEventType)
		}
		if !env.Time.IsZero() {
			t.Errorf("%s: Time %v, want zero for an event without time", mode, env.Time)
		}
		if len(env.Data) != 0 {
			t.Errorf("%s: Data %q, want none", mode, env.Data)
		}
		if len(env.Metadata) != 0 {
			t.Errorf("%s: Metadata %v, want none", mode, env.Metadata)
		}
	}
}

// TestDecodeSDKExtensions: the attributes the bus knows fill their fields;
// the ones it does not (subject, dataschema, traceparent, an integer and a
// boolean extension) reach Metadata in their canonical string form, in both
// content modes.
func TestDecodeSDKExtensions(t *testing.T) {
	want := map[string]string{
		"subject": "order-17", "dataschema": "https://example.com/order.json",
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "attempt": "3", "urgent": "true",
	}
	for mode, msg := range map[string]*message.Message{
		"binary": sdkBinary(t, richEvent(t)), "structured": sdkStructured(t, richEvent(t)),
	} {
		env, err := driver.Decode(msg)
		if err != nil {
			t.Errorf("%s: %v", mode, err)
			continue
		}
		if !maps.Equal(env.Metadata, want) {
			t.Errorf("%s: Metadata %v, want %v", mode, env.Metadata, want)
		}
		if env.Type != "integration" || env.CorrelationID != "corr-9" || env.PartitionKey != "customer-4" {
			t.Errorf("%s: kind %q, correlation %q, partition key %q; want the extensions' values", mode, env.Type, env.CorrelationID, env.PartitionKey)
		}
		if !env.Time.Equal(time.Date(2026, 3, 4, 5, 6, 7, 800_000_000, time.UTC)) {
			t.Errorf("%s: Time %v", mode, env.Time)
		}
		var data struct {
			OrderID string  `json:"order_id"`
			Total   float64 `json:"total"`
		}
		if err := json.Unmarshal(env.Data, &data); err != nil || data.OrderID != "o-17" || data.Total != 12.5 {
			t.Errorf("%s: Data %s (%v)", mode, env.Data, err)
		}
	}
}

// TestRepublishKeepsExtensions: an event decoded from a foreign CloudEvent
// and encoded again carries the same extensions, which the CloudEvents SDK
// reads back with their values.
func TestRepublishKeepsExtensions(t *testing.T) {
	env, err := driver.Decode(sdkBinary(t, richEvent(t)))
	if err != nil {
		t.Fatal(err)
	}
	env.ID = "republished-1"
	msg := driver.Encode(env)
	for _, h := range []string{"ce_subject", "ce_dataschema", "ce_traceparent", "ce_attempt", "ce_urgent"} {
		if _, ok := msg.Metadata[h]; !ok {
			t.Errorf("republished event lacks %s: %v", h, msg.Metadata)
		}
	}
	ce := toCloudEvent(t, msg)
	if err := ce.Validate(); err != nil {
		t.Fatal(err)
	}
	if ce.Subject() != "order-17" || ce.DataSchema() != "https://example.com/order.json" {
		t.Errorf("subject %q, dataschema %q", ce.Subject(), ce.DataSchema())
	}
	ext := ce.Extensions()
	if ext["traceparent"] != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Errorf("traceparent %v", ext["traceparent"])
	}
	if n, err := cetypes.ToInteger(ext["attempt"]); err != nil || n != 3 {
		t.Errorf("attempt %v (%v)", ext["attempt"], err)
	}
	if b, err := cetypes.ToBool(ext["urgent"]); err != nil || !b {
		t.Errorf("urgent %v (%v)", ext["urgent"], err)
	}
	// And the bus reads its own republished event the same way.
	again, err := driver.Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(again.Metadata, env.Metadata) {
		t.Errorf("Metadata after a second trip %v, want %v", again.Metadata, env.Metadata)
	}
}

// TestMetadataCollisions: metadata keys that name an attribute the envelope
// has a field for, that are not lower-case alphanumeric or longer than 20
// characters travel as "meta_<key>" and never replace the attribute; the
// others become CloudEvents extensions.
func TestMetadataCollisions(t *testing.T) {
	ev := fullEvent(t)
	ev.Metadata = map[string]string{
		"id": "not-the-id", "correlationid": "not-the-correlation", "type": "not.the.type", "source": "x",
		"specversion": "0.3", "time": "yesterday", "eventtype": "weird", "partitionkey": "pk", "datacontenttype": "text/plain",
		"data": "d", "Tenant": "upper", "tenant": "lower", "x-user": "dash", "abcdefghij0123456789": "twenty",
		"abcdefghij0123456789x": "twenty-one", "subject": "s",
	}
	msg := driver.Encode(ev)
	wantHeaders := map[string]string{
		"meta_id": "not-the-id", "meta_correlationid": "not-the-correlation", "meta_type": "not.the.type", "meta_source": "x",
		"meta_specversion": "0.3", "meta_time": "yesterday", "meta_eventtype": "weird", "meta_partitionkey": "pk",
		"meta_datacontenttype": "text/plain", "meta_data": "d", "meta_Tenant": "upper", "ce_tenant": "lower",
		"meta_x-user": "dash", "ce_abcdefghij0123456789": "twenty", "meta_abcdefghij0123456789x": "twenty-one", "ce_subject": "s",
		"ce_id": ev.ID, "ce_correlationid": "corr-1", "ce_type": ev.Name, "ce_source": ev.Source, "ce_specversion": "1.0",
		"ce_partitionkey": "customer-7", "ce_eventtype": "integration",
	}
	for h, v := range wantHeaders {
		if got, ok := msg.Metadata[h]; !ok || got != v {
			t.Errorf("header %s = %q (present %v), want %q", h, got, ok, v)
		}
	}
	got, err := driver.Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	assertEventEqual(t, got, ev)
}

// TestDecodeAttributeBeatsMetaHeader: when a message carries both
// "ce_<key>" and "meta_<key>", the attribute wins, whatever the order the
// headers are visited in; "meta_" headers of older producers stay readable.
func TestDecodeAttributeBeatsMetaHeader(t *testing.T) {
	for range 20 { // map order varies
		msg := driver.Encode(fullEvent(t))
		msg.Metadata["ce_tenant"] = "attribute"
		msg.Metadata["meta_tenant"] = "meta"
		msg.Metadata["meta_region"] = "eu"
		env, err := driver.Decode(msg)
		if err != nil {
			t.Fatal(err)
		}
		if env.Metadata["tenant"] != "attribute" || env.Metadata["region"] != "eu" {
			t.Fatalf("Metadata %v; want tenant from ce_tenant and region from meta_region", env.Metadata)
		}
	}
}

// TestDecodeForeignAttributeNames: a "ce_" header that is not an
// extension name the bus would write (upper case, a dash) still reaches
// Metadata, and is republished as metadata.
func TestDecodeForeignAttributeNames(t *testing.T) {
	msg := sdkBinary(t, minimalEvent())
	msg.Metadata["ce_X-Trace"] = "t-1"
	env, err := driver.Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	if env.Metadata["X-Trace"] != "t-1" {
		t.Fatalf("Metadata %v", env.Metadata)
	}
	if out := driver.Encode(env); out.Metadata["meta_X-Trace"] != "t-1" {
		t.Errorf("republished headers %v, want meta_X-Trace", out.Metadata)
	}
}

// structuredMsg is a structured-mode message with body and extra headers.
func structuredMsg(body string, headers ...string) *message.Message {
	msg := message.NewMessage("s-1", []byte(body))
	msg.Metadata = message.Metadata{"content-type": "application/cloudevents+json"}
	for i := 0; i+1 < len(headers); i += 2 {
		msg.Metadata[headers[i]] = headers[i+1]
	}
	return msg
}

// TestDecodeStructured covers what structured mode allows beyond what the
// SDK writes for JSON data: data_base64, non-string extensions, null
// attributes, and headers that fill in what the body lacks.
func TestDecodeStructured(t *testing.T) {
	const base = `"specversion":"1.0","id":"s-1","source":"src","type":"a.b"`
	t.Run("data_base64", func(t *testing.T) {
		env, err := driver.Decode(structuredMsg(`{` + base + `,"datacontenttype":"application/json","data_base64":"eyJrIjoxfQ=="}`))
		if err != nil || string(env.Data) != `{"k":1}` {
			t.Fatalf("Data %q, %v; want the decoded base64", env.Data, err)
		}
	})
	t.Run("json types", func(t *testing.T) {
		env, err := driver.Decode(structuredMsg(`{` + base + `,"n":-1.5e3,"b":false,"o":{"x":[1]},"nothing":null,"time":null,"data":[1,2]}`))
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"n": "-1.5e3", "b": "false", "o": `{"x":[1]}`}
		if !maps.Equal(env.Metadata, want) || string(env.Data) != "[1,2]" || !env.Time.IsZero() {
			t.Errorf("Metadata %v, Data %s, Time %v; want %v, [1,2], zero", env.Metadata, env.Data, env.Time, want)
		}
	})
	t.Run("headers fill in", func(t *testing.T) {
		env, err := driver.Decode(structuredMsg(`{`+base+`,"partitionkey":"from-body","data":null}`,
			"ce_correlationid", "from-header", "ce_partitionkey", "from-header", "ce_id", "header-id"))
		if err != nil {
			t.Fatal(err)
		}
		if env.CorrelationID != "from-header" || env.PartitionKey != "from-body" || env.ID != "s-1" {
			t.Errorf("correlation %q, partition key %q, id %q; want the header where the body says nothing, the body otherwise", env.CorrelationID, env.PartitionKey, env.ID)
		}
		if len(env.Data) != 0 {
			t.Errorf("data null: Data %q, want none", env.Data)
		}
	})
	for label, tc := range map[string]struct{ body, mention string }{
		"missing attributes": {`{"specversion":"1.0","id":"s-1"}`, "lacks attribute(s) in its body type, source"},
		"text data":          {`{` + base + `,"datacontenttype":"text/plain","data":"hello"}`, `datacontenttype "text/plain"`},
		"base64 not JSON":    {`{` + base + `,"data_base64":"aGVsbG8="}`, "data_base64 does not hold JSON"},
		"bad base64":         {`{` + base + `,"data_base64":"%%%"}`, "not base64"},
		"bad name":           {`{"specversion":"1.0","id":"s-1","source":"src","type":"a..b"}`, "a..b"},
		"old spec":           {`{"specversion":"0.3","id":"s-1","source":"src","type":"a.b"}`, `specversion "0.3"`},
		"not JSON":           {`{` + base, "not JSON"},
	} {
		_, err := driver.Decode(structuredMsg(tc.body))
		if !errors.Is(err, eventbus.ErrInvalidEvent) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: %v; want ErrInvalidEvent mentioning %q", label, err, tc.mention)
		}
	}
}

// TestDecodeContentTypes: JSON data comes with any JSON content type or
// none; a body-less event with any content type has no data.
func TestDecodeContentTypes(t *testing.T) {
	for _, ct := range []string{"application/json", "Application/JSON; charset=utf-8", "text/json", "application/vnd.order+json", ""} {
		msg := driver.Encode(fullEvent(t))
		msg.Metadata["content-type"] = ct
		if _, err := driver.Decode(msg); err != nil {
			t.Errorf("content-type %q: %v", ct, err)
		}
	}
	// datacontenttype as an attribute header when content-type is absent.
	msg := driver.Encode(fullEvent(t))
	delete(msg.Metadata, "content-type")
	msg.Metadata["ce_datacontenttype"] = "text/plain"
	if _, err := driver.Decode(msg); err == nil || !strings.Contains(err.Error(), "text/plain") {
		t.Errorf("ce_datacontenttype text/plain with a JSON body: %v; want an error naming it", err)
	}
	msg.Payload = nil
	if env, err := driver.Decode(msg); err != nil || len(env.Data) != 0 || env.Metadata["datacontenttype"] != "" {
		t.Errorf("text/plain without a body: %+v, %v; want an event without data", env, err)
	}
	// The bus writes no body-less events: empty data goes as null, which
	// older consumers read.
	env := fullEvent(t)
	env.Data = nil
	if out := driver.Encode(env); !bytes.Equal(out.Payload, []byte("null")) {
		t.Errorf("empty Data encoded as %q", out.Payload)
	}
}

// TestEncodeWithoutTime: an envelope with a zero Time (a foreign event
// without one) is sent without ce_time, not with the year 1.
func TestEncodeWithoutTime(t *testing.T) {
	env := fullEvent(t)
	env.Time = time.Time{}
	msg := driver.Encode(env)
	if _, ok := msg.Metadata["ce_time"]; ok {
		t.Errorf("ce_time %q for a zero Time", msg.Metadata["ce_time"])
	}
	got, err := driver.Decode(msg)
	if err != nil || !got.Time.IsZero() {
		t.Errorf("Decode: Time %v, %v", got.Time, err)
	}
}

func TestExtensionName(t *testing.T) {
	for k, want := range map[string]bool{
		"tenant": true, "traceparent": true, "subject": true, "a1": true, "abcdefghij0123456789": true,
		"": false, "Tenant": false, "x-user": false, "x_user": false, "abcdefghij0123456789x": false, "ünï": false,
		"id": false, "source": false, "type": false, "time": false, "specversion": false, "eventtype": false,
		"dataversion": false, "correlationid": false, "causationid": false, "partitionkey": false,
		"datacontenttype": false, "data": false,
	} {
		if got := driver.ExtensionName(k); got != want {
			t.Errorf("ExtensionName(%q) = %v, want %v", k, got, want)
		}
	}
}
