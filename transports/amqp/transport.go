package amqp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/blocking"
	"github.com/paissive/go-eventbus/internal/logkeys"
)

// DefaultExchange is the topic exchange used when the URL does not name
// one with ?exchange=.
const DefaultExchange = "events"

// DefaultPublishChannels is the number of confirm-mode channels concurrent
// Publish calls share unless the URL sets ?publish_channels=. A few
// channels let the broker process publishes in parallel (each channel is a
// process on the broker) without the cost of a channel per call.
const DefaultPublishChannels = 4

// DefaultMaxMessageSize is the largest message body the transport sends
// unless the URL sets ?max_message_size=: RabbitMQ's own default for its
// max_message_size setting (128 MiB since 3.8). The broker closes the
// channel of a larger message, failing the other messages in flight on it,
// so the transport rejects such a message before sending it.
const DefaultMaxMessageSize = 128 << 20

// handshakeTimeout bounds one connection attempt: the TCP connect, the TLS
// and AMQP handshakes and the exchange declaration, unless the ctx given
// to Open ends first. A frozen broker accepts the TCP connection and never
// answers; without the bound a reconnection attempt would wait for it
// forever.
const handshakeTimeout = 10 * time.Second

// closeTimeout bounds each wait for the broker when something closes: the
// answer to the connection's close in [Transport.Close], to a channel's
// close, to a consumer's cancel. A frozen broker never answers; its
// resources are released by closing the socket instead. Transport.Close
// therefore returns within about closeTimeout (2 s), and so does a
// subscriber's Close, plus the time its messages in flight take to be
// acknowledged.
const closeTimeout = 2 * time.Second

// errClosed is returned by operations on a closed transport; it wraps the
// one ErrClosed of every transport (driver.ErrClosed).
var errClosed = fmt.Errorf("amqp transport: %w", driver.ErrClosed)

func init() {
	driver.Register("amqp", driver.OpenFunc(Open))
	driver.Register("amqps", driver.OpenFunc(Open))
}

// amqp091Params are the URL query parameters amqp091-go itself reads; they
// are passed through to it.
var amqp091Params = map[string]bool{
	"heartbeat": true, "connection_timeout": true, "channel_max": true,
	"certfile": true, "keyfile": true, "cacertfile": true, "server_name_indication": true,
}

// options are the transport's settings, read from the URL.
type options struct {
	exchange        string
	prefix          string
	quorum          bool
	publishChannels int
	maxMessageSize  int
	// acceptUnroutable makes Publish accept, and count, events no
	// subscription matches (?unroutable=accept).
	acceptUnroutable bool
	prefetch         int // 0: the default of each subscription (see prefetchWindow)
}

// maxPrefix is the longest ?prefix=, so that prefixed names of the
// longest groups (a 100-byte service name) still fit AMQP's 255 bytes.
const maxPrefix = 64

func parseOptions(u *url.URL) (options, *url.URL, error) {
	o := options{exchange: DefaultExchange, publishChannels: DefaultPublishChannels, maxMessageSize: DefaultMaxMessageSize}
	q := u.Query()
	exchangeSet := false
	for k, vs := range q {
		v := vs[0]
		switch {
		case k == "prefix":
			if !validPrefix(v) {
				return o, nil, fmt.Errorf("amqp transport: prefix=%q must be 1 to %d letters, digits, '_' or '-' (like a service name: no '.' or ':', so that prefixed names never equal another prefix's)", v, maxPrefix)
			}
			o.prefix = v
		case k == "unroutable":
			switch v {
			case "error", "":
				o.acceptUnroutable = false
			case "accept":
				o.acceptUnroutable = true
			default:
				return o, nil, fmt.Errorf("amqp transport: unroutable=%q must be error (Publish fails with ErrUnroutable for an event no subscription matches) or accept (Publish accepts and counts it)", v)
			}
		case k == "exchange":
			exchangeSet = true
			if v == "" || len(v) > 255 {
				return o, nil, fmt.Errorf("amqp transport: exchange=%q must be 1 to 255 bytes", v)
			}
			o.exchange = v
		case k == "queue_type":
			switch v {
			case "classic", "":
			case "quorum":
				o.quorum = true
			default:
				return o, nil, fmt.Errorf("amqp transport: queue_type=%q must be classic or quorum", v)
			}
		case k == "publish_channels":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 256 {
				return o, nil, fmt.Errorf("amqp transport: publish_channels=%q must be an integer from 1 to 256", v)
			}
			o.publishChannels = n
		case k == "prefetch":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > math.MaxUint16 {
				return o, nil, fmt.Errorf("amqp transport: prefetch=%q must be an integer from 1 to 65535 (deliveries each subscription keeps buffered; at least its concurrency is used)", v)
			}
			o.prefetch = n
		case k == "max_message_size":
			// RabbitMQ caps its own setting at 512 MiB.
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 512<<20 {
				return o, nil, fmt.Errorf("amqp transport: max_message_size=%q must be a number of bytes from 1 to 536870912 (the broker's max_message_size)", v)
			}
			o.maxMessageSize = n
		case amqp091Params[k]:
			continue
		default:
			return o, nil, fmt.Errorf("amqp transport: unknown URL parameter %q (known: exchange, prefix, unroutable, queue_type, publish_channels, prefetch, max_message_size, heartbeat, connection_timeout, channel_max, certfile, keyfile, cacertfile, server_name_indication)", k)
		}
		q.Del(k)
	}
	if o.prefix != "" && !exchangeSet {
		o.exchange = o.prefix + sep + DefaultExchange
	}
	dial := *u
	dial.RawQuery = q.Encode()
	return o, &dial, nil
}

