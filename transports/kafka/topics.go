package kafka

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/paissive/go-eventbus/internal/blocking"
	"github.com/paissive/go-eventbus/internal/logkeys"
)

// ErrPatternNotServed is wrapped by the error Subscribe returns for a
// pattern the configured topic mapping cannot serve (a pattern whose first
// segment is a wildcard under mapping=segment).
var ErrPatternNotServed = fmt.Errorf("kafka transport: the topic mapping cannot serve this pattern")

// names derives every topic and group name of one namespace.
type names struct {
	prefix  string
	mapping Mapping
}

func (n names) join(s string) string {
	if n.prefix == "" {
		return s
	}
	return n.prefix + "." + s
}

// EventTopic returns the topic an event name is published to.
func (n names) eventTopic(name string) (string, error) {
	if n.mapping == MappingSingle {
		return n.join("events"), nil
	}
	first, _, _ := strings.Cut(name, ".")
	if !validTopic(first) {
		return "", fmt.Errorf("kafka transport: event name %q has no first segment usable in a topic name", name)
	}
	return n.join("events." + first), nil
}

// patternTopics returns the topics a subscription with pattern p reads.
func (n names) patternTopics(p string) ([]string, error) {
	if n.mapping == MappingSingle {
		return []string{n.join("events")}, nil
	}
	first, _, _ := strings.Cut(p, ".")
	if first == "*" || first == "#" {
		return nil, fmt.Errorf("%w: pattern %q starts with a wildcard, but mapping=segment keeps a topic per first name segment "+
			"and cannot read topics that do not exist yet; start the pattern with a literal segment, or use the default mapping=single", ErrPatternNotServed, p)
	}
	return []string{n.join("events." + first)}, nil
}

// poisonTopic is the service's poison topic.
func (n names) poisonTopic(service string) string { return n.join("poison." + safeName(service)) }

// isPoisonTopic reports whether topic is a poison topic of the namespace
// (event topics are "events" or "events.<segment>", replay topics
// "replay.<group>", so the prefix cannot be mistaken).
func (n names) isPoisonTopic(topic string) bool { return strings.HasPrefix(topic, n.join("poison.")) }

// replayTopic is the topic only one subscription group reads; poison
// replay publishes to it.
func (n names) replayTopic(group string) string { return n.join("replay." + safeName(group)) }

// groupID is the Kafka consumer group of a subscription group.
func (n names) groupID(group string) string { return n.join(group) }

// safeName maps s to a string of legal topic characters. Names that had to
// change (a subscription named after its pattern contains '*' or '#') or
// that are too long get a hash of the original, so distinct names stay
// distinct.
func safeName(s string) string {
	const max = 180
	ok := len(s) <= max
	var b strings.Builder
	for _, r := range s {
		if topicChar(r) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
			ok = false
		}
	}
	if ok {
		return s
	}
	out := b.String()
	if len(out) > max {
		out = out[:max]
	}
	sum := sha256.Sum256([]byte(s))
	return out + "-" + hex.EncodeToString(sum[:5])
}

// topicTimeout bounds one attempt at creating a topic and waiting until
// the cluster's metadata shows it with leaders.
const topicTimeout = 30 * time.Second

// topicSpec is how the transport creates a topic.
type topicSpec struct {
	partitions int32
	compact    bool
	// maxBytes is the topic's max.message.bytes; 0 means the default for
	// the topic's kind (see Transport.maxBytes).
	maxBytes int
}

// maxBytes is the largest record a topic takes: max_message_bytes for
// event and replay topics, poisonMaxBytes for the poison topics, whose
// records are events plus the poison headers.
func (t *Transport) maxBytes(topic string) int {
	if t.names.isPoisonTopic(topic) {
		return t.opts.poisonMaxBytes()
	}
	return t.opts.maxMessageBytes
}

// topicOp is one attempt at making a topic ready, shared by every caller
// waiting for that topic.
type topicOp struct {
	done chan struct{}
	err  error // set before done is closed
}

