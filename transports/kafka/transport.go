package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/blocking"
	"github.com/paissive/go-eventbus/internal/logkeys"
)

// errClosed is returned by operations on a closed transport; it wraps the
// one ErrClosed of every transport (driver.ErrClosed).
var errClosed = fmt.Errorf("kafka transport: %w", driver.ErrClosed)

func init() {
	driver.Register("kafka", driver.OpenFunc(Open))
}

// Transport is the Kafka transport; see the package documentation. It
// implements driver.Transport and is safe for concurrent use.
type Transport struct {
	opts    options
	names   names
	service string
	log     *slog.Logger
	sarama  *sarama.Config // base configuration of every client
	client  sarama.Client  // shared by the admin and the poison queue reader
	admin   sarama.ClusterAdmin
	repl    int16
	pub     *Publisher
	poison  *poisonQueue

	msgCtx  context.Context // parent of delivered messages' contexts
	msgStop context.CancelFunc
	// life ends when Close starts; background work (topic creation,
	// consumers) stops with it.
	life     context.Context
	lifeStop context.CancelFunc
	bg       sync.WaitGroup // background goroutines Close waits for (bounded)
	after    sync.WaitGroup // goroutines that may outlive Close (producers, closing work); tests wait for them

	topicsMu sync.Mutex
	topics   sync.Map            // topic name -> true once it is known to exist
	creating map[string]*topicOp // topics being created, by name

	closeMu sync.Mutex
	closed  bool
	subs    map[*subscriber]struct{}

	state *driver.ConnectivityState // for Connectivity
}

var _ driver.Transport = (*Transport)(nil)

// CloseTimeout bounds Transport.Close: it waits this long at most for the
// producers to flush, the consumers to leave their groups and the
// connections to close, then returns and lets the rest finish in the
// background (within Sarama's network timeouts, Net.ReadTimeout 30s at
// most). Publish calls still waiting for acknowledgements then fail with
// eventbus.ErrClosed; their records may still be written.
const CloseTimeout = 5 * time.Second

// Open connects to the cluster cfg.URL names (kafka://host:port[,...]). It
// retries the first connection with backoff until ctx ends, so a service
// that starts before its brokers waits for them, and returns by ctx's
// deadline even when a broker accepts connections and never answers. It
// is the driver registered for "kafka".
func Open(ctx context.Context, cfg driver.Config) (driver.Transport, error) {
	return open(ctx, cfg)
}

func open(ctx context.Context, cfg driver.Config) (*Transport, error) {
	if cfg.URL == nil {
		return nil, errors.New("kafka transport: no URL")
	}
	o, err := parseOptions(cfg.URL)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(logkeys.Transport, "kafka", logkeys.URL, driver.RedactURL(cfg.URL.String()))
	pw, _ := cfg.URL.User.Password()
	t := &Transport{
		state:    driver.NewConnectivityState(pw),
		opts:     o,
		names:    names{prefix: o.prefix, mapping: o.mapping},
		service:  cfg.ServiceName,
		log:      log,
		sarama:   o.saramaConfig(cfg.TLS),
		creating: map[string]*topicOp{},
		subs:     map[*subscriber]struct{}{},
	}
	t.msgCtx, t.msgStop = context.WithCancel(context.Background())
	t.life, t.lifeStop = context.WithCancel(context.Background())
	fail := func(err error) (*Transport, error) {
		t.release()
		return nil, err
	}
	t.client, err = retry(ctx, log, "connect to the cluster", func() (sarama.Client, error) {
		return sarama.NewClient(o.brokers, t.sarama)
	}, closeClient)
	if err != nil {
		return fail(fmt.Errorf("kafka transport: cannot connect to %v: %w", o.brokers, err))
	}
	t.state.Up()
	t.admin, err = retry(ctx, log, "reach the controller", func() (sarama.ClusterAdmin, error) {
		return sarama.NewClusterAdminFromClient(t.client)
	}, nil)
	if err != nil {
		return fail(fmt.Errorf("kafka transport: admin client: %w", err))
	}
	t.repl = o.replication
	if t.repl == 0 {
		t.repl = int16(min(3, len(t.client.Brokers())))
		if t.repl < 1 {
			t.repl = 1
		}
	}
	t.pub, err = newPublisher(ctx, t)
	if err != nil {
		return fail(err)
	}
	t.poison = &poisonQueue{t: t, topic: t.names.poisonTopic(cfg.ServiceName)}
	t.background(t.watch)
	return t, nil
}

