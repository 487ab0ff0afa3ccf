package eventbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/middleware"
	"github.com/paissive/go-eventbus/transports/memory"
)

// Three versions of one event, as three releases of a service declare it.
// 1.1 adds an optional field; 2 renames amount to total_cents.
type (
	orderPlacedV1 struct {
		CustomerID string `json:"customer_id" validate:"required"`
		Amount     int    `json:"amount" validate:"gt=0"`
	}
	orderPlacedV11 struct {
		CustomerID string `json:"customer_id" validate:"required"`
		Amount     int    `json:"amount" validate:"gt=0"`
		Currency   string `json:"currency,omitempty" validate:"omitempty,iso4217"`
	}
	orderPlacedV2 struct {
		CustomerID string `json:"customer_id" validate:"required"`
		TotalCents int    `json:"total_cents" validate:"gt=0"`
		Currency   string `json:"currency,omitempty"`
	}
)

// renameAmount is the upcaster from major 1 to 2.
func renameAmount(data json.RawMessage) (json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	if a, ok := m["amount"]; ok {
		m["total_cents"] = a
		delete(m, "amount")
	}
	return json.Marshal(m)
}

var (
	orderV1  = eventbus.MustSchema[orderPlacedV1]("order.placed", eventbus.SchemaVersion("1"))
	orderV11 = eventbus.MustSchema[orderPlacedV11]("order.placed", eventbus.SchemaVersion("1.1"))
	orderV2  = eventbus.MustSchema[orderPlacedV2]("order.placed", eventbus.SchemaVersion("2"), eventbus.Upcast(1, renameAmount))
)

func rawEvent(t *testing.T, version, data string) eventbus.Event {
	t.Helper()
	ev, err := eventbus.NewEvent("order.placed", json.RawMessage(data), eventbus.WithSource("checkout"), eventbus.WithDataVersion(version))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// assertVersionError checks that err is the permanent version error and
// that its message contains each of want.
func assertVersionError(t *testing.T, label string, err error, want ...string) {
	t.Helper()
	if !errors.Is(err, eventbus.ErrDataVersion) {
		t.Errorf("%s: error %v does not wrap ErrDataVersion", label, err)
	}
	if !errors.Is(err, eventbus.ErrPermanent) || !middleware.IsPermanent(err) || middleware.Reason(err) != middleware.ReasonPermanent {
		t.Errorf("%s: error %v is not permanent", label, err)
	}
	var ve *eventbus.ValidationError
	if errors.As(err, &ve) {
		t.Errorf("%s: a version error is not a validation error: %v", label, err)
	}
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not contain %q", label, err, w)
		}
	}
}

func TestSchemaReadsItsMajorAtAnyMinor(t *testing.T) {
	for _, version := range []string{"1", "1.0", "1.1", "1.7"} {
		got, err := orderV11.Parse(rawEvent(t, version, `{"customer_id":"c1","amount":5,"currency":"EUR","gift_wrap":true}`))
		if err != nil || got != (orderPlacedV11{CustomerID: "c1", Amount: 5, Currency: "EUR"}) {
			t.Errorf("1.1 schema, event %s: Parse = %+v, %v", version, got, err)
		}
	}
	if ev, err := orderV11.NewEvent(orderPlacedV11{CustomerID: "c1", Amount: 5}); err != nil || ev.DataVersion != "1.1" {
		t.Errorf("NewEvent stamps version %q (%v), want it as declared", ev.DataVersion, err)
	}
}

func TestSchemaRejectsANewerMajor(t *testing.T) {
	_, err := orderV1.Parse(rawEvent(t, "3", `{"customer_id":"c1","amount":5}`))
	assertVersionError(t, "newer major", err,
		"order.placed data version 3.0 is newer than this consumer's schema (1.x); deploy a consumer that knows version 3, then replay the poison queue")
	_, err = orderV2.Parse(rawEvent(t, "2.9", `{"customer_id":"c1","total_cents":5}`))
	if err != nil {
		t.Errorf("newer minor of the schema's major: %v", err)
	}
}

