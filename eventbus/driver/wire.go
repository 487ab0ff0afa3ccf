package driver

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/paissive/go-eventbus/internal/names"
	"github.com/paissive/go-eventbus/internal/wire"
)

// Header names of the wire format: CloudEvents 1.0 binary content mode with
// the "ce_" prefix of the CloudEvents Kafka binding. Every transport writes
// these and nothing else, so the same bytes mean the same event everywhere.
// On input, [Decode] requires only the attributes CloudEvents requires
// (specversion, id, source, type).
const (
	HeaderSpecVersion   = wire.SpecVersion   // always "1.0"
	HeaderID            = wire.ID            // the event's ID
	HeaderSource        = wire.Source        // the producing service
	HeaderType          = wire.Type          // the event name (the CloudEvents "type")
	HeaderTime          = wire.Time          // RFC 3339, omitted when the time is unknown
	HeaderEventType     = wire.EventType     // the kind: "domain", "integration", ...; DefaultEventType when absent
	HeaderDataVersion   = wire.DataVersion   // the data's schema version, omitted when empty
	HeaderCorrelationID = wire.CorrelationID // the correlation ID
	HeaderCausationID   = wire.CausationID   // the causing event's ID, omitted when empty
	HeaderPartitionKey  = wire.PartitionKey  // the partition key, omitted when empty
	HeaderContentType   = wire.ContentType   // always "application/json"
	// HeaderTraceParent and HeaderTraceState carry the W3C trace context
	// of the span that published the event: the CloudEvents
	// distributed-tracing extension. The bus writes them (replacing any an
	// event brought along) and reads them; a transport moves them like any
	// other header.
	HeaderTraceParent = wire.TraceParent
	HeaderTraceState  = wire.TraceState
	// MetadataPrefix prefixes each metadata key that is not a CloudEvents
	// extension name (see ExtensionName), so "Tenant" travels as
	// "meta_Tenant" and such keys never collide with other headers;
	// "tenant" travels as the extension "ce_tenant".
	MetadataPrefix = wire.MetadataPrefix
)

// Headers the poison queue adds to an event it stores.
const (
	HeaderPoisonID             = wire.PoisonID             // unique per record
	HeaderPoisonReason         = wire.PoisonReason         // "permanent", "retries-exhausted", "panic", "undecodable", "misrouted"
	HeaderPoisonError          = wire.PoisonError          // the handler's error text, at most 8 KiB
	HeaderPoisonErrorTruncated = wire.PoisonErrorTruncated // the error's full length when it was cut
	HeaderPoisonAttempts       = wire.PoisonAttempts       // handler calls made
	HeaderPoisonService        = wire.PoisonService        // the service whose subscription failed
	HeaderPoisonSubscription   = wire.PoisonSubscription   // the subscription that failed
	HeaderPoisonPattern        = wire.PoisonPattern        // its pattern
	HeaderPoisonFirstFailure   = wire.PoisonFirstFailure   // RFC 3339 time of the first failure
	HeaderPoisonLastFailure    = wire.PoisonLastFailure    // RFC 3339 time of the last failure
	HeaderPoisonWrapped        = wire.PoisonWrapped        // set on a reduced record: the message is JSON in the body
)

// HeaderIncomplete is set by a transport on a message it hands to the bus
// knowing that it is not whole, such as one whose body was stored apart
// from its headers and is gone; the value says what is missing. [Decode]
// fails on such a message, so the bus moves it to the poison queue as
// undecodable, headers kept, rather than giving a handler an event
// without its data. It is the way to report a loss the transport found:
// handing such a message on without the header would pass it off as an
// event with no data.
const HeaderIncomplete = wire.Incomplete

// Envelope is an event as the wire format carries it: the fields of
// eventbus.Event, with the kind as its wire name.
type Envelope struct {
	ID, Name, Source string
	// Type is the kind's wire name: "domain", "integration", "system",
	// "user" or "notification".
	Type string
	// Time is when the event happened; zero when the producer did not say
	// (the attribute is optional in CloudEvents): Encode then writes no
	// "ce_time", and Decode does not invent one.
	Time                                                  time.Time
	DataVersion, CorrelationID, CausationID, PartitionKey string
	// Metadata holds the event's free-form pairs and the CloudEvents
	// attributes and extensions the bus has no field for ("subject",
	// "traceparent", ...); see [Encode] for how each key travels.
	Metadata map[string]string
	// Data is the JSON payload. Encode sends empty Data as JSON null;
	// Decode returns empty Data for an event without data.
	Data []byte
}