// System is the transport's "messaging.system" in the bus's telemetry:
// the OpenTelemetry semantic conventions' name for Kafka.
const System = "kafka"

// Describe states the messaging system, "kafka", and the broker's address
// when the URL names only one.
func (t *Transport) Describe() driver.Description {
	d := driver.Description{System: System}
	if len(t.opts.brokers) == 1 {
		if host, port, err := net.SplitHostPort(t.opts.brokers[0]); err == nil {
			d.ServerAddress = host
			d.ServerPort, _ = strconv.Atoi(port)
		}
	}
	return d
}

// Connectivity reports whether the transport reaches the cluster, as its
// producers, consumers and a metadata request every healthInterval last
// found; it does not talk to the cluster.
func (t *Transport) Connectivity() driver.Connectivity { return t.state.Get() }

// healthInterval is how often the transport asks the cluster for its
// metadata to know whether it is reachable, so that a service that
// neither produces nor consumes at the moment still knows; each request
// is bounded by healthTimeout.
const (
	healthInterval = 5 * time.Second
	healthTimeout  = 5 * time.Second
)

// watch asks the cluster for metadata every healthInterval until Close and
// reports the outcome to t.state. A request still waiting for a frozen
// broker is not repeated: the state says unreachable until it returns.
func (t *Transport) watch() {
	tk := time.NewTicker(healthInterval)
	defer tk.Stop()
	for {
		select {
		case <-t.life.Done():
			return
		case <-tk.C:
		}
		done := make(chan error, 1)
		t.after.Add(1)
		go func() {
			defer t.after.Done()
			done <- t.probe()
		}()
		tm := time.NewTimer(healthTimeout)
		select {
		case err := <-done:
			t.report(err)
		case <-tm.C:
			t.state.Down(fmt.Errorf("no answer from the cluster to a metadata request within %v", healthTimeout))
			select {
			case err := <-done:
				t.report(err)
			case <-t.life.Done():
			}
		case <-t.life.Done():
		}
		tm.Stop()
	}
}

// probe sends one metadata request, for no topic, to the broker the
// client talks to least. Unlike the client's RefreshMetadata it does not
// retry (a retrying refresh against a cluster that is gone outlives Close
// by seconds), and closing the client closes the broker's connection,
// which ends a request a frozen broker never answers.
func (t *Transport) probe() error {
	b := t.client.LeastLoadedBroker()
	if b == nil {
		return sarama.ErrOutOfBrokers
	}
	if ok, _ := b.Connected(); !ok {
		if err := b.Open(t.client.Config()); err != nil && !errors.Is(err, sarama.ErrAlreadyConnected) {
			return err
		}
	}
	_, err := b.GetMetadata(&sarama.MetadataRequest{Version: 1, Topics: []string{}})
	return err
}

// report records the outcome of a request to the cluster: nil and errors
// the cluster answered with mean it is reachable.
func (t *Transport) report(err error) {
	if errors.Is(err, sarama.ErrClosedClient) || errors.Is(err, sarama.ErrShuttingDown) {
		return // closing: says nothing about the cluster
	}
	if err == nil || !cutOff(err) {
		t.state.Up()
		return
	}
	t.state.Down(err)
}

// cutOff reports errors that mean the cluster could not be reached
// (rather than that it answered with an error).
func cutOff(err error) bool {
	if errors.Is(err, sarama.ErrClosedClient) || errors.Is(err, sarama.ErrShuttingDown) {
		return false
	}
	var kerr sarama.KError
	if errors.As(err, &kerr) {
		return kerr == sarama.ErrBrokerNotAvailable || kerr == sarama.ErrNetworkException || kerr == sarama.ErrRequestTimedOut
	}
	return transient(err)
}

