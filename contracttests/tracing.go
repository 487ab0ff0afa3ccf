package contracttests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/paissive/go-eventbus/eventbus"
)

// tracer is one test's OpenTelemetry SDK: every span sampled, kept in
// memory when it ends.
type tracer struct {
	e   *env
	exp *tracetest.InMemoryExporter
	tp  *sdktrace.TracerProvider
}

func (e *env) tracer() *tracer {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	e.t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &tracer{e: e, exp: exp, tp: tp}
}

// bus opens a bus that traces into tr, with W3C trace context on the
// wire.
func (tr *tracer) bus(service string, p eventbus.Policy) *eventbus.Bus {
	return tr.e.busWith(eventbus.Config{
		ServiceName: tr.e.service(service), Policy: p,
		TracerProvider: tr.tp, Propagator: propagation.TraceContext{},
	})
}

// span waits until a span named name that satisfies match has ended and
// returns it.
func (tr *tracer) span(name string, match func(tracetest.SpanStub) bool) tracetest.SpanStub {
	tr.e.t.Helper()
	var found tracetest.SpanStub
	tr.e.waitFor("span "+name, func() bool {
		for _, s := range tr.exp.GetSpans() {
			if s.Name == name && (match == nil || match(s)) {
				found = s
				return true
			}
		}
		return false
	}, func() string { return "ended spans: " + tr.names() })
	return found
}

func (tr *tracer) names() string {
	var names []string
	for _, s := range tr.exp.GetSpans() {
		names = append(names, fmt.Sprintf("%q", s.Name))
	}
	return strings.Join(names, ", ")
}

// withMessageID matches the spans of one event.
func withMessageID(id string) func(tracetest.SpanStub) bool {
	return func(s tracetest.SpanStub) bool { return attr(s, "messaging.message.id") == id }
}

