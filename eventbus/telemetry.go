package eventbus

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/logkeys"
	"github.com/paissive/go-eventbus/internal/wire"
	"github.com/paissive/go-eventbus/middleware"
)

// The bus's OpenTelemetry instrumentation. The shapes (which spans, their
// parents and links, which metrics) are documented in the package
// documentation and docs/observability.md; keep the three in step.

// scopeName is the instrumentation scope of the bus's tracer and meter.
const scopeName = "github.com/paissive/go-eventbus/eventbus"

// Attribute keys of the OpenTelemetry semantic conventions for messaging
// (semantic-conventions 1.40, status "development") and the bus's own,
// under "eventbus.".
const (
	attrSystem         = attribute.Key("messaging.system")
	attrOperationName  = attribute.Key("messaging.operation.name")
	attrOperationType  = attribute.Key("messaging.operation.type")
	attrDestination    = attribute.Key("messaging.destination.name")
	attrSubscription   = attribute.Key("messaging.destination.subscription.name")
	attrConsumerGroup  = attribute.Key("messaging.consumer.group.name")
	attrMessageID      = attribute.Key("messaging.message.id")
	attrConversationID = attribute.Key("messaging.message.conversation_id")
	attrBodySize       = attribute.Key("messaging.message.body.size")
	attrServerAddress  = attribute.Key("server.address")
	attrServerPort     = attribute.Key("server.port")
	attrErrorType      = attribute.Key("error.type")

	attrService     = attribute.Key("eventbus.service")
	attrCausationID = attribute.Key("eventbus.causation_id")
	attrOutcome     = attribute.Key("eventbus.outcome")
	attrAttempt     = attribute.Key("eventbus.attempt")
	attrAttempts    = attribute.Key("eventbus.attempts")
	attrReason      = attribute.Key("eventbus.poison.reason")
)

// Outcomes of a delivery (the eventbus.outcome attribute).
const (
	outcomeHandled  = "handled"  // the handler returned nil (after retries, perhaps)
	outcomePoisoned = "poisoned" // moved to the poison queue and acknowledged
	outcomeReturned = "returned" // given back to the broker: the poison store failed, or the bus closed
)

// Metric names: the conventions' where they have one, the bus's own under
// "eventbus.".
const (
	metricSent            = "messaging.client.sent.messages"
	metricPublishDuration = "messaging.client.operation.duration"
	metricConsumed        = "messaging.client.consumed.messages"
	metricProcessDuration = "messaging.process.duration"
	metricRetries         = "eventbus.retries"
	metricPoisoned        = "eventbus.poisoned"
	metricStoreFailures   = "eventbus.poison.store_failures"
	metricInFlight        = "eventbus.handlers.in_flight"
	metricPoisonDepth     = "eventbus.poison.depth"
)

// durationBuckets are the bucket boundaries the conventions advise for
// messaging durations, in seconds.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// maxCached bounds each cache of attributes per event name: names are few
// in a sound design, but a foreign producer may send any number of them.
const maxCached = 1000

// telemetry is a bus's instrumentation; nil when it is switched off.
type telemetry struct {
	tracer trace.Tracer
	// noop reports whether the tracer is a no-op now; see noopTracing.
	noop func() bool
	// idle reports whether nothing would be recorded (idleProviders).
	idle func() bool
	prop propagation.TextMapPropagator
	// fields are the wire headers the propagator writes, replaced in a
	// published message when it injects (see inject).
	fields []string
	base   []attribute.KeyValue // messaging.system, server.address, server.port
	log    *slog.Logger

	sent            metric.Int64Counter
	publishDuration metric.Float64Histogram
	consumed        metric.Int64Counter
	processDuration metric.Float64Histogram
	retries         metric.Int64Counter
	poisoned        metric.Int64Counter
	storeFailures   metric.Int64Counter
	inFlight        metric.Int64UpDownCounter
	depth           metric.Registration // the poison depth callback, or nil

	publish cache[*publishInfo]
}