// release closes what a failed open had opened, in the background: a
// client's Close waits for a request in flight to a frozen broker.
func (t *Transport) release() {
	t.msgStop()
	t.lifeStop()
	if t.client != nil {
		go closeClient(t.client)
	}
}

func closeClient(c sarama.Client) {
	if err := c.Close(); err != nil && !errors.Is(err, sarama.ErrClosedClient) {
		sarama.Logger.Println("go-eventbus kafka transport: closing a client:", err)
	}
}

// stopRetrying marks an error that retry must return at once.
type stopRetrying struct{ err error }

func (e stopRetrying) Error() string { return e.err.Error() }
func (e stopRetrying) Unwrap() error { return e.err }

// retry calls f, bounded by ctx (see bounded), with backoff (100ms
// doubling to 5s, with jitter) until it succeeds or ctx ends, logging each
// failure. Errors retrying cannot fix (refused credentials, permissions,
// certificates, stopRetrying) end it at once. When ctx ends, the error
// says how many attempts were made and what the last failure was, or that
// the attempt in progress had no answer yet (a frozen broker).
func retry[T any](ctx context.Context, log *slog.Logger, what string, f func() (T, error), release func(T)) (T, error) {
	delay := 100 * time.Millisecond
	var last error
	for attempt := 1; ; attempt++ {
		v, err := blocking.Call(ctx, f, release)
		if err == nil {
			return v, nil
		}
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			if last == nil {
				return v, fmt.Errorf("no answer from the cluster before the deadline (%w)", ctx.Err())
			}
			return v, fmt.Errorf("after %d attempt(s), the last without an answer before the deadline (%w); the previous one failed: %w", attempt, ctx.Err(), last)
		}
		var stop stopRetrying
		if refused(err) || errors.As(err, &stop) {
			return v, err
		}
		last = err
		wait := delay/2 + rand.N(delay/2+1)
		log.Warn("kafka transport: cannot "+what+"; retrying", logkeys.Attempt, attempt, logkeys.Delay, wait, logkeys.Error, err)
		tm := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tm.Stop()
			return v, fmt.Errorf("after %d attempt(s) (%w): %w", attempt, ctx.Err(), err)
		case <-tm.C:
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// refused reports errors that retrying cannot fix: refused credentials
// or permissions, or a certificate that does not verify.
func refused(err error) bool {
	var cve *tls.CertificateVerificationError
	return errors.As(err, &cve) ||
		errors.Is(err, sarama.ErrSASLAuthenticationFailed) ||
		errors.Is(err, sarama.ErrClusterAuthorizationFailed) ||
		errors.Is(err, sarama.ErrTopicAuthorizationFailed) ||
		errors.Is(err, sarama.ErrGroupAuthorizationFailed)
}

// transient reports whether another attempt may succeed where err failed:
// network errors and the Kafka errors of brokers that are unreachable,
// restarting, electing leaders or not yet aware of a new topic. Other Kafka
// errors (too large, invalid, unauthorised, unsupported) and Sarama's
// configuration and encoding errors are permanent.
func transient(err error) bool {
	var kerr sarama.KError
	if errors.As(err, &kerr) {
		switch kerr {
		case sarama.ErrUnknown, // UNKNOWN_SERVER_ERROR: Kafka clients retry it
			sarama.ErrInvalidMessage, // CORRUPT_MESSAGE: retriable in the protocol (a damaged request)
			sarama.ErrUnknownTopicOrPartition,
			sarama.ErrLeaderNotAvailable,
			sarama.ErrNotLeaderForPartition,
			sarama.ErrRequestTimedOut,
			sarama.ErrBrokerNotAvailable,
			sarama.ErrReplicaNotAvailable,
			sarama.ErrNetworkException,
			sarama.ErrOffsetsLoadInProgress,
			sarama.ErrConsumerCoordinatorNotAvailable,
			sarama.ErrNotCoordinatorForConsumer,
			sarama.ErrNotEnoughReplicas,
			sarama.ErrNotEnoughReplicasAfterAppend,
			sarama.ErrNotController,
			sarama.ErrKafkaStorageError,
			// Sarama's idempotent producer starts a new epoch after a
			// failed batch; the next attempt is numbered afresh.
			sarama.ErrOutOfOrderSequenceNumber,
			sarama.ErrInvalidProducerEpoch,
			sarama.ErrUnknownProducerID,
			sarama.ErrFencedLeaderEpoch,
			sarama.ErrUnknownLeaderEpoch,
			sarama.ErrOffsetNotAvailable,
			sarama.ErrPreferredLeaderNotAvailable,
			sarama.ErrEligibleLeadersNotAvailable,
			sarama.ErrThrottlingQuotaExceeded:
			return true
		}
		return false
	}
	var cfgErr sarama.ConfigurationError
	var encErr sarama.PacketEncodingError
	if errors.As(err, &cfgErr) || errors.As(err, &encErr) || refused(err) {
		return false
	}
	// Network errors, EOF, ErrOutOfBrokers, ErrNotConnected, a circuit
	// breaker that is open, a metadata refresh that found no leader yet.
	return true
}

// Publisher returns the transport's publisher; see [Publisher].
func (t *Transport) Publisher() message.Publisher { return t.pub }

// PoisonQueue returns the service's poison queue, the compacted topic
// "<prefix>.poison.<service>".
func (t *Transport) PoisonQueue() (driver.PoisonQueue, error) { return t.poison, nil }

// Redeliver publishes msgs to the replay topic of one subscription group,
// "<prefix>.replay.<group>", which only that group's subscribers read, with
// the same guarantees as Publish.
func (t *Transport) Redeliver(ctx context.Context, group string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if m.Context() == context.Background() {
			m.SetContext(ctx)
		}
	}
	topic := t.names.replayTopic(group)
	if err := t.ensureTopic(ctx, topic, 1, false); err != nil {
		return err
	}
	return t.pub.send(topic, msgs, nil, false)
}

