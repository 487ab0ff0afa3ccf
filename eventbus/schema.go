package eventbus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/go-playground/validator/v10"
)

// defaultValidator is shared by all schemas: a validator.Validate caches
// struct metadata and is safe for concurrent use.
var defaultValidator = validator.New(validator.WithRequiredStructEnabled())

// Schema binds an event name to a Go data type, the analogue of the
// original's pydantic EventSchema: it builds events whose data is validated,
// and parses handled events back into the type. Validation uses
// github.com/go-playground/validator/v10 struct tags (`validate:"required"`).
type Schema[T any] struct {
	name         string
	version      string
	allowUnknown bool
	validate     *validator.Validate
}

// SchemaOption configures a [Schema].
type SchemaOption func(*schemaConfig)

type schemaConfig struct {
	version      string
	allowUnknown bool
	validate     *validator.Validate
}

// SchemaVersion sets the DataVersion of events the schema creates.
func SchemaVersion(v string) SchemaOption { return func(c *schemaConfig) { c.version = v } }

// AllowUnknownFields makes Parse accept JSON fields the type does not have,
// for consumers that must tolerate newer producers. By default they are an
// error, so that a misspelt field is noticed.
func AllowUnknownFields() SchemaOption { return func(c *schemaConfig) { c.allowUnknown = true } }

// WithValidator uses v, with its custom validations, instead of the default
// validator.
func WithValidator(v *validator.Validate) SchemaOption {
	return func(c *schemaConfig) { c.validate = v }
}

// NewSchema returns the schema of events named name with data of type T,
// which must be a struct (or pointer to one) so its tags can be validated.
func NewSchema[T any](name string, opts ...SchemaOption) (*Schema[T], error) {
	if err := ValidateName(name); err != nil {
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
	return &Schema[T]{name: name, version: c.version, allowUnknown: c.allowUnknown, validate: c.validate}, nil
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

// Version returns the data version set with [SchemaVersion].
func (s *Schema[T]) Version() string { return s.version }

// ValidationError reports data that breaks a schema's rules. It is
// permanent: errors.Is(err, ErrPermanent) holds, so a handler returning it
// is not retried.
type ValidationError struct {
	Schema string
	// Err is the validator's error (validator.ValidationErrors when the tags
	// failed) or the JSON error.
	Err error
}

// Error names the schema and what is wrong with the data.
func (e *ValidationError) Error() string {
	return fmt.Sprintf("eventbus: data of %s is invalid: %v", e.Schema, e.Err)
}

// Unwrap returns the underlying error.
func (e *ValidationError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPermanent) true.
func (e *ValidationError) Is(target error) bool { return target == ErrPermanent }

// Permanent reports true: retrying cannot make invalid data valid.
func (e *ValidationError) Permanent() bool { return true }

func (s *Schema[T]) check(data T) error {
	v := reflect.ValueOf(data)
	if v.Kind() == reflect.Pointer && v.IsNil() {
		return &ValidationError{Schema: s.name, Err: errors.New("data is a nil pointer")}
	}
	if err := s.validate.Struct(data); err != nil {
		return &ValidationError{Schema: s.name, Err: err}
	}
	return nil
}

// NewEvent validates data and returns an event of the schema's name and
// version. Options are those of [NewEvent].
func (s *Schema[T]) NewEvent(source string, data T, typ EventType, opts ...EventOption) (Event, error) {
	if err := s.check(data); err != nil {
		return Event{}, err
	}
	if s.version != "" {
		opts = append([]EventOption{WithDataVersion(s.version)}, opts...)
	}
	return NewEvent(s.name, source, typ, data, opts...)
}

// Parse decodes and validates the data of ev. An event of another name,
// data that does not decode (including unknown fields, unless
// [AllowUnknownFields]) and data that fails validation are a
// *ValidationError, which is permanent.
func (s *Schema[T]) Parse(ev Event) (T, error) {
	var zero, data T
	if ev.Name != s.name {
		return zero, &ValidationError{Schema: s.name, Err: fmt.Errorf("event %s is named %q, not %q", ev.ID, ev.Name, s.name)}
	}
	dec := json.NewDecoder(bytes.NewReader(ev.Data))
	if !s.allowUnknown {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(&data); err != nil {
		return zero, &ValidationError{Schema: s.name, Err: fmt.Errorf("decoding event %s: %w", ev.ID, err)}
	}
	if dec.More() {
		return zero, &ValidationError{Schema: s.name, Err: fmt.Errorf("event %s has data after the JSON value", ev.ID)}
	}
	if err := s.check(data); err != nil {
		return zero, err
	}
	return data, nil
}

// Handler adapts a typed handler: the event is parsed with the schema, and
// invalid data is a permanent failure that goes to the poison queue without
// reaching fn.
func (s *Schema[T]) Handler(fn func(ctx context.Context, data T, ev Event) error) Handler {
	return func(ctx context.Context, ev Event) error {
		data, err := s.Parse(ev)
		if err != nil {
			return err
		}
		return fn(ctx, data, ev)
	}
}
