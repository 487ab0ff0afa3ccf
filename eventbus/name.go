package eventbus

import "github.com/paissive/go-eventbus/internal/names"

// MaxNameLength is the longest event name or pattern in bytes: the AMQP
// routing-key limit, so that a name valid here is valid on every broker.
const MaxNameLength = names.MaxLength

// ValidateName reports whether name is a valid event name: one or more
// segments of letters, digits, '_' and '-', joined by '.', at most
// [MaxNameLength] bytes. The error wraps [ErrInvalidName] and names the
// offending segment.
func ValidateName(name string) error { return names.Validate(name) }
