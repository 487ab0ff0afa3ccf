package eventbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/go-playground/validator/v10"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/middleware"
)

type userRegistered struct {
	UserID string `json:"user_id" validate:"required"`
	Email  string `json:"email" validate:"required,email"`
	Age    int    `json:"age,omitempty" validate:"gte=0,lte=150"`
}

func TestNewSchemaRejectsNonStruct(t *testing.T) {
	checks := map[string]func() error{
		"int":         func() error { _, err := eventbus.NewSchema[int]("a"); return err },
		"string":      func() error { _, err := eventbus.NewSchema[string]("a"); return err },
		"map":         func() error { _, err := eventbus.NewSchema[map[string]any]("a"); return err },
		"slice":       func() error { _, err := eventbus.NewSchema[[]userRegistered]("a"); return err },
		"any":         func() error { _, err := eventbus.NewSchema[any]("a"); return err },
		"*int":        func() error { _, err := eventbus.NewSchema[*int]("a"); return err },
		"**struct":    func() error { _, err := eventbus.NewSchema[**userRegistered]("a"); return err },
		"invalid nme": func() error { _, err := eventbus.NewSchema[userRegistered]("user.*"); return err },
	}
	for label, check := range checks {
		if err := check(); err == nil {
			t.Errorf("NewSchema[%s] succeeded, want an error", label)
		}
	}
	if _, err := eventbus.NewSchema[userRegistered]("user.registered"); err != nil {
		t.Errorf("NewSchema[struct]: %v", err)
	}
	if _, err := eventbus.NewSchema[*userRegistered]("user.registered"); err != nil {
		t.Errorf("NewSchema[*struct]: %v", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("MustSchema[int] did not panic")
			}
		}()
		eventbus.MustSchema[int]("a")
	}()
}

func TestSchemaNewEvent(t *testing.T) {
	s := eventbus.MustSchema[userRegistered]("user.registered", eventbus.SchemaVersion("2.0"))
	if s.Name() != "user.registered" {
		t.Errorf("Name = %q", s.Name())
	}
	ev, err := s.NewEvent(userRegistered{UserID: "u1", Email: "a@example.com"}, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User), eventbus.WithCorrelationID("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Name != "user.registered" || ev.DataVersion != "2.0" || ev.Source != "accounts" || ev.Type != eventbus.User || ev.CorrelationID != "c1" {
		t.Errorf("NewEvent = %+v", ev)
	}
	if string(ev.Data) != `{"user_id":"u1","email":"a@example.com"}` {
		t.Errorf("Data = %s", ev.Data)
	}
	// An explicit option wins over the schema version.
	ev, err = s.NewEvent(userRegistered{UserID: "u1", Email: "a@example.com"}, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User), eventbus.WithDataVersion("9"))
	if err != nil || ev.DataVersion != "9" {
		t.Errorf("WithDataVersion over SchemaVersion: %q, %v", ev.DataVersion, err)
	}
	// Without a version none is set.
	ev, err = eventbus.MustSchema[userRegistered]("user.registered").NewEvent(userRegistered{UserID: "u", Email: "e@x.io"}, eventbus.WithSource("accounts"))
	if err != nil || ev.DataVersion != "" {
		t.Errorf("no SchemaVersion: DataVersion %q, %v", ev.DataVersion, err)
	}

	for label, data := range map[string]userRegistered{
		"missing user":  {Email: "a@example.com"},
		"bad email":     {UserID: "u1", Email: "not-an-email"},
		"age too large": {UserID: "u1", Email: "a@example.com", Age: 200},
	} {
		_, err := s.NewEvent(data, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
		assertValidationError(t, label, err)
	}
	// Envelope errors still come from NewEvent.
	if _, err := s.NewEvent(userRegistered{UserID: "u", Email: "e@x.io"}, withID("")); !errors.Is(err, eventbus.ErrInvalidEvent) {
		t.Errorf("empty ID: %v", err)
	}
}

