package amqp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

func openURL(ctx context.Context, rawURL string, tlsCfg *tls.Config) (driver.Transport, error) {
	return driver.Open(ctx, rawURL, driver.Config{ServiceName: unique("open-"), TLS: tlsCfg})
}

// TestOpenRetriesUntilDeadline: with nothing listening, Open keeps trying
// until its ctx expires and then fails with the URL's password redacted.
func TestOpenRetriesUntilDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = openURL(ctx, "amqp://guest:s3cret-pw@"+addr+"/", nil)
	if err == nil {
		t.Fatal("Open succeeded with no broker")
	}
	if time.Since(start) < 600*time.Millisecond {
		t.Errorf("Open gave up after %v, before its ctx expired", time.Since(start))
	}
	if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "s3cret-pw") || !strings.Contains(err.Error(), "xxxxx") || !strings.Contains(err.Error(), "attempt") {
		t.Errorf("error: %v; want a redacted URL, the attempts and DeadlineExceeded", err)
	}
}

// TestOpenWaitsForBroker: a broker that appears while Open retries is used.
func TestOpenWaitsForBroker(t *testing.T) {
	px := startFaultProxy(t)
	px.Cut()
	url := isolatedURLVia(t, px.Addr())
	type result struct {
		tr  driver.Transport
		err error
	}
	res := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		tr, err := openURL(ctx, url, nil)
		res <- result{tr, err}
	}()
	transporttest.WaitFor(t, 10*time.Second, "a refused attempt", func() bool { return px.Refused() >= 2 }, func() string { return "no attempt" })
	px.Heal()
	r := <-res
	if r.err != nil {
		t.Fatalf("Open: %v", r.err)
	}
	if err := r.tr.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestOpenRefusedCredentialsFailFast: wrong credentials are not retried
// until the deadline, and the password does not leak.
func TestOpenRefusedCredentialsFailFast(t *testing.T) {
	u := brokerURL(t)
	u.User = url.UserPassword("guest", "wrong-s3cret")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := openURL(ctx, u.String(), nil)
	if err == nil {
		t.Fatal("Open succeeded with a wrong password")
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("refused credentials took %v to fail", time.Since(start))
	}
	if strings.Contains(err.Error(), "wrong-s3cret") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("error: %v", err)
	}
}

// TestOpenRejectsURLsItCannotRead: URLs that amqp091-go would read as
// something else (it falls back to localhost:5672 and guest/guest for what
// it does not find) fail at once, without a connection attempt, with the
// URL shown redacted and the way to write it. An opaque URL such as
// "amqp:guest:secret@host:5679" used to connect to the local broker with
// the default credentials.
func TestOpenRejectsURLsItCannotRead(t *testing.T) {
	cases := []struct {
		name string
		u    *url.URL
		want string
	}{
		{"opaque", &url.URL{Scheme: "amqp", Opaque: "guest:s3cret@" + brokerURL(t).Host}, `there is no "//" after the scheme`},
		{"no host", &url.URL{Scheme: "amqp", User: url.UserPassword("guest", "s3cret"), Host: ":5672", Path: "/"}, "it names no host"},
		{"empty", &url.URL{Scheme: "amqp", Path: "/vhost"}, "it names no host"},
		{"port not a number", &url.URL{Scheme: "amqp", User: url.UserPassword("guest", "s3cret"), Host: "127.0.0.1:amqp"}, `the port "amqp" is not a number`},
		{"port out of range", &url.URL{Scheme: "amqp", User: url.UserPassword("guest", "s3cret"), Host: "127.0.0.1:70000"}, `the port "70000" is not a number from 1 to 65535`},
		{"port zero", &url.URL{Scheme: "amqps", User: url.UserPassword("guest", "s3cret"), Host: "127.0.0.1:0"}, `the port "0"`},
		{"fragment", &url.URL{Scheme: "amqp", User: url.UserPassword("guest", "s3cret"), Host: brokerURL(t).Host, Path: "/", Fragment: "x"}, "it has a fragment"},
		{"other scheme", &url.URL{Scheme: "http", User: url.UserPassword("guest", "s3cret"), Host: brokerURL(t).Host}, `the scheme "http" is neither amqp nor amqps`},
		{"bad amqp091 parameter", &url.URL{Scheme: "amqp", User: url.UserPassword("guest", "s3cret"), Host: brokerURL(t).Host, RawQuery: "heartbeat=soon"}, "heartbeat is not an uint16"},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		start := time.Now()
		tr, err := Open(ctx, driver.Config{URL: c.u, ServiceName: unique("url-")})
		cancel()
		if err == nil {
			_ = tr.Close()
			t.Errorf("%s: Open(%s) succeeded", c.name, driver.RedactURL(c.u.String()))
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, c.want) || !strings.Contains(msg, "write it as amqp://user:password@host:port/vhost") || strings.Contains(msg, "s3cret") || !strings.Contains(msg, driver.RedactURL(c.u.String())) {
			t.Errorf("%s: %v; want the redacted URL, %q and how to write it", c.name, err, c.want)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: rejected after %v; want at once", c.name, d)
		}
	}
	// Through the bus's entry point too.
	_, err := openURL(context.Background(), "amqp:guest:s3cret@"+brokerURL(t).Host, nil)
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "amqp://user:password@host") {
		t.Errorf("OpenTransport of an opaque URL: %v; want a redacted error saying how to write it", err)
	}
}

