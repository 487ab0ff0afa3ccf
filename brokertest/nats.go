package brokertest

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATSURLEnv names the environment variable that sets the NATS server
// tests use, for example "nats://nats.internal:4222". It must have
// JetStream. The value "embedded" makes the tests start an in-process
// server even when one answers on 127.0.0.1:4222.
const NATSURLEnv = "EVENTBUS_TEST_NATS_URL"

// LocalNATSURL is the server tried when NATSURLEnv is not set.
const LocalNATSURL = "nats://127.0.0.1:4222"

// Kinds of NATS server NATSURL returns.
const (
	NATSFromEnv  = "env"
	NATSLocal    = "local"
	NATSEmbedded = "embedded"
)

// natsFound caches the lookup of the machine's server.
var natsFound struct {
	sync.Mutex
	done    bool
	url     string // the local server, if it answers
	kind    string
	version string
	reason  string // why the local server is not used
	logged  bool
}

// NATSURL returns the URL of a NATS server with JetStream for t and which
// kind it is: the server in EVENTBUS_TEST_NATS_URL ("env"), else the one
// answering on 127.0.0.1:4222 when it has JetStream ("local"), else a
// fresh in-process server (github.com/nats-io/nats-server/v2) with
// JetStream on a free port of 127.0.0.1 and its storage in a temporary
// directory ("embedded"), shut down when t ends; EVENTBUS_TEST_NATS_URL=
// embedded asks for that one even when a local server answers. So the
// tests always run: no skip, with or without CI. The first call of a
// process prints which server runs.
//
// Servers from the environment or the machine are shared: tests isolate
// themselves with unique stream names (the nats transport's ?stream=) and
// delete their streams.
func NATSURL(t testing.TB) (url, kind string) {
	t.Helper()
	var version, reason string
	first := false
	switch env := os.Getenv(NATSURLEnv); env {
	case "":
		// The machine's server is looked for once per process.
		natsFound.Lock()
		if !natsFound.done {
			natsFound.done = true
			if v, err := pingJetStream(LocalNATSURL); err == nil {
				natsFound.url, natsFound.kind, natsFound.version = LocalNATSURL, NATSLocal, v
			} else {
				natsFound.kind, natsFound.reason = NATSEmbedded, err.Error()
			}
		}
		url, kind, version, reason = natsFound.url, natsFound.kind, natsFound.version, natsFound.reason
		natsFound.Unlock()
	case NATSEmbedded:
		kind, reason = NATSEmbedded, NATSURLEnv+"=embedded"
	default:
		// An explicit URL is used as given: a server that does not answer
		// shows up as a test failure, not as a silent fallback.
		url, kind, version = env, NATSFromEnv, "unknown"
	}
	natsFound.Lock()
	first, natsFound.logged = !natsFound.logged, true
	natsFound.Unlock()

	if kind == NATSEmbedded {
		s := StartNATSServer(t, NATSServerConfig{})
		url, version = s.URL(), natsserver.VERSION
	}
	msg := fmt.Sprintf("NATS server: %s %s (nats-server %s)", kind, url, version)
	if kind == NATSEmbedded {
		msg += " (in-process, one per test; " + reason + ")"
	}
	if first {
		fmt.Fprintln(os.Stderr, "brokertest: "+msg)
	}
	t.Log(msg)
	return url, kind
}

// pingJetStream connects to url and asks for the account's JetStream
// information; it returns the server's version.
func pingJetStream(url string) (string, error) {
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.NoReconnect())
	if err != nil {
		return "", err
	}
	defer nc.Close()
	m, err := nc.Request("$JS.API.INFO", nil, 2*time.Second)
	if err != nil {
		return "", fmt.Errorf("%s answers but not to JetStream requests (%v); start it with -js", url, err)
	}
	if len(m.Data) == 0 || m.Header.Get("Status") != "" {
		return "", fmt.Errorf("%s answers but has no JetStream; start it with -js", url)
	}
	var probe struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &probe); err == nil && probe.Error != nil {
		return "", fmt.Errorf("%s has no JetStream for this account: %s", url, probe.Error.Description)
	}
	return nc.ConnectedServerVersion(), nil
}

// NATSServerConfig configures an in-process NATS server.
type NATSServerConfig struct {
	// StoreDir is where JetStream keeps its files; empty means a
	// temporary directory of the test. A server restarted with the same
	// directory has the same streams and consumers.
	StoreDir string
	// Port is the client port on 127.0.0.1; zero means a free one.
	Port int
	// MaxPayload is the largest message the server accepts; zero means
	// NATS's default of 1 MiB.
	MaxPayload int32
	// TLS, when set, makes the server require TLS with this configuration.
	TLS *tls.Config
	// User and Password, when set, are the only credentials the server
	// accepts; Token likewise.
	User, Password, Token string
}

// NATSServer is an in-process NATS server with JetStream.
type NATSServer struct {
	cfg  NATSServerConfig
	mu   sync.Mutex
	srv  *natsserver.Server
	port int
}

// StartNATSServer starts an in-process NATS server with JetStream on
// 127.0.0.1, shut down when t ends.
func StartNATSServer(t testing.TB, cfg NATSServerConfig) *NATSServer {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	s := &NATSServer{cfg: cfg, port: cfg.Port}
	if s.port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("brokertest: finding a free port: %v", err)
		}
		s.port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
	}
	if err := s.start(); err != nil {
		t.Fatalf("brokertest: starting an in-process NATS server: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

func (s *NATSServer) start() error {
	opts := &natsserver.Options{
		Host:       "127.0.0.1",
		Port:       s.port,
		JetStream:  true,
		StoreDir:   s.cfg.StoreDir,
		MaxPayload: s.cfg.MaxPayload,
		NoLog:      true,
		NoSigs:     true,
		Username:   s.cfg.User,
		Password:   s.cfg.Password,
		// Two seconds, as nats.go waits for the handshake by default.
		TLSTimeout: 2,
	}
	if s.cfg.Token != "" {
		opts.Authorization = s.cfg.Token
	}
	if s.cfg.TLS != nil {
		opts.TLS = true
		opts.TLSConfig = s.cfg.TLS
	}
	srv, err := natsserver.NewServer(opts)
	if err != nil {
		return err
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return fmt.Errorf("the server on 127.0.0.1:%d did not become ready within 10s", s.port)
	}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	return nil
}

// URL returns the server's client URL, nats://127.0.0.1:<port> (tls://
// when it requires TLS).
func (s *NATSServer) URL() string {
	scheme := "nats"
	if s.cfg.TLS != nil {
		scheme = "tls"
	}
	return scheme + "://" + s.Addr()
}

// Addr returns the server's host:port.
func (s *NATSServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Shutdown stops the server and waits until it has stopped; its store
// stays. It does nothing when the server is not running.
func (s *NATSServer) Shutdown() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart starts the server again on the same port with the same store,
// as a process restart would; it shuts it down first if it runs.
func (s *NATSServer) Restart(t testing.TB) {
	t.Helper()
	s.Shutdown()
	var err error
	// The port may take a moment to be free again.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err = s.start(); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("brokertest: restarting the in-process NATS server: %v", err)
	}
}