// Close cancels the contexts of messages still being handled, stops the
// subscribers without committing the offsets of unacknowledged messages
// (so they are delivered again), flushes the producers and closes the
// connections. It returns within CloseTimeout (plus a few milliseconds)
// even when the broker is unreachable or frozen; what is left then
// finishes in the background, and records not acknowledged by then are
// reported failed to the Publish calls waiting for them. Its error says
// what it gave up on.
func (t *Transport) Close() error {
	t.closeMu.Lock()
	if t.closed {
		t.closeMu.Unlock()
		return nil
	}
	t.closed = true
	t.state.Down(nil)
	subs := make([]*subscriber, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.closeMu.Unlock()
	deadline := time.Now().Add(CloseTimeout)
	t.msgStop()
	t.lifeStop()

	// Consumers and producers stop in parallel, each as far as the
	// deadline allows; what they leave continues in goroutines tracked
	// by t.after.
	var subsDone, pubDone atomic.Bool
	var pubErr error
	parts := t.afterClose(func() {
		for _, s := range subs {
			_ = s.Close()
		}
		subsDone.Store(true)
	}, func() {
		pubErr = t.pub.close(deadline)
		pubDone.Store(true)
	})
	var errs []error
	// The producers give up at the deadline themselves; a little grace
	// lets their report arrive.
	waitUntil(parts, deadline.Add(50*time.Millisecond))
	if !subsDone.Load() {
		t.log.Warn("kafka transport: consumers had not left their groups when Close gave up waiting; they finish in the background", logkeys.Waited, CloseTimeout)
	}
	if !pubDone.Load() {
		errs = append(errs, fmt.Errorf("kafka transport: the producers had not stopped after %v (broker unreachable or frozen); they finish in the background", CloseTimeout))
	} else if pubErr != nil {
		errs = append(errs, pubErr)
	}
	if !waitUntil(&t.bg, deadline) {
		t.log.Warn("kafka transport: background work (topic creation, consumers) had not stopped when Close gave up waiting; it finishes in the background", logkeys.Waited, CloseTimeout)
	}
	// The admin closes the shared client; a client's Close waits for a
	// metadata refresh in flight, which a frozen broker makes long.
	var adminErr error
	closed := t.afterClose(func() { adminErr = t.admin.Close() })
	if soon := time.Now().Add(50 * time.Millisecond); soon.After(deadline) {
		deadline = soon
	}
	if waitUntil(closed, deadline) {
		if adminErr != nil && !errors.Is(adminErr, sarama.ErrClosedClient) {
			errs = append(errs, adminErr)
		}
	} else {
		t.log.Warn("kafka transport: the admin client had not closed when Close gave up waiting; it closes in the background", logkeys.Waited, CloseTimeout)
	}
	return errors.Join(errs...)
}

// afterClose runs each f in a goroutine tracked by t.after (the work Close
// may leave behind) and returns a WaitGroup for them alone.
func (t *Transport) afterClose(fs ...func()) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, f := range fs {
		wg.Add(1)
		t.after.Add(1)
		go func() {
			defer t.after.Done()
			defer wg.Done()
			f()
		}()
	}
	return &wg
}