// ensureTopic makes sure topic exists (creating it with the given
// partitions, compacted when compact is set, and the max.message.bytes of
// its kind, see Transport.maxBytes) and that the cluster's metadata shows
// it with leaders. It returns by ctx's deadline: the creation runs in the
// background, shared by every caller waiting for the same topic, and goes
// on when a caller leaves, so the next caller finds it done. Failures that
// another attempt may fix (broker unreachable or restarting) are retried
// until ctx ends.
func (t *Transport) ensureTopic(ctx context.Context, topic string, partitions int32, compact bool) error {
	return t.ensureTopicSpec(ctx, topic, topicSpec{partitions: partitions, compact: compact})
}

// ensureTopicSpec is ensureTopic with a full specification, for topics
// whose max.message.bytes is not the default of their kind.
func (t *Transport) ensureTopicSpec(ctx context.Context, topic string, spec topicSpec) error {
	if _, ok := t.topics.Load(topic); ok {
		return nil
	}
	if spec.maxBytes == 0 {
		spec.maxBytes = t.maxBytes(topic)
	}
	delay := 100 * time.Millisecond
	var last error
	for {
		op := t.topicOp(topic, spec)
		if op == nil {
			return errClosed
		}
		select {
		case <-op.done:
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("kafka transport: topic %s not ready before the deadline (%w); last failure: %w", topic, ctx.Err(), last)
			}
			return fmt.Errorf("kafka transport: topic %s not ready before the deadline (%w): no answer from the cluster yet; its creation goes on in the background", topic, ctx.Err())
		}
		if op.err == nil {
			return nil
		}
		if !transient(op.err) || errors.Is(op.err, errClosed) {
			return op.err
		}
		last = op.err
		tm := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-tm.C:
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("kafka transport: topic %s not ready before the deadline (%w); last failure: %w", topic, ctx.Err(), last)
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// topicOp returns the creation of topic in progress, or starts one; nil
// means the transport is closed.
func (t *Transport) topicOp(topic string, spec topicSpec) *topicOp {
	t.topicsMu.Lock()
	defer t.topicsMu.Unlock()
	if op := t.creating[topic]; op != nil {
		return op
	}
	op := &topicOp{done: make(chan struct{})}
	if _, ok := t.topics.Load(topic); ok {
		close(op.done)
		return op
	}
	started := t.background(func() {
		ctx, cancel := context.WithTimeout(t.life, topicTimeout)
		err := t.createTopic(ctx, topic, spec)
		cancel()
		if err != nil && t.life.Err() != nil {
			err = errClosed
		}
		t.topicsMu.Lock()
		delete(t.creating, topic)
		if err == nil {
			t.topics.Store(topic, true)
		}
		op.err = err
		close(op.done)
		t.topicsMu.Unlock()
	})
	if !started {
		return nil
	}
	t.creating[topic] = op
	return op
}

// createTopic creates topic unless it exists and waits until the cluster's
// metadata shows it with leaders; each client call is bounded by ctx.
func (t *Transport) createTopic(ctx context.Context, topic string, spec topicSpec) error {
	err := blocking.Do(ctx, func() error {
		return t.admin.CreateTopic(topic, &sarama.TopicDetail{
			NumPartitions:     spec.partitions,
			ReplicationFactor: t.repl,
			ConfigEntries:     t.opts.topicConfig(t.repl, spec.compact, spec.maxBytes),
		}, false)
	})
	existed := errors.Is(err, sarama.ErrTopicAlreadyExists)
	switch {
	case err == nil || existed:
	case ctx.Err() != nil:
		return fmt.Errorf("kafka transport: creating topic %s: %w", topic, err)
	case transient(err):
		return fmt.Errorf("kafka transport: creating topic %s: %w", topic, err)
	default:
		// Without the right to create topics, they may have been created
		// for us: the metadata tells.
		if rerr := blocking.Do(ctx, func() error { return t.client.RefreshMetadata(topic) }); rerr != nil {
			return fmt.Errorf("kafka transport: cannot create topic %s: %w", topic, err)
		}
		if _, perr := t.client.Partitions(topic); perr != nil {
			return fmt.Errorf("kafka transport: cannot create topic %s (create it, or allow this client to): %w", topic, err)
		}
		existed = true
		t.log.Debug("kafka transport: topic exists; creating it failed", logkeys.Topic, topic, logkeys.Error, err)
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
	}, nil)
	if err != nil {
		return fmt.Errorf("kafka transport: topic %s: %w", topic, err)
	}
	if existed && spec.maxBytes > t.opts.maxMessageBytes {
		t.raiseMaxBytes(ctx, topic, spec.maxBytes)
	}
	return nil
}

