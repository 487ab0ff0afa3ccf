package amqp

import (
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"sync"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/brokertest"
)

func TestMain(m *testing.M) {
	testHookDeclare = declared.add
	goleak.VerifyTestMain(m)
}

// declared records the queues each exchange's tests declared, so that the
// tests delete them again.
var declared = &registry{queues: map[string]map[string]bool{}}

type registry struct {
	mu     sync.Mutex
	queues map[string]map[string]bool
}

func (r *registry) add(exchange, queue string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.queues[exchange] == nil {
		r.queues[exchange] = map[string]bool{}
	}
	r.queues[exchange][queue] = true
}

func (r *registry) take(exchange string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for q := range r.queues[exchange] {
		out = append(out, q)
	}
	delete(r.queues, exchange)
	return out
}

func unique(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// brokerURL returns the test broker's URL, skipping the test when there is
// none (see brokertest).
func brokerURL(t testing.TB) *url.URL {
	t.Helper()
	u, err := url.Parse(brokertest.AMQPURL(t))
	if err != nil {
		t.Fatalf("broker URL: %v", err)
	}
	return u
}

// isolatedURL returns a URL on the test broker with a fresh exchange and
// the given extra query parameters; when the test ends, the exchange and
// every queue declared with it are deleted.
func isolatedURL(t testing.TB, params ...string) string {
	t.Helper()
	return isolatedURLVia(t, "", params...)
}

// isolatedURLVia is isolatedURL through host (a proxy), unless host is
// empty.
func isolatedURLVia(t testing.TB, host string, params ...string) string {
	t.Helper()
	u := brokerURL(t)
	if host != "" {
		u.Host = host
	}
	exchange := unique("test-")
	q := u.Query()
	q.Set("exchange", exchange)
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	u.RawQuery = q.Encode()
	direct := brokerURL(t).String()
	t.Cleanup(func() { deleteTopology(t, direct, exchange) })
	return u.String()
}

func deleteTopology(t testing.TB, brokerURL, exchange string) {
	queues := declared.take(exchange)
	conn, err := amqp091.Dial(brokerURL)
	if err != nil {
		t.Errorf("cleanup: cannot connect: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer ch.Close()
	for _, q := range queues {
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Errorf("cleanup: deleting queue %q: %v", q, err)
			return
		}
		// A subscription's exchange has its queue's name; deleting an
		// exchange that does not exist is no error.
		for _, x := range []string{q, derived(q, helperMark+"next")} {
			if err := ch.ExchangeDelete(x, false, false); err != nil {
				t.Errorf("cleanup: deleting exchange %q: %v", x, err)
				return
			}
		}
	}
	if err := ch.ExchangeDelete(exchange, false, false); err != nil {
		t.Errorf("cleanup: deleting exchange %q: %v", exchange, err)
	}
}