// waitUntil waits for wg until deadline; false means it gave up.
func waitUntil(wg *sync.WaitGroup, deadline time.Time) bool {
	if deadline.Before(time.Now()) {
		deadline = time.Now()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	tm := time.NewTimer(time.Until(deadline))
	defer tm.Stop()
	select {
	case <-done:
		return true
	case <-tm.C:
		return false
	}
}

// background runs f in a goroutine that Close waits for (within
// CloseTimeout); false means the transport is closed and f did not run.
func (t *Transport) background(f func()) bool {
	t.closeMu.Lock()
	defer t.closeMu.Unlock()
	if t.closed {
		return false
	}
	t.bg.Add(1)
	go func() {
		defer t.bg.Done()
		f()
	}()
	return true
}

// Client calls bounded by ctx, for the poison queue and anything else
// that reads or trims topics: each returns by ctx's deadline whatever the
// broker does (see bounded).

// getOffset returns the offset of partition at a time (sarama.OffsetOldest
// or sarama.OffsetNewest for the log's start and end), as
// sarama.Client.GetOffset, bounded by ctx.
func (t *Transport) getOffset(ctx context.Context, topic string, partition int32, at int64) (int64, error) {
	return blocking.Call(ctx, func() (int64, error) { return t.client.GetOffset(topic, partition, at) }, nil)
}

// consumePartition starts reading partition from offset with a consumer on
// the shared client, bounded by ctx. The returned release stops the
// consumer without waiting (a fetch in flight to a frozen broker ends
// within Sarama's read timeout), so call it when done, also on an error
// path; the partition consumer's Messages and Errors need not be drained.
func (t *Transport) consumePartition(ctx context.Context, topic string, partition int32, offset int64) (sarama.PartitionConsumer, func(), error) {
	type reader struct {
		c  sarama.Consumer
		pc sarama.PartitionConsumer
	}
	stop := func(r reader) {
		r.pc.AsyncClose()
		// Sarama closes both channels once the partition consumer has
		// stopped; draining them keeps it from blocking on a full one.
		go func() {
			for range r.pc.Errors() {
			}
		}()
		go func() {
			for range r.pc.Messages() {
			}
			_ = r.c.Close() // does not close the shared client
		}()
	}
	r, err := blocking.Call(ctx, func() (reader, error) {
		c, err := sarama.NewConsumerFromClient(t.client)
		if err != nil {
			return reader{}, err
		}
		pc, err := c.ConsumePartition(topic, partition, offset)
		if err != nil {
			_ = c.Close()
			return reader{}, err
		}
		return reader{c, pc}, nil
	}, stop)
	if err != nil {
		return nil, func() {}, err
	}
	return r.pc, sync.OnceFunc(func() { stop(r) }), nil
}

// deleteRecords deletes the records of topic below the given offset of
// each partition, as sarama.ClusterAdmin.DeleteRecords, bounded by ctx.
func (t *Transport) deleteRecords(ctx context.Context, topic string, below map[int32]int64) error {
	return blocking.Do(ctx, func() error { return t.admin.DeleteRecords(topic, below) })
}
