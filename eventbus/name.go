package eventbus

import "github.com/paissive/go-eventbus/internal/names"

// MaxNameLength is the longest event name or pattern in bytes: the AMQP
// routing-key limit, so that a name valid here is valid on every broker.
// Names are segments of letters, digits, '_' and '-' joined by '.'; NewEvent
// and Publish reject others with an error wrapping [ErrInvalidName] that
// names the offending segment.
const MaxNameLength = names.MaxLength