func TestSchemaPointerType(t *testing.T) {
	s := eventbus.MustSchema[*userRegistered]("user.registered")
	ev, err := s.NewEvent(&userRegistered{UserID: "u1", Email: "a@example.com"}, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Parse(ev)
	if err != nil || got == nil || got.UserID != "u1" {
		t.Fatalf("Parse = %+v, %v", got, err)
	}
	_, err = s.NewEvent(nil, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	assertValidationError(t, "nil pointer", err)
	_, err = s.NewEvent(&userRegistered{}, eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	assertValidationError(t, "invalid via pointer", err)
	ev.Data = json.RawMessage("null")
	_, err = s.Parse(ev)
	assertValidationError(t, "null data into pointer", err)
}

func TestSchemaParse(t *testing.T) {
	s := eventbus.MustSchema[userRegistered]("user.registered")
	mk := func(name, data string) eventbus.Event {
		t.Helper()
		ev, err := eventbus.NewEvent(name, json.RawMessage(data), eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	got, err := s.Parse(mk("user.registered", `{"user_id":"u1","email":"a@example.com","age":30}`))
	if err != nil {
		t.Fatal(err)
	}
	if got != (userRegistered{UserID: "u1", Email: "a@example.com", Age: 30}) {
		t.Errorf("Parse = %+v", got)
	}

	cases := map[string]eventbus.Event{
		"other name":        mk("user.deleted", `{"user_id":"u1","email":"a@example.com"}`),
		"fails validation":  mk("user.registered", `{"user_id":"","email":"a@example.com"}`),
		"bad email":         mk("user.registered", `{"user_id":"u1","email":"nope"}`),
		"wrong JSON type":   mk("user.registered", `{"user_id":1,"email":"a@example.com"}`),
		"not an object":     mk("user.registered", `[1,2]`),
		"null":              mk("user.registered", `null`),
		"trailing value":    {ID: "x", Name: "user.registered", Data: json.RawMessage(`{"user_id":"u1","email":"a@example.com"} {}`)},
		"no data":           {ID: "x", Name: "user.registered"},
		"not JSON (forged)": {ID: "x", Name: "user.registered", Data: json.RawMessage("{")},
	}
	for label, ev := range cases {
		got, err := s.Parse(ev)
		assertValidationError(t, label, err)
		if got != (userRegistered{}) {
			t.Errorf("%s: Parse returned data %+v with its error", label, got)
		}
	}
	if _, err := s.Parse(cases["other name"]); err == nil || !strings.Contains(err.Error(), "user.deleted") {
		t.Errorf("other name: error %v does not name the event", err)
	}
	// The validator's own errors stay reachable, and speak JSON names too.
	var verrs validator.ValidationErrors
	if _, err := s.Parse(cases["bad email"]); !errors.As(err, &verrs) || verrs[0].Field() != "email" || verrs[0].Tag() != "email" {
		t.Errorf("bad email: error %v does not carry the validator's errors with JSON names", err)
	}
}

// A schema is a tolerant reader unless Strict: a producer that adds a field
// must not poison the events of consumers that do not know it yet.
func TestSchemaTolerantReaderAndStrict(t *testing.T) {
	newer, err := eventbus.NewEvent("user.registered", json.RawMessage(`{"user_id":"u1","email":"a@example.com","admin":true,"profile":{"nested":[1,2]}}`), eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	if err != nil {
		t.Fatal(err)
	}
	got, err := eventbus.MustSchema[userRegistered]("user.registered").Parse(newer)
	if err != nil || got != (userRegistered{UserID: "u1", Email: "a@example.com"}) {
		t.Errorf("default schema: Parse of data with unknown fields = %+v, %v; want the known fields and no error", got, err)
	}

	strict := eventbus.MustSchema[userRegistered]("user.registered", eventbus.Strict())
	_, err = strict.Parse(newer)
	assertValidationError(t, "strict, unknown field", err)
	assertFields(t, "strict, unknown field", err, eventbus.FieldError{Path: "admin", Rule: "unknown", Message: "unknown field"})
	if err == nil || !strings.HasSuffix(err.Error(), "is invalid: admin: unknown field") {
		t.Errorf("strict: error %q does not name the unknown field", err)
	}
	// Strict still parses what it knows, and still validates.
	known, _ := eventbus.NewEvent("user.registered", json.RawMessage(`{"user_id":"u1","email":"a@example.com"}`), eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	if got, err := strict.Parse(known); err != nil || got.UserID != "u1" {
		t.Errorf("strict: Parse of known fields = %+v, %v", got, err)
	}
	invalid, _ := eventbus.NewEvent("user.registered", json.RawMessage(`{"user_id":"","email":"a@example.com"}`), eventbus.WithSource("accounts"), eventbus.WithType(eventbus.User))
	_, err = strict.Parse(invalid)
	assertFields(t, "strict, invalid", err, eventbus.FieldError{Path: "user_id", Rule: "required", Message: "required"})
}

func TestSchemaWithValidator(t *testing.T) {
	v := validator.New()
	if err := v.RegisterValidation("even", func(fl validator.FieldLevel) bool { return fl.Field().Int()%2 == 0 }); err != nil {
		t.Fatal(err)
	}
	type pair struct {
		N int `json:"n" validate:"even"`
	}
	s := eventbus.MustSchema[pair]("numbers.pair", eventbus.WithValidator(v))
	if _, err := s.NewEvent(pair{N: 2}, eventbus.WithSource("s")); err != nil {
		t.Errorf("even: %v", err)
	}
	_, err := s.NewEvent(pair{N: 3}, eventbus.WithSource("s"))
	assertValidationError(t, "odd", err)
	// A custom rule gets the generic message, under the JSON name, although
	// v has no tag-name function.
	assertFields(t, "odd", err, eventbus.FieldError{Path: "n", Rule: "even", Message: `fails the "even" rule`})
	if _, err := eventbus.NewSchema[pair]("numbers.pair", eventbus.WithValidator(nil)); err == nil {
		t.Error("WithValidator(nil) accepted")
	}
}

func TestSchemaHandler(t *testing.T) {
	s := eventbus.MustSchema[userRegistered]("user.registered")
	var calls []userRegistered
	fail := errors.New("downstream down")
	h := s.Handler(func(ctx context.Context, data userRegistered, ev eventbus.Event) error {
		if ctx.Value(ctxKey{}) != "v" {
			t.Error("the typed handler did not get the ctx")
		}
		if ev.Name != "user.registered" {
			t.Errorf("the typed handler got event %q", ev.Name)
		}
		calls = append(calls, data)
		if data.UserID == "fail" {
			return fail
		}
		return nil
	})
	ctx := context.WithValue(context.Background(), ctxKey{}, "v")
	good, _ := s.NewEvent(userRegistered{UserID: "u1", Email: "a@example.com"}, eventbus.WithSource("a"), eventbus.WithType(eventbus.User))
	if err := h(ctx, good); err != nil {
		t.Errorf("handler: %v", err)
	}
	failing, _ := s.NewEvent(userRegistered{UserID: "fail", Email: "a@example.com"}, eventbus.WithSource("a"), eventbus.WithType(eventbus.User))
	if err := h(ctx, failing); !errors.Is(err, fail) || errors.Is(err, eventbus.ErrPermanent) {
		t.Errorf("the handler's own error = %v, want it unchanged and not permanent", err)
	}
	bad, _ := eventbus.NewEvent("user.registered", json.RawMessage(`{"user_id":""}`), eventbus.WithSource("a"), eventbus.WithType(eventbus.User))
	assertValidationError(t, "handler with invalid data", h(ctx, bad))
	if len(calls) != 2 || calls[0].UserID != "u1" {
		t.Errorf("typed handler calls = %+v, want two (invalid data must not reach it)", calls)
	}
}

type ctxKey struct{}

func assertValidationError(t *testing.T, label string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", label)
		return
	}
	if !errors.Is(err, eventbus.ErrPermanent) {
		t.Errorf("%s: error %v is not permanent", label, err)
	}
	if !middleware.IsPermanent(err) {
		t.Errorf("%s: error %v is not permanent for the retry middleware", label, err)
	}
	var ve *eventbus.ValidationError
	if !errors.As(err, &ve) {
		t.Errorf("%s: error %v is not a *ValidationError", label, err)
	} else if ve.Schema == "" || !strings.Contains(err.Error(), ve.Schema) {
		t.Errorf("%s: error %q does not name its schema", label, err)
	}
}
