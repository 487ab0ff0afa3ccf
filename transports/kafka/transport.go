package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
)

// ErrClosed is returned by operations on a closed transport.
var ErrClosed = errors.New("kafka transport: closed")

func init() {
	eventbus.Register("kafka", eventbus.DriverFunc(Open))
}

// Transport is the Kafka transport; see the package documentation. It
// implements eventbus.Transport and is safe for concurrent use.
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

	topicsMu sync.Mutex // serialises topic creation
	topics   sync.Map   // topic name -> true once it is known to exist

	closeMu sync.Mutex
	closed  bool
	subs    map[*subscriber]struct{}
}

var _ eventbus.Transport = (*Transport)(nil)

// Open connects to the cluster cfg.URL names (kafka://host:port[,...]). It
// retries the first connection with backoff until ctx ends, so a service
// that starts before its brokers waits for them. It is the driver
// registered for "kafka".
func Open(ctx context.Context, cfg eventbus.TransportConfig) (eventbus.Transport, error) {
	return open(ctx, cfg)
}

func open(ctx context.Context, cfg eventbus.TransportConfig) (*Transport, error) {
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
	log = log.With("transport", "kafka", "brokers", o.brokers)
	t := &Transport{
		opts:    o,
		names:   names{prefix: o.prefix, mapping: o.mapping},
		service: cfg.ServiceName,
		log:     log,
		sarama:  o.saramaConfig(cfg.TLS),
		subs:    map[*subscriber]struct{}{},
	}
	t.client, err = retry(ctx, log, "connect", func() (sarama.Client, error) {
		return sarama.NewClient(o.brokers, t.sarama)
	})
	if err != nil {
		return nil, fmt.Errorf("kafka transport: cannot connect to %v: %w", o.brokers, err)
	}
	t.admin, err = sarama.NewClusterAdminFromClient(t.client)
	if err != nil {
		_ = t.client.Close()
		return nil, fmt.Errorf("kafka transport: admin client: %w", err)
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
		_ = t.admin.Close()
		return nil, err
	}
	t.msgCtx, t.msgStop = context.WithCancel(context.Background())
	t.poison = &poisonQueue{t: t, topic: t.names.poisonTopic(cfg.ServiceName)}
	return t, nil
}

// retry calls f with backoff (100ms doubling to 5s, with jitter) until it
// succeeds or ctx ends, logging each failure once.
func retry[T any](ctx context.Context, log *slog.Logger, what string, f func() (T, error)) (T, error) {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		v, err := f()
		if err == nil {
			return v, nil
		}
		if refused(err) {
			return v, err
		}
		log.Debug("kafka transport: cannot "+what+"; retrying", "attempt", attempt, "error", err)
		wait := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("after %d attempt(s) (%w): %w", attempt, ctx.Err(), err)
		case <-time.After(wait):
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

// Publisher returns the transport's publisher; see [Publisher].
func (t *Transport) Publisher() message.Publisher { return t.pub }

// PoisonQueue returns the service's poison queue, the compacted topic
// "<prefix>.poison.<service>".
func (t *Transport) PoisonQueue() (eventbus.PoisonQueue, error) { return t.poison, nil }

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
// (so they are delivered again), flushes the producer and closes the
// connections.
func (t *Transport) Close() error {
	t.closeMu.Lock()
	if t.closed {
		t.closeMu.Unlock()
		return nil
	}
	t.closed = true
	subs := make([]*subscriber, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.closeMu.Unlock()
	t.msgStop()
	for _, s := range subs {
		_ = s.Close()
	}
	errs := []error{t.pub.Close()}
	if err := t.admin.Close(); err != nil && !errors.Is(err, sarama.ErrClosedClient) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// topicTimeout bounds how long ensureTopic waits for a topic to appear.
const topicTimeout = 30 * time.Second

// ensureTopic creates topic with the given partitions (compacted when
// compact is set) unless it exists, and waits until the cluster's metadata
// shows it.
func (t *Transport) ensureTopic(ctx context.Context, topic string, partitions int32, compact bool) error {
	if _, ok := t.topics.Load(topic); ok {
		return nil
	}
	t.topicsMu.Lock()
	defer t.topicsMu.Unlock()
	if _, ok := t.topics.Load(topic); ok {
		return nil
	}
	// Raw publishes carry context.Background(): bound the wait anyway.
	ctx, cancel := context.WithTimeout(ctx, topicTimeout)
	defer cancel()
	err := t.admin.CreateTopic(topic, &sarama.TopicDetail{
		NumPartitions:     partitions,
		ReplicationFactor: t.repl,
		ConfigEntries:     t.opts.topicConfig(t.repl, compact),
	}, false)
	if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		// Without the right to create topics, they may have been created
		// for us: the metadata tells.
		if rerr := t.client.RefreshMetadata(topic); rerr != nil {
			return fmt.Errorf("kafka transport: cannot create topic %s: %w", topic, err)
		}
		t.log.Debug("kafka transport: topic exists; creating it failed", "topic", topic, "error", err)
	}
	// Wait until the metadata lists the topic with leaders, so that the
	// first produce or fetch does not fail.
	_, err = retry(ctx, t.log, "see topic "+topic, func() (struct{}, error) {
		if err := t.client.RefreshMetadata(topic); err != nil {
			return struct{}{}, err
		}
		ps, err := t.client.Partitions(topic)
		if err != nil {
			return struct{}{}, err
		}
		for _, p := range ps {
			if _, err := t.client.Leader(topic, p); err != nil {
				return struct{}{}, err
			}
		}
		return struct{}{}, nil
	})
	if err != nil {
		return fmt.Errorf("kafka transport: topic %s: %w", topic, err)
	}
	t.topics.Store(topic, true)
	return nil
}