// newTelemetry sets up the instrumentation for a bus on transport t.
func newTelemetry(cfg Config, desc driver.Description, t driver.Transport) (*telemetry, error) {
	tp, mp, prop := cfg.TracerProvider, cfg.MeterProvider, cfg.Propagator
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if prop == nil {
		prop = otel.GetTextMapPropagator()
	}
	tel := &telemetry{tracer: tp.Tracer(scopeName), prop: prop, log: cfg.Logger, noop: noopTracing(cfg.TracerProvider)}
	tel.idle = idleProviders(cfg, tel.noop)
	seen := map[string]bool{wire.TraceParent: true, wire.TraceState: true}
	tel.fields = []string{wire.TraceParent, wire.TraceState}
	for _, f := range prop.Fields() {
		if h := header(f); !seen[h] && !reserved(h) {
			seen[h] = true
			tel.fields = append(tel.fields, h)
		}
	}
	tel.base = []attribute.KeyValue{attrSystem.String(desc.System)}
	if desc.ServerAddress != "" {
		tel.base = append(tel.base, attrServerAddress.String(desc.ServerAddress))
		if desc.ServerPort > 0 {
			tel.base = append(tel.base, attrServerPort.Int(desc.ServerPort))
		}
	}

	m := mp.Meter(scopeName)
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	histogram := func(name, desc string) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc), metric.WithExplicitBucketBoundaries(durationBuckets...))
		errs = append(errs, err)
		return h
	}
	tel.sent = counter(metricSent, "{message}", "Events the bus handed to the transport, by outcome (error.type on failures).")
	tel.publishDuration = histogram(metricPublishDuration, "Duration of the transport's publish of a group of events of one name, until the broker accepted them durably.")
	tel.consumed = counter(metricConsumed, "{message}", "Deliveries the bus received for a subscription.")
	tel.processDuration = histogram(metricProcessDuration, "Duration of a delivery: every handler attempt, the waits between them and storing in the poison queue.")
	tel.retries = counter(metricRetries, "{retry}", "Handler attempts after the first.")
	tel.poisoned = counter(metricPoisoned, "{message}", "Events moved to the poison queue, by reason.")
	tel.storeFailures = counter(metricStoreFailures, "{failure}", "Failures to store an event in the poison queue (the event is then redelivered).")
	var err error
	tel.inFlight, err = m.Int64UpDownCounter(metricInFlight, metric.WithUnit("{handler}"), metric.WithDescription("Deliveries being handled (the handler running, or waiting to retry)."))
	errs = append(errs, err)
	if pq, err := t.PoisonQueue(); err == nil {
		if pc, ok := pq.(driver.PoisonCounter); ok {
			errs = append(errs, tel.observeDepth(m, pc, cfg.ServiceName))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, errors.New("eventbus: setting up the OpenTelemetry metrics: " + err.Error())
	}
	return tel, nil
}

// noopTracing returns a function reporting whether tracing through tp (nil
// for the otel global) is a no-op at the moment: a no-op provider, or the
// global one while no SDK is installed. The bus then starts no spans: a
// no-op tracer's span only carries its parent's context, which the
// parent's ctx already does, and starting it cost two allocations and a
// fifth of the bus's time per event in the in-memory benchmark. An SDK
// installed as the global provider after New is noticed on the next event
// (otel.GetTracerProvider then returns it).
func noopTracing(tp trace.TracerProvider) func() bool {
	return isUnset(tp, otel.GetTracerProvider, "*global.tracerProvider", func(tp trace.TracerProvider) bool {
		_, ok := tp.(tracenoop.TracerProvider)
		return ok
	})
}

