package kafka

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/paissive/go-eventbus/eventbus"
)

// TestTLS: eventbus.Config.TLS reaches Sarama: a bus talks to a cluster
// that only speaks TLS, and events go round trip. It needs a TLS cluster,
// so it runs on its own in-process one.
func TestTLS(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "kfake"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(serverTLS),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, "127.0.0.1:0") }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	url := "kafka://" + strings.Join(c.ListenAddrs(), ",") + "/?prefix=tls"
	b, err := eventbus.New(testCtx(t), eventbus.Config{ServiceName: "tls", URL: url, Logger: quietLogger,
		TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatalf("New over TLS: %v", err)
	}
	defer b.Close(context.Background())
	got := make(chan string, 1)
	if err := b.Subscribe("tls.#", func(ctx context.Context, ev eventbus.Event) error { got <- ev.ID; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	ev := events(t, 1, "tls.check", nil)[0]
	if err := b.Publish(testCtx(t), ev); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != ev.ID {
			t.Errorf("got %s, want %s", id, ev.ID)
		}
	case <-time.After(testTimeout):
		t.Fatal("event not delivered over TLS")
	}
}
