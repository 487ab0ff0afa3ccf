// Package extest holds what the examples' tests share: the RabbitMQ and
// NATS URLs to run an example on, when a broker and the transport are
// available, and a buffer that handlers may write to concurrently.
package extest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// AMQPURL returns the RabbitMQ URL to run an example on, with an exchange of
// its own so that examples tested in parallel do not see each other's
// events; the exchange, and with it its bindings, is deleted when the test
// ends. The broker is found by brokertest.AMQPURL (EVENTBUS_TEST_AMQP_URL,
// then 127.0.0.1:5672, then Docker), which skips the test when there is
// none. The test is also skipped when the example was built without the
// amqp transport.
func AMQPURL(t testing.TB, exchange string) string {
	t.Helper()
	if !slices.Contains(driver.Schemes(), "amqp") {
		t.Skipf("skipping RabbitMQ: this example is built without the amqp transport (registered schemes: %v)", driver.Schemes())
	}
	base := brokertest.AMQPURL(t)
	t.Cleanup(func() { deleteExchange(t, base, exchange) })
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	return base + sep + "exchange=" + url.QueryEscape(exchange)
}

// NATSURL returns the NATS URL to run an example on, with a stream of its
// own (named after stream and the time), deleted with its poison and
// large-message streams when the test ends. The server is found by
// brokertest.NATSURL (EVENTBUS_TEST_NATS_URL, then 127.0.0.1:4222 with
// JetStream, else an in-process server), so the test always runs. It is
// skipped when the example was built without the nats transport.
func NATSURL(t testing.TB, stream string) string {
	t.Helper()
	if !slices.Contains(driver.Schemes(), "nats") {
		t.Skipf("skipping NATS: this example is built without the nats transport (registered schemes: %v)", driver.Schemes())
	}
	base, _ := brokertest.NATSURL(t)
	stream = fmt.Sprintf("%s-%d", stream, time.Now().UnixNano())
	t.Cleanup(func() { deleteStreams(t, base, stream, stream+"_poison", stream+"_large") })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("NATS server URL: %v", err)
	}
	q := u.Query()
	q.Set("stream", stream)
	u.RawQuery = q.Encode()
	if u.Path == "" {
		u.Path = "/"
	}
	return u.String()
}

func deleteStreams(t testing.TB, rawURL string, names ...string) {
	nc, err := nats.Connect(rawURL, nats.Timeout(5*time.Second), nats.NoReconnect())
	if err != nil {
		t.Logf("cannot delete streams %v: %v", names, err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Logf("cannot delete streams %v: %v", names, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range names {
		if err := js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Logf("cannot delete stream %s: %v", n, err)
		}
	}
}

func deleteExchange(t testing.TB, rawURL, exchange string) {
	conn, err := amqp091.DialConfig(rawURL, amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Logf("cannot delete exchange %s: %v", exchange, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err == nil {
		err = ch.ExchangeDelete(exchange, false, false)
	}
	if err != nil {
		t.Logf("cannot delete exchange %s: %v", exchange, err)
	}
}

// Buffer is a bytes.Buffer safe for concurrent use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Run runs an example's scenario on url with a deadline, failing the test
// with the scenario's output if it returns an error; it returns the result
// and the output.
func Run[R any](t testing.TB, timeout time.Duration, run func(context.Context, io.Writer, string) (R, error), url string) (R, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out Buffer
	res, err := run(ctx, &out, url)
	if err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	return res, out.String()
}
