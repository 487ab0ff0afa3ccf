package middleware

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/wire"
)

type causationKey struct{}

// Causation is what a handler's ctx knows about the event being handled:
// what events published with that ctx inherit (its correlation ID) and
// name as their cause (its ID). It carries IDs, not a trace: tracing is the
// OpenTelemetry instrumentation's.
type Causation struct {
	// CorrelationID of the handled event (its own ID if it had none).
	CorrelationID string
	// EventID is the handled event's ID: the causation ID of anything the
	// handler publishes.
	EventID string
}

// causationCtx carries a Causation in one allocation (context.WithValue
// would box it separately).
type causationCtx struct {
	context.Context
	t Causation
}

func (c *causationCtx) Value(key any) any {
	if key == (causationKey{}) {
		return &c.t
	}
	return c.Context.Value(key)
}

// msgCausationCtx is the ctx Correlation gives a handler: it reads the causation
// from the message's headers only when asked, which most handlers never do;
// this runs once per event.
type msgCausationCtx struct {
	context.Context
	msg *message.Message
}

func (c *msgCausationCtx) Value(key any) any {
	if key == (causationKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// causationOf is the causation of a handled message: its correlation ID (its own
// event ID if it has none) and its event ID.
func causationOf(msg *message.Message) Causation {
	t := Causation{CorrelationID: msg.Metadata[wire.CorrelationID], EventID: msg.Metadata[wire.ID]}
	if t.EventID == "" {
		t.EventID = msg.UUID
	}
	if t.CorrelationID == "" {
		t.CorrelationID = t.EventID
	}
	return t
}

// WithCausation returns a ctx carrying t.
func WithCausation(ctx context.Context, t Causation) context.Context {
	return &causationCtx{Context: ctx, t: t}
}

// CausationFromContext returns the causation a Correlation middleware put in ctx:
// for a handler's ctx, read from the handled message's headers when asked.
func CausationFromContext(ctx context.Context) (Causation, bool) {
	switch v := ctx.Value(causationKey{}).(type) {
	case *Causation:
		return *v, true
	case *msgCausationCtx:
		return causationOf(v.msg), true
	}
	return Causation{}, false
}

// Correlation puts the handled message's correlation ID and event ID in its
// ctx, where the bus's Publish finds them: events published with the
// handler's ctx inherit the correlation ID and get the handled event's ID as
// causation ID. Messages the handler returns (plain Watermill routers) are
// stamped the same way. Watermill's own CorrelationID middleware covers only
// returned messages, not events published from inside the handler.
func Correlation(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		orig := msg.Context()
		msg.SetContext(&msgCausationCtx{Context: orig, msg: msg})
		defer msg.SetContext(orig)
		out, err := h(msg)
		if len(out) > 0 {
			t := causationOf(msg)
			for _, m := range out {
				if m.Metadata.Get(wire.CorrelationID) == "" {
					m.Metadata.Set(wire.CorrelationID, t.CorrelationID)
				}
				if m.Metadata.Get(wire.CausationID) == "" {
					m.Metadata.Set(wire.CausationID, t.EventID)
				}
			}
		}
		return out, err
	}
}
