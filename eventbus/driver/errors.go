package driver

import (
	"errors"
	"fmt"
	"strings"

	"github.com/paissive/go-eventbus/internal/wire"
)

// Errors every transport wraps for the conditions they name, so that a
// user's errors.Is works whatever the broker; the eventbus package exports
// the same values.
var (
	// ErrClosed is returned by operations on a closed transport.
	ErrClosed = errors.New("eventbus: closed")

	// ErrUnroutable is wrapped by a publish error when the broker reports
	// that no subscription matched a message, so nobody would ever receive
	// it.
	ErrUnroutable = errors.New("eventbus: no subscription matches the event")

	// ErrUnsupported is returned when a transport lacks an optional
	// capability.
	ErrUnsupported = errors.New("eventbus: not supported by this transport")

	// ErrTooLarge is wrapped by the error for a message that exceeds a
	// limit of the broker (a header table larger than the AMQP frame, a
	// record larger than Kafka's max_message_bytes). The error names the
	// limit; only that message fails.
	ErrTooLarge = wire.ErrTooLarge

	// ErrInvalidEvent is wrapped by [Decode]'s errors: the message is not
	// an event in the wire format.
	ErrInvalidEvent = wire.ErrInvalidEvent
)

// PublishError reports the messages a publisher could not hand to the
// broker durably. Messages not listed were accepted. Any other error from
// Publish fails every message of the call.
type PublishError struct {
	Failed []Failure
}

// Failure names one message that was not published and why.
type Failure struct {
	UUID string
	Err  error
}

// Error lists up to five failed messages with their causes.
func (e *PublishError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d message(s) not published:", len(e.Failed))
	const show = 5
	for i, f := range e.Failed {
		if i == show {
			fmt.Fprintf(&b, " ... and %d more", len(e.Failed)-show)
			break
		}
		fmt.Fprintf(&b, " %s: %v;", f.UUID, f.Err)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// Unwrap returns the distinct causes, so errors.Is(err, ErrUnroutable)
// works on a PublishError.
func (e *PublishError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f.Err
	}
	return wire.Distinct(errs)
}