func TestSchemaUnversionedEvents(t *testing.T) {
	unversioned := rawEvent(t, "", `{"customer_id":"c1","amount":5}`)
	_, err := orderV2.Parse(unversioned)
	assertVersionError(t, "unversioned", err, "order.placed event "+unversioned.ID+" has no data version", "schema is version 2.0", "AssumeVersion")

	assumeV1 := eventbus.MustSchema[orderPlacedV2]("order.placed", eventbus.SchemaVersion("2"), eventbus.Upcast(1, renameAmount), eventbus.AssumeVersion("1"))
	got, err := assumeV1.Parse(unversioned)
	if err != nil || got.TotalCents != 5 {
		t.Errorf("AssumeVersion(1): Parse = %+v, %v; want it upcast", got, err)
	}
	assumeV2 := eventbus.MustSchema[orderPlacedV2]("order.placed", eventbus.SchemaVersion("2"), eventbus.AssumeVersion("2.0"))
	got, err = assumeV2.Parse(rawEvent(t, "", `{"customer_id":"c1","total_cents":7}`))
	if err != nil || got.TotalCents != 7 {
		t.Errorf("AssumeVersion(2.0): Parse = %+v, %v", got, err)
	}
	// AssumeVersion is for events without a version only.
	_, err = assumeV1.Parse(rawEvent(t, "3", `{}`))
	assertVersionError(t, "AssumeVersion and a newer major", err, "version 3.0 is newer")

	// A schema without a version checks none.
	plain := eventbus.MustSchema[orderPlacedV1]("order.placed")
	for _, v := range []string{"", "1", "7", "not-a-version"} {
		if _, err := plain.Parse(rawEvent(t, v, `{"customer_id":"c1","amount":5}`)); err != nil {
			t.Errorf("unversioned schema, event version %q: %v", v, err)
		}
	}
}

func TestVersionStrings(t *testing.T) {
	valid := []string{"0", "1", "1.0", "2.15", "10", "123456789.1"}
	invalid := []string{"v1", "1.", ".1", "01", "1.01", "1.2.3", "-1", "+1", " 1", "1 ", "1e3", "1234567890", "one", "1.x"}
	for _, v := range valid {
		if _, err := eventbus.NewSchema[orderPlacedV1]("order.placed", eventbus.SchemaVersion(v)); err != nil {
			t.Errorf("SchemaVersion(%q): %v", v, err)
		}
		if _, err := orderV1.Parse(rawEvent(t, v, `{"customer_id":"c1","amount":5}`)); err != nil && !errors.Is(err, eventbus.ErrDataVersion) {
			t.Errorf("event version %q: %v", v, err)
		}
	}
	for _, v := range invalid {
		_, err := eventbus.NewSchema[orderPlacedV1]("order.placed", eventbus.SchemaVersion(v))
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q is not a data version: use MAJOR or MAJOR.MINOR", v)) {
			t.Errorf("SchemaVersion(%q): error %v, want one explaining the format", v, err)
		}
		ev := rawEvent(t, v, `{"customer_id":"c1","amount":5}`)
		_, err = orderV1.Parse(ev)
		assertVersionError(t, "event version "+v, err, fmt.Sprintf("order.placed event %s: data version %q is not a data version: use MAJOR or MAJOR.MINOR", ev.ID, v))
	}
}

