package nats

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/faultnet"
)

func unique(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// serverURL returns the test server's URL (see brokertest.NATSURL).
func serverURL(t testing.TB) *url.URL {
	t.Helper()
	raw, _ := brokertest.NATSURL(t)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("server URL: %v", err)
	}
	return u
}

// isolatedURL returns a URL on the test server with a fresh stream and the
// given extra query parameters; the streams are deleted when the test
// ends.
func isolatedURL(t testing.TB, params ...string) string {
	t.Helper()
	return isolatedURLOn(t, serverURL(t), "", params...)
}

// isolatedURLOn is isolatedURL on server, through host (a proxy) unless
// host is empty.
func isolatedURLOn(t testing.TB, server *url.URL, host string, params ...string) string {
	t.Helper()
	u := *server
	if host != "" {
		u.Host = host
	}
	stream := unique("test-")
	q := u.Query()
	q.Set("stream", stream)
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	u.RawQuery = q.Encode()
	direct := server.String()
	t.Cleanup(func() { deleteStreams(t, direct, stream) })
	return u.String()
}

// faultyURL returns a URL with a fresh stream through a faultnet proxy in
// front of the test server, and the proxy.
// ownServerURL returns a URL with a fresh stream on an in-process server
// of the test (which goes with its streams when the test ends).
func ownServerURL(t testing.TB, srv *brokertest.NATSServer, params ...string) string {
	t.Helper()
	u := mustParse(t, srv.URL())
	q := u.Query()
	q.Set("stream", unique("test-"))
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func faultyURL(t testing.TB, params ...string) (string, *faultnet.Proxy) {
	t.Helper()
	server := serverURL(t)
	px, err := faultnet.NewProxy(server.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	return isolatedURLOn(t, server, px.Addr(), params...), px
}

func deleteStreams(t testing.TB, server, stream string) {
	nc, err := nats.Connect(server, nats.Timeout(5*time.Second), nats.NoReconnect())
	if err != nil {
		t.Logf("cleanup: cannot connect to delete stream %s: %v", stream, err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range []string{stream, poisonStreamName(stream)} {
		if err := js.DeleteStream(ctx, s); err != nil && err != jetstream.ErrStreamNotFound {
			t.Logf("cleanup: deleting stream %s: %v", s, err)
		}
	}
}

func transportOf(t testing.TB, b *eventbus.Bus) *Transport {
	t.Helper()
	tr, ok := b.Transport().(*Transport)
	if !ok {
		t.Fatalf("transport is %T", b.Transport())
	}
	return tr
}

func mustEvent(t testing.TB, name string, data any, opts ...eventbus.EventOption) eventbus.Event {
	t.Helper()
	ev, err := eventbus.NewEvent(name, data, append([]eventbus.EventOption{eventbus.WithSource("nats-tests")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func mustParse(t testing.TB, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// mustPattern compiles a pattern the test knows to be valid.
func mustPattern(pattern string) eventbus.Pattern {
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		panic(err)
	}
	return p
}

// matcher is the Match function of a pattern the test knows to be valid.
func matcher(pattern string) func(name string) bool { return mustPattern(pattern).Match }
