package eventbus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"

	"github.com/go-playground/validator/v10"

	"github.com/paissive/go-eventbus/internal/names"
)

// Schema binds an event name to a Go data type, the analogue of the
// original's pydantic EventSchema: it builds events whose data is validated,
// and parses handled events back into the type. Validation uses
// github.com/go-playground/validator/v10 struct tags (`validate:"required"`);
// its errors name JSON fields (see [ValidationError]).
//
// Schemas are made for services that deploy one at a time. By default a
// schema is a tolerant reader: JSON fields the type lacks are ignored, so a
// producer may add an optional field before its consumers know it. A
// schema with a [SchemaVersion] also checks the version of each event it
// reads, carries older major versions forward with [Upcast], and rejects
// what it cannot read with a permanent error that names both versions
// ([ErrDataVersion]).
type Schema[T any] struct {
	name     string
	ver      *versioning // nil: the schema checks no versions
	strict   bool
	validate *validator.Validate
	rt       reflect.Type // the struct type of T, for JSON paths in errors
}

// SchemaOption configures a [Schema].
type SchemaOption func(*schemaConfig)

type schemaConfig struct {
	version   string
	strict    bool
	validate  *validator.Validate
	upcasts   []upcastDecl
	assume    string
	hasAssume bool
}

// SchemaVersion declares the data version of the schema, "MAJOR" or
// "MAJOR.MINOR" ("1" is "1.0"). Events the schema creates carry it, and
// Parse checks it on events it reads:
//
//   - the same major (any minor, older or newer) is read as it is: a minor
//     version only adds optional fields, which the tolerant reader ignores
//     or leaves zero;
//   - an older major is carried forward by the [Upcast] chain;
//   - a newer major, an older one without upcasters, an unversioned event
//     (unless [AssumeVersion]) and a malformed version are permanent errors
//     ([ErrDataVersion]) that name the versions.
//
// Bump the minor for an added optional field and the major for anything a
// consumer of the previous version would misread (a field renamed,
// removed, retyped or made required), with an upcaster from the previous
// major. A schema without a version checks none: it reads events of any
// version, or of none, as its type.
func SchemaVersion(v string) SchemaOption { return func(c *schemaConfig) { c.version = v } }

// Strict makes Parse reject JSON fields the type does not have (a
// [ValidationError] with rule "unknown"), for consumers that want a
// misspelt field noticed. It gives up the tolerant reader: an older
// consumer then poisons every event of a producer's next minor version
// (one more optional field), so use it only where producer and consumer
// are deployed together.
func Strict() SchemaOption { return func(c *schemaConfig) { c.strict = true } }

// WithValidator uses v, with its custom validations, instead of the default
// validator. v is used as it is: the schema does not register anything on
// it, because RegisterTagNameFunc is not safe while v validates elsewhere
// and would rename the fields in the program's other uses of v. Error
// paths do not depend on v's tag-name function: the schema computes them
// from the Go field path every validator reports and T's json tags (see
// [FieldError]), so they are JSON names with or without one.
func WithValidator(v *validator.Validate) SchemaOption {
	return func(c *schemaConfig) { c.validate = v }
}

// NewSchema returns the schema of events named name with data of type T,
// which must be a struct (or pointer to one) so its tags can be validated.
// It rejects a malformed version and upcasters that do not form a chain to
// the schema's version, so that such mistakes fail at start-up rather
// than on the first old event.
func NewSchema[T any](name string, opts ...SchemaOption) (*Schema[T], error) {
	if err := names.Validate(name); err != nil {
		return nil, err
	}
	rt := reflect.TypeFor[T]()
	if rt.Kind() == reflect.Pointer {
		rt = rt.Elem()
	}
	if rt.Kind() != reflect.Struct {
		return nil, fmt.Errorf("eventbus: NewSchema[%s]: the data type must be a struct or a pointer to one", rt)
	}
	c := schemaConfig{validate: defaultValidator}
	for _, o := range opts {
		o(&c)
	}
	if c.validate == nil {
		return nil, fmt.Errorf("eventbus: NewSchema %s: WithValidator(nil); omit the option to use the default validator", name)
	}
	ver, err := newVersioning(name, &c)
	if err != nil {
		return nil, err
	}
	return &Schema[T]{name: name, ver: ver, strict: c.strict, validate: c.validate, rt: rt}, nil
}

// MustSchema is like [NewSchema] but panics on error, for schemas declared
// as package variables.
func MustSchema[T any](name string, opts ...SchemaOption) *Schema[T] {
	s, err := NewSchema[T](name, opts...)
	if err != nil {
		panic(err)
	}
	return s
}

// Name returns the event name of the schema.
func (s *Schema[T]) Name() string { return s.name }

// version returns the data version set with [SchemaVersion], as given.
func (s *Schema[T]) version() string {
	if s.ver == nil {
		return ""
	}
	return s.ver.declared
}

// NewEvent validates data and returns an event of the schema's name and
// version. Options are those of [NewEvent]: the source and the kind are
// optional there too.
func (s *Schema[T]) NewEvent(data T, opts ...EventOption) (Event, error) {
	if err := s.check(data); err != nil {
		return Event{}, err
	}
	if v := s.version(); v != "" {
		opts = append([]EventOption{WithDataVersion(v)}, opts...)
	}
	return NewEvent(s.name, data, opts...)
}

// Parse decodes and validates the data of ev. An event of another name,
// data that does not decode (unknown fields only with [Strict]) and data
// that fails validation are a *ValidationError; an event whose version the
// schema cannot read is an error wrapping [ErrDataVersion]. Both are
// permanent. An event of an older major version is upcast first (see
// [Upcast]); ev itself is not changed.
func (s *Schema[T]) Parse(ev Event) (T, error) {
	var zero, data T
	if ev.Name != s.name {
		return zero, Permanent(&ValidationError{Schema: s.name, Err: fmt.Errorf("event %s is named %q, not %q", ev.ID, ev.Name, s.name)})
	}
	raw := ev.Data
	if s.ver != nil {
		var err error
		if raw, err = s.ver.upgrade(s.name, ev); err != nil {
			return zero, err
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if s.strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(&data); err != nil {
		return zero, Permanent(&ValidationError{Schema: s.name, Fields: []FieldError{decodeFieldError(err, raw, s.rt, s.strict)}, Err: err})
	}
	if dec.More() {
		return zero, Permanent(&ValidationError{Schema: s.name, Fields: []FieldError{{Rule: "syntax", Message: "the data has more after its JSON value"}}})
	}
	if err := s.check(data); err != nil {
		return zero, err
	}
	return data, nil
}

// Handler adapts a typed handler: the event is parsed with the schema, and
// data it cannot read is a permanent failure that goes to the poison queue
// without reaching fn. fn gets the event as it was received: for an
// upcast event, data is of the current version while ev.Data and
// ev.DataVersion are the original's.
func (s *Schema[T]) Handler(fn func(ctx context.Context, data T, ev Event) error) Handler {
	return func(ctx context.Context, ev Event) error {
		data, err := s.Parse(ev)
		if err != nil {
			return err
		}
		return fn(ctx, data, ev)
	}
}