func TestUpcastChain(t *testing.T) {
	type v3 struct {
		CustomerID string `json:"customer_id" validate:"required"`
		Total      struct {
			Cents    int    `json:"cents" validate:"gt=0"`
			Currency string `json:"currency"`
		} `json:"total"`
	}
	var calls []string
	nestTotal := func(data json.RawMessage) (json.RawMessage, error) {
		calls = append(calls, "2->3")
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, err
		}
		m["total"] = map[string]any{"cents": m["total_cents"], "currency": "EUR"}
		delete(m, "total_cents")
		return json.Marshal(m)
	}
	rename := func(data json.RawMessage) (json.RawMessage, error) {
		calls = append(calls, "1->2")
		return renameAmount(data)
	}
	// Declared in any order; applied oldest first.
	s := eventbus.MustSchema[v3]("order.placed", eventbus.SchemaVersion("3.2"), eventbus.Upcast(2, nestTotal), eventbus.Upcast(1, rename))
	for _, c := range []struct {
		version, data string
		calls         []string
	}{
		{"1", `{"customer_id":"c1","amount":5}`, []string{"1->2", "2->3"}},
		{"1.4", `{"customer_id":"c1","amount":5,"note":"x"}`, []string{"1->2", "2->3"}},
		{"2", `{"customer_id":"c1","total_cents":5}`, []string{"2->3"}},
		{"3", `{"customer_id":"c1","total":{"cents":5,"currency":"EUR"}}`, nil},
	} {
		calls = nil
		ev := rawEvent(t, c.version, c.data)
		got, err := s.Parse(ev)
		if err != nil || got.CustomerID != "c1" || got.Total.Cents != 5 || got.Total.Currency != "EUR" {
			t.Errorf("version %s: Parse = %+v, %v", c.version, got, err)
		}
		if fmt.Sprint(calls) != fmt.Sprint(c.calls) {
			t.Errorf("version %s: upcasters called %v, want %v", c.version, calls, c.calls)
		}
		if string(ev.Data) != c.data {
			t.Errorf("version %s: Parse changed the event's data to %s", c.version, ev.Data)
		}
	}

	// Older than the oldest upcaster.
	_, err := s.Parse(rawEvent(t, "0.9", `{}`))
	assertVersionError(t, "older than the upcasters", err,
		"order.placed data version 0.9 is older than this consumer's schema (3.x), which upcasts from version 1 on; add Upcast(0, ...)")
	_, err = orderV1.Parse(rawEvent(t, "0", `{}`))
	assertVersionError(t, "no upcasters", err, "order.placed data version 0.0 is older than this consumer's schema (1.x), which declares no upcasters; add Upcast(0, ...) to the schema")
	_, err = eventbus.MustSchema[orderPlacedV2]("order.placed", eventbus.SchemaVersion("3")).Parse(rawEvent(t, "1", `{}`))
	assertVersionError(t, "two steps missing", err, "which declares no upcasters; add Upcast(1, ...) to Upcast(2, ...) to the schema, deploy it, then replay the poison queue")

	// An upcaster's error is permanent and kept.
	_, err = s.Parse(rawEvent(t, "1", `["not","an","object"]`))
	assertVersionError(t, "upcaster error", err, "upcasting order.placed event", "from version 1 to 2")
	var jsonErr *json.UnmarshalTypeError
	if !errors.As(err, &jsonErr) {
		t.Errorf("upcaster error %v does not wrap the upcaster's error", err)
	}
	bad := eventbus.MustSchema[orderPlacedV2]("order.placed", eventbus.SchemaVersion("2"),
		eventbus.Upcast(1, func(json.RawMessage) (json.RawMessage, error) { return json.RawMessage("{"), nil }))
	_, err = bad.Parse(rawEvent(t, "1", `{}`))
	assertVersionError(t, "upcaster output not JSON", err, "the upcaster from version 1 returned data that is not JSON")

	// The upcast data is validated as the current version.
	_, err = s.Parse(rawEvent(t, "1", `{"customer_id":"c1","amount":0}`))
	assertValidationError(t, "upcast invalid data", err)
	assertFields(t, "upcast invalid data", err, eventbus.FieldError{Path: "total.cents", Rule: "gt", Param: "0", Message: "must be greater than 0"})
}

