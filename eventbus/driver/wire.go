package driver

import (
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
const (
	HeaderSpecVersion   = wire.SpecVersion   // always "1.0"
	HeaderID            = wire.ID            // the event's ID
	HeaderSource        = wire.Source        // the producing service
	HeaderType          = wire.Type          // the event name (the CloudEvents "type")
	HeaderTime          = wire.Time          // RFC 3339
	HeaderEventType     = wire.EventType     // the kind: "domain", "integration", ...
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
	// MetadataPrefix prefixes each metadata key, so "tenant" travels as
	// "meta_tenant" and user keys never collide with other headers.
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

// Envelope is an event as the wire format carries it: the fields of
// eventbus.Event, with the kind as its wire name.
type Envelope struct {
	ID, Name, Source string
	// Type is the kind's wire name: "domain", "integration", "system",
	// "user" or "notification".
	Type                                                  string
	Time                                                  time.Time
	DataVersion, CorrelationID, CausationID, PartitionKey string
	Metadata                                              map[string]string
	// Data is the JSON payload; empty means JSON null.
	Data []byte
}

// eventTypes are the kinds' wire names.
var eventTypes = [...]string{"domain", "integration", "system", "user", "notification"}

// Encode converts an envelope to the Watermill message every transport
// sends: the UUID is the event ID, the payload the JSON data and the
// metadata the "ce_" headers. It does not validate the envelope.
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
	md[wire.Time] = e.Time.UTC().Format(time.RFC3339Nano)
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
		md[wire.MetadataPrefix+k] = v
	}
	return msg
}

// Decode converts a message in the wire format back to an envelope. A
// message without the required headers, with an unknown spec version or
// kind, an invalid event name, or with a body that is not JSON is an error
// wrapping [ErrInvalidEvent]; the bus moves such messages to the poison
// queue as undecodable.
func Decode(msg *message.Message) (Envelope, error) {
	// One pass over the headers with a switch, rather than a map lookup
	// per header and a second pass for the metadata: this runs for every
	// event consumed.
	var e Envelope
	var spec, ts, ct string
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
		default:
			if strings.HasPrefix(k, wire.MetadataPrefix) {
				if e.Metadata == nil {
					e.Metadata = make(map[string]string)
				}
				e.Metadata[k[len(wire.MetadataPrefix):]] = v
			}
		}
	}
	if spec == "" || e.ID == "" || e.Name == "" || e.Source == "" || ts == "" || e.Type == "" {
		var missing []string
		for _, h := range [...][2]string{{wire.SpecVersion, spec}, {wire.ID, e.ID}, {wire.Type, e.Name}, {wire.Source, e.Source}, {wire.Time, ts}, {wire.EventType, e.Type}} {
			if h[1] == "" {
				missing = append(missing, h[0])
			}
		}
		return Envelope{}, fmt.Errorf("%w: message %s lacks header(s) %s", ErrInvalidEvent, msg.UUID, strings.Join(missing, ", "))
	}
	if spec != wire.SpecVersionValue {
		return Envelope{}, fmt.Errorf("%w: message %s has %s %q, want %q", ErrInvalidEvent, msg.UUID, wire.SpecVersion, spec, wire.SpecVersionValue)
	}
	if hasCT && ct != wire.JSONContentType && !strings.HasPrefix(ct, wire.JSONContentType+";") {
		return Envelope{}, fmt.Errorf("%w: message %s has content-type %q, want %q", ErrInvalidEvent, msg.UUID, ct, wire.JSONContentType)
	}
	t, err := parseTime(ts)
	if err != nil {
		return Envelope{}, fmt.Errorf("%w: message %s has %s %q: %v", ErrInvalidEvent, msg.UUID, wire.Time, ts, err)
	}
	e.Time = t
	if e.Type, err = canonicalType(e.Type); err != nil {
		return Envelope{}, fmt.Errorf("%w: message %s: %v", ErrInvalidEvent, msg.UUID, err)
	}
	if err := names.Validate(e.Name); err != nil {
		return Envelope{}, fmt.Errorf("%w: message %s: %w", ErrInvalidEvent, msg.UUID, err)
	}
	if !validJSON(msg.Payload) {
		return Envelope{}, fmt.Errorf("%w: message %s (%s) body is not JSON", ErrInvalidEvent, msg.UUID, e.Name)
	}
	e.Data = msg.Payload
	return e, nil
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
