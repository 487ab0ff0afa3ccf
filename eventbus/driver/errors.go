package driver

import (
	"errors"
	"fmt"

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
	return wire.ListFailures(len(e.Failed), "message(s)", func(i int) string {
		return fmt.Sprintf("%s: %v", e.Failed[i].UUID, e.Failed[i].Err)
	})
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