func TestNewSchemaChecksVersionRules(t *testing.T) {
	up := func(d json.RawMessage) (json.RawMessage, error) { return d, nil }
	v := eventbus.SchemaVersion
	cases := []struct {
		opts []eventbus.SchemaOption
		want string
	}{
		{[]eventbus.SchemaOption{eventbus.Upcast(1, up)}, "Upcast(1, ...) needs SchemaVersion"},
		{[]eventbus.SchemaOption{eventbus.AssumeVersion("1")}, `AssumeVersion("1") needs SchemaVersion`},
		{[]eventbus.SchemaOption{v("2"), eventbus.Upcast(2, up)}, "Upcast(2, ...) reads major 2, but the schema is version 2.0"},
		{[]eventbus.SchemaOption{v("2"), eventbus.Upcast(3, up)}, "Upcast(3, ...) reads major 3"},
		{[]eventbus.SchemaOption{v("2"), eventbus.Upcast(-1, up)}, "Upcast(-1, ...): major versions are not negative"},
		{[]eventbus.SchemaOption{v("2"), eventbus.Upcast(1, nil)}, "Upcast(1, nil)"},
		{[]eventbus.SchemaOption{v("3"), eventbus.Upcast(1, up), eventbus.Upcast(1, up), eventbus.Upcast(2, up)}, "Upcast(1, ...) is declared twice"},
		{[]eventbus.SchemaOption{v("4"), eventbus.Upcast(1, up), eventbus.Upcast(3, up)}, "upcasters from majors 1 and 3 but not 2"},
		{[]eventbus.SchemaOption{v("3"), eventbus.Upcast(1, up)}, "the upcasters stop at major 2, but the schema is version 3.0; add Upcast(2, ...)"},
		{[]eventbus.SchemaOption{v("2"), eventbus.AssumeVersion("v1")}, `AssumeVersion: "v1" is not a data version`},
		{[]eventbus.SchemaOption{v("2"), eventbus.AssumeVersion("3")}, `AssumeVersion("3"): the schema (version 2.0) cannot read major 3`},
		{[]eventbus.SchemaOption{v("2"), eventbus.AssumeVersion("1")}, `AssumeVersion("1"): the schema (version 2.0) cannot read major 1; it reads majors 2 to 2`},
	}
	for _, c := range cases {
		_, err := eventbus.NewSchema[orderPlacedV2]("order.placed", c.opts...)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "NewSchema order.placed") {
			t.Errorf("NewSchema: error %v, want one containing %q", err, c.want)
		}
	}
	if _, err := eventbus.NewSchema[orderPlacedV2]("order.placed", v("3"), eventbus.Upcast(2, up), eventbus.Upcast(1, up), eventbus.AssumeVersion("1")); err != nil {
		t.Errorf("a full chain: %v", err)
	}
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "Upcast(2, nil)") {
				t.Errorf("MustSchema with a nil upcaster: panic %v", r)
			}
		}()
		eventbus.MustSchema[orderPlacedV2]("order.placed", v("3"), eventbus.Upcast(2, nil))
	}()
}

func TestSchemaHandlerGetsUpcastDataAndTheOriginalEvent(t *testing.T) {
	var gotData orderPlacedV2
	var gotEv eventbus.Event
	h := orderV2.Handler(func(_ context.Context, data orderPlacedV2, ev eventbus.Event) error {
		gotData, gotEv = data, ev
		return nil
	})
	old := rawEvent(t, "1", `{"customer_id":"c1","amount":5}`)
	if err := h(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	if gotData.TotalCents != 5 || gotEv.DataVersion != "1" || string(gotEv.Data) != string(old.Data) {
		t.Errorf("handler got %+v and event version %q data %s; want the upcast data and the event as received", gotData, gotEv.DataVersion, gotEv.Data)
	}
	called := false
	h = orderV1.Handler(func(context.Context, orderPlacedV1, eventbus.Event) error { called = true; return nil })
	assertVersionError(t, "handler, newer major", h(context.Background(), rawEvent(t, "2", `{}`)), "newer")
	if called {
		t.Error("the typed handler was called with an event of a newer major")
	}
}

// handled is what a consumer's typed handler received.
type handled[T any] struct {
	data T
	ev   eventbus.Event
}

// deployment is a producer service and a consumer service ("billing") on
// one fresh in-process broker, as two separately deployed services.
type deployment struct {
	t      *testing.T
	broker string
}

func newDeployment(t *testing.T) *deployment {
	name := "schema-evolution-" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, t.Name())
	t.Cleanup(func() { memory.Forget(name) })
	return &deployment{t: t, broker: name}
}