// validPrefix reports whether p can namespace the transport's names: the
// characters of a service name, so that "<prefix>:" is never part of a
// service name or of another prefix.
func validPrefix(p string) bool {
	if p == "" || len(p) > maxPrefix {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Transport is the RabbitMQ transport; see the package documentation. It
// implements driver.Transport and is safe for concurrent use.
type Transport struct {
	opts     options
	log      *slog.Logger
	conn     *connManager
	pub      *Publisher
	poison   *poisonQueue
	msgCtx   context.Context // parent of delivered messages' contexts
	msgStop  context.CancelFunc
	closeMu  sync.Mutex  // serialises Close
	closed   atomic.Bool // set first thing in Close
	subsMu   sync.Mutex
	subs     map[*subscriber]struct{}
	closeErr error
	host     string // of the broker, for Describe
	port     string
	// unroutable counts the events Publish accepted with no subscription
	// matching them (?unroutable=accept).
	unroutable atomic.Uint64
}

var _ driver.Transport = (*Transport)(nil)

// Open connects to the broker cfg.URL names. It retries the first
// connection with backoff until ctx ends, so a service that starts before
// its broker waits for it instead of failing; refused credentials fail at
// once since retrying cannot fix them, and so does a URL it cannot read.
// Each attempt is bounded by ctx and by 10 s, so Open returns by ctx's
// deadline also when the broker accepts connections and never answers. It
// is the driver registered for "amqp" and "amqps".
func Open(ctx context.Context, cfg driver.Config) (driver.Transport, error) {
	return open(ctx, cfg)
}

func open(ctx context.Context, cfg driver.Config) (*Transport, error) {
	if cfg.URL == nil {
		return nil, errors.New("amqp transport: no URL")
	}
	if err := checkURL(cfg.URL); err != nil {
		return nil, err
	}
	opts, dialURL, err := parseOptions(cfg.URL)
	if err != nil {
		return nil, err
	}
	if _, err := amqp091.ParseURI(dialURL.String()); err != nil {
		// Checked once here: a URL error inside each attempt would be
		// retried until ctx ends.
		return nil, badURL(cfg.URL, hidePassword(cfg.URL, err.Error()))
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	redacted := driver.RedactURL(dialURL.String())
	log = log.With(logkeys.Transport, "amqp", logkeys.URL, redacted)
	amqpCfg := amqp091.Config{
		Heartbeat:  10 * time.Second,
		Properties: amqp091.Table{"connection_name": cfg.ServiceName},
	}
	if dialURL.Scheme == "amqps" {
		if cfg.TLS != nil {
			amqpCfg.TLSClientConfig = cfg.TLS.Clone()
		} else if dialURL.Query().Get("certfile") == "" && dialURL.Query().Get("cacertfile") == "" {
			// System roots; amqp091-go fills in ServerName from the host.
			amqpCfg.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	pw, _ := cfg.URL.User.Password()
	m := &connManager{
		url:      dialURL.String(),
		redacted: redacted,
		state:    driver.NewConnectivityState(pw),
		cfg:      amqpCfg,
		log:      log,
		exchange: opts.exchange,
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
	}
	if err := m.connect(ctx); err != nil {
		return nil, err
	}
	t := &Transport{opts: opts, log: log, conn: m, subs: map[*subscriber]struct{}{}, host: dialURL.Hostname(), port: dialURL.Port()}
	if t.port == "" {
		t.port = "5672"
		if dialURL.Scheme == "amqps" {
			t.port = "5671"
		}
	}
	t.msgCtx, t.msgStop = context.WithCancel(context.Background())
	t.pub = newPublisher(t)
	t.poison = &poisonQueue{t: t, name: t.poisonName(cfg.ServiceName)}
	return t, nil
}

// urlHowTo is the advice of every error about a URL the transport cannot
// read.
const urlHowTo = "write it as amqp://user:password@host:port/vhost (amqps:// for TLS), with reserved characters such as @ : / # ? in the user name or password percent-encoded"

func badURL(u *url.URL, what string) error {
	return fmt.Errorf("amqp transport: cannot read the URL %s: %s; %s", driver.RedactURL(u.String()), what, urlHowTo)
}

func hidePassword(u *url.URL, text string) string {
	if pw, ok := u.User.Password(); ok && pw != "" {
		text = strings.ReplaceAll(text, pw, "xxxxx")
	}
	return text
}

// checkURL rejects URLs whose parts amqp091-go would not read as written.
// It falls back to localhost:5672 and guest/guest for whatever it does not
// find, so "amqp:user:secret@host:5679" (no "//": an opaque URL) connected
// to the local broker with the default credentials, and a port out of
// range failed only when dialling, again and again until ctx ended.
func checkURL(u *url.URL) error {
	switch {
	case u.Scheme != "amqp" && u.Scheme != "amqps":
		return badURL(u, fmt.Sprintf("the scheme %q is neither amqp nor amqps", u.Scheme))
	case u.Opaque != "":
		return badURL(u, `there is no "//" after the scheme, so it has no host part`)
	case u.Hostname() == "":
		return badURL(u, "it names no host")
	case u.Fragment != "":
		return badURL(u, "it has a fragment (#...), which is not part of an AMQP URL (a '#' in a password must be written %23)")
	}
	// u.Port() is empty for a port that is not a number: look for it.
	if i := strings.LastIndexByte(u.Host, ':'); i >= 0 && !strings.Contains(u.Host[i:], "]") {
		p := u.Host[i+1:]
		if n, err := strconv.Atoi(p); p != "" && (err != nil || n < 1 || n > 65535) {
			return badURL(u, fmt.Sprintf("the port %q is not a number from 1 to 65535", p))
		}
	}
	return nil
}

// PoisonQueueName returns the name of a service's poison queue without a
// prefix, "poison:<service>"; with ?prefix= it is
// "<prefix>:poison:<service>".
func PoisonQueueName(service string) string { return "poison:" + service }

// System is the transport's "messaging.system" in the bus's telemetry:
// the OpenTelemetry semantic conventions' name for RabbitMQ.
const System = "rabbitmq"

// Describe states the messaging system, "rabbitmq", and the broker's host
// and port.
func (t *Transport) Describe() driver.Description {
	d := driver.Description{System: System, ServerAddress: t.host}
	d.ServerPort, _ = strconv.Atoi(t.port)
	return d
}

// Connectivity reports the connection as the transport last saw it: up
// from a successful connection until the broker closes it or it drops,
// then reconnecting, with the error that ended it or the last failed
// attempt. It does not talk to the broker.
func (t *Transport) Connectivity() driver.Connectivity { return t.conn.state.Get() }

// Exchange returns the name of the topic exchange the transport publishes
// to.
func (t *Transport) Exchange() string { return t.opts.exchange }

// Publisher returns the transport's publisher; see [Publisher].
func (t *Transport) Publisher() message.Publisher { return t.pub }

// PoisonQueue returns the service's poison queue, "poison:<service>"
// ("<prefix>:poison:<service>" with ?prefix=).
func (t *Transport) PoisonQueue() (driver.PoisonQueue, error) { return t.poison, nil }

// UnroutableAccepted returns how many events Publish accepted although no
// subscription matched them, since the transport opened: always 0 unless
// the URL says ?unroutable=accept. It implements
// driver.UnroutableCounter.
func (t *Transport) UnroutableAccepted() uint64 { return t.unroutable.Load() }

var _ driver.UnroutableCounter = (*Transport)(nil)

// Redeliver publishes msgs to the queue of one subscription group through
// the default exchange, so that no other subscription receives them, with
// the same confirms and limits as Publish. A group whose queue does not
// exist makes the messages unroutable, whatever ?unroutable= says. It
// returns by ctx's deadline, whatever the messages' own contexts.
func (t *Transport) Redeliver(ctx context.Context, group string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if m.Context() == context.Background() {
			m.SetContext(ctx)
		}
	}
	return t.pub.publish(ctx, "", t.queueName(group), msgs)
}

// Close cancels the contexts of messages still being handled, fails
// Publish calls still waiting for confirms, and closes the connection, so
// the broker requeues every unacknowledged message. It waits at most 2 s
// for the broker to confirm the close, so it returns within about that
// also when the broker is frozen; it then returns an error saying so.
func (t *Transport) Close() error {
	t.closeMu.Lock()
	defer t.closeMu.Unlock()
	if t.closed.Swap(true) {
		return t.closeErr
	}
	t.msgStop()
	t.subsMu.Lock()
	subs := make([]*subscriber, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.subsMu.Unlock()
	// Closing the connection first releases subscribers waiting for acks.
	t.closeErr = t.conn.close()
	for _, s := range subs {
		_ = s.Close()
	}
	_ = t.pub.Close()
	return t.closeErr
}

func (t *Transport) isClosed() bool { return t.closed.Load() }

// queueArgs are the arguments of every queue the transport declares.
func (t *Transport) queueArgs() amqp091.Table {
	if t.opts.quorum {
		return amqp091.Table{"x-queue-type": "quorum"}
	}
	return nil
}

// testHookDeclare, when set by tests, is told about every queue the
// transport declares, so tests can delete what they created.
var testHookDeclare func(exchange, queue string)

func (t *Transport) declareExchange(ch *amqp091.Channel) error {
	return declareExchange(ch, t.opts.exchange)
}

func declareExchange(ch *amqp091.Channel, name string) error {
	if err := ch.ExchangeDeclare(name, amqp091.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declaring exchange %q: %w", name, err)
	}
	return nil
}

func (t *Transport) declareQueue(ch *amqp091.Channel, name string) error {
	if h := testHookDeclare; h != nil {
		h(t.opts.exchange, name)
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, t.queueArgs()); err != nil {
		return fmt.Errorf("declaring queue %q: %w", name, err)
	}
	return nil
}

// openChannel opens a channel on the current connection, waiting for a
// connection while there is none, and returns it with the connection's
// generation (which changes on every reconnection, so that a caller can
// tell whether what it declared is still there). It returns when ctx ends
// even if the broker does not answer: amqp091-go's Channel takes no ctx, so
// it runs aside, and a channel that opens too late is closed.
func (t *Transport) openChannel(ctx context.Context) (*amqp091.Channel, uint64, error) {
	for {
		conn, gen, err := t.conn.get(ctx)
		if err != nil {
			return nil, 0, err
		}
		ch, err := t.channelOn(ctx, conn)
		if err == nil {
			return ch, gen, nil
		}
		if ctx.Err() == nil && conn.IsClosed() {
			// The connection died under us; wait for the next one.
			t.conn.lost(conn)
			continue
		}
		return nil, 0, err
	}
}

// channelOn opens a channel on conn within ctx; see openChannel.
func (t *Transport) channelOn(ctx context.Context, conn *amqp091.Connection) (*amqp091.Channel, error) {
	if ctx.Done() == nil {
		return conn.Channel()
	}
	ch, err := blocking.Call(ctx, conn.Channel, func(ch *amqp091.Channel) { t.closeChannel(context.Background(), ch) })
	if err != nil && ctx.Err() != nil {
		return nil, t.noAnswer(ctx, "opening a channel")
	}
	return ch, err
}

// within runs f, a call on ch that waits for the broker (queue.declare,
// basic.get, queue.purge, basic.qos, ...), and returns its error, or
// returns when ctx ends first: amqp091-go's channel methods take no ctx.
// In that case ch is closed in the background (its broker may still
// answer the abandoned call, and what it holds, such as messages taken
// with basic.get, goes back to the queue), so the caller must not use ch
// again, nor close it.
func (t *Transport) within(ctx context.Context, ch *amqp091.Channel, op string, f func() error) error {
	if ctx.Done() == nil {
		return f()
	}
	if err := ctx.Err(); err != nil {
		go t.closeChannel(context.Background(), ch)
		return fmt.Errorf("%s: not started, the context had ended: %w", op, err)
	}
	res := make(chan error, 1)
	go func() { res <- f() }()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		go func() {
			// Closing the channel also ends the wait of f.
			t.closeChannel(context.Background(), ch)
			<-res
		}()
		return t.noAnswer(ctx, op)
	}
}

// noAnswer is the error of a call to the broker abandoned because ctx
// ended.
func (t *Transport) noAnswer(ctx context.Context, op string) error {
	return fmt.Errorf("%s: no answer from the broker at %s before the context ended (the broker may be overloaded or frozen): %w", op, t.conn.redacted, context.Cause(ctx))
}

// closeChannel closes ch, waiting for the broker's answer until ctx ends
// and at most closeTimeout; without an answer it leaves the close to
// finish in the background, ended at the latest with the connection.
// Closing a channel gives its unacknowledged messages back to their
// queues.
func (t *Transport) closeChannel(ctx context.Context, ch *amqp091.Channel) {
	if ch.IsClosed() {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ch.Close()
	}()
	timer := time.NewTimer(closeTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-timer.C:
	}
}

// connManager owns the connection: it dials with backoff, declares the
// exchange after each (re)connection, and lets everyone wait for the
// current connection.
type connManager struct {
	url      string // with the password: never logged or returned
	redacted string
	cfg      amqp091.Config
	log      *slog.Logger
	exchange string
	state    *driver.ConnectivityState

	mu     sync.Mutex
	conn   *amqp091.Connection // nil while disconnected
	raw    net.Conn            // conn's socket
	gen    uint64              // incremented on each new connection
	ready  chan struct{}       // closed while conn != nil
	closed bool
	done   chan struct{} // closed by close
	wg     sync.WaitGroup
}

var errNotConnected = errors.New("not connected to the broker")

// get returns the current connection, waiting for one until ctx ends.
func (m *connManager) get(ctx context.Context) (*amqp091.Connection, uint64, error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, 0, errClosed
		}
		if m.conn != nil {
			c, g := m.conn, m.gen
			m.mu.Unlock()
			return c, g, nil
		}
		ready := m.ready
		m.mu.Unlock()
		select {
		case <-ready:
		case <-m.done:
			return nil, 0, errClosed
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("%w (%s) while waiting: %w", errNotConnected, m.redacted, ctx.Err())
		}
	}
}

// connected reports whether a connection is up; tests poll it.
func (m *connManager) connected() (bool, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conn != nil, m.gen
}

// lost marks conn as gone, unless a newer one replaced it already.
func (m *connManager) lost(conn *amqp091.Connection) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn == conn && !m.closed {
		m.conn, m.raw = nil, nil
		m.ready = make(chan struct{})
	}
}

// connect dials until it succeeds, ctx ends or the credentials are
// refused, then watches the connection and reconnects when it drops.
func (m *connManager) connect(ctx context.Context) error {
	conn, raw, err := m.dialRetry(ctx)
	if err != nil {
		return err
	}
	m.install(conn, raw)
	return nil
}

// install makes conn the current connection and watches it, unless the
// manager closed meanwhile: then it returns false.
func (m *connManager) install(conn *amqp091.Connection, raw net.Conn) bool {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return false
	}
	m.conn, m.raw = conn, raw
	m.gen++
	close(m.ready)
	m.state.Up()
	closes := conn.NotifyClose(make(chan *amqp091.Error, 1))
	m.wg.Add(1)
	m.mu.Unlock()
	go m.watch(conn, raw, closes)
	return true
}

