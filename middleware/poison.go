package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/logkeys"
	"github.com/paissive/go-eventbus/internal/wire"
)

// PoisonStore is where Poison puts messages; eventbus.PoisonQueue
// implementations satisfy it.
type PoisonStore interface {
	Add(ctx context.Context, msg *message.Message) error
}

// Poison moves a message whose handler finally failed to a durable store and
// acknowledges it, so one bad event cannot block or loop a subscription. The
// stored copy keeps every header and gains the poison_* headers: a record ID
// of its own, reason, error, attempts, service, subscription, pattern, first
// and last failure.
//
// What a record adds is bounded, so that a message the broker accepted can
// be poisoned: the error text is cut to 8 KiB (poison_error_truncated then
// gives its full length). If the store still refuses the record as too
// large (an error wrapping the transports' ErrTooLarge: a header table over
// the AMQP frame size, a record over Kafka's limit), Poison stores a reduced
// record instead: only the poison headers, with the original message's
// headers and body as JSON in the body (poison_wrapped), which the bus
// unwraps when it lists or replays the record. Nothing of the event is lost
// either way, and it is stored once.
//
// If storing fails otherwise (the broker is gone), the failure is logged at
// error level and the message is not acknowledged, so it comes back; the
// nack waits FailureDelay, doubling with each consecutive failure of the
// subscription up to a minute, so a broken store is never a hot loop. A
// handler that stopped because its ctx was cancelled (the bus is closing)
// is not poisoned either.
type Poison struct {
	Store                          PoisonStore
	Service, Subscription, Pattern string
	// FailureDelay is the pause before giving a message back after the
	// store failed; zero means one second. It doubles with each further
	// consecutive failure, up to MaxFailureDelay.
	FailureDelay time.Duration
	Logger       *slog.Logger
	// OnStored, when set, is called after each record was stored, with the
	// record's reason.
	OnStored func(reason string)
	// OnStoreFailed, when set, is called each time a record could not be
	// stored.
	OnStoreFailed func(err error)
}

// MaxFailureDelay caps the pause after consecutive store failures.
const MaxFailureDelay = time.Minute

// Middleware returns the middleware.
func (p Poison) Middleware(h message.HandlerFunc) message.HandlerFunc {
	// Consecutive store failures of this subscription: they lengthen the
	// pause before a message goes back, and a stored record resets them.
	var failures atomic.Int32
	return func(msg *message.Message) ([]*message.Message, error) {
		// The ctx before the handler: a middleware inside may leave its own,
		// cancelled one behind.
		orig := msg.Context()
		out, err := h(msg)
		if err == nil {
			return out, nil
		}
		if orig.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			return nil, err
		}
		rec := p.record(msg, err)
		reason := rec.Metadata[wire.PoisonReason]
		serr := p.Store.Add(orig, rec)
		wrapped := false
		if errors.Is(serr, wire.ErrTooLarge) {
			if p.Logger != nil {
				p.Logger.Warn("eventbus: poison record too large for the broker; storing a reduced record with the message in its body",
					p.eventAttrs(msg, logkeys.Error, serr)...)
			}
			wrapped = true
			serr = p.Store.Add(orig, wrap(msg, rec))
		}
		if serr != nil {
			n := failures.Add(1)
			if p.OnStoreFailed != nil {
				p.OnStoreFailed(serr)
			}
			delay := p.FailureDelay
			if delay <= 0 {
				delay = time.Second
			}
			for i := int32(1); i < n && delay < MaxFailureDelay; i++ {
				delay *= 2
			}
			delay = min(delay, MaxFailureDelay)
			if p.Logger != nil {
				p.Logger.Error("eventbus: cannot store event in poison queue; it will be redelivered",
					p.eventAttrs(msg, logkeys.Reason, reason, "consecutive_failures", n, logkeys.Delay, delay,
						logkeys.Error, serr, logkeys.HandlerError, firstLine(err.Error()))...)
			}
			_ = sleep(orig, delay)
			return nil, errors.Join(err, serr)
		}
		failures.Store(0)
		if p.OnStored != nil {
			p.OnStored(reason)
		}
		if p.Logger != nil {
			attempts, _ := strconv.Atoi(rec.Metadata[wire.PoisonAttempts])
			p.Logger.Warn("eventbus: event moved to poison queue", p.eventAttrs(msg, logkeys.Reason, reason, logkeys.Attempts, attempts,
				"reduced", wrapped, logkeys.Error, firstLine(err.Error()))...)
		}
		return nil, nil
	}
}

