package nats

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Timeouts of the connection.
const (
	// attemptTimeout bounds one connection attempt (TCP, TLS and the NATS
	// handshake) unless the ctx given to Open ends first. A frozen server
	// accepts the TCP connection and never answers.
	attemptTimeout = 5 * time.Second
	// closeTimeout bounds each wait for the server when something closes:
	// the flush of acknowledgements, the drain of a subscription, the
	// close of the connection. A frozen server never answers; the socket
	// is closed instead. Transport.Close returns within about two of it.
	closeTimeout = 2 * time.Second
	// pingInterval and maxPingsOut make a connection whose server stopped
	// answering count as lost after 20 to 30 s, so that the client
	// reconnects (nats.go's defaults wait 4 minutes).
	pingInterval = 10 * time.Second
	maxPingsOut  = 2
	// publishAckTimeout is how long a publish waits for the stream's
	// acknowledgement before it is sent again (with the same Nats-Msg-Id,
	// so the stream stores it once).
	publishAckTimeout = 5 * time.Second
	// maxPendingAcks is how many publishes may await their
	// acknowledgement at once on the transport's connection.
	maxPendingAcks = 16384
	// duplicateWindow is the streams' deduplication window: a message sent
	// again within it with the same Nats-Msg-Id is stored once.
	duplicateWindow = 2 * time.Minute
)

// errClosed is returned by operations on a closed transport; it wraps the
// one ErrClosed of every transport.
var errClosed = fmt.Errorf("nats transport: %w", driver.ErrClosed)

func init() {
	driver.Register("nats", driver.OpenFunc(Open))
	driver.Register("tls", driver.OpenFunc(Open))
}

// Transport is the NATS JetStream transport; see the package
// documentation. It implements driver.Transport and is safe for concurrent
// use.
type Transport struct {
	opts     options
	service  string
	log      *slog.Logger
	redacted string
	nc       *nats.Conn
	js       jetstream.JetStream
	dialer   *dialer
	// multiFilter is set when the server takes several filter subjects per
	// consumer (NATS 2.10 and later).
	multiFilter bool

	events, poison jetstream.Stream
	pub            *publisher
	pq             *poisonQueue

	msgCtx  context.Context // parent of delivered messages' contexts
	msgStop context.CancelFunc
	done    chan struct{} // closed when Close starts

	// connGen changes on every reconnection, so that subscribers re-issue
	// their pull requests.
	connGen atomic.Uint64
	// state is the connection's state for Connectivity; reconnects counts
	// the failed reconnection attempts since the connection was lost.
	state      *driver.ConnectivityState
	reconnects atomic.Int64

	// ensureMu serialises re-creating streams after a server lost them.
	ensureMu   sync.Mutex
	lastEnsure time.Time

	closeMu  sync.Mutex
	closed   atomic.Bool
	closeErr error
	subsMu   sync.Mutex
	subs     map[*subscriber]struct{}
	taps     map[*tap]struct{} // guarded by subsMu
}

var _ driver.Transport = (*Transport)(nil)

// Open connects to the server cfg.URL names and makes sure the namespace's
// streams exist. It retries the connection with backoff until ctx ends, so
// a service that starts before its server waits for it; a refused
// authorisation and a URL the transport cannot read fail at once. Each
// attempt is bounded by ctx and by 5 s, so Open returns by ctx's deadline
// also while the server accepts connections and never answers. It is the
// driver registered for "nats" and "tls".
func Open(ctx context.Context, cfg driver.Config) (driver.Transport, error) {
	return open(ctx, cfg)
}

func open(ctx context.Context, cfg driver.Config) (*Transport, error) {
	if cfg.URL == nil {
		return nil, errors.New("nats transport: no URL")
	}
	opts, err := parseOptions(cfg.URL)
	if err != nil {
		return nil, err
	}
	if cfg.ServiceName == "" {
		return nil, errors.New("nats transport: no service name (driver.Config.ServiceName)")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	redacted := redact(cfg.URL)
	log = log.With("transport", "nats", "url", redacted)
	t := &Transport{
		opts:     opts,
		service:  cfg.ServiceName,
		log:      log,
		redacted: redacted,
		dialer:   &dialer{},
		done:     make(chan struct{}),
		subs:     map[*subscriber]struct{}{},
		state:    driver.NewConnectivityState(opts.password, opts.token),
	}
	t.msgCtx, t.msgStop = context.WithCancel(context.Background())
	nc, err := t.connect(ctx, cfg)
	if err != nil {
		t.msgStop()
		return nil, err
	}
	t.nc = nc
	t.multiFilter = serverAtLeast(nc.ConnectedServerVersion(), 2, 10)
	t.js, err = jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPendingAcks), jetstream.WithPublishAsyncTimeout(publishAckTimeout))
	if err == nil {
		err = t.ensureStreams(ctx)
	}
	if err != nil {
		t.msgStop()
		t.closeConn()
		return nil, err
	}
	t.pub = &publisher{t: t}
	t.pq = &poisonQueue{t: t, subject: poisonSubject(opts.stream, cfg.ServiceName)}
	return t, nil
}

