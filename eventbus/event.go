package eventbus

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/paissive/go-eventbus/internal/names"
)

// Event is the envelope the bus carries. Data holds the payload as JSON; the
// other fields travel as CloudEvents attributes ("ce_" headers).
type Event struct {
	// ID is unique per event; redeliveries and replays keep it.
	ID string
	// Name is the hierarchical, dot-separated event name that patterns
	// match, such as "user.registered" (the CloudEvents "type").
	Name string
	// Source names the service that produced the event; Publish sets the
	// bus's service name when it is empty.
	Source string
	// Type classifies the event; Publish sets [Domain] when it is zero.
	Type EventType
	// Time is when the event happened, in UTC; zero for an event from
	// another CloudEvents producer that did not say (the attribute is
	// optional there).
	Time time.Time
	// DataVersion is the version of the schema of Data, for evolution.
	DataVersion string
	// CorrelationID ties together all events of one business process. The
	// bus sets it when publishing if it is empty (see [Bus.Publish]).
	CorrelationID string
	// CausationID is the ID of the event whose handling caused this one.
	CausationID string
	// PartitionKey, when set, keeps events of one key in order on
	// transports that partition (Kafka).
	PartitionKey string
	// Metadata holds free-form string pairs that travel with the event.
	// A key that is a CloudEvents extension name (1 to 20 lower-case
	// letters and digits, such as "tenant") travels as the extension
	// "ce_<key>", which CloudEvents SDKs read; an event from another
	// CloudEvents producer has its extensions and attributes without a
	// field here ("subject", "traceparent"), so they survive a republish.
	Metadata map[string]string
	// Data is the JSON payload.
	Data json.RawMessage

	// checked is the Data slice as last found valid, so that publishing an
	// event made by NewEvent or received from the bus does not scan its
	// JSON again. Assigning a new Data defeats it.
	checked json.RawMessage
}

// dataChecked reports whether Data is the slice already found valid.
func (e *Event) dataChecked() bool {
	return len(e.Data) == len(e.checked) && (len(e.Data) == 0 || &e.Data[0] == &e.checked[0])
}

// EventOption sets an optional field of an event made by [NewEvent] or
// [Schema.NewEvent].
type EventOption func(*Event)

// WithSource sets the producing service; by default [Bus.Publish] sets
// the bus's service name.
func WithSource(source string) EventOption { return func(e *Event) { e.Source = source } }

// WithType sets the kind of event; the default is [Domain].
func WithType(t EventType) EventOption { return func(e *Event) { e.Type = t } }

// WithCorrelationID sets the correlation ID. Events published from a
// handler inherit the handled event's correlation ID without it.
func WithCorrelationID(id string) EventOption { return func(e *Event) { e.CorrelationID = id } }

// WithPartitionKey sets the partition key.
func WithPartitionKey(key string) EventOption { return func(e *Event) { e.PartitionKey = key } }

// WithDataVersion sets the schema version of the data ("MAJOR.MINOR", see
// [SchemaVersion]); [Schema.NewEvent] sets its schema's version, so this is
// for producers that build the data without the schema's Go type.
func WithDataVersion(v string) EventOption { return func(e *Event) { e.DataVersion = v } }

// WithMetadata adds one metadata pair.
func WithMetadata(key, value string) EventOption {
	return func(e *Event) {
		if e.Metadata == nil {
			e.Metadata = make(map[string]string)
		}
		e.Metadata[key] = value
	}
}

// NewEvent creates an event named name (see [Pattern] for the rules) with
// a fresh UUID, the current UTC time, and data marshalled to JSON (a
// json.RawMessage or []byte is taken as JSON as it is).
//
// The source and the kind are optional: Publish fills in the bus's service
// name as the source, and the kind defaults to [Domain], the business facts
// most events record. (The original made both positional; every event
// paid for two arguments that are nearly always the same.) Invalid names
// and data that is not JSON are an error here, before anything is sent.
func NewEvent(name string, data any, opts ...EventOption) (Event, error) {
	raw, err := marshalData(data)
	if err != nil {
		return Event{}, err
	}
	e := Event{
		ID:   uuid.NewString(),
		Name: name,
		Type: Domain,
		Time: time.Now().UTC(),
		Data: raw,
	}
	e.checked = raw
	for _, o := range opts {
		o(&e)
	}
	if err := e.validate(true); err != nil {
		return Event{}, err
	}
	return e, nil
}

func marshalData(data any) (json.RawMessage, error) {
	switch d := data.(type) {
	case json.RawMessage:
		return checkRaw(d)
	case []byte:
		return checkRaw(d)
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot marshal data to JSON: %v", ErrInvalidEvent, err)
	}
	return raw, nil
}

// checkRaw validates caller-supplied JSON and copies it, so that a caller
// reusing its buffer cannot change an event already found valid.
func checkRaw(d []byte) (json.RawMessage, error) {
	if !json.Valid(d) {
		return nil, fmt.Errorf("%w: data is not valid JSON", ErrInvalidEvent)
	}
	return json.RawMessage(bytes.Clone(d)), nil
}

// validate reports whether the event can be published: a non-empty ID, a
// valid name, one of the five types (or, when partial, none yet), a
// source (unless partial), and JSON data. Publish fills the source and the
// type before it validates; NewEvent validates what it was given.
func (e *Event) validate(partial bool) error {
	if e.ID == "" {
		return fmt.Errorf("%w: %q has an empty ID", ErrInvalidEvent, e.Name)
	}
	if err := names.Validate(e.Name); err != nil {
		return err
	}
	if e.Source == "" && !partial {
		return fmt.Errorf("%w: %s (%s) has an empty Source", ErrInvalidEvent, e.Name, e.ID)
	}
	if !e.Type.valid() && !(partial && e.Type == 0) {
		return fmt.Errorf("%w: %s (%s) has type %s; use Domain, Integration, System, User or Notification", ErrInvalidEvent, e.Name, e.ID, e.Type)
	}
	if len(e.Data) > 0 && !e.dataChecked() && !json.Valid(e.Data) {
		return fmt.Errorf("%w: %s (%s) data is not valid JSON", ErrInvalidEvent, e.Name, e.ID)
	}
	return nil
}

// Decode unmarshals the event's data into v.
func (e Event) Decode(v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("%w: %s (%s) has no data", ErrInvalidEvent, e.Name, e.ID)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("eventbus: decoding data of %s (%s): %w", e.Name, e.ID, err)
	}
	return nil
}