func (d *deployment) bus(service string) *eventbus.Bus {
	d.t.Helper()
	b, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: service, URL: "mem://" + d.broker})
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

// consumer starts the billing service with schema s; its typed handler
// reports each event on the channel.
func consumer[T any](d *deployment, s *eventbus.Schema[T]) (*eventbus.Bus, <-chan handled[T]) {
	d.t.Helper()
	b := d.bus("billing")
	ch := make(chan handled[T], 10)
	err := b.Subscribe("order.placed", s.Handler(func(_ context.Context, data T, ev eventbus.Event) error {
		ch <- handled[T]{data, ev}
		return nil
	}))
	if err != nil {
		d.t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		d.t.Fatal(err)
	}
	return b, ch
}

// produce publishes an event made with producer schema s.
func produce[T any](d *deployment, s *eventbus.Schema[T], data T) eventbus.Event {
	d.t.Helper()
	ev, err := s.NewEvent(data, eventbus.WithSource("checkout"))
	if err != nil {
		d.t.Fatal(err)
	}
	if ev.DataVersion == "" {
		d.t.Fatalf("the producer stamped no version")
	}
	if err := d.bus("checkout").Publish(context.Background(), ev); err != nil {
		d.t.Fatal(err)
	}
	return ev
}

func receive[T any](t *testing.T, ch <-chan handled[T]) handled[T] {
	t.Helper()
	select {
	case h := <-ch:
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("the consumer did not handle the event within 10s")
		return handled[T]{}
	}
}

// waitPoisoned waits for the consumer to poison the event with this ID.
func waitPoisoned(t *testing.T, b *eventbus.Bus, id string) eventbus.PoisonedEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ps, err := b.Poisoned(ctx, eventbus.PoisonFilter{})
		if err != nil {
			t.Fatalf("listing the poison queue: %v", err)
		}
		for _, p := range ps {
			if p.Event.ID == id {
				return p
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("event %s not poisoned within 10s (poison queue: %+v)", id, ps)
		case <-tick.C:
		}
	}
}