// connect dials until it succeeds, ctx ends or the server refuses the
// credentials.
func (t *Transport) connect(ctx context.Context, cfg driver.Config) (*nats.Conn, error) {
	scheme := "nats://"
	if t.opts.tls || cfg.TLS != nil {
		scheme = "tls://"
	}
	servers := make([]string, len(t.opts.servers))
	for i, s := range t.opts.servers {
		servers[i] = scheme + s
	}
	nopts := []nats.Option{
		nats.Name(cfg.ServiceName),
		nats.SetCustomDialer(t.dialer),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(200 * time.Millisecond),
		nats.ReconnectJitter(200*time.Millisecond, time.Second),
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.FlusherTimeout(10 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if t.closed.Load() {
				return
			}
			if err == nil {
				err = errors.New("connection to the server closed")
			}
			t.state.Down(err)
			t.log.Warn("nats transport: connection to the server lost; reconnecting", "error", err)
			t.endTaps(fmt.Errorf("nats transport: the connection to the server was lost (%w); a tap is not resumed, since what the server sent meanwhile is gone", err))
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if t.closed.Load() {
				return
			}
			t.state.Down(err)
			// nats.go tries about every 0.2 to 1.2 s: log the 1st, 2nd,
			// 4th, 8th... failure, not each.
			if n := t.reconnects.Add(1); n&(n-1) == 0 {
				t.log.Warn("nats transport: cannot reconnect to the server; retrying", "attempt", n, "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			t.reconnects.Store(0)
			t.state.Up()
			t.connGen.Add(1)
			t.log.Info("nats transport: reconnected", "server", nc.ConnectedUrlRedacted())
			t.wakeSubscribers()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			t.log.Error("nats transport: asynchronous error from the connection", "subject", subject, "error", err)
		}),
	}
	if cfg.TLS != nil {
		nopts = append(nopts, nats.Secure(cfg.TLS.Clone()))
	} else if t.opts.tls {
		nopts = append(nopts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	if t.opts.tlsCA != "" {
		nopts = append(nopts, nats.RootCAs(t.opts.tlsCA))
	}
	if t.opts.tlsCert != "" {
		nopts = append(nopts, nats.ClientCert(t.opts.tlsCert, t.opts.tlsKey))
	}
	switch {
	case t.opts.user != "":
		nopts = append(nopts, nats.UserInfo(t.opts.user, t.opts.password))
	case t.opts.token != "":
		nopts = append(nopts, nats.Token(t.opts.token))
	case t.opts.creds != "":
		nopts = append(nopts, nats.UserCredentials(t.opts.creds))
	}
	url := strings.Join(servers, ",")
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		nc, err := t.dialOnce(ctx, url, nopts)
		if err == nil {
			t.state.Up()
			return nc, nil
		}
		t.state.Down(err)
		if refused(err) {
			return nil, fmt.Errorf("nats transport: the server at %s refused the connection: %w", t.redacted, err)
		}
		wait := delay/2 + rand.N(delay/2+1)
		t.log.Warn("nats transport: cannot connect to the server; retrying", "attempt", attempt, "delay", wait, "error", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("nats transport: cannot connect to %s after %d attempt(s) (%w); last error: %w", t.redacted, attempt, ctx.Err(), err)
		case <-time.After(wait):
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// dialOnce makes one connection attempt within ctx and attemptTimeout.
// nats.Connect takes no ctx: it runs aside, the dialer closes the socket
// when ctx ends, and a connection that completes too late is closed.
func (t *Transport) dialOnce(ctx context.Context, url string, nopts []nats.Option) (*nats.Conn, error) {
	timeout := attemptTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(min(timeout, time.Until(dl)), time.Millisecond)
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t.dialer.setContext(actx)
	defer t.dialer.clearContext()
	type result struct {
		nc  *nats.Conn
		err error
	}
	res := make(chan result, 1)
	go func() {
		nc, err := nats.Connect(url, append(slices.Clip(nopts), nats.Timeout(timeout))...)
		res <- result{nc, err}
	}()
	select {
	case r := <-res:
		return r.nc, r.err
	case <-actx.Done():
		go func() {
			if r := <-res; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, fmt.Errorf("no answer from %s within %v: %w", t.redacted, timeout, actx.Err())
	}
}

// refused reports errors that retrying cannot fix: refused credentials or
// a server certificate that does not verify.
func refused(err error) bool {
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) {
		return true
	}
	if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) {
		return true
	}
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "authorization violation") || strings.Contains(msg, "authentication") ||
		strings.Contains(msg, "no such file") // a creds or CA file that is missing
}

// dialer dials the server's TCP connections for nats.go, within the ctx of
// the connection attempt in progress, and keeps the last socket so that
// Close can cut a connection whose server froze.
type dialer struct {
	mu   sync.Mutex
	ctx  context.Context
	last net.Conn
}

// setContext makes ctx the context of the dials to come: those of one
// connection attempt of Open.
func (d *dialer) setContext(ctx context.Context) {
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()
}

// clearContext ends setContext: later dials (reconnections) use their own
// timeout only.
func (d *dialer) clearContext() {
	d.mu.Lock()
	d.ctx = nil
	d.mu.Unlock()
}

// Dial implements nats.CustomDialer.
func (d *dialer) Dial(network, address string) (net.Conn, error) {
	d.mu.Lock()
	ctx := d.ctx
	d.mu.Unlock()
	if ctx == nil {
		ctx = context.Background()
	}
	nd := net.Dialer{Timeout: attemptTimeout, KeepAlive: 15 * time.Second}
	c, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	// The handshake that follows is bounded by nats.Timeout; an attempt
	// whose ctx ends is cut at once.
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() {
			d.mu.Lock()
			cur := d.ctx
			d.mu.Unlock()
			if cur == ctx {
				_ = c.Close()
			}
		})
		go func() {
			<-ctx.Done()
			stop()
		}()
	}
	d.mu.Lock()
	d.last = c
	d.mu.Unlock()
	return c, nil
}

// cut closes the current socket.
func (d *dialer) cut() {
	d.mu.Lock()
	c := d.last
	d.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// serverAtLeast reports whether version ("2.10.7") is at least
// major.minor.
func serverAtLeast(version string, major, minor int) bool {
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// eventStreamConfig is the configuration of the event stream the
// transport creates when it does not exist.
func (t *Transport) eventStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        t.opts.stream,
		Description: "go-eventbus events of namespace " + t.opts.stream,
		Subjects:    []string{t.opts.stream + ".>", largeRoot(t.opts.stream) + ".>"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      t.opts.maxAge,
		Storage:     t.opts.storage,
		Replicas:    t.opts.replicas,
		Discard:     jetstream.DiscardOld,
		Duplicates:  t.dupWindow(),
	}
}

// poisonStreamConfig is the configuration of the poison stream: records
// are kept until replayed or purged.
func (t *Transport) poisonStreamConfig() jetstream.StreamConfig {
	name := poisonStreamName(t.opts.stream)
	return jetstream.StreamConfig{
		Name:        name,
		Description: "go-eventbus poison records of namespace " + t.opts.stream,
		Subjects:    []string{name + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     t.opts.storage,
		Replicas:    t.opts.replicas,
		Discard:     jetstream.DiscardOld,
		Duplicates:  duplicateWindow,
	}
}

func (t *Transport) dupWindow() time.Duration {
	if t.opts.maxAge > 0 && t.opts.maxAge < duplicateWindow {
		return t.opts.maxAge
	}
	return duplicateWindow
}

// ensureStreams makes sure both streams of the namespace exist.
func (t *Transport) ensureStreams(ctx context.Context) error {
	ev, err := t.ensureStream(ctx, t.eventStreamConfig())
	if err != nil {
		return err
	}
	ps, err := t.ensureStream(ctx, t.poisonStreamConfig())
	if err != nil {
		return err
	}
	t.ensureMu.Lock()
	t.events, t.poison = ev, ps
	t.ensureMu.Unlock()
	return nil
}

// streams returns the handles of the event and poison streams.
func (t *Transport) streams() (events, poison jetstream.Stream) {
	t.ensureMu.Lock()
	defer t.ensureMu.Unlock()
	return t.events, t.poison
}

// ensureStream looks the stream up and creates it when it does not exist.
// An existing stream is used as it is (an operator may have changed its
// limits), provided it captures the subjects the transport uses.
func (t *Transport) ensureStream(ctx context.Context, want jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := t.js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = t.js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = t.js.Stream(ctx, want.Name) // created concurrently
		}
		if err == nil {
			t.log.Info("nats transport: created stream", "stream", want.Name, "subjects", want.Subjects)
		}
	}
	if err != nil {
		return nil, t.apiError(ctx, "setting up stream "+want.Name, err)
	}
	have := s.CachedInfo().Config.Subjects
	for _, w := range want.Subjects {
		if !slices.Contains(have, w) {
			return nil, fmt.Errorf("nats transport: stream %s exists with subjects %v, but the transport needs it to capture %v; add them (nats stream edit %s --subjects ...) or use another ?stream=", want.Name, have, want.Subjects, want.Name)
		}
	}
	return s, nil
}

// reensureStreams re-creates the streams after a publish or a pull found
// none answering (a server restarted with memory storage, an operator
// deleted a stream), at most once a second.
func (t *Transport) reensureStreams(ctx context.Context) {
	t.ensureMu.Lock()
	if time.Since(t.lastEnsure) < time.Second {
		t.ensureMu.Unlock()
		return
	}
	t.lastEnsure = time.Now()
	t.ensureMu.Unlock()
	if err := t.ensureStreams(ctx); err != nil && ctx.Err() == nil && !t.closed.Load() {
		t.log.Warn("nats transport: cannot re-create the streams", "error", err)
	}
}

// apiError describes an error of a JetStream API call made for op.
func (t *Transport) apiError(ctx context.Context, op string, err error) error {
	switch {
	case t.closed.Load():
		return errClosed
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return fmt.Errorf("nats transport: %s: the server at %s has no JetStream; start nats-server with -js (or a jetstream {} block in its configuration): %w", op, t.redacted, err)
	case errors.Is(err, nats.ErrNoResponders):
		// A server without JetStream does not answer its API at all.
		return fmt.Errorf("nats transport: %s: nothing answers the JetStream API at %s: the server has no JetStream (start nats-server with -js, or a jetstream {} block in its configuration), or it is not available for this account right now: %w", op, t.redacted, err)
	case ctx.Err() != nil:
		if errors.Is(err, ctx.Err()) {
			return fmt.Errorf("nats transport: %s: no answer from the server at %s before the context ended (it may be down, overloaded or frozen): %w", op, t.redacted, err)
		}
		return fmt.Errorf("nats transport: %s: no answer from the server at %s before the context ended (it may be down, overloaded or frozen): %w (%w)", op, t.redacted, context.Cause(ctx), err)
	}
	return fmt.Errorf("nats transport: %s: %w", op, err)
}

// Publisher returns the transport's publisher; see [publisher].
func (t *Transport) Publisher() message.Publisher { return t.pub }

// PoisonQueue returns the service's poison queue: the records on subject
// "<stream>_poison.<service>" of the namespace's poison stream.
func (t *Transport) PoisonQueue() (driver.PoisonQueue, error) { return t.pq, nil }

// Stream returns the name of the event stream (the namespace).
func (t *Transport) Stream() string { return t.opts.stream }

// Conn returns the transport's NATS connection, for tools and tests that
// need the server's own API. Closing it breaks the transport.
func (t *Transport) Conn() *nats.Conn { return t.nc }

// Close cancels the contexts of messages still being handled, gives every
// message delivered and not acknowledged back to the server (a nak, so it
// is delivered again at once rather than after AckWait), fails Publish
// calls still waiting for acknowledgements, and closes the connection. It
// returns within about 4 s also while the server is frozen: a connection
// that does not close within 2 s has its socket closed.
func (t *Transport) Close() error {
	t.closeMu.Lock()
	defer t.closeMu.Unlock()
	if t.closed.Swap(true) {
		return t.closeErr
	}
	t.msgStop()
	close(t.done)
	t.endTaps(nil)
	t.subsMu.Lock()
	subs := make([]*subscriber, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.subsMu.Unlock()
	for _, s := range subs {
		s.stop()
	}
	stopped := make(chan struct{})
	go func() {
		for _, s := range subs {
			s.loops.Wait()
		}
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(closeTimeout):
	}
	t.closeErr = t.closeConn()
	t.state.Down(nil)
	select {
	case <-stopped:
	case <-time.After(closeTimeout):
		t.log.Warn("nats transport: subscriptions still stopping after the connection closed")
	}
	return t.closeErr
}

// closeConn flushes and closes the connection within closeTimeout, then
// closes its socket if the server has not answered.
func (t *Transport) closeConn() error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = t.nc.FlushTimeout(closeTimeout / 2)
		t.nc.Close()
	}()
	select {
	case <-done:
		return nil
	case <-time.After(closeTimeout):
	}
	t.dialer.cut()
	<-done
	return fmt.Errorf("nats transport: the server at %s did not answer the close within %v; the socket was closed, and the server redelivers the unacknowledged messages after their AckWait", t.redacted, closeTimeout)
}

func (t *Transport) isClosed() bool { return t.closed.Load() }

// wakeSubscribers makes every subscriber look at the connection again
// (after a reconnection).
func (t *Transport) wakeSubscribers() {
	t.subsMu.Lock()
	defer t.subsMu.Unlock()
	for s := range t.subs {
		s.wakeAll()
	}
}
