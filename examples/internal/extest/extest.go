// Package extest holds what the examples' tests share: the RabbitMQ URL to
// run an example on, when a broker and the transport are available, and a
// buffer that handlers may write to concurrently.
package extest

import (
	"bytes"
	"context"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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