// attr returns a span attribute as text, "" when it is missing.
func attr(s tracetest.SpanStub, key string) string {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

func hasEvent(s tracetest.SpanStub, name string, attrs ...attribute.KeyValue) bool {
outer:
	for _, ev := range s.Events {
		if ev.Name != name {
			continue
		}
		for _, want := range attrs {
			found := false
			for _, kv := range ev.Attributes {
				if kv == want {
					found = true
				}
			}
			if !found {
				continue outer
			}
		}
		return true
	}
	return false
}

// testTraceAcrossHops: an event published inside a span, handled by
// another service whose handler publishes a second event, handled by a
// third subscription, is one trace: root → publish (PRODUCER) → process
// (CONSUMER, child of and linked to the publish span) → publish from the
// handler → process. The handler's ctx carries the process span. So the
// transport must carry the ce_traceparent header of each event.
func testTraceAcrossHops(e *env) {
	tr := e.tracer()
	a, bb := tr.bus("trace-a", fastPolicy), tr.bus("trace-b", fastPolicy)
	type seen struct {
		sc trace.SpanContext
		ev eventbus.Event
	}
	firstSeen, secondSeen := make(chan seen, 1), make(chan seen, 1)
	e.subscribe(bb, "trace.placed", func(ctx context.Context, ev eventbus.Event) error {
		firstSeen <- seen{trace.SpanContextFromContext(ctx), ev}
		next, err := eventbus.NewEvent("trace.billed", map[string]string{"for": ev.ID})
		if err != nil {
			return err
		}
		return bb.Publish(ctx, next)
	})
	e.subscribe(a, "trace.billed", func(ctx context.Context, ev eventbus.Event) error {
		secondSeen <- seen{trace.SpanContextFromContext(ctx), ev}
		return nil
	})
	e.start(a)
	e.start(bb)

	ctx, root := tr.tp.Tracer("contracttests").Start(e.ctx(), "root")
	first := e.event("trace.placed", nil)
	if err := a.Publish(ctx, first); err != nil {
		e.t.Fatalf("Publish: %v", err)
	}
	root.End()
	wait := func(ch chan seen, what string) seen {
		select {
		case s := <-ch:
			return s
		case <-ctx.Done():
			e.t.Fatalf("%s never handled", what)
		}
		return seen{}
	}
	h1 := wait(firstSeen, "first hop")
	h2 := wait(secondSeen, "second hop")

	pub1 := tr.span("publish trace.placed", withMessageID(first.ID))
	proc1 := tr.span("process trace.placed", withMessageID(first.ID))
	pub2 := tr.span("publish trace.billed", withMessageID(h2.ev.ID))
	proc2 := tr.span("process trace.billed", withMessageID(h2.ev.ID))

	traceID := root.SpanContext().TraceID()
	for _, s := range []tracetest.SpanStub{pub1, proc1, pub2, proc2} {
		if s.SpanContext.TraceID() != traceID {
			e.t.Errorf("span %q is in trace %s, want the root's %s: the trace context did not cross the hop", s.Name, s.SpanContext.TraceID(), traceID)
		}
	}
	if h1.sc.TraceID() != traceID || h2.sc.TraceID() != traceID {
		e.t.Errorf("the handlers' ctx carry traces %s and %s, want %s", h1.sc.TraceID(), h2.sc.TraceID(), traceID)
	}
	if h1.sc.SpanID() != proc1.SpanContext.SpanID() || h2.sc.SpanID() != proc2.SpanContext.SpanID() {
		e.t.Errorf("the handlers' ctx do not carry their process spans")
	}
	checkHop := func(parent, pub, proc tracetest.SpanStub, name, id, corr string) {
		e.t.Helper()
		if pub.SpanKind != trace.SpanKindProducer || proc.SpanKind != trace.SpanKindConsumer {
			e.t.Errorf("%s: span kinds %v and %v, want producer and consumer", name, pub.SpanKind, proc.SpanKind)
		}
		if pub.Parent.SpanID() != parent.SpanContext.SpanID() {
			e.t.Errorf("publish %s: parent %s, want %q (%s)", name, pub.Parent.SpanID(), parent.Name, parent.SpanContext.SpanID())
		}
		if proc.Parent.SpanID() != pub.SpanContext.SpanID() || !proc.Parent.IsRemote() {
			e.t.Errorf("process %s: parent %s (remote %v), want the remote publish span %s", name, proc.Parent.SpanID(), proc.Parent.IsRemote(), pub.SpanContext.SpanID())
		}
		if len(proc.Links) != 1 || proc.Links[0].SpanContext.SpanID() != pub.SpanContext.SpanID() {
			e.t.Errorf("process %s: links %v, want one to the publish span %s", name, proc.Links, pub.SpanContext.SpanID())
		}
		for _, s := range []tracetest.SpanStub{pub, proc} {
			for key, want := range map[string]string{
				"messaging.destination.name":        name,
				"messaging.message.id":              id,
				"messaging.message.conversation_id": corr,
			} {
				if got := attr(s, key); got != want {
					e.t.Errorf("span %q: %s = %q, want %q", s.Name, key, got, want)
				}
			}
			if attr(s, "messaging.system") == "" {
				e.t.Errorf("span %q has no messaging.system", s.Name)
			}
			if attr(s, "messaging.message.body.size") == "" {
				e.t.Errorf("span %q has no messaging.message.body.size", s.Name)
			}
		}
		if attr(proc, "messaging.consumer.group.name") == "" || attr(proc, "eventbus.outcome") != "handled" || attr(proc, "eventbus.attempts") != "1" {
			e.t.Errorf("process %s: group %q, outcome %q, attempts %q; want a group, handled, 1", name,
				attr(proc, "messaging.consumer.group.name"), attr(proc, "eventbus.outcome"), attr(proc, "eventbus.attempts"))
		}
	}
	rootStub := tracetest.SpanStub{Name: "root", SpanContext: root.SpanContext()}
	// Publish made the first event its own correlation.
	checkHop(rootStub, pub1, proc1, "trace.placed", first.ID, first.ID)
	checkHop(proc1, pub2, proc2, "trace.billed", h2.ev.ID, first.ID)
}

// testTraceRetryAndPoison: the process span of a delivery covers every
// attempt: a retried event's span is "handled" with its retries as
// events, a poisoned one's is "poisoned" with the reason, an error status
// and its attempts.
func testTraceRetryAndPoison(e *env) {
	tr := e.tracer()
	b := tr.bus("trace-fail", fastPolicy)
	var calls sync.Map // event ID -> *atomic.Int32
	e.subscribe(b, "trace.#", func(_ context.Context, ev eventbus.Event) error {
		n, _ := calls.LoadOrStore(ev.ID, new(atomic.Int32))
		switch k := n.(*atomic.Int32).Add(1); {
		case ev.Name == "trace.flaky" && k < 2:
			return errors.New("flaky: first attempt fails")
		case ev.Name == "trace.broken":
			return errors.New("broken: every attempt fails")
		case ev.Name == "trace.refused":
			return eventbus.Permanent(errors.New("refused"))
		}
		return nil
	})
	e.start(b)
	flaky, broken, refused := e.event("trace.flaky", nil), e.event("trace.broken", nil), e.event("trace.refused", nil)
	e.publish(b, flaky, broken, refused)

	s := tr.span("process trace.flaky", withMessageID(flaky.ID))
	if attr(s, "eventbus.outcome") != "handled" || attr(s, "eventbus.attempts") != "2" || s.Status.Code == codes.Error {
		e.t.Errorf("flaky: outcome %q, attempts %q, status %v; want handled after 2 attempts", attr(s, "eventbus.outcome"), attr(s, "eventbus.attempts"), s.Status)
	}
	if !hasEvent(s, "eventbus.retry", attribute.Int("eventbus.attempt", 2)) || !hasEvent(s, "exception", attribute.Int("eventbus.attempt", 1)) {
		e.t.Errorf("flaky: span events %v, want the failed attempt 1 and the retry 2", s.Events)
	}

	s = tr.span("process trace.broken", withMessageID(broken.ID))
	attempts := fmt.Sprint(fastPolicy.MaxAttempts)
	if attr(s, "eventbus.outcome") != "poisoned" || attr(s, "eventbus.poison.reason") != "retries-exhausted" ||
		attr(s, "eventbus.attempts") != attempts || s.Status.Code != codes.Error {
		e.t.Errorf("broken: outcome %q, reason %q, attempts %q, status %v; want poisoned, retries-exhausted, %s, error",
			attr(s, "eventbus.outcome"), attr(s, "eventbus.poison.reason"), attr(s, "eventbus.attempts"), s.Status, attempts)
	}
	for n := 2; n <= fastPolicy.MaxAttempts; n++ {
		if !hasEvent(s, "eventbus.retry", attribute.Int("eventbus.attempt", n)) {
			e.t.Errorf("broken: no retry event for attempt %d in %v", n, s.Events)
		}
	}
	if !hasEvent(s, "eventbus.poisoned", attribute.String("eventbus.poison.reason", "retries-exhausted")) {
		e.t.Errorf("broken: no poisoned event in %v", s.Events)
	}

	s = tr.span("process trace.refused", withMessageID(refused.ID))
	if attr(s, "eventbus.outcome") != "poisoned" || attr(s, "eventbus.poison.reason") != "permanent" || attr(s, "eventbus.attempts") != "1" {
		e.t.Errorf("refused: outcome %q, reason %q, attempts %q; want poisoned, permanent, 1",
			attr(s, "eventbus.outcome"), attr(s, "eventbus.poison.reason"), attr(s, "eventbus.attempts"))
	}
}