func TestURLParameters(t *testing.T) {
	for _, q := range []string{"exchange=", "queue_type=lazy", "publish_channels=0", "bogus=1", "max_message_size=0", "max_message_size=1GB"} {
		_, err := openURL(context.Background(), "amqp://guest:pw@127.0.0.1:1/?"+q, nil)
		if err == nil || strings.Contains(err.Error(), ":pw@") {
			t.Errorf("?%s: got %v, want a redacted error", q, err)
		}
	}
}

// TestPublishWaitsDuringOutage: Publish while the connection is down
// waits within its ctx, fails when the ctx ends, and succeeds once the
// connection is back.
func TestPublishWaitsDuringOutage(t *testing.T) {
	px := startFaultProxy(t)
	url := isolatedURLVia(t, px.Addr())
	sub := transporttest.NewBus(t, url, unique("outage-sub-"))
	handled := transporttest.NewCounter()
	if err := sub.Subscribe("outage.#", handled.Handle); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	pub := transporttest.NewBus(t, url, unique("outage-pub-"))
	pt := transportOf(t, pub)
	px.Cut()
	transporttest.WaitFor(t, 10*time.Second, "disconnection", func() bool { up, _ := pt.conn.connected(); return !up }, func() string { return "still up" })

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	ev := mustEvent(t, "outage.one", nil)
	start := time.Now()
	err := pub.Publish(ctx, ev)
	var pe *eventbus.PublishError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &pe) || pe.Failed[0].ID != ev.ID {
		t.Errorf("Publish during an outage: %v; want a PublishError naming %s with DeadlineExceeded", err, ev.ID)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("Publish failed after %v without waiting for its ctx", d)
	}

	ev2 := mustEvent(t, "outage.two", nil)
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		errc <- pub.Publish(ctx, ev2)
	}()
	transporttest.WaitFor(t, 10*time.Second, "a reconnection attempt", func() bool { return px.Refused() >= 1 }, func() string { return "none" })
	px.Heal()
	if err := <-errc; err != nil {
		t.Fatalf("Publish across the outage: %v", err)
	}
	transporttest.WaitFor(t, 20*time.Second, "delivery after the outage", func() bool { return handled.Has(ev2.ID) }, func() string { return "not delivered" })
}