func (m *connManager) watch(conn *amqp091.Connection, raw net.Conn, closes chan *amqp091.Error) {
	defer m.wg.Done()
	var reason *amqp091.Error
	select {
	case reason = <-closes:
	case <-m.done:
		return
	}
	// amqp091-go's shutdown of a connection waits for the channels'
	// locks, which a publisher writing to a frozen broker's full socket
	// holds for ever: closing the socket releases them.
	_ = raw.Close()
	m.lost(conn)
	select {
	case <-m.done:
		return
	default:
	}
	m.state.Down(errors.New("connection lost: " + errText(reason)))
	m.log.Warn("amqp transport: connection to the broker lost; reconnecting", logkeys.Error, errText(reason))
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-m.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	next, nextRaw, err := m.dialRetry(ctx)
	cancel()
	if err != nil {
		return // closed while reconnecting
	}
	if !m.install(next, nextRaw) {
		_ = nextRaw.Close() // closed while reconnecting
		return
	}
	m.log.Info("amqp transport: reconnected to the broker")
}

func errText(e *amqp091.Error) string {
	if e == nil {
		return "connection closed"
	}
	return e.Error()
}

// dialRetry dials with exponential backoff (100ms doubling to 5s, with
// jitter) until it succeeds or ctx ends.
func (m *connManager) dialRetry(ctx context.Context) (*amqp091.Connection, net.Conn, error) {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		conn, raw, err := m.dial(ctx)
		if err == nil {
			return conn, raw, nil
		}
		if refused(err) {
			m.state.Down(err)
			return nil, nil, fmt.Errorf("amqp transport: the broker at %s refused the connection: %w", m.redacted, err)
		}
		m.state.Down(err)
		wait := delay/2 + rand.N(delay/2+1)
		m.log.Warn("amqp transport: cannot connect to the broker; retrying", logkeys.Attempt, attempt, logkeys.Delay, wait, logkeys.Error, err)
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("amqp transport: cannot connect to %s after %d attempt(s) (%w); last error: %w", m.redacted, attempt, ctx.Err(), err)
		case <-time.After(wait):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// refused reports errors that retrying cannot fix: bad credentials, a
// missing vhost or a server certificate that does not verify.
func refused(err error) bool {
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) {
		return true
	}
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		return ae.Code == amqp091.AccessRefused || ae.Code == amqp091.NotAllowed
	}
	return errors.Is(err, amqp091.ErrSASL) || errors.Is(err, amqp091.ErrCredentials)
}