// TestRollingDeploy sends three versions of order.placed through a bus in
// both directions of a rolling deploy: producers and consumers of
// different versions meet while services are upgraded one at a time.
func TestRollingDeploy(t *testing.T) {
	t.Run("v1 producer, v1.1 consumer", func(t *testing.T) {
		d := newDeployment(t)
		_, got := consumer(d, orderV11)
		ev := produce(d, orderV1, orderPlacedV1{CustomerID: "c1", Amount: 1250})
		h := receive(t, got)
		if h.data != (orderPlacedV11{CustomerID: "c1", Amount: 1250}) || h.ev.ID != ev.ID || h.ev.DataVersion != "1" {
			t.Errorf("handled %+v (version %q)", h.data, h.ev.DataVersion)
		}
	})

	t.Run("v1.1 producer, v1 consumer: the added field is ignored", func(t *testing.T) {
		d := newDeployment(t)
		_, got := consumer(d, orderV1)
		ev := produce(d, orderV11, orderPlacedV11{CustomerID: "c1", Amount: 1250, Currency: "EUR"})
		if !strings.Contains(string(ev.Data), `"currency":"EUR"`) {
			t.Fatalf("the 1.1 event lacks its new field: %s", ev.Data)
		}
		h := receive(t, got)
		if h.data != (orderPlacedV1{CustomerID: "c1", Amount: 1250}) || h.ev.DataVersion != "1.1" {
			t.Errorf("handled %+v (version %q)", h.data, h.ev.DataVersion)
		}
	})

	t.Run("v1 and v1.1 producers, v2 consumer: upcast", func(t *testing.T) {
		d := newDeployment(t)
		_, got := consumer(d, orderV2)
		produce(d, orderV1, orderPlacedV1{CustomerID: "c1", Amount: 1250})
		produce(d, orderV11, orderPlacedV11{CustomerID: "c2", Amount: 990, Currency: "USD"})
		want := map[string]orderPlacedV2{
			"1":   {CustomerID: "c1", TotalCents: 1250},
			"1.1": {CustomerID: "c2", TotalCents: 990, Currency: "USD"},
		}
		for range 2 {
			h := receive(t, got)
			if w, ok := want[h.ev.DataVersion]; !ok || h.data != w {
				t.Errorf("version %q handled as %+v, want %+v", h.ev.DataVersion, h.data, w)
			}
			delete(want, h.ev.DataVersion)
		}
	})

	t.Run("v2 producer, v1 consumer: poisoned, replayed once the consumer knows v2", func(t *testing.T) {
		d := newDeployment(t)
		old, got := consumer(d, orderV1)
		ev := produce(d, orderV2, orderPlacedV2{CustomerID: "c1", TotalCents: 1250})
		p := waitPoisoned(t, old, ev.ID)
		if p.Reason != middleware.ReasonPermanent || p.Attempts != 1 || p.Event.DataVersion != "2" {
			t.Errorf("poisoned for %q after %d attempt(s), version %q; want permanent after 1, version 2", p.Reason, p.Attempts, p.Event.DataVersion)
		}
		const want = "order.placed data version 2.0 is newer than this consumer's schema (1.x); deploy a consumer that knows version 2, then replay the poison queue"
		if !strings.Contains(p.Error, want) {
			t.Errorf("poison error %q does not contain %q", p.Error, want)
		}
		select {
		case h := <-got:
			t.Errorf("the v1 handler was called with %+v", h)
		default:
		}

		// Do what the error says: deploy the v2 consumer, replay.
		if err := old.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		upgraded, got2 := consumer(d, orderV2)
		if n, err := upgraded.Replay(context.Background(), eventbus.PoisonFilter{IDs: []string{ev.ID}}); err != nil || n != 1 {
			t.Fatalf("Replay = %d, %v", n, err)
		}
		if h := receive(t, got2); h.ev.ID != ev.ID || h.data != (orderPlacedV2{CustomerID: "c1", TotalCents: 1250}) {
			t.Errorf("after the upgrade, handled %s: %+v", h.ev.ID, h.data)
		}
	})

	t.Run("unversioned producer, v2 consumer: poisoned by default", func(t *testing.T) {
		d := newDeployment(t)
		b, got := consumer(d, orderV2)
		ev, err := eventbus.NewEvent("order.placed", map[string]any{"customer_id": "c1", "amount": 1250}, eventbus.WithSource("legacy"))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.bus("legacy").Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		p := waitPoisoned(t, b, ev.ID)
		if p.Reason != middleware.ReasonPermanent || p.Attempts != 1 || !strings.Contains(p.Error, "has no data version") || !strings.Contains(p.Error, "AssumeVersion") {
			t.Errorf("poisoned for %q after %d attempt(s): %s", p.Reason, p.Attempts, p.Error)
		}
		select {
		case h := <-got:
			t.Errorf("the handler was called with %+v", h)
		default:
		}
	})

	t.Run("unversioned producer, v2 consumer assuming version 1: upcast", func(t *testing.T) {
		d := newDeployment(t)
		_, got := consumer(d, eventbus.MustSchema[orderPlacedV2]("order.placed",
			eventbus.SchemaVersion("2"), eventbus.Upcast(1, renameAmount), eventbus.AssumeVersion("1")))
		ev, err := eventbus.NewEvent("order.placed", map[string]any{"customer_id": "c1", "amount": 1250}, eventbus.WithSource("legacy"))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.bus("legacy").Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		if h := receive(t, got); h.data != (orderPlacedV2{CustomerID: "c1", TotalCents: 1250}) || h.ev.DataVersion != "" {
			t.Errorf("handled %+v (version %q)", h.data, h.ev.DataVersion)
		}
	})
}