// eventAttrs are the attributes of a log line about msg: the event and the
// subscription, then more.
func (p Poison) eventAttrs(msg *message.Message, more ...any) []any {
	return append([]any{
		logkeys.EventName, msg.Metadata[wire.Type], logkeys.EventID, msg.UUID,
		logkeys.CorrelationID, msg.Metadata[wire.CorrelationID],
		logkeys.Service, p.Service, logkeys.Subscription, p.Subscription,
	}, more...)
}

// record is the poison record of msg failed with err: a copy with the
// poison headers.
func (p Poison) record(msg *message.Message, err error) *message.Message {
	attempts, first, last := failureRecord(err)
	rec := msg.Copy()
	md := rec.Metadata
	md[wire.PoisonID] = watermill.NewUUID()
	md[wire.PoisonReason] = Reason(err)
	text := err.Error()
	if len(text) > wire.MaxPoisonError {
		md[wire.PoisonErrorTruncated] = strconv.Itoa(len(text))
		text = truncate(text, wire.MaxPoisonError)
	}
	md[wire.PoisonError] = text
	md[wire.PoisonAttempts] = strconv.Itoa(attempts)
	md[wire.PoisonService] = p.Service
	md[wire.PoisonSubscription] = p.Subscription
	md[wire.PoisonPattern] = p.Pattern
	md[wire.PoisonFirstFailure] = first.UTC().Format(time.RFC3339Nano)
	md[wire.PoisonLastFailure] = last.UTC().Format(time.RFC3339Nano)
	return rec
}

// wrap returns the reduced record of msg: rec's poison headers, and msg
// itself as JSON in the body.
func wrap(msg, rec *message.Message) *message.Message {
	body, err := json.Marshal(wire.WrappedMessage{UUID: msg.UUID, Metadata: msg.Metadata, Payload: msg.Payload})
	if err != nil { // a map of strings and a byte slice always marshal
		panic(err)
	}
	w := message.NewMessage(rec.UUID, body)
	for k, v := range rec.Metadata {
		if strings.HasPrefix(k, "poison_") {
			w.Metadata[k] = v
		}
	}
	w.Metadata[wire.PoisonWrapped] = "true"
	return w
}

// Unwrap returns the message a poison record stands for: the record itself,
// or for a reduced record (see [Poison]) the original message from its
// body, with the record's poison headers.
func Unwrap(rec *message.Message) (*message.Message, error) {
	if rec.Metadata.Get(wire.PoisonWrapped) == "" {
		return rec, nil
	}
	var w wire.WrappedMessage
	if err := json.Unmarshal(rec.Payload, &w); err != nil {
		return nil, errors.New("reduced poison record " + rec.Metadata.Get(wire.PoisonID) + " has a body that is not a wrapped message: " + err.Error())
	}
	m := message.NewMessage(w.UUID, w.Payload)
	for k, v := range w.Metadata {
		m.Metadata[k] = v
	}
	for k, v := range rec.Metadata {
		if strings.HasPrefix(k, "poison_") {
			m.Metadata[k] = v
		}
	}
	return m, nil
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut before the first byte left out if that byte continues a
	// sequence.
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// maxLogError is the most of a handler's error a log line shows.
const maxLogError = 500

// firstLine keeps log lines short: a panic's error carries the whole stack,
// and an error may be any length; the poison record keeps 8 KiB of it.
func firstLine(s string) string {
	line, more := s, false
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		line, more = s[:i], true
	}
	if len(line) > maxLogError {
		line, more = truncate(line, maxLogError), true
	}
	if more {
		return line + " ... (more in the poison record)"
	}
	return line
}