// errHandshakeTimeout is the cause of an attempt that hit handshakeTimeout.
var errHandshakeTimeout = fmt.Errorf("no answer from the broker within %v", handshakeTimeout)

// dial opens one connection and declares the exchange on it, within ctx
// and handshakeTimeout. amqp091-go's handshake takes no ctx: the socket
// gets the deadline, and is closed when ctx ends, which abandons a
// handshake in progress at once.
func (m *connManager) dial(ctx context.Context) (*amqp091.Connection, net.Conn, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, handshakeTimeout, errHandshakeTimeout)
	defer cancel()
	cfg := m.cfg
	if cfg.TLSClientConfig != nil {
		cfg.TLSClientConfig = cfg.TLSClientConfig.Clone()
	}
	var raw net.Conn
	disarm := func() bool { return true }
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// amqp091-go clears the deadline once the AMQP handshake is done.
		deadline, _ := ctx.Deadline()
		_ = c.SetDeadline(deadline)
		raw = c
		disarm = context.AfterFunc(ctx, func() { _ = c.Close() })
		return c, nil
	}
	conn, err := amqp091.DialConfig(m.url, cfg)
	if err == nil {
		// Still under the ctx's watch: a broker that froze after the
		// handshake does not hold the attempt.
		var ch *amqp091.Channel
		if ch, err = conn.Channel(); err == nil {
			if err = declareExchange(ch, m.exchange); err == nil {
				err = ch.Close()
			}
		}
	}
	if !disarm() && err == nil {
		err = errors.New("connection closed") // ctx ended just as it succeeded
	}
	if err != nil {
		if raw != nil {
			// Also ends amqp091-go's reader and heartbeater when the
			// handshake failed without closing the socket.
			_ = raw.Close()
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("connecting to %s: %w (%w)", m.redacted, context.Cause(ctx), err)
		}
		return nil, nil, err
	}
	return conn, raw, nil
}

// close closes the connection and stops reconnecting. It waits at most
// closeTimeout for the broker's answer, then closes the socket, so that a
// frozen broker cannot hold it.
func (m *connManager) close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	m.state.Down(nil)
	conn, raw := m.conn, m.raw
	m.conn, m.raw = nil, nil
	m.mu.Unlock()
	var err error
	if conn != nil {
		// CloseDeadline puts the deadline on the socket, which also ends a
		// write blocked on a frozen broker.
		cerr := conn.CloseDeadline(time.Now().Add(closeTimeout))
		_ = raw.Close()
		if cerr != nil && !errors.Is(cerr, amqp091.ErrClosed) {
			err = fmt.Errorf("amqp transport: the broker at %s did not confirm the close within %v (%w); the socket was closed, so the broker requeues the unacknowledged messages when it notices", m.redacted, closeTimeout, cerr)
		}
	}
	m.wg.Wait()
	return err
}
