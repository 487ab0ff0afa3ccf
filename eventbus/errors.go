package eventbus

import (
	"errors"
	"fmt"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/names"
	"github.com/paissive/go-eventbus/internal/wire"
)

// The errors every transport reports alike (they are the driver
// package's values, so errors.Is matches whatever the broker), and the
// bus's own.
var (
	// ErrClosed is returned by every Bus method called after Close, and by
	// a transport used after it closed.
	ErrClosed = driver.ErrClosed

	// ErrInvalidName is wrapped by every error about a malformed event name.
	ErrInvalidName = names.ErrInvalidName

	// ErrInvalidPattern is wrapped by every error about a malformed pattern.
	ErrInvalidPattern = names.ErrInvalidPattern

	// ErrInvalidEvent is wrapped by errors about an event that cannot be
	// published or decoded (missing ID, unknown type, data that is not JSON).
	ErrInvalidEvent = driver.ErrInvalidEvent

	// ErrPermanent marks errors that retrying cannot fix. Test for it with
	// errors.Is; create such errors with [Permanent].
	ErrPermanent = errors.New("permanent error")

	// ErrUnroutable is wrapped by a publish error when the broker reports that
	// no subscription matched an event, so nobody would ever receive it.
	ErrUnroutable = driver.ErrUnroutable

	// ErrTooLarge is wrapped by the error for an event or poison record
	// that exceeds a limit of the broker (a header table larger than the
	// AMQP frame, a record larger than Kafka's max_message_bytes). The
	// error names the limit; only that event fails.
	ErrTooLarge = driver.ErrTooLarge

	// ErrUnsupported is returned when a transport lacks an optional
	// capability (for example a poison queue).
	ErrUnsupported = driver.ErrUnsupported
)

// Permanent marks err as permanent: the bus does not retry the handler and
// moves the event to the poison queue at once. Use it for failures that
// another attempt cannot fix, such as a malformed payload. Permanent(nil) is
// nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Is makes errors.Is(err, ErrPermanent) true.
func (e *permanentError) Is(target error) bool { return target == ErrPermanent }

// Permanent reports true; the middleware package recognises permanent errors
// by this method, so it does not need to import this package.
func (e *permanentError) Permanent() bool { return true }

// PublishError reports the events a Publish call could not hand to the
// transport durably. Events not listed were accepted.
type PublishError struct {
	Failed []FailedEvent
}

// FailedEvent names one event that was not published and why.
type FailedEvent struct {
	ID   string
	Name string
	Err  error
}

// Error lists up to five failed events with their causes.
func (e *PublishError) Error() string {
	return "eventbus: " + wire.ListFailures(len(e.Failed), "event(s)", func(i int) string {
		f := e.Failed[i]
		return fmt.Sprintf("%s (%s): %v", f.Name, f.ID, f.Err)
	})
}

// Unwrap returns the distinct causes, so errors.Is(err, context.Canceled)
// and errors.Is(err, ErrUnroutable) work on a PublishError.
func (e *PublishError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f.Err
	}
	return wire.Distinct(errs)
}