// eventTypes are the kinds' wire names.
var eventTypes = [...]string{"domain", "integration", "system", "user", "notification"}

// DefaultEventType is the kind Decode gives an event without a
// "ce_eventtype" attribute, which producers that know nothing of the bus
// (a CloudEvents SDK) do not send: "domain", the business facts most events
// record, which is also the kind eventbus.NewEvent defaults to.
const DefaultEventType = "domain"

// AttributePrefix prefixes every CloudEvents attribute and extension sent
// as a header in binary content mode, as the CloudEvents Kafka binding
// names them ("ce_id", "ce_traceparent").
const AttributePrefix = "ce_"

// ContentTypeStructured is the content type of a CloudEvent in structured
// content mode: the attributes and the data together in one JSON body.
// [Decode] reads such messages; [Encode] never writes them.
const ContentTypeStructured = "application/cloudevents+json"

// maxExtensionName is the longest metadata key Encode sends as a
// CloudEvents extension: the CloudEvents specification asks attribute
// names to be at most 20 characters, so that every SDK and binding
// accepts them.
const maxExtensionName = 20

// ExtensionName reports whether Encode sends the metadata key k as the
// CloudEvents extension attribute "ce_<k>", which CloudEvents SDKs read as
// such: k is 1 to 20 lower-case ASCII letters and digits
// (the specification's rule for attribute names) and not the name of an
// attribute the envelope has a field for (id, source, type, time,
// specversion, eventtype, dataversion, correlationid, causationid,
// partitionkey, datacontenttype) nor "data". Other keys travel as
// "meta_<k>": a metadata key "id" cannot overwrite the event's ID.
func ExtensionName(k string) bool {
	if len(k) == 0 || len(k) > maxExtensionName {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	switch k {
	case "specversion", "id", "source", "type", "time", "eventtype", "dataversion",
		"correlationid", "causationid", "partitionkey", "datacontenttype", "data":
		return false
	}
	return true
}

// Encode converts an envelope to the Watermill message every transport
// sends: the UUID is the event ID, the payload the JSON data and the
// metadata the "ce_" headers of CloudEvents binary content mode. It does
// not validate the envelope.
//
// A metadata key that is a CloudEvents extension name ([ExtensionName]:
// "tenant", "traceparent", "subject") travels as the attribute "ce_<key>",
// so that CloudEvents SDKs read it as an extension and extensions of
// foreign events survive a republish; any other key ("Tenant", "x-user",
// "id") travels as "meta_<key>". [Decode] reads both.
func Encode(e Envelope) *message.Message {
	data := e.Data
	if len(data) == 0 {
		data = []byte("null")
	}
	msg := message.NewMessage(e.ID, data)
	// The eight headers every event has fill exactly one group of the
	// map NewMessage made; a hint would allocate a larger table instead.
	md := msg.Metadata
	md[wire.SpecVersion] = wire.SpecVersionValue
	md[wire.ID] = e.ID
	md[wire.Source] = e.Source
	md[wire.Type] = e.Name
	if !e.Time.IsZero() {
		md[wire.Time] = e.Time.UTC().Format(time.RFC3339Nano)
	}
	md[wire.EventType] = e.Type
	md[wire.ContentType] = wire.JSONContentType
	md[wire.CorrelationID] = e.CorrelationID
	if e.DataVersion != "" {
		md[wire.DataVersion] = e.DataVersion
	}
	if e.CausationID != "" {
		md[wire.CausationID] = e.CausationID
	}
	if e.PartitionKey != "" {
		md[wire.PartitionKey] = e.PartitionKey
	}
	for k, v := range e.Metadata {
		if ExtensionName(k) {
			md[AttributePrefix+k] = v
		} else {
			md[wire.MetadataPrefix+k] = v
		}
	}
	return msg
}

// headerDataContentType is the data's content type as an attribute
// header, which some binary-mode producers send besides (or instead of)
// the content-type header.
const headerDataContentType = AttributePrefix + "datacontenttype"

// Decode converts a message back to an envelope. It reads what the
// CloudEvents specification allows a producer to send, so that events from
// CloudEvents SDKs and other foreign producers are handled, not poisoned:
//
//   - binary content mode: attributes in "ce_" headers, the data in the
//     body; or structured content mode (content type
//     [ContentTypeStructured]): attributes and data ("data", or
//     "data_base64" holding JSON) in one JSON body, where the body's
//     attributes win over headers of the same name and headers fill in
//     what the body lacks (a transport may add headers for what its
//     broker carries natively, such as the AMQP correlation-id or the
//     Kafka record key);
//   - required are the CloudEvents required attributes: specversion
//     (1.0), id, source and type (the event name, which must be a valid
//     name); "time" is optional (zero Time when absent) and so is the
//     "eventtype" extension ([DefaultEventType] when absent);
//   - an event without data (an empty body, or a structured event with
//     neither "data" nor "data_base64") has empty Data; otherwise the data
//     must be JSON, with a JSON content type (application/json, text/json
//     or any "+json" type) or none;
//   - attributes the envelope has no field for ("ce_subject",
//     "ce_traceparent", extensions of any name) go into Metadata under
//     their name without the prefix, as do "meta_<key>" headers under
//     <key>; when both name one key, the attribute wins. In structured
//     mode numbers and booleans become their JSON text ("42", "true").
//
// Anything else, such as a message marked with [HeaderIncomplete], a missing required attribute, an unknown spec
// version or kind, an invalid event name or data that is not JSON, is an
// error wrapping [ErrInvalidEvent] that says what is wrong; the bus moves
// such messages to the poison queue as undecodable.
func Decode(msg *message.Message) (Envelope, error) {
	// One pass over the headers with a switch, rather than a map lookup
	// per header and a second pass for the metadata: this runs for every
	// event consumed.
	var e Envelope
	var spec, ts, ct, dct, incomplete string
	hasCT := false
	for k, v := range msg.Metadata {
		switch k {
		case wire.SpecVersion:
			spec = v
		case wire.ID:
			e.ID = v
		case wire.Type:
			e.Name = v
		case wire.Source:
			e.Source = v
		case wire.Time:
			ts = v
		case wire.EventType:
			e.Type = v
		case wire.ContentType:
			ct, hasCT = v, true
		case wire.DataVersion:
			e.DataVersion = v
		case wire.CorrelationID:
			e.CorrelationID = v
		case wire.CausationID:
			e.CausationID = v
		case wire.PartitionKey:
			e.PartitionKey = v
		case headerDataContentType:
			dct = v
		case wire.Incomplete:
			incomplete = v
		default:
			if len(k) > len(AttributePrefix) && k[:len(AttributePrefix)] == AttributePrefix {
				setMetadata(&e, k[len(AttributePrefix):], v, true)
			} else if len(k) >= len(wire.MetadataPrefix) && k[:len(wire.MetadataPrefix)] == wire.MetadataPrefix {
				setMetadata(&e, k[len(wire.MetadataPrefix):], v, false)
			}
		}
	}
	if incomplete != "" {
		return Envelope{}, fmt.Errorf("%w: message %s (%s) is incomplete: %s", ErrInvalidEvent, msg.UUID, e.Name, incomplete)
	}
	if !hasCT && dct != "" {
		ct, hasCT = dct, true
	}
	mode := binaryJSON
	if hasCT {
		mode = contentMode(ct)
	}
	switch mode {
	case structured:
		if err := decodeStructured(msg, &e, &spec, &ts); err != nil {
			return Envelope{}, err
		}
		if err := check(msg, &e, spec, ts, true); err != nil {
			return Envelope{}, err
		}
	case batch:
		return Envelope{}, fmt.Errorf("%w: message %s has content-type %q: batched CloudEvents are not read; send one event per message", ErrInvalidEvent, msg.UUID, ct)
	default:
		if err := check(msg, &e, spec, ts, false); err != nil {
			return Envelope{}, err
		}
		if len(msg.Payload) > 0 {
			if mode == binaryOther {
				return Envelope{}, fmt.Errorf("%w: message %s (%s) has content-type %q; the bus reads JSON data only (application/json, text/json, */*+json) or a structured CloudEvent (%s)", ErrInvalidEvent, msg.UUID, e.Name, ct, ContentTypeStructured)
			}
			if !validJSON(msg.Payload) {
				return Envelope{}, fmt.Errorf("%w: message %s (%s) body is not JSON", ErrInvalidEvent, msg.UUID, e.Name)
			}
			e.Data = msg.Payload
		}
	}
	return e, nil
}

// check validates the attributes Decode collected and fills in e's Time
// and canonical Type.
func check(msg *message.Message, e *Envelope, spec, ts string, structured bool) error {
	if spec == "" || e.ID == "" || e.Name == "" || e.Source == "" {
		prefix, what := AttributePrefix, "header(s)"
		if structured {
			prefix, what = "", "attribute(s) in its body"
		}
		var missing []string
		for _, h := range [...][2]string{{"specversion", spec}, {"id", e.ID}, {"type", e.Name}, {"source", e.Source}} {
			if h[1] == "" {
				missing = append(missing, prefix+h[0])
			}
		}
		return fmt.Errorf("%w: message %s lacks %s %s, which every CloudEvent has", ErrInvalidEvent, msg.UUID, what, strings.Join(missing, ", "))
	}
	prefix := AttributePrefix
	if structured {
		prefix = ""
	}
	if spec != wire.SpecVersionValue {
		return fmt.Errorf("%w: message %s has %sspecversion %q, want %q", ErrInvalidEvent, msg.UUID, prefix, spec, wire.SpecVersionValue)
	}
	if ts != "" {
		t, err := parseTime(ts)
		if err != nil {
			return fmt.Errorf("%w: message %s has %stime %q: %v", ErrInvalidEvent, msg.UUID, prefix, ts, err)
		}
		e.Time = t
	}
	if e.Type == "" {
		e.Type = DefaultEventType
	} else {
		var err error
		if e.Type, err = canonicalType(e.Type); err != nil {
			return fmt.Errorf("%w: message %s: %v", ErrInvalidEvent, msg.UUID, err)
		}
	}
	if err := names.Validate(e.Name); err != nil {
		return fmt.Errorf("%w: message %s: %w", ErrInvalidEvent, msg.UUID, err)
	}
	return nil
}

// setMetadata stores an attribute or "meta_" header under key; an
// attribute replaces a "meta_" header of the same key, which does not
// replace an attribute.
func setMetadata(e *Envelope, key, v string, attribute bool) {
	if e.Metadata == nil {
		e.Metadata = make(map[string]string)
	} else if _, dup := e.Metadata[key]; dup && !attribute {
		return
	}
	e.Metadata[key] = v
}

// How Decode reads a message's body, by its content type.
const (
	binaryJSON  = iota // JSON data (or none)
	binaryOther        // data in another format: unreadable unless empty
	structured         // a structured-mode CloudEvent
	batch              // a batch of structured-mode CloudEvents
)

// contentMode classifies a content type, ignoring parameters and case.
func contentMode(ct string) int {
	if ct == wire.JSONContentType {
		return binaryJSON
	}
	mt := ct
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = mt[:i]
	}
	mt = strings.ToLower(strings.TrimSpace(mt))
	switch {
	case mt == ContentTypeStructured:
		return structured
	case mt == "application/cloudevents-batch+json":
		return batch
	case mt == wire.JSONContentType, mt == "text/json", strings.HasSuffix(mt, "+json"):
		return binaryJSON
	case mt == "" && ct == "":
		return binaryJSON // an empty header says nothing
	}
	return binaryOther
}