// idleProviders returns a function reporting whether the bus would record
// nothing at the moment: no span (see noopTracing), no metric and no
// trace context read or written, because the tracer provider, the meter
// provider and the propagator are the otel globals with nothing installed
// (or no-op providers given in cfg). The bus then skips its
// instrumentation per event altogether: in the in-memory benchmark it
// cost about 5% of the throughput even with nothing to record. Each check
// is an atomic load, so an SDK installed after New is noticed on the next
// event.
func idleProviders(cfg Config, tracingNoop func() bool) func() bool {
	meterNoop := isUnset(cfg.MeterProvider, otel.GetMeterProvider, "*global.meterProvider", func(mp metric.MeterProvider) bool {
		_, ok := mp.(metricnoop.MeterProvider)
		return ok
	})
	propNoop := isUnset(cfg.Propagator, otel.GetTextMapPropagator, "*global.textMapPropagator", func(propagation.TextMapPropagator) bool { return false })
	return func() bool { return tracingNoop() && meterNoop() && propNoop() }
}

// isUnset returns a function reporting whether the provider given (v,
// unless nil) is a no-op one (noop(v)) or, when none is given, whether
// the otel global (get) is still its internal default, of type typeName,
// which it stops being once an SDK is installed. If that type's name ever
// changes, the global is simply never taken for unset.
func isUnset[T comparable](v T, get func() T, typeName string, noop func(T) bool) func() bool {
	var zero T
	if v != zero {
		n := noop(v)
		return func() bool { return n }
	}
	g := get()
	if reflect.TypeOf(g).String() != typeName {
		return func() bool { return false }
	}
	return func() bool { return get() == g }
}

// start starts a span, unless tracing is a no-op: then it returns ctx and
// the span ctx already carries (its parent's context, valid or not).
func (t *telemetry) start(ctx context.Context, name string, opts []trace.SpanStartOption) (context.Context, trace.Span) {
	if t.noop() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return t.tracer.Start(ctx, name, opts...)
}

// depthTimeout bounds one count of the poison queue, so that a frozen
// broker does not hold a metrics scrape.
const depthTimeout = 2 * time.Second

// observeDepth registers the poison depth gauge: the transport counts on
// each collection.
func (t *telemetry) observeDepth(m metric.Meter, pc driver.PoisonCounter, service string) error {
	g, err := m.Int64ObservableGauge(metricPoisonDepth, metric.WithUnit("{message}"),
		metric.WithDescription("Events in the service's poison queue, counted by the transport at each collection."))
	if err != nil {
		return err
	}
	opt := metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(t.base), attrService.String(service))...))
	t.depth, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, depthTimeout)
		defer cancel()
		n, err := pc.PoisonCount(ctx)
		if err != nil {
			// No value rather than a wrong one; the collection goes on.
			t.log.Debug("eventbus: cannot count the poison queue for the metric "+metricPoisonDepth, logkeys.Service, service, logkeys.Error, err)
			return nil
		}
		o.ObserveInt64(g, int64(n), opt)
		return nil
	}, g)
	return err
}

// close unregisters what collections would call after the bus closed.
func (t *telemetry) close() {
	if t != nil && t.depth != nil {
		_ = t.depth.Unregister()
	}
}

// cache maps event names to what the instrumentation precomputes for
// them, so that the path of every event builds no attributes. It holds at
// most maxCached names; others are computed on each use.
type cache[V any] struct {
	m sync.Map
	n atomic.Int32
}

func (c *cache[V]) get(name string, make func(string) V) V {
	if v, ok := c.m.Load(name); ok {
		return v.(V)
	}
	v := make(name)
	if c.n.Load() < maxCached {
		if old, loaded := c.m.LoadOrStore(name, v); loaded {
			return old.(V)
		}
		c.n.Add(1)
	}
	return v
}

// publishInfo is what the producer side precomputes for an event name.
type publishInfo struct {
	spanName string
	start    []trace.SpanStartOption
	attrs    []attribute.KeyValue // of the metrics
	add      []metric.AddOption
	record   []metric.RecordOption
}

func (t *telemetry) publishInfo(name string) *publishInfo {
	return t.publish.get(name, func(name string) *publishInfo {
		attrs := append(slices.Clone(t.base), attrOperationName.String("publish"), attrOperationType.String("send"), attrDestination.String(name))
		set := metric.WithAttributeSet(attribute.NewSet(attrs...))
		return &publishInfo{
			spanName: "publish " + name,
			start:    []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...)},
			attrs:    attrs,
			add:      []metric.AddOption{set},
			record:   []metric.RecordOption{set},
		}
	})
}