// TestTLS runs a bus over amqps:// through a TLS-terminating proxy with a
// self-signed certificate: trusted through Config.TLS it works; with the
// system roots it fails at once with a certificate error.
func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	px := startTLSProxy(t, brokerURL(t).Host, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	u, err := url.Parse(isolatedURLVia(t, px.addr()))
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = "amqps"

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := eventbus.New(ctx, eventbus.Config{ServiceName: unique("tls-"), URL: u.String(), TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatalf("New over TLS: %v", err)
	}
	defer b.Close(context.Background())
	handled := transporttest.NewCounter()
	if err := b.Subscribe("tls.#", handled.Handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ev := mustEvent(t, "tls.check", nil)
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "delivery over TLS", func() bool { return handled.Has(ev.ID) }, func() string { return "not delivered" })

	start := time.Now()
	_, err = openURL(ctx, u.String(), nil)
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Errorf("system roots with a self-signed broker: %v; want an unknown-authority error", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("a certificate error took %v to fail", time.Since(start))
	}
}

func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "eventbus test broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestQuorumQueues: with ?queue_type=quorum the subscription queue is a
// quorum queue (redeclaring it as a classic queue is refused) and works.
func TestQuorumQueues(t *testing.T) {
	url := isolatedURL(t, "queue_type", "quorum")
	b := transporttest.NewBus(t, url, unique("quorum-"))
	handled := transporttest.NewCounter()
	if err := b.Subscribe("q.#", handled.Handle, eventbus.SubscriptionName("qsub")); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev := mustEvent(t, "q.one", nil)
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "delivery from a quorum queue", func() bool { return handled.Has(ev.ID) }, func() string { return "not delivered" })
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.QueueDeclare(b.ServiceName()+".qsub", true, false, false, false, amqp091.Table{"x-queue-type": "classic"})
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != amqp091.PreconditionFailed {
		t.Errorf("redeclaring as classic: %v; want PRECONDITION_FAILED (the queue is a quorum queue)", err)
	}
}

// TestRedeliverUnknownGroup: replaying to a subscription whose queue does
// not exist is reported as unroutable instead of vanishing.
func TestRedeliverUnknownGroup(t *testing.T) {
	ctx := context.Background()
	tr, err := openURL(ctx, isolatedURL(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	err = tr.Redeliver(ctx, unique("nobody."), message.NewMessage("r1", []byte(`{}`)))
	if !errors.Is(err, driver.ErrUnroutable) {
		t.Errorf("Redeliver to a missing queue: %v; want ErrUnroutable", err)
	}
}

// TestConcurrencyIsPrefetch: a subscription with Concurrency(3) runs
// exactly three handlers at once, never more.
func TestConcurrencyIsPrefetch(t *testing.T) {
	b := transporttest.NewBus(t, isolatedURL(t), unique("conc-"))
	release := make(chan struct{})
	var running, peak, total atomic.Int32
	if err := b.Subscribe("work.#", func(ctx context.Context, ev eventbus.Event) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		total.Add(1)
		return nil
	}, eventbus.Concurrency(3)); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var evs []eventbus.Event
	for range 10 {
		evs = append(evs, mustEvent(t, "work.item", nil))
	}
	if err := b.Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "three handlers running", func() bool { return running.Load() == 3 }, func() string { return "fewer" })
	close(release)
	transporttest.WaitFor(t, 20*time.Second, "all handled", func() bool { return total.Load() == 10 }, func() string { return "not all" })
	if p := peak.Load(); p != 3 {
		t.Errorf("peak concurrency %d, want 3", p)
	}
}

func TestHeaderString(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		in   any
		want string
	}{
		{"s", "s"}, {int32(-7), "-7"}, {int64(1) << 40, "1099511627776"}, {uint8(9), "9"}, {1.5, "1.5"},
		{true, "true"}, {[]byte{0xff}, "/w=="}, {ts, "2026-01-02T03:04:05Z"},
		{amqp091.Decimal{Scale: 2, Value: 123}, "123e-2"},
		{[]any{amqp091.Table{"count": int64(2), "time": ts}}, `[{"count":2,"time":"2026-01-02T03:04:05Z"}]`},
	}
	for _, c := range cases {
		if got, ok := headerString(c.in); !ok || got != c.want {
			t.Errorf("headerString(%#v) = %q, %v; want %q", c.in, got, ok, c.want)
		}
	}
	if _, ok := headerString(nil); ok {
		t.Error("nil header kept")
	}
}