// decodeStructured reads the attributes and data of a structured-mode
// CloudEvent from the body into e (over what the headers said) and
// *spec and *ts.
func decodeStructured(msg *message.Message, e *Envelope, spec, ts *string) error {
	if !validJSON(msg.Payload) {
		return fmt.Errorf("%w: message %s has content-type %s and a body that is not JSON", ErrInvalidEvent, msg.UUID, ContentTypeStructured)
	}
	body := gjson.ParseBytes(msg.Payload)
	if !body.IsObject() {
		return fmt.Errorf("%w: message %s has content-type %s and a body that is not a JSON object", ErrInvalidEvent, msg.UUID, ContentTypeStructured)
	}
	var data, data64 gjson.Result
	dct := ""
	body.ForEach(func(key, v gjson.Result) bool {
		if v.Type == gjson.Null {
			return true // a null attribute is an absent one
		}
		switch key.Str {
		case "specversion":
			*spec = v.String()
		case "id":
			e.ID = v.String()
		case "type":
			e.Name = v.String()
		case "source":
			e.Source = v.String()
		case "time":
			*ts = v.String()
		case "eventtype":
			e.Type = v.String()
		case "dataversion":
			e.DataVersion = v.String()
		case "correlationid":
			e.CorrelationID = v.String()
		case "causationid":
			e.CausationID = v.String()
		case "partitionkey":
			e.PartitionKey = v.String()
		case "datacontenttype":
			dct = v.String()
		case "data":
			data = v
		case "data_base64":
			data64 = v
		default:
			val := v.Raw // numbers, objects, arrays: their JSON text
			switch v.Type {
			case gjson.String:
				val = v.Str
			case gjson.True, gjson.False:
				val = v.String()
			}
			setMetadata(e, key.Str, val, true)
		}
		return true
	})
	e.Data = nil
	if !data.Exists() && !data64.Exists() {
		return nil
	}
	if dct != "" && contentMode(dct) != binaryJSON {
		return fmt.Errorf("%w: message %s (%s) has datacontenttype %q; the bus reads JSON data only", ErrInvalidEvent, msg.UUID, e.Name, dct)
	}
	if data.Exists() {
		e.Data = []byte(data.Raw)
		return nil
	}
	raw, err := base64.StdEncoding.DecodeString(data64.String())
	if err != nil {
		return fmt.Errorf("%w: message %s (%s) has data_base64 that is not base64: %v", ErrInvalidEvent, msg.UUID, e.Name, err)
	}
	if len(raw) > 0 && !validJSON(raw) {
		return fmt.Errorf("%w: message %s (%s) data_base64 does not hold JSON", ErrInvalidEvent, msg.UUID, e.Name)
	}
	if len(raw) > 0 {
		e.Data = raw
	}
	return nil
}

