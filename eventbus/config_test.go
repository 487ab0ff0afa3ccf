package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/middleware"
)

// fakeTransport is the least a driver can return.
type fakeTransport struct{ cfg driver.Config }

func (*fakeTransport) Publisher() message.Publisher { return nil }
func (*fakeTransport) NewSubscriber(driver.SubscriberConfig) (message.Subscriber, error) {
	return nil, eventbus.ErrUnsupported
}
func (*fakeTransport) PoisonQueue() (driver.PoisonQueue, error) {
	return nil, eventbus.ErrUnsupported
}
func (*fakeTransport) Redeliver(context.Context, string, ...*message.Message) error {
	return eventbus.ErrUnsupported
}
func (*fakeTransport) Close() error { return nil }

var (
	registerFake sync.Once
	errFakeOpen  = errors.New("fake: cannot open")
)

// fakeScheme registers the "faketest" scheme once: its driver fails for
// the host "fail" and otherwise returns a fakeTransport.
func fakeScheme(t *testing.T) string {
	t.Helper()
	registerFake.Do(func() {
		driver.Register("faketest", driver.OpenFunc(func(_ context.Context, cfg driver.Config) (driver.Transport, error) {
			if cfg.URL.Host == "fail" {
				return nil, errFakeOpen
			}
			return &fakeTransport{cfg: cfg}, nil
		}))
	})
	return "faketest"
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("EVENTBUS_SERVICE", "billing")
	t.Setenv("EVENTBUS_URL", "mem://x")
	cfg := eventbus.ConfigFromEnv()
	if cfg.ServiceName != "billing" || cfg.URL != "mem://x" {
		t.Errorf("ConfigFromEnv = %+v", cfg)
	}
	t.Setenv("EVENTBUS_SERVICE", "")
	t.Setenv("EVENTBUS_URL", "")
	cfg = eventbus.ConfigFromEnv()
	if cfg.ServiceName != "" || cfg.URL != "" {
		t.Errorf("ConfigFromEnv with empty variables = %+v", cfg)
	}
	_, err := eventbus.New(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "EVENTBUS_SERVICE") {
		t.Errorf("an empty service name: %v, want an error naming EVENTBUS_SERVICE", err)
	}
}

func TestOpenTransportDefaultsToRabbitMQ(t *testing.T) {
	if slices.Contains(driver.Schemes(), "amqp") {
		t.Skip("the amqp transport is linked into this test binary")
	}
	if eventbus.DefaultURL != "amqp://guest:guest@localhost:5672/" {
		t.Errorf("DefaultURL = %q", eventbus.DefaultURL)
	}
	_, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: "svc"})
	if err == nil {
		t.Fatal("OpenTransport with the default URL succeeded without the amqp transport")
	}
	for _, want := range []string{`"amqp"`, "github.com/paissive/go-eventbus/transports/amqp", "amqp://guest:xxxxx@localhost:5672/", "import _"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "guest:guest") {
		t.Errorf("error %q shows the password", err)
	}
}

func TestOpenTransportUnregisteredScheme(t *testing.T) {
	scheme := fakeScheme(t)
	ctx := context.Background()
	for url, imp := range map[string]string{
		"kafka://broker:9092":     "github.com/paissive/go-eventbus/transports/kafka",
		"amqps://u:p@host/vhost":  "github.com/paissive/go-eventbus/transports/amqp",
		"mem://":                  "github.com/paissive/go-eventbus/transports/memory",
		"amqp://user:s3cret@host": "github.com/paissive/go-eventbus/transports/amqp",
	} {
		if slices.Contains(driver.Schemes(), strings.SplitN(url, ":", 2)[0]) {
			continue // linked into this binary by some import
		}
		_, err := eventbus.New(ctx, eventbus.Config{ServiceName: "svc", URL: url})
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("import _ %q", imp)) {
			t.Errorf("OpenTransport(%s) = %v, want an error naming %s", url, err, imp)
		}
	}
	_, err := eventbus.New(ctx, eventbus.Config{ServiceName: "svc", URL: "zmq://user:s3cret@localhost:4222"})
	if err == nil {
		t.Fatal("OpenTransport(zmq://) succeeded")
	}
	for _, want := range []string{`"zmq"`, "registered schemes", scheme} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("zmq error %q does not mention %s", err, want)
		}
	}
}