// raiseMaxBytes raises the max.message.bytes of an existing topic to want
// when it is lower: a poison topic created by an older version, or by
// hand, would refuse the poison record of an event at the limit. Failing
// is not fatal (the poison queue then reports the records it cannot
// store), so it only logs.
func (t *Transport) raiseMaxBytes(ctx context.Context, topic string, want int) {
	entries, err := blocking.Call(ctx, func() ([]sarama.ConfigEntry, error) {
		return describeTopic(t.admin, topic, "max.message.bytes")
	}, nil)
	if err != nil {
		t.log.Warn("kafka transport: cannot read the topic's max.message.bytes", logkeys.Topic, topic, logkeys.Error, err)
		return
	}
	for _, e := range entries {
		if e.Name != "max.message.bytes" {
			continue
		}
		if n, err := strconv.Atoi(e.Value); err == nil && n >= want {
			return
		}
	}
	v := strconv.Itoa(want)
	err = blocking.Do(ctx, func() error {
		if t.opts.version.IsAtLeast(sarama.V2_3_0_0) {
			return t.admin.IncrementalAlterConfig(sarama.TopicResource, topic, map[string]sarama.IncrementalAlterConfigsEntry{
				"max.message.bytes": {Operation: sarama.IncrementalAlterConfigsOperationSet, Value: &v},
			}, false)
		}
		// AlterConfigs (before Kafka 2.3) replaces every setting of the
		// topic: keep the ones set on it.
		all, err := describeTopic(t.admin, topic)
		if err != nil {
			return err
		}
		set := map[string]*string{"max.message.bytes": &v}
		for _, e := range all {
			if e.Source == sarama.SourceTopic && e.Name != "max.message.bytes" && !e.Sensitive {
				set[e.Name] = &e.Value
			}
		}
		return t.admin.AlterConfig(sarama.TopicResource, topic, set, false)
	})
	if err != nil {
		t.log.Warn("kafka transport: cannot raise the topic's max.message.bytes; poison records of events near max_message_bytes may not fit", logkeys.Topic, topic, "want", want, logkeys.Error, err)
		return
	}
	t.log.Info("kafka transport: raised the topic's max.message.bytes", logkeys.Topic, topic, "to", want)
}

// describeTopic returns the named settings of topic (all with no names).
func describeTopic(admin sarama.ClusterAdmin, topic string, names ...string) ([]sarama.ConfigEntry, error) {
	rs, err := admin.DescribeConfigs([]*sarama.ConfigResource{{Type: sarama.TopicResource, Name: topic, ConfigNames: names}}, sarama.DescribeConfigsOptions{})
	if err != nil {
		return nil, err
	}
	var out []sarama.ConfigEntry
	for _, r := range rs {
		if r.Name != topic {
			continue
		}
		if r.ErrorCode != sarama.ErrNoError {
			return nil, &sarama.DescribeConfigError{Err: r.ErrorCode, ErrMsg: r.ErrorMsg}
		}
		out = append(out, r.Configs...)
	}
	return out, nil
}