// canonicalType returns the wire name of a kind given in any case.
func canonicalType(s string) (string, error) {
	for _, t := range eventTypes { // exact, as written
		if s == t {
			return t, nil
		}
	}
	for _, t := range eventTypes {
		if strings.EqualFold(s, t) {
			return t, nil
		}
	}
	return "", fmt.Errorf("unknown event type %q (want one of %s)", s, strings.Join(eventTypes[:], ", "))
}

// parseTime parses an RFC 3339 time as time.Parse(time.RFC3339Nano, s)
// does, returned in UTC. Times this package writes
// ("2006-01-02T15:04:05.999999999Z") are read directly, at a third of the
// cost: this runs for every event consumed. Anything else, including every
// invalid time, goes to time.Parse.
func parseTime(s string) (time.Time, error) {
	if t, ok := parseUTCTime(s); ok {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	return t.UTC(), err
}

func parseUTCTime(s string) (time.Time, bool) {
	if len(s) < len("2006-01-02T15:04:05Z") || len(s) > len("2006-01-02T15:04:05.999999999Z") ||
		s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[len(s)-1] != 'Z' {
		return time.Time{}, false
	}
	num := func(from, to int) int {
		n := 0
		for i := from; i < to; i++ {
			c := s[i] - '0'
			if c > 9 {
				return -1
			}
			n = n*10 + int(c)
		}
		return n
	}
	year, month, day := num(0, 4), num(5, 7), num(8, 10)
	hour, minute, sec := num(11, 13), num(14, 16), num(17, 19)
	if year < 0 || month < 1 || month > 12 || day < 1 || day > daysIn(time.Month(month), year) ||
		hour < 0 || hour > 23 || minute < 0 || minute > 59 || sec < 0 || sec > 59 {
		return time.Time{}, false
	}
	nsec := 0
	if frac := s[19 : len(s)-1]; frac != "" {
		if len(frac) < 2 || frac[0] != '.' {
			return time.Time{}, false
		}
		if nsec = num(20, len(s)-1); nsec < 0 {
			return time.Time{}, false
		}
		for range 10 - len(frac) {
			nsec *= 10
		}
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC), true
}

func daysIn(m time.Month, year int) int {
	if m == time.February {
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	}
	return 30 + int((m+m/8)&1)
}

// maxFastJSON is the largest body validated with gjson: a body of at most
// 2*10,000 bytes cannot nest deeper than encoding/json's limit of 10,000
// levels.
const maxFastJSON = 2 * 10_000

// validJSON reports whether b is valid JSON, as encoding/json.Valid does.
// gjson's validator accepts the same documents at about three times the
// speed, and this check runs for every event consumed; but it recurses once
// per nesting level without a limit, so a large, deeply nested body ("[[[[...")
// would overflow the goroutine stack, a fatal error no recover can stop, and
// crash the consumer on every redelivery. Larger bodies therefore go to
// encoding/json, which rejects nesting deeper than 10,000 levels.
func validJSON(b []byte) bool {
	if len(b) <= maxFastJSON {
		return gjson.ValidBytes(b)
	}
	return json.Valid(b)
}
