package middleware

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/internal/wire"
)

type traceKey struct{}

// Trace is what a handler's ctx knows about the event being handled.
type Trace struct {
	// CorrelationID of the handled event (its own ID if it had none).
	CorrelationID string
	// EventID is the handled event's ID: the causation ID of anything the
	// handler publishes.
	EventID string
}

// traceCtx carries a Trace in one allocation (context.WithValue would box
// the Trace separately).
type traceCtx struct {
	context.Context
	t Trace
}

func (c *traceCtx) Value(key any) any {
	if key == (traceKey{}) {
		return &c.t
	}
	return c.Context.Value(key)
}

// msgTraceCtx is the ctx Correlation gives a handler: it reads the trace
// from the message's headers only when asked, which most handlers never do;
// this runs once per event.
type msgTraceCtx struct {
	context.Context
	msg *message.Message
}

func (c *msgTraceCtx) Value(key any) any {
	if key == (traceKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// traceOf is the trace of a handled message: its correlation ID (its own
// event ID if it has none) and its event ID.
func traceOf(msg *message.Message) Trace {
	t := Trace{CorrelationID: msg.Metadata[wire.CorrelationID], EventID: msg.Metadata[wire.ID]}
	if t.EventID == "" {
		t.EventID = msg.UUID
	}
	if t.CorrelationID == "" {
		t.CorrelationID = t.EventID
	}
	return t
}

// WithTrace returns a ctx carrying t.
func WithTrace(ctx context.Context, t Trace) context.Context {
	return &traceCtx{Context: ctx, t: t}
}

// TraceFromContext returns the trace a Correlation middleware put in ctx:
// for a handler's ctx, read from the handled message's headers when asked.
func TraceFromContext(ctx context.Context) (Trace, bool) {
	switch v := ctx.Value(traceKey{}).(type) {
	case *Trace:
		return *v, true
	case *msgTraceCtx:
		return traceOf(v.msg), true
	}
	return Trace{}, false
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
		msg.SetContext(&msgTraceCtx{Context: orig, msg: msg})
		defer msg.SetContext(orig)
		out, err := h(msg)
		if len(out) > 0 {
			t := traceOf(msg)
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
