package nats

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// publisher publishes events to the event stream; the transport's
// Publisher. See the package documentation, "Publishing".
type publisher struct{ t *Transport }

var _ driver.BatchPublisher = (*publisher)(nil)

// Publish publishes msgs on the subject of the event name topic
// ("<stream>.<topic>") and returns once the stream acknowledged every one.
// Messages it could not store are listed in a *driver.PublishError.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	if p.t.isClosed() {
		return errClosed
	}
	if err := checkTopic(topic); err != nil {
		return err
	}
	subject := p.t.eventSubject(topic)
	return p.t.publish(context.Background(), func(int, *message.Message) (string, error) { return subject, nil }, "", msgs)
}

// PublishBatch publishes msgs[i] on the subject of the event name
// topics[i], all in flight at once, as Publish does for one name; the
// stream stores them in the order given.
func (p *publisher) PublishBatch(topics []string, msgs []*message.Message) error {
	if p.t.isClosed() {
		return errClosed
	}
	if len(topics) != len(msgs) {
		return fmt.Errorf("nats transport: PublishBatch with %d topics for %d messages", len(topics), len(msgs))
	}
	for _, topic := range topics {
		if err := checkTopic(topic); err != nil {
			return err
		}
	}
	return p.t.publish(context.Background(), func(i int, _ *message.Message) (string, error) { return p.t.eventSubject(topics[i]), nil }, "", msgs)
}

// Close does nothing: the transport's Close ends publishing.
func (p *publisher) Close() error { return nil }

// checkTopic rejects a topic that is not a valid NATS subject (the bus only
// publishes valid event names; a raw publisher may pass anything).
func checkTopic(topic string) error {
	if topic == "" {
		return errors.New("nats transport: empty topic; publish under an event name such as \"user.registered\"")
	}
	for _, tok := range strings.Split(topic, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			return fmt.Errorf("nats transport: topic %q is not a subject a message can be published on (empty token, wildcard or white space); publish under an event name such as \"user.registered\"", topic)
		}
	}
	return nil
}

// Redeliver publishes msgs to the event stream on their original subjects
// (the Nats-Subject header a delivered message carries, else the event
// name) with the header Eventbus-Group, so that only that group's
// consumer handles them and every other group's skips them. A group whose
// consumer does not exist makes the messages fail with ErrUnroutable. It
// has the guarantees of Publish and returns by ctx's deadline, whatever
// the messages' own contexts.
func (t *Transport) Redeliver(ctx context.Context, group string, msgs ...*message.Message) error {
	if t.isClosed() {
		return errClosed
	}
	service, sub, ok := strings.Cut(group, ".")
	if !ok {
		return fmt.Errorf("nats transport: group %q is not <service>.<subscription>", group)
	}
	events, _ := t.streams()
	if _, err := events.Consumer(ctx, consumerName(service, sub)); err != nil {
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			failed := make([]driver.Failure, len(msgs))
			for i, m := range msgs {
				failed[i] = driver.Failure{UUID: m.UUID, Err: fmt.Errorf("nats transport: subscription group %s has no consumer on stream %s: %w", group, t.opts.stream, driver.ErrUnroutable)}
			}
			return &driver.PublishError{Failed: failed}
		}
		return t.apiError(ctx, "looking up the consumer of group "+group, err)
	}
	prefix := t.opts.stream + "."
	target := func(_ int, m *message.Message) (string, error) {
		if s := m.Metadata.Get(metadataSubject); strings.HasPrefix(s, prefix) && checkTopic(s[len(prefix):]) == nil {
			return s, nil
		}
		if name := m.Metadata.Get(driver.HeaderType); name != "" && checkTopic(name) == nil {
			return t.eventSubject(name), nil
		}
		return "", fmt.Errorf("nats transport: message %s names neither its subject (%s) nor an event name (%s), so it cannot be replayed", m.UUID, metadataSubject, driver.HeaderType)
	}
	return t.publish(ctx, target, group, msgs)
}

// attempt is one message on its way to a stream, through retries, until
// the stream acknowledged it or its context ended.
type attempt struct {
	ctx  context.Context
	m    *nats.Msg
	fut  jetstream.PubAckFuture
	err  error // the last error; final once done
	ack  *jetstream.PubAck
	sent int
}

// job is one message of a Publish call.
type job struct {
	msg    *message.Message
	head   attempt
	chunks []*attempt // nil unless the body travels in chunks
	err    error      // a failure before sending (too large, no subject)
}