func TestErrorsNeverShowPasswords(t *testing.T) {
	fakeScheme(t)
	ctx := context.Background()
	for _, url := range []string{
		"amqp://user:s3cret@host/",
		"amqps://user:s3cret@host:5671/vhost",
		"kafka://user:s3cret@host:9092",
		"zmq://user:s3cret@host",
		"amqp://user:s3cret@host:notaport/",   // does not parse
		"amqp://user:s3cret@[::1/",            // does not parse
		"amqp://user:s3cret%zz@host/",         // bad escape in the password
		"faketest://user:s3cret@fail/",        // the driver fails
		"faketest://user:s3cret@host/\x7fbad", // control character
		"amqp:user:s3cret@host:5672/",         // no "//": opaque
		"guest:s3cret@localhost:5672",         // no scheme at all
	} {
		_, err := eventbus.New(ctx, eventbus.Config{ServiceName: "svc", URL: url})
		if err == nil {
			t.Errorf("OpenTransport(%q) succeeded", url)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("OpenTransport(%q) error shows the password: %v", url, err)
		}
	}
	_, err := eventbus.New(ctx, eventbus.Config{ServiceName: "svc", URL: "faketest://user:s3cret@fail/"})
	if !errors.Is(err, errFakeOpen) {
		t.Errorf("the driver's error is not wrapped: %v", err)
	}
	if !strings.Contains(err.Error(), "faketest://user:xxxxx@fail/") {
		t.Errorf("error %q does not show the redacted URL", err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:guest@localhost:5672/":   "amqp://guest:xxxxx@localhost:5672/",
		"amqps://u:p%40ss@host/vhost?x=1":      "amqps://u:xxxxx@host/vhost?x=1",
		"amqp://justuser@host/":                "amqp://xxxxx@host/", // a bare user may be a token
		"kafka://a:9092,b:9092":                "kafka://a:9092,b:9092",
		"mem://":                               "mem:",
		"mem://name":                           "mem://name",
		"":                                     "",
		"amqp://user:s3cret@host:notaport/":    "amqp://(unparsable URL hidden)",
		"amqp://user:s3cret@[::1/":             "amqp://(unparsable URL hidden)",
		"user:s3cret@host:port with spaces%zz": "user:(opaque URL hidden)",
		"%zz user:s3cret":                      "(unparsable URL hidden)",
		"amqp:user:s3cret@host:5672/":          "amqp:(opaque URL hidden)",
		"guest:s3cret@localhost:5672":          "guest:(opaque URL hidden)",
	} {
		if got := driver.RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOpenTransport(t *testing.T) {
	scheme := fakeScheme(t)
	b, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: "billing-eu-1_x", URL: scheme + "://host/path?q=1"})
	if err != nil {
		t.Fatal(err)
	}
	ft := b.Transport().(*fakeTransport)
	if ft.cfg.ServiceName != "billing-eu-1_x" || ft.cfg.URL.Host != "host" || ft.cfg.URL.Query().Get("q") != "1" || ft.cfg.Logger == nil {
		t.Errorf("the driver got %+v", ft.cfg)
	}
	if !slices.Contains(driver.Schemes(), scheme) || !slices.IsSorted(driver.Schemes()) {
		t.Errorf("Schemes() = %v", driver.Schemes())
	}
}

func TestServiceNameValidation(t *testing.T) {
	url := fakeScheme(t) + "://host"
	for _, name := range []string{"", "a b", "billing/eu", "bïlling", "a*", "a#b", "billing.eu", strings.Repeat("s", 101), "tab\t"} {
		_, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: name, URL: url})
		if err == nil {
			t.Errorf("ServiceName %q accepted", name)
		} else if !strings.Contains(err.Error(), "ServiceName") {
			t.Errorf("ServiceName %q: error %q does not name the field", name, err)
		}
	}
	for _, name := range []string{"a", "billing", "Billing-Service_2-eu", strings.Repeat("s", 100)} {
		if _, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: name, URL: url}); err != nil {
			t.Errorf("ServiceName %q rejected: %v", name, err)
		}
	}
}

func TestPolicyValidation(t *testing.T) {
	url := fakeScheme(t) + "://host"
	for label, p := range map[string]eventbus.Policy{
		"negative attempts":   {MaxAttempts: -1},
		"negative backoff":    {InitialBackoff: -1},
		"negative max":        {MaxBackoff: -1},
		"negative elapsed":    {MaxElapsed: -1},
		"multiplier below 1":  {Multiplier: 0.5},
		"negative jitter":     {Jitter: -0.1},
		"jitter 1":            {Jitter: 1},
		"negative idempotent": {IdempotencyWindow: -1},
	} {
		if _, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: "s", URL: url, Policy: p}); err == nil || !strings.Contains(err.Error(), "Policy") {
			t.Errorf("%s: %v, want a Policy error", label, err)
		}
	}
	for label, p := range map[string]eventbus.Policy{
		"zero":          {},
		"default":       eventbus.DefaultPolicy,
		"one attempt":   {MaxAttempts: 1},
		"no timeout":    {HandlerTimeout: -1},
		"no jitter":     {Jitter: eventbus.NoJitter},
		"idempotent 1h": {IdempotencyWindow: 3600e9},
	} {
		if _, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: "s", URL: url, Policy: p}); err != nil {
			t.Errorf("%s: %v", label, err)
		}
	}
}

