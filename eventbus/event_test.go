package eventbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/paissive/go-eventbus/eventbus"
)

func TestEventTypeString(t *testing.T) {
	want := map[eventbus.EventType]string{
		eventbus.Domain:       "domain",
		eventbus.Integration:  "integration",
		eventbus.System:       "system",
		eventbus.User:         "user",
		eventbus.Notification: "notification",
		0:                     "EventType(0)",
		6:                     "EventType(6)",
		255:                   "EventType(255)",
	}
	for typ, s := range want {
		if got := typ.String(); got != s {
			t.Errorf("EventType(%d).String() = %q, want %q", uint8(typ), got, s)
		}
	}
}

func TestParseEventType(t *testing.T) {
	for in, want := range map[string]eventbus.EventType{
		"domain": eventbus.Domain, "DOMAIN": eventbus.Domain, "Domain": eventbus.Domain,
		"integration": eventbus.Integration, "INTEGRATION": eventbus.Integration,
		"system": eventbus.System, "SyStEm": eventbus.System,
		"user": eventbus.User, "USER": eventbus.User,
		"notification": eventbus.Notification, "Notification": eventbus.Notification,
	} {
		got, err := eventbus.ParseEventType(in)
		if err != nil || got != want {
			t.Errorf("ParseEventType(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "domains", " domain", "domain ", "EventType(1)", "1", "dömain", "event"} {
		got, err := eventbus.ParseEventType(in)
		if err == nil {
			t.Errorf("ParseEventType(%q) = %v, want an error", in, got)
			continue
		}
		if !errors.Is(err, eventbus.ErrInvalidEvent) {
			t.Errorf("ParseEventType(%q) error %v does not wrap ErrInvalidEvent", in, err)
		}
		if !strings.Contains(err.Error(), "domain, integration, system, user, notification") {
			t.Errorf("ParseEventType(%q) error %q does not list the valid types", in, err)
		}
	}
}

type signup struct {
	Email string `json:"email"`
	Plan  string `json:"plan,omitempty"`
}

func TestNewEvent(t *testing.T) {
	before := time.Now()
	ev, err := eventbus.NewEvent("user.registered", signup{Email: "a@example.com"}, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := uuid.Parse(ev.ID); err != nil {
		t.Errorf("ID %q is not a UUID: %v", ev.ID, err)
	}
	if ev.Name != "user.registered" || ev.Source != "accounts" || ev.Type != eventbus.User {
		t.Errorf("NewEvent = %+v", ev)
	}
	if ev.Time.Location() != time.UTC {
		t.Errorf("Time %v is not in UTC", ev.Time)
	}
	if ev.Time.Before(before.Add(-time.Millisecond)) || ev.Time.After(after.Add(time.Millisecond)) {
		t.Errorf("Time %v is not between %v and %v", ev.Time, before, after)
	}
	if string(ev.Data) != `{"email":"a@example.com"}` {
		t.Errorf("Data = %s", ev.Data)
	}
	if ev.CorrelationID != "" || ev.CausationID != "" || ev.PartitionKey != "" || ev.DataVersion != "" || ev.Metadata != nil {
		t.Errorf("optional fields set without options: %+v", ev)
	}

	ev2, err := eventbus.NewEvent("user.registered", nil, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	if err != nil {
		t.Fatal(err)
	}
	if ev2.ID == ev.ID {
		t.Error("two events got the same ID")
	}
	if string(ev2.Data) != "null" {
		t.Errorf("nil data = %s, want null", ev2.Data)
	}
}

func TestNewEventOptions(t *testing.T) {
	ev, err := eventbus.NewEvent("order.placed", json.RawMessage(`{"n": 1}`), eventbus.WithSource("shop"), withID("order-42"), eventbus.WithCorrelationID("corr"), eventbus.WithPartitionKey("customer-7"), eventbus.WithDataVersion("2.1"), eventbus.WithMetadata("tenant", "acme"), eventbus.WithMetadata("région", "ünïcode"))
	if err != nil {
		t.Fatal(err)
	}
	want := eventbus.Event{
		ID: "order-42", Name: "order.placed", Source: "shop", Type: eventbus.Domain,
		Time: ev.Time, DataVersion: "2.1", CorrelationID: "corr",
		PartitionKey: "customer-7", Metadata: map[string]string{"tenant": "acme", "région": "ünïcode"},
		Data: json.RawMessage(`{"n": 1}`),
	}
	assertEventEqual(t, ev, want)
	if ev.Time.Location() != time.UTC || time.Since(ev.Time) > time.Minute {
		t.Errorf("Time = %v (%v), want now in UTC", ev.Time, ev.Time.Location())
	}
	// []byte is taken as JSON too.
	ev, err = eventbus.NewEvent("a", []byte(`[1,2]`), eventbus.WithSource("s"), eventbus.WithType(eventbus.System))
	if err != nil || string(ev.Data) != "[1,2]" {
		t.Errorf("NewEvent with []byte = %s, %v", ev.Data, err)
	}
	// A string is marshalled, not taken as JSON.
	ev, err = eventbus.NewEvent("a", "[1,2]", eventbus.WithSource("s"), eventbus.WithType(eventbus.System))
	if err != nil || string(ev.Data) != `"[1,2]"` {
		t.Errorf("NewEvent with string = %s, %v", ev.Data, err)
	}
}

func TestNewEventInvalid(t *testing.T) {
	cases := []struct {
		label    string
		name     string
		source   string
		typ      eventbus.EventType
		data     any
		opts     []eventbus.EventOption
		sentinel error
		mention  string
	}{
		{"empty name", "", "s", eventbus.Domain, nil, nil, eventbus.ErrInvalidName, "empty"},
		{"wildcard name", "user.*", "s", eventbus.Domain, nil, nil, eventbus.ErrInvalidName, `"*"`},
		{"bad segment", "user..x", "s", eventbus.Domain, nil, nil, eventbus.ErrInvalidName, "segment 2"},
		{"unknown type", "a", "s", 42, nil, nil, eventbus.ErrInvalidEvent, "EventType(42)"},
		{"empty ID", "a", "s", eventbus.Domain, nil, []eventbus.EventOption{withID("")}, eventbus.ErrInvalidEvent, "ID"},
		{"invalid raw JSON", "a", "s", eventbus.Domain, json.RawMessage(`{"a":`), nil, eventbus.ErrInvalidEvent, "JSON"},
		{"invalid JSON bytes", "a", "s", eventbus.Domain, []byte("not json"), nil, eventbus.ErrInvalidEvent, "JSON"},
		{"empty raw JSON", "a", "s", eventbus.Domain, json.RawMessage{}, nil, eventbus.ErrInvalidEvent, "JSON"},
		{"unmarshallable", "a", "s", eventbus.Domain, make(chan int), nil, eventbus.ErrInvalidEvent, "JSON"},
		{"unmarshallable float", "a", "s", eventbus.Domain, map[string]float64{"x": inf()}, nil, eventbus.ErrInvalidEvent, "JSON"},
	}
	for _, tc := range cases {
		ev, err := eventbus.NewEvent(tc.name, tc.data, append([]eventbus.EventOption{eventbus.WithSource(tc.source), eventbus.WithType(tc.typ)}, tc.opts...)...)
		if err == nil {
			t.Errorf("%s: NewEvent = %+v, want an error", tc.label, ev)
			continue
		}
		if !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: error %v does not wrap %v", tc.label, err, tc.sentinel)
		}
		if !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: error %q does not mention %s", tc.label, err, tc.mention)
		}
		if ev.ID != "" {
			t.Errorf("%s: NewEvent returned a non-zero event with its error", tc.label)
		}
	}
}

func inf() float64 {
	var zero float64
	return 1 / zero
}

// TestNewEventDefaults: source and kind are optional; the kind defaults to
// Domain and Publish fills the source with the service name.
func TestNewEventDefaults(t *testing.T) {
	ev, err := eventbus.NewEvent("a.b", 1)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Source != "" || ev.Type != eventbus.Domain || ev.ID == "" || ev.Time.IsZero() {
		t.Errorf("NewEvent without options = %+v; want no source, Domain, an ID and a time", ev)
	}
}

// TestPublishValidates: Publish checks what NewEvent checked, since fields
// can be set after it, and fills the source and the kind.
func TestPublishValidates(t *testing.T) {
	b := newMemBus(t, "validates")
	got := make(chan eventbus.Event, 1)
	if err := b.Subscribe("a.#", func(_ context.Context, ev eventbus.Event) error { got <- ev; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev, _ := eventbus.NewEvent("a.b", 1)
	ev.Data = json.RawMessage("{")
	if err := b.Publish(context.Background(), ev); !errors.Is(err, eventbus.ErrInvalidEvent) {
		t.Errorf("Publish with data that is not JSON: %v", err)
	}
	ev.Type = 42
	ev.Data = nil // no data is allowed
	if err := b.Publish(context.Background(), ev); !errors.Is(err, eventbus.ErrInvalidEvent) {
		t.Errorf("Publish with an unknown kind: %v", err)
	}
	ev.Type = 0
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatalf("Publish without data, source and kind: %v", err)
	}
	select {
	case h := <-got:
		if h.Source != "validates" || h.Type != eventbus.Domain || string(h.Data) != "null" {
			t.Errorf("handled %+v; want source validates, Domain, null data", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not handled")
	}
}

func TestEventDecode(t *testing.T) {
	ev, err := eventbus.NewEvent("user.registered", signup{Email: "ü@example.com", Plan: "pro"}, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	if err != nil {
		t.Fatal(err)
	}
	var got signup
	if err := ev.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got != (signup{Email: "ü@example.com", Plan: "pro"}) {
		t.Errorf("Decode = %+v", got)
	}
	var m map[string]any
	if err := ev.Decode(&m); err != nil || m["plan"] != "pro" {
		t.Errorf("Decode into a map = %v, %v", m, err)
	}

	var n int
	err = ev.Decode(&n)
	if err == nil {
		t.Error("Decode of an object into an int succeeded")
	} else if !strings.Contains(err.Error(), ev.ID) || !strings.Contains(err.Error(), "user.registered") {
		t.Errorf("Decode error %q does not name the event", err)
	}
	var ute *json.UnmarshalTypeError
	if !errors.As(err, &ute) {
		t.Errorf("Decode error %v does not wrap the JSON error", err)
	}

	ev.Data = nil
	if err := ev.Decode(&got); !errors.Is(err, eventbus.ErrInvalidEvent) {
		t.Errorf("Decode without data = %v, want ErrInvalidEvent", err)
	}
}

// assertEventEqual compares events field by field; a nil and an empty
// Metadata map are equal.
func assertEventEqual(t *testing.T, got, want eventbus.Event) {
	t.Helper()
	if got.ID != want.ID || got.Name != want.Name || got.Source != want.Source || got.Type != want.Type ||
		got.DataVersion != want.DataVersion || got.CorrelationID != want.CorrelationID ||
		got.CausationID != want.CausationID || got.PartitionKey != want.PartitionKey {
		t.Errorf("event differs:\n got  %+v\n want %+v", got, want)
	}
	if !got.Time.Equal(want.Time) {
		t.Errorf("Time = %v, want %v", got.Time, want.Time)
	}
	if string(got.Data) != string(want.Data) {
		t.Errorf("Data = %s, want %s", got.Data, want.Data)
	}
	if len(got.Metadata) != len(want.Metadata) {
		t.Errorf("Metadata = %q, want %q", got.Metadata, want.Metadata)
	}
	for k, v := range want.Metadata {
		if gv, ok := got.Metadata[k]; !ok || gv != v {
			t.Errorf("Metadata[%q] = %q (present %v), want %q", k, gv, ok, v)
		}
	}
}

// withID sets the event's ID, as a caller does by setting ev.ID.
func withID(id string) eventbus.EventOption { return func(e *eventbus.Event) { e.ID = id } }
