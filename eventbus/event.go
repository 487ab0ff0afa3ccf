package eventbus

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Event is the envelope the bus carries. Data holds the payload as JSON; the
// other fields travel as CloudEvents attributes (see [EncodeMessage]).
type Event struct {
	// ID is unique per event; redeliveries and replays keep it.
	ID string
	// Name is the hierarchical, dot-separated event name that patterns
	// match, such as "user.registered" (the CloudEvents "type").
	Name string
	// Source names the service that produced the event.
	Source string
	// Type classifies the event.
	Type EventType
	// Time is when the event happened, in UTC.
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

// EventOption sets an optional field of an event made by [NewEvent].
type EventOption func(*Event)

// WithID overrides the generated ID, for example to make publishing
// idempotent with an ID derived from the business key.
func WithID(id string) EventOption { return func(e *Event) { e.ID = id } }

// WithTime overrides the event time (converted to UTC).
func WithTime(t time.Time) EventOption { return func(e *Event) { e.Time = t.UTC() } }

// WithCorrelationID sets the correlation ID.
func WithCorrelationID(id string) EventOption { return func(e *Event) { e.CorrelationID = id } }

// WithCausationID sets the causation ID.
func WithCausationID(id string) EventOption { return func(e *Event) { e.CausationID = id } }

// WithPartitionKey sets the partition key.
func WithPartitionKey(key string) EventOption { return func(e *Event) { e.PartitionKey = key } }

// WithDataVersion sets the schema version of the data.
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

// NewEvent creates an event with a fresh UUID and the current UTC time.
// data is marshalled to JSON; a json.RawMessage or []byte is taken as JSON
// as it is. The name must be valid (see [ValidateName]) and the type one of
// the five kinds.
func NewEvent(name, source string, typ EventType, data any, opts ...EventOption) (Event, error) {
	raw, err := marshalData(data)
	if err != nil {
		return Event{}, err
	}
	e := Event{
		ID:     uuid.NewString(),
		Name:   name,
		Source: source,
		Type:   typ,
		Time:   time.Now().UTC(),
		Data:   raw,
	}
	e.checked = raw
	for _, o := range opts {
		o(&e)
	}
	if err := e.Validate(); err != nil {
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

// Validate reports whether the event can be published: a non-empty ID, a
// valid name, a source, one of the five types, and JSON data.
func (e *Event) Validate() error {
	if e.ID == "" {
		return fmt.Errorf("%w: %q has an empty ID", ErrInvalidEvent, e.Name)
	}
	if err := ValidateName(e.Name); err != nil {
		return err
	}
	if e.Source == "" {
		return fmt.Errorf("%w: %s (%s) has an empty Source", ErrInvalidEvent, e.Name, e.ID)
	}
	if !e.Type.Valid() {
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