// startPublish starts the producer span of msg, an encoded event, and
// writes its context into msg's headers, replacing whatever trace context
// the event carried (a handler republishing a received event must not
// send that event's). The message's ctx becomes the span's.
func (t *telemetry) startPublish(ctx context.Context, msg *message.Message) trace.Span {
	info := t.publishInfo(msg.Metadata[wire.Type])
	ctx, span := t.start(ctx, info.spanName, info.start)
	if span.IsRecording() {
		span.SetAttributes(
			attrMessageID.String(msg.UUID),
			attrConversationID.String(msg.Metadata[wire.CorrelationID]),
			attrBodySize.Int(len(msg.Payload)),
		)
		if c := msg.Metadata[wire.CausationID]; c != "" {
			span.SetAttributes(attrCausationID.String(c))
		}
	}
	t.inject(ctx, msg.Metadata)
	msg.SetContext(ctx)
	return span
}

// inject writes the trace context of ctx into md, replacing the trace
// headers the event carried (a handler republishing the event it received
// sends its own span's context, not that event's). When the propagator has
// nothing to write (no SDK, no span), the event's own trace headers stay:
// the event passes through this service as if it were not there.
func (t *telemetry) inject(ctx context.Context, md message.Metadata) {
	// Propagators write the span context and the baggage ctx carries;
	// without either (no SDK, nothing upstream) there is nothing to write,
	// and checking costs less than the map it would take to find out.
	if !trace.SpanContextFromContext(ctx).IsValid() && baggage.FromContext(ctx).Len() == 0 {
		return
	}
	fresh := make(message.Metadata, len(t.fields))
	t.prop.Inject(ctx, carrier(fresh))
	if len(fresh) == 0 {
		return
	}
	for _, f := range t.fields {
		delete(md, f)
	}
	for k, v := range fresh {
		md[k] = v
	}
}

// endPublish ends the spans of msgs, published together by one call of
// the transport that took d and returned err, and records the metrics.
func (t *telemetry) endPublish(ctx context.Context, spans []trace.Span, msgs []*message.Message, err error, d time.Duration) {
	info := t.publishInfo(msgs[0].Metadata[wire.Type])
	failed := failures(err)
	ok := 0
	for i, span := range spans {
		ferr := failed(msgs[i].UUID)
		if ferr == nil {
			ok++
			span.End()
			continue
		}
		typ := errorType(ferr)
		span.SetAttributes(attrErrorType.String(typ))
		span.RecordError(ferr)
		span.SetStatus(codes.Error, ferr.Error())
		span.End()
		t.sent.Add(ctx, 1, metric.WithAttributes(append(slices.Clone(info.attrs), attrErrorType.String(typ))...))
	}
	if ok > 0 {
		t.sent.Add(ctx, int64(ok), info.add...)
	}
	if err == nil {
		t.publishDuration.Record(ctx, d.Seconds(), info.record...)
	} else {
		t.publishDuration.Record(ctx, d.Seconds(), metric.WithAttributes(append(slices.Clone(info.attrs), attrErrorType.String(errorType(err)))...))
	}
}

// failures returns which error each message of a transport's Publish
// that returned err failed with: those a *driver.PublishError names, or
// all of them for any other error.
func failures(err error) func(uuid string) error {
	if err == nil {
		return func(string) error { return nil }
	}
	var pe *driver.PublishError
	if !errors.As(err, &pe) {
		return func(string) error { return err }
	}
	m := make(map[string]error, len(pe.Failed))
	for _, f := range pe.Failed {
		m[f.UUID] = f.Err
	}
	return func(uuid string) error { return m[uuid] }
}

