package nats

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// selfSigned returns a server certificate for 127.0.0.1 that is its own
// CA, and the PEM of that CA.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "nats-test"},
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
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, roots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestTLS runs events over TLS to a server that requires it: with
// eventbus.Config.TLS, and with the tls:// scheme and ?tls_ca= naming the
// CA's file. Without the CA the server's certificate does not verify, and
// Open fails at once rather than retrying until its ctx ends.
func TestTLS(t *testing.T) {
	cert, roots, caPEM := selfSigned(t)
	srv := brokertest.StartNATSServer(t, brokertest.NATSServerConfig{
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	roundTrip := func(t *testing.T, url string, tlsCfg *tls.Config) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b, err := eventbus.New(ctx, eventbus.Config{ServiceName: unique("tls-"), URL: url, TLS: tlsCfg})
		if err != nil {
			t.Fatalf("New over TLS: %v", err)
		}
		defer b.Close(context.Background())
		got := transporttest.NewCounter()
		if err := b.Subscribe("tls.#", got.Handle); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(ctx); err != nil {
			t.Fatal(err)
		}
		ev := mustEvent(t, "tls.check", nil)
		if err := b.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		transporttest.WaitFor(t, 20*time.Second, "the event over TLS", func() bool { return got.Has(ev.ID) }, func() string { return "not delivered" })
	}
	t.Run("ConfigTLS", func(t *testing.T) {
		// Config.TLS alone turns TLS on.
		url := strings.Replace(ownServerURL(t, srv), "tls://", "nats://", 1)
		roundTrip(t, url, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	})
	t.Run("SchemeAndCAFile", func(t *testing.T) {
		roundTrip(t, ownServerURL(t, srv, "tls_ca", caFile), nil)
	})
	t.Run("UnverifiedCertificateFailsAtOnce", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := eventbus.New(ctx, eventbus.Config{ServiceName: "tls-bad", URL: srv.URL()})
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("New with an unknown CA: %v; want a certificate error", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("New with an unknown CA took %v; a certificate that does not verify must fail at once", took)
		}
	})
}

// TestAuthentication connects with a user and password, and with a token;
// wrong credentials fail at once.
func TestAuthentication(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       brokertest.NATSServerConfig
		good, bad func(base string) string
	}{
		{"UserPassword", brokertest.NATSServerConfig{User: "app", Password: "pw"},
			func(b string) string { return strings.Replace(b, "nats://", "nats://app:pw@", 1) },
			func(b string) string { return strings.Replace(b, "nats://", "nats://app:wrong@", 1) }},
		{"Token", brokertest.NATSServerConfig{Token: "tok"},
			func(b string) string { return b + "/?token=tok" },
			func(b string) string { return b + "/?token=wrong" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := brokertest.StartNATSServer(t, tc.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "auth", URL: tc.good(srv.URL())})
			if err != nil {
				t.Fatalf("New with the right credentials: %v", err)
			}
			_ = b.Close(ctx)
			start := time.Now()
			_, err = eventbus.New(ctx, eventbus.Config{ServiceName: "auth", URL: tc.bad(srv.URL())})
			if err == nil || !strings.Contains(err.Error(), "refused") || strings.Contains(err.Error(), "wrong") {
				t.Errorf("New with wrong credentials: %v; want a refusal that does not show them", err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("wrong credentials took %v to fail; they must fail at once", took)
			}
		})
	}
}
