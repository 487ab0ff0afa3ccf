// Package wire holds the header names of the go-eventbus wire format, so that
// the eventbus and middleware packages agree on them without importing each
// other. The eventbus package re-exports every name with its documentation.
package wire

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
)