// errorType classifies a publish error for the error.type attribute: a
// few values, so that metrics stay low in cardinality.
func errorType(err error) string {
	switch {
	case errors.Is(err, ErrUnroutable):
		return "unroutable"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "_OTHER"
}

// subTelemetry is the consumer side's instrumentation of one subscription.
type subTelemetry struct {
	t     *telemetry
	s     *subscription
	attrs []attribute.KeyValue // the subscription's, without the event name
	sub   []metric.AddOption   // the subscription's attributes
	names cache[*processInfo]
}

// processInfo is what the consumer side precomputes for an event name.
type processInfo struct {
	spanName string
	start    []trace.SpanStartOption
	attrs    []attribute.KeyValue // of the metrics
	consumed []metric.AddOption
	handled  []metric.RecordOption
}

func (t *telemetry) forSubscription(s *subscription) *subTelemetry {
	attrs := append(slices.Clone(t.base),
		attrOperationName.String("process"), attrOperationType.String("process"),
		attrSubscription.String(s.name), attrConsumerGroup.String(s.group))
	return &subTelemetry{t: t, s: s, attrs: attrs, sub: []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrs...))}}
}

func (st *subTelemetry) info(name string) *processInfo {
	return st.names.get(name, func(name string) *processInfo {
		attrs := append(slices.Clone(st.attrs), attrDestination.String(name))
		return &processInfo{
			spanName: "process " + name,
			start:    []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...)},
			attrs:    attrs,
			consumed: []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrs...))},
			handled:  []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(attrs), attrOutcome.String(outcomeHandled))...))},
		}
	})
}

// deliveryKey finds a delivery's state in a handler's ctx.
type deliveryKey struct{}

// delivery is the ctx of one delivery while the bus's middleware handles
// it: the process span's ctx, with what the attempts report to it. Only
// the goroutine that handles the delivery touches it.
type delivery struct {
	context.Context
	span     trace.Span
	attempts int
	lastErr  error // of the last attempt; nil once one succeeded
}

func (d *delivery) Value(key any) any {
	if key == (deliveryKey{}) {
		return d
	}
	return d.Context.Value(key)
}

// process handles msg with h inside the delivery's process span, a
// CONSUMER span whose parent is the producer's context from the message's
// headers, which it also links to; it covers every attempt and the poison
// queue, and records the outcome.
func (st *subTelemetry) process(h message.HandlerFunc, msg *message.Message, start time.Time) ([]*message.Message, error) {
	t := st.t
	if t.idle() {
		return h(msg)
	}
	info := st.info(msg.Metadata[wire.Type])
	orig := msg.Context()
	parent := t.prop.Extract(orig, carrier(msg.Metadata))
	opts := info.start
	if psc := trace.SpanContextFromContext(parent); psc.IsValid() {
		opts = append(slices.Clip(opts), trace.WithLinks(trace.Link{SpanContext: psc}))
	}
	ctx, span := t.start(parent, info.spanName, opts)
	if span.IsRecording() {
		span.SetAttributes(
			attrMessageID.String(msg.UUID),
			attrConversationID.String(msg.Metadata[wire.CorrelationID]),
			attrBodySize.Int(len(msg.Payload)),
		)
		if c := msg.Metadata[wire.CausationID]; c != "" {
			span.SetAttributes(attrCausationID.String(c))
		}
	}
	d := &delivery{Context: ctx, span: span}
	t.consumed.Add(ctx, 1, info.consumed...)
	t.inFlight.Add(ctx, 1, st.sub...)
	msg.SetContext(d)
	out, err := h(msg)
	msg.SetContext(orig)
	t.inFlight.Add(ctx, -1, st.sub...)

	outcome, reason := outcomeHandled, ""
	switch {
	case err != nil:
		outcome = outcomeReturned
		span.SetStatus(codes.Error, "returned to the broker for redelivery: "+firstLine(err.Error()))
	case d.lastErr != nil:
		outcome, reason = outcomePoisoned, middleware.Reason(d.lastErr)
		if span.IsRecording() {
			span.AddEvent("eventbus.poisoned", trace.WithAttributes(attrReason.String(reason), attrAttempts.Int(d.attempts)))
		}
		span.SetStatus(codes.Error, "poisoned ("+reason+"): "+firstLine(d.lastErr.Error()))
	}
	if span.IsRecording() {
		attrs := []attribute.KeyValue{attrOutcome.String(outcome), attrAttempts.Int(d.attempts)}
		switch outcome {
		case outcomePoisoned:
			attrs = append(attrs, attrReason.String(reason), attrErrorType.String(reason))
		case outcomeReturned:
			attrs = append(attrs, attrErrorType.String(outcomeReturned))
		}
		span.SetAttributes(attrs...)
	}
	secs := time.Since(start).Seconds()
	switch outcome {
	case outcomeHandled:
		t.processDuration.Record(ctx, secs, info.handled...)
	case outcomePoisoned:
		t.processDuration.Record(ctx, secs, metric.WithAttributes(append(slices.Clone(info.attrs), attrOutcome.String(outcome), attrErrorType.String(reason))...))
	default:
		t.processDuration.Record(ctx, secs, metric.WithAttributes(append(slices.Clone(info.attrs), attrOutcome.String(outcome), attrErrorType.String(outcomeReturned))...))
	}
	span.End()
	return out, err
}