// TestSubscriberCloseWaitsTransportCloseCancels: closing a subscriber
// leaves the contexts of messages handed out alone and waits for their
// acks; closing the transport cancels them.
func TestSubscriberCloseWaitsTransportCloseCancels(t *testing.T) {
	ctx := context.Background()
	url := isolatedURL(t)
	svc := unique("life-")
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: svc})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".s", Service: svc, Subscription: "s", Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(ctx, "life.#")
	if err != nil {
		t.Fatal(err)
	}
	pub := transporttest.NewBus(t, url, unique("life-pub-"))
	if err := pub.Publish(ctx, mustEvent(t, "life.a", nil), mustEvent(t, "life.b", nil)); err != nil {
		t.Fatal(err)
	}
	m1, m2 := <-ch, <-ch
	closed := make(chan error, 1)
	go func() { closed <- sub.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("subscriber Close returned (%v) with two messages unacknowledged", err)
	case <-time.After(200 * time.Millisecond):
	}
	if m1.Context().Err() != nil {
		t.Fatal("subscriber Close cancelled a message's context")
	}
	m1.Ack()
	m2.Ack()
	if err := <-closed; err != nil {
		t.Fatalf("subscriber Close: %v", err)
	}

	// A second subscriber gets a message; closing the transport cancels it.
	sub2, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".s", Service: svc, Subscription: "s", Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	ch2, err := sub2.Subscribe(ctx, "life.#")
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, mustEvent(t, "life.c", nil)); err != nil {
		t.Fatal(err)
	}
	m3 := <-ch2
	if err := tr.Close(); err != nil {
		t.Fatalf("transport Close: %v", err)
	}
	select {
	case <-m3.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("transport Close did not cancel the context of a message in flight")
	}
	if _, ok := <-ch2; ok {
		t.Error("subscription channel still open after the transport closed")
	}
}

// TestDeletedQueueIsRedeclared: when an operator deletes a subscription's
// queue, the broker cancels the consumer; the subscriber declares and
// binds the queue again and consumes on.
func TestDeletedQueueIsRedeclared(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("deleted-"))
	handled := transporttest.NewCounter()
	if err := b.Subscribe("del.#", handled.Handle, eventbus.SubscriptionName("victim")); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDelete(b.ServiceName()+".victim", false, false, false); err != nil {
		t.Fatal(err)
	}
	var id string
	var lastErr error
	transporttest.WaitFor(t, 20*time.Second, "an event routed again", func() bool {
		ev := mustEvent(t, "del.again", nil)
		lastErr = b.Publish(context.Background(), ev)
		if lastErr == nil {
			id = ev.ID
			return true
		}
		if !errors.Is(lastErr, driver.ErrUnroutable) {
			t.Fatalf("Publish: %v", lastErr)
		}
		return false
	}, func() string { return fmt.Sprint(lastErr) })
	transporttest.WaitFor(t, 20*time.Second, "the event handled", func() bool { return handled.Has(id) }, func() string { return "not handled" })
}

// TestClosedTransportErrors: after Close, every operation fails with an
// error that matches eventbus.ErrClosed, so that the bus reports the same
// error whatever the transport.
func TestClosedTransportErrors(t *testing.T) {
	ctx := context.Background()
	svc := unique("closed-")
	tr, err := driver.Open(ctx, isolatedURL(t), driver.Config{ServiceName: svc})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".s", Service: svc, Subscription: "s", Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	pq, _ := tr.PoisonQueue()
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	_, subErr := sub.Subscribe(ctx, "closed.#")
	_, newSubErr := tr.NewSubscriber(driver.SubscriberConfig{Group: svc + ".t", Service: svc, Subscription: "t", Concurrency: 1})
	scanErr := pq.Scan(ctx, 10, func([]*message.Message) ([]int, error) { return nil, nil })
	for what, err := range map[string]error{
		"Publish":       tr.Publisher().Publish("closed.x", message.NewMessage("a", []byte(`{}`))),
		"Redeliver":     tr.Redeliver(ctx, svc+".s", message.NewMessage("b", []byte(`{}`))),
		"Subscribe":     subErr,
		"NewSubscriber": newSubErr,
		"poison Add":    pq.Add(ctx, message.NewMessage("c", []byte(`{}`))),
		"poison Scan":   scanErr,
		"poison Purge":  pq.Purge(ctx),
	} {
		if !errors.Is(err, eventbus.ErrClosed) {
			t.Errorf("%s after Close: %v; want an error matching eventbus.ErrClosed", what, err)
		}
	}
}