// publish publishes msgs to the event stream on the subjects target
// gives (for msgs[i], target(i, msgs[i])), with the header Eventbus-Group when group is set, and returns
// once each is acknowledged or failed. A message's context bounds its
// waits; ctx is used for messages without one.
func (t *Transport) publish(ctx context.Context, target func(i int, m *message.Message) (string, error), group string, msgs []*message.Message) error {
	jobs := make([]job, len(msgs))
	maxPayload := int(t.nc.MaxPayload())
	for i, m := range msgs {
		j := &jobs[i]
		j.msg = m
		j.head.ctx = m.Context()
		if j.head.ctx == context.Background() || j.head.ctx == nil {
			j.head.ctx = ctx
		}
		subject, err := target(i, m)
		if err != nil {
			j.err = err
			continue
		}
		nm := toNATS(subject, m)
		if group != "" {
			nm.Header[headerGroup] = []string{group}
		}
		j.head.m = nm
		j.chunks, j.err = t.split(nm, largeRoot(t.opts.stream), t.opts.maxMessageBytes, maxPayload, "max_message_bytes")
	}
	// Send every message before waiting for any acknowledgement, so that
	// all are in flight at once; a message in chunks waits for its chunks
	// first, so that its head never refers to a chunk the stream lacks.
	for i := range jobs {
		j := &jobs[i]
		if j.err != nil {
			continue
		}
		if j.chunks != nil {
			if err := t.storeChunks(j.head.ctx, j.chunks, &j.head); err != nil {
				j.err = err
				continue
			}
		}
		t.send(&j.head)
	}
	var failed []driver.Failure
	for i := range jobs {
		j := &jobs[i]
		if j.err == nil {
			t.await(&j.head)
			j.err = j.head.err
		}
		if j.err != nil {
			failed = append(failed, driver.Failure{UUID: j.msg.UUID, Err: j.err})
		}
	}
	if failed != nil {
		return &driver.PublishError{Failed: failed}
	}
	return nil
}

// send hands a to the connection; the acknowledgement is awaited by
// await. It never blocks longer than the client's stall wait (200 ms).
// a's Nats-Msg-Id, if any, was set before the first send, so that every
// send of a carries the same.
func (t *Transport) send(a *attempt) {
	a.sent++
	a.fut, a.err = t.js.PublishMsgAsync(a.m)
	if a.err != nil {
		a.fut = nil
	}
}

// await waits for a's acknowledgement, sending a again (with the same
// Nats-Msg-Id) after a failure another attempt may fix, until a's context
// ends or the transport closes. a.err is nil once the stream acknowledged
// it.
func (t *Transport) await(a *attempt) {
	delay := 20 * time.Millisecond
	for {
		if a.fut != nil {
			select {
			case ack := <-a.fut.Ok():
				a.ack, a.err = ack, nil
				return
			case err := <-a.fut.Err():
				a.err, a.fut = err, nil
			case <-a.ctx.Done():
				a.err = t.noAck(a, a.ctx)
				return
			case <-t.done:
				a.err = errClosed
				return
			}
		}
		if t.isClosed() {
			a.err = errClosed
			return
		}
		if !retryable(a.err) {
			a.err = t.pubError(a.err)
			return
		}
		if isNoStream(a.err) {
			t.reensureStreams(a.ctx)
		}
		if a.ctx.Err() != nil {
			a.err = t.noAck(a, a.ctx)
			return
		}
		timer := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-timer.C:
		case <-a.ctx.Done():
			timer.Stop()
			a.err = t.noAck(a, a.ctx)
			return
		case <-t.done:
			timer.Stop()
			a.err = errClosed
			return
		}
		delay = min(2*delay, time.Second)
		t.send(a)
	}
}

// noAck is the error of a message whose context ended before the stream
// acknowledged it.
func (t *Transport) noAck(a *attempt, ctx context.Context) error {
	last := ""
	if a.err != nil {
		last = fmt.Sprintf("; last error: %v", a.err)
	}
	return fmt.Errorf("nats transport: no acknowledgement from stream for subject %s after %d attempt(s) before the context ended (the server may still store it)%s: %w", a.m.Subject, a.sent, last, context.Cause(ctx))
}

// retryable reports whether sending again may succeed: the connection
// dropped or is reconnecting, no acknowledgement came in time, no stream
// answered (a restarting server, a leader election), too many publishes
// are pending, or the stream is temporarily unavailable.
func retryable(err error) bool {
	if err == nil {
		return false
	}
	switch {
	case errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, jetstream.ErrAsyncPublishTimeout), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, jetstream.ErrTooManyStalledMsgs), errors.Is(err, nats.ErrSlowConsumer),
		errors.Is(err, nats.ErrStaleConnection):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 503 || apiErr.Code == 408 || apiErr.Code == 500
	}
	return false
}

func isNoStream(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// pubError describes a publish failure retrying cannot fix.
func (t *Transport) pubError(err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return fmt.Errorf("nats transport: %w: %w", driver.ErrTooLarge, err)
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
		return fmt.Errorf("nats transport: the stream's max_msg_size is smaller than the message: %w: %w", driver.ErrTooLarge, err)
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining):
		return errClosed
	}
	return fmt.Errorf("nats transport: publish failed: %w", err)
}