// attempts is the middleware inside Retry that reports each attempt to
// the delivery's span: a failed attempt as an exception event, each retry
// as an "eventbus.retry" event with its number.
func (st *subTelemetry) attempts(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		d, _ := msg.Context().Value(deliveryKey{}).(*delivery)
		if d == nil {
			return h(msg)
		}
		d.attempts++
		if d.attempts > 1 {
			st.t.retries.Add(d, 1, st.sub...)
			if d.span.IsRecording() {
				d.span.AddEvent("eventbus.retry", trace.WithAttributes(attrAttempt.Int(d.attempts)))
			}
		}
		out, err := h(msg)
		d.lastErr = err
		if err != nil && d.span.IsRecording() {
			d.span.RecordError(err, trace.WithAttributes(attrAttempt.Int(d.attempts)))
		}
		return out, err
	}
}

// poisonHooks returns the Poison middleware's hooks that count poisoned
// events and store failures.
func (st *subTelemetry) poisonHooks() (stored func(reason string), failed func(error)) {
	return func(reason string) {
			st.t.poisoned.Add(context.Background(), 1, metric.WithAttributes(append(slices.Clone(st.attrs), attrReason.String(reason))...))
		}, func(error) {
			st.t.storeFailures.Add(context.Background(), 1, st.sub...)
		}
}

// carrier lets a propagator read and write a message's headers: a
// propagator's key travels as a CloudEvents extension attribute,
// "traceparent" as the header "ce_traceparent" (the distributed-tracing
// extension). The headers of the bus's own attributes cannot be written
// through it.
type carrier message.Metadata

func header(key string) string {
	switch key {
	case "traceparent":
		return wire.TraceParent
	case "tracestate":
		return wire.TraceState
	}
	return "ce_" + strings.ToLower(key)
}

// reserved reports the headers of the bus's own attributes.
func reserved(h string) bool {
	switch h {
	case wire.SpecVersion, wire.ID, wire.Source, wire.Type, wire.Time, wire.EventType,
		wire.DataVersion, wire.CorrelationID, wire.CausationID, wire.PartitionKey:
		return true
	}
	return false
}

// Get returns the value of a propagator's key.
func (c carrier) Get(key string) string { return c[header(key)] }

// Set sets a propagator's key, unless its header is one of the bus's own.
func (c carrier) Set(key, value string) {
	if h := header(key); !reserved(h) {
		c[h] = value
	}
}

// Keys lists the keys of the CloudEvents attributes that are not the
// bus's own.
func (c carrier) Keys() []string {
	var keys []string
	for h := range c {
		if strings.HasPrefix(h, "ce_") && !reserved(h) {
			keys = append(keys, h[len("ce_"):])
		}
	}
	return keys
}

// firstLine is the first line of s, at most 200 bytes: a span status,
// not the whole stack of a panic.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = strings.ToValidUTF8(s[:200], "") + "... (" + strconv.Itoa(len(s)-200) + " more bytes)"
	}
	return s
}
