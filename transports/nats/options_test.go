package nats

import (
	"context"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

func TestParseOptions(t *testing.T) {
	o, err := parseOptions(mustParse(t, "nats://127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if o.stream != DefaultStream || o.replicas != 1 || o.storage != jetstream.FileStorage || o.maxAge != DefaultMaxAge ||
		o.ackWait != DefaultAckWait || o.maxMessageBytes != DefaultMaxMessageBytes || o.deliverNew || o.tls ||
		len(o.servers) != 1 || o.servers[0] != "127.0.0.1:4222" {
		t.Errorf("defaults: %+v", o)
	}
	o, err = parseOptions(mustParse(t, "tls://app:s3cret@n1:4333,n2:4222/?stream=shop-1&replicas=3&storage=memory&max_age=1h&deliver=new&ack_wait=45s&max_message_bytes=2048&tls_ca=/ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if o.stream != "shop-1" || o.replicas != 3 || o.storage != jetstream.MemoryStorage || o.maxAge != time.Hour ||
		!o.deliverNew || o.ackWait != 45*time.Second || o.maxMessageBytes != 2048 || !o.tls || o.tlsCA != "/ca.pem" ||
		o.user != "app" || o.password != "s3cret" ||
		strings.Join(o.servers, ",") != "n1:4333,n2:4222" {
		t.Errorf("parsed: %+v", o)
	}
	if o, err := parseOptions(mustParse(t, "nats://n1,n2")); err != nil || strings.Join(o.servers, ",") != "n1:4222,n2:4222" {
		t.Errorf("servers without ports: %+v, %v", o, err)
	}
	if o, err := parseOptions(mustParse(t, "nats://[::1]:4444")); err != nil || o.servers[0] != "[::1]:4444" {
		t.Errorf("IPv6: %+v, %v", o, err)
	}
	if o, err := parseOptions(mustParse(t, "nats://h/?token=abc")); err != nil || o.token != "abc" {
		t.Errorf("token: %+v, %v", o, err)
	}
	if o, err := parseOptions(mustParse(t, "nats://h/?tls_cert=c.pem&tls_key=k.pem")); err != nil || !o.tls {
		t.Errorf("a client certificate implies TLS: %+v, %v", o, err)
	}
}

func TestParseOptionsRejects(t *testing.T) {
	for _, tc := range []struct {
		url, mentions string
	}{
		{"nats:127.0.0.1:4222", `no "//"`},
		{"nats://", "names no server"},
		{"nats://h/some/path", "unexpected path"},
		{"nats://h/#frag", "fragment"},
		{"nats://h:99999", "port"},
		{"nats://h,,g", "empty entry"},
		{"nats://::1", "IPv6"},
		{"nats://h/?unknown=1", `unknown URL parameter "unknown"`},
		{"nats://h/?stream=a.b", "stream"},
		{"nats://h/?stream=a_b", "stream"},
		{"nats://h/?stream=", "stream"},
		{"nats://h/?replicas=0", "replicas"},
		{"nats://h/?storage=disk", "file or memory"},
		{"nats://h/?max_age=forever", "max_age"},
		{"nats://h/?deliver=oldest", "all or new"},
		{"nats://h/?ack_wait=10ms", "ack_wait"},
		{"nats://h/?max_message_bytes=1", "max_message_bytes"},
		{"nats://h/?tls=maybe", "true or false"},
		{"tls://h/?tls=false", "contradicts"},
		{"nats://h/?tls=false&tls_ca=ca.pem", "contradict"},
		{"nats://h/?tls_cert=c.pem", "together"},
		{"nats://h/?stream=a&stream=b", "given 2 times"},
		{"nats://u:p@h/?token=t", "more than one"},
		{"nats://:p@h", "password without a user"},
		{"amqp://h", "neither nats nor tls"},
	} {
		_, err := parseOptions(mustParse(t, tc.url))
		if err == nil || !strings.Contains(err.Error(), tc.mentions) {
			t.Errorf("%s: error %v, want one mentioning %q", tc.url, err, tc.mentions)
		}
	}
}

// TestSecretsHidden: passwords and tokens never appear in errors, also a
// token written where NATS reads one (the user part without a password),
// which the transport refuses.
func TestSecretsHidden(t *testing.T) {
	for _, raw := range []string{
		"nats://s3cret-token@127.0.0.1:1/",
		"nats://app:s3cret-token@127.0.0.1:1/?bogus=1",
		"nats://127.0.0.1:1/?token=s3cret-token&bogus=1",
		"nats://127.0.0.1:1/?token=s3cret-token&stream=a.b",
	} {
		_, err := parseOptions(mustParse(t, raw))
		if err == nil {
			t.Errorf("%s: no error", raw)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error shows the secret: %v", raw, err)
		}
	}
	if got := redact(mustParse(t, "nats://tok@h:4222/?stream=x")); strings.Contains(got, "tok") {
		t.Errorf("redact kept a token: %s", got)
	}
	// Connection errors too.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := open(ctx, driver.Config{URL: mustParse(t, "nats://app:s3cret-pw@127.0.0.1:1/"), ServiceName: "svc"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("connection error: %v; want one without the password", err)
	}
}

func TestConsumerName(t *testing.T) {
	seen := map[string]string{}
	for _, g := range [][2]string{
		{"billing", "invoices"}, {"billing", "user.#"}, {"billing", "user_#"}, {"billing", "user.*"},
		{"a_b", "c"}, {"a", "b_c"}, {"a", "b~c"}, {"svc", strings.Repeat("x", 150)}, {"svc", strings.Repeat("x", 149) + "y"},
		{strings.Repeat("s", 100), strings.Repeat("é", 75)},
	} {
		n := consumerName(g[0], g[1])
		if prev, dup := seen[n]; dup {
			t.Errorf("groups %s and %s.%s share the consumer %s", prev, g[0], g[1], n)
		}
		seen[n] = g[0] + "." + g[1]
		if len(n) > 255 || strings.ContainsAny(n, " \t\r\n.*>/\\") {
			t.Errorf("consumer name %q is not valid for JetStream", n)
		}
	}
	if got := consumerName("billing", "invoices"); got != "billing~invoices" {
		t.Errorf("plain group: %q, want billing~invoices", got)
	}
}

func TestServerAtLeast(t *testing.T) {
	for v, want := range map[string]bool{"2.9.10": false, "2.10.0": true, "2.15.2": true, "3.0.0": true, "v2.10.1-beta": true, "": false, "x": false} {
		if got := serverAtLeast(v, 2, 10); got != want {
			t.Errorf("serverAtLeast(%q) = %v", v, got)
		}
	}
}

// TestOpenWithoutJetStream: a server without JetStream is refused with an
// error that says how to enable it.
func TestOpenWithoutJetStream(t *testing.T) {
	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = open(ctx, driver.Config{URL: mustParse(t, s.ClientURL()), ServiceName: "svc"})
	if err == nil || !strings.Contains(err.Error(), "-js") {
		t.Errorf("Open against a server without JetStream: %v; want an error saying to start it with -js", err)
	}
}
