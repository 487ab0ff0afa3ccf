// Package wire holds the header names of the go-eventbus wire format, so that
// the eventbus and middleware packages agree on them without importing each
// other. The eventbus package re-exports every name with its documentation.
package wire

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// CloudEvents 1.0 binary-mode attribute headers (the Kafka binding's names).
const (
	SpecVersion   = "ce_specversion"
	ID            = "ce_id"
	Source        = "ce_source"
	Type          = "ce_type"
	Time          = "ce_time"
	EventType     = "ce_eventtype"
	DataVersion   = "ce_dataversion"
	CorrelationID = "ce_correlationid"
	CausationID   = "ce_causationid"
	PartitionKey  = "ce_partitionkey"
	ContentType   = "content-type"

	// TraceParent and TraceState carry W3C trace context as the
	// CloudEvents distributed-tracing extension attributes "traceparent"
	// and "tracestate".
	TraceParent = "ce_traceparent"
	TraceState  = "ce_tracestate"

	// MetadataPrefix prefixes every Event.Metadata key on the wire, so that
	// user keys can never collide with attribute or broker headers.
	MetadataPrefix = "meta_"

	// SpecVersionValue is the only CloudEvents version written and accepted.
	SpecVersionValue = "1.0"
	// JSONContentType is the content type of every body.
	JSONContentType = "application/json"
)

// Headers added to an event when it is moved to the poison queue.
const (
	PoisonReason       = "poison_reason"
	PoisonError        = "poison_error"
	PoisonAttempts     = "poison_attempts"
	PoisonService      = "poison_service"
	PoisonSubscription = "poison_subscription"
	PoisonPattern      = "poison_pattern"
	PoisonFirstFailure = "poison_first_failure"
	PoisonLastFailure  = "poison_last_failure"
	// PoisonID identifies one poison record: a replayed event poisoned
	// again is a new record with a new ID.
	PoisonID = "poison_id"
	// PoisonErrorTruncated holds the length in bytes of the handler's
	// error when PoisonError carries only its beginning.
	PoisonErrorTruncated = "poison_error_truncated"
	// PoisonWrapped marks a reduced record: one the broker could not store
	// as it was (a header table over the AMQP frame size, say), stored
	// instead with only the poison headers and the original message in the
	// body, as JSON (see WrappedMessage).
	PoisonWrapped = "poison_wrapped"
)

// Incomplete is set by a transport on a message it hands on knowing that
// it is not whole (a body kept apart from its headers and lost, say): its
// value says what is missing. Decoding such a message fails, so the bus
// poisons it as undecodable with its headers, instead of handing the
// handler an event without its data.
const Incomplete = "eventbus_incomplete"

// MaxPoisonError is the most bytes of a handler's error a poison record
// keeps: enough for a panic's stack, small enough that the record cannot
// outgrow the broker's limits because of it.
const MaxPoisonError = 8 << 10

// WrappedMessage is the body of a reduced poison record: the original
// message's headers and body.
type WrappedMessage struct {
	UUID     string            `json:"uuid"`
	Metadata map[string]string `json:"metadata"`
	Payload  []byte            `json:"payload"` // base64 in JSON
}

// ErrTooLarge is the error a transport wraps when a message exceeds a
// limit of its broker; the eventbus package exports it as ErrTooLarge.
var ErrTooLarge = errors.New("eventbus: message exceeds a broker limit")

// ErrInvalidEvent is wrapped by errors about an event that cannot be
// published or decoded; the eventbus and driver packages export it.
var ErrInvalidEvent = errors.New("eventbus: invalid event")

// Distinct returns errs without repeated errors, keeping the first of
// each. Only comparable errors are compared, as in errors.Is: == on two
// errors of a slice type (sarama.ProducerErrors) panics.
func Distinct(errs []error) []error {
	out := errs[:0:0]
	for _, err := range errs {
		dup := false
		for _, x := range out {
			if t := reflect.TypeOf(x); t == reflect.TypeOf(err) && (t == nil || t.Comparable()) && x == err {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, err)
		}
	}
	return out
}

// ListFailures writes "<n> <what> not published:" and the first five
// failures, as item(i) renders them, for the publish errors of the
// eventbus and driver packages.
func ListFailures(n int, what string, item func(i int) string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s not published:", n, what)
	const show = 5
	for i := range n {
		if i == show {
			fmt.Fprintf(&b, " ... and %d more", n-show)
			break
		}
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteByte(' ')
		b.WriteString(item(i))
	}
	return b.String()
}