func TestRegisterPanics(t *testing.T) {
	scheme := fakeScheme(t)
	for label, f := range map[string]func(){
		"twice": func() { driver.Register(scheme, driver.OpenFunc(nil)) },
		"nil":   func() { driver.Register("faketest-nil", nil) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Register %s did not panic", label)
				}
			}()
			f()
		}()
	}
	if slices.Contains(driver.Schemes(), "faketest-nil") {
		t.Error("a nil driver was registered")
	}
}

func TestPermanent(t *testing.T) {
	if eventbus.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	base := errors.New("malformed payload")
	p := eventbus.Permanent(base)
	if p.Error() != base.Error() {
		t.Errorf("Permanent(err).Error() = %q, want %q", p, base)
	}
	if !errors.Is(p, base) || errors.Unwrap(p) != base {
		t.Error("Permanent does not unwrap to its error")
	}
	wrapped := fmt.Errorf("handling: %w", p)
	for label, err := range map[string]error{"direct": p, "wrapped": wrapped, "joined": errors.Join(errors.New("x"), p)} {
		if !errors.Is(err, eventbus.ErrPermanent) || !middleware.IsPermanent(err) {
			t.Errorf("%s: %v is not permanent", label, err)
		}
	}
	for _, err := range []error{nil, base, fmt.Errorf("w: %w", base), context.Canceled} {
		if errors.Is(err, eventbus.ErrPermanent) || middleware.IsPermanent(err) {
			t.Errorf("%v is permanent", err)
		}
	}
}

func TestPublishError(t *testing.T) {
	errA := errors.New("nack from broker")
	pe := &eventbus.PublishError{Failed: []eventbus.FailedEvent{
		{ID: "id1", Name: "a.b", Err: errA},
		{ID: "id2", Name: "c", Err: context.Canceled},
		{ID: "id3", Name: "a.b", Err: errA},
	}}
	var err error = fmt.Errorf("publish: %w", pe)
	if !errors.Is(err, errA) || !errors.Is(err, context.Canceled) || errors.Is(err, eventbus.ErrUnroutable) {
		t.Errorf("errors.Is on a PublishError does not see exactly its causes")
	}
	if u := pe.Unwrap(); len(u) != 2 {
		t.Errorf("Unwrap = %v, want the two distinct causes", u)
	}
	var got *eventbus.PublishError
	if !errors.As(err, &got) || got != pe {
		t.Error("errors.As does not find the PublishError")
	}
	msg := pe.Error()
	for _, want := range []string{"3 event(s) not published", "a.b (id1): nack from broker", "c (id2): context canceled", "id3"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Error() = %q, lacks %q", msg, want)
		}
	}
	if strings.HasSuffix(msg, ";") {
		t.Errorf("Error() = %q ends with a semicolon", msg)
	}

	many := &eventbus.PublishError{}
	for i := range 8 {
		many.Failed = append(many.Failed, eventbus.FailedEvent{ID: fmt.Sprintf("id%d", i), Name: "n", Err: errA})
	}
	msg = many.Error()
	if !strings.Contains(msg, "8 event(s)") || !strings.Contains(msg, "and 3 more") || strings.Contains(msg, "id5") {
		t.Errorf("Error() of 8 failures = %q, want 5 shown and 3 counted", msg)
	}
	if len(many.Unwrap()) != 1 {
		t.Errorf("Unwrap of one repeated cause = %v", many.Unwrap())
	}
}

func TestContextAccessors(t *testing.T) {
	ctx := context.Background()
	if eventbus.CorrelationID(ctx) != "" {
		t.Error("a plain ctx has a correlation")
	}
	ctx = middleware.WithCausation(ctx, middleware.Causation{CorrelationID: "corr", EventID: "ev"})
	if eventbus.CorrelationID(ctx) != "corr" {
		t.Errorf("CorrelationID = %q", eventbus.CorrelationID(ctx))
	}
}

// sliceError is an error of an uncomparable type, like sarama.ProducerErrors.
type sliceError []string

func (s sliceError) Error() string { return strings.Join(s, ", ") }

func TestPublishErrorUncomparableCauses(t *testing.T) {
	a, b := sliceError{"a"}, sliceError{"b"}
	pe := &eventbus.PublishError{Failed: []eventbus.FailedEvent{
		{ID: "1", Name: "n", Err: a},
		{ID: "2", Name: "n", Err: b},
		{ID: "3", Name: "n", Err: context.Canceled},
		{ID: "4", Name: "n", Err: context.Canceled},
		{ID: "5", Name: "n", Err: nil},
		{ID: "6", Name: "n", Err: nil},
	}}
	if u := pe.Unwrap(); len(u) != 4 {
		t.Errorf("Unwrap = %v, want a, b, context.Canceled and one nil", u)
	}
	if !errors.Is(pe, context.Canceled) {
		t.Error("errors.Is does not find context.Canceled")
	}
	var se sliceError
	if !errors.As(pe, &se) || se[0] != "a" {
		t.Errorf("errors.As found %v", se)
	}
	_ = pe.Error()
}
