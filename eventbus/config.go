package eventbus

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/middleware"
)

// DefaultURL is the broker used when Config.URL is empty: RabbitMQ on the
// local machine with its default credentials.
const DefaultURL = "amqp://guest:guest@localhost:5672/"

// Config configures a [Bus].
type Config struct {
	// ServiceName identifies the service: it is the default Source of
	// published events, owns the poison queue, and names the durable
	// subscriptions ("<service>.<subscription>"), so instances of one
	// service share work and different services each get every event.
	// Letters, digits, '_' and '-' only: subscription groups are named
	// "<service>.<subscription>", and a dot in the service name would let
	// two services' groups collide.
	ServiceName string

	// URL selects and configures the transport: "mem://", "amqp://...",
	// "amqps://...", "kafka://host:port". Empty means [DefaultURL].
	URL string

	// Logger receives the bus's log lines, Watermill's and the
	// transport's. Nil means slog.Default(). The happy path logs at debug
	// level only. When URL holds a password, a token or a secret query
	// parameter, the bus logs through a handler that replaces them with
	// "xxxxx" wherever they appear (a broker library's error text may
	// quote the URL).
	Logger *slog.Logger

	// TLS configures TLS for "amqps://" and TLS-enabled Kafka; nil means
	// the system roots.
	TLS *tls.Config

	// Policy is the failure policy: retries, backoff, timeout and poison.
	// Its zero value means [DefaultPolicy].
	Policy Policy

	// Middleware wraps every subscription's handler, outermost first,
	// inside the bus's failure policy (so it runs once per attempt) and
	// outside the subscription's own middleware (see [Use]). Cross-cutting
	// code (authorisation, tenancy, custom metrics) goes here rather than
	// into each handler.
	Middleware []Middleware

	// IdempotencyStore is the store used by subscriptions whose policy has
	// an IdempotencyWindow. Nil means an in-process LRU of 100,000 IDs;
	// pass a shared store (Redis, SQL) when several instances must
	// recognise each other's work.
	IdempotencyStore middleware.IdempotencyStore

	// OnPublish, when set, is called by Publish for each event, with
	// Publish's ctx, after the empty fields were filled in (ID, Time,
	// Source, CorrelationID) and before the event is validated and sent.
	// It may change the event (stamp a tenant into its Metadata, say) or
	// return an error to refuse it: Publish then returns that error,
	// naming the event, and sends none of the events it was given. It is
	// the publishing side's counterpart of Middleware, for cross-cutting
	// code such as authorisation, tenancy or custom metrics.
	OnPublish func(ctx context.Context, ev *Event) error

	// TracerProvider, MeterProvider and Propagator are where the bus's
	// OpenTelemetry instrumentation sends its spans and metrics and how it
	// writes and reads trace context on the wire (see
	// docs/observability.md). Nil means the otel package's globals
	// (otel.GetTracerProvider, otel.GetMeterProvider,
	// otel.GetTextMapPropagator), which record nothing until the
	// application installs an SDK; so set at least the global propagator
	// (propagation.TraceContext) for traces to cross services.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator

	// DisableTelemetry switches the OpenTelemetry instrumentation off: no
	// spans, no metrics, and trace context on the wire is neither written
	// nor read (an event keeps whatever ce_traceparent it was given).
	// Health reporting stays on. With the default providers and no SDK
	// installed the instrumentation costs little (see
	// docs/observability.md for the measurement); this is for the rare
	// service that must not pay even that.
	DisableTelemetry bool
}

// ConfigFromEnv reads EVENTBUS_SERVICE and EVENTBUS_URL.
func ConfigFromEnv() Config {
	return Config{ServiceName: os.Getenv("EVENTBUS_SERVICE"), URL: os.Getenv("EVENTBUS_URL")}
}

func (c Config) withDefaults() Config {
	if c.URL == "" {
		c.URL = DefaultURL
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Policy = c.Policy.withDefaults()
	return c
}

func (c Config) validate() error {
	if c.ServiceName == "" {
		return fmt.Errorf("eventbus: Config.ServiceName is empty; name the service (EVENTBUS_SERVICE when using ConfigFromEnv)")
	}
	for _, r := range c.ServiceName {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return fmt.Errorf("eventbus: Config.ServiceName %q contains %q; use letters, digits, '_' and '-' (no '.': the first dot of a group name separates service and subscription)", c.ServiceName, r)
		}
	}
	if len(c.ServiceName) > 100 {
		return fmt.Errorf("eventbus: Config.ServiceName is %d bytes long; the limit is 100", len(c.ServiceName))
	}
	return c.Policy.validate()
}

// Format prints the configuration with the URL's password and secret-looking
// query parameters redacted , for every verb, so that
// fmt.Printf("%+v", cfg) and log lines never show a broker password.
func (c Config) Format(f fmt.State, verb rune) {
	type plain Config // without methods: formatted field by field
	p := plain(c)
	p.URL = driver.RedactURL(c.URL)
	if c.URL == "" {
		p.URL = ""
	}
	out := fmt.Sprintf(fmt.FormatString(f, verb), p)
	if verb == 'v' && f.Flag('#') {
		out = "eventbus.Config" + strings.TrimPrefix(out, "eventbus.plain")
	}
	_, _ = io.WriteString(f, out)
}

// LogValue logs the configuration with the URL redacted, for log/slog.
func (c Config) LogValue() slog.Value {
	url := ""
	if c.URL != "" {
		url = driver.RedactURL(c.URL)
	}
	return slog.GroupValue(
		slog.String("service", c.ServiceName),
		slog.String("url", url),
		slog.Bool("tls", c.TLS != nil),
		slog.Any("policy", c.Policy),
	)
}
