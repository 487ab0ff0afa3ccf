package amqp

import (
	"errors"
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// newTestBatch returns a batch of n messages with IDs m0, m1, ...
func newTestBatch(n int) *batch {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(fmt.Sprintf("m%d", i), nil)
	}
	return newBatch(msgs)
}

// TestPubChannelConfirmQueue checks the bookkeeping of messages awaiting
// confirms without a broker: in-order and out-of-order confirms, nacks,
// returns matched to the oldest unreturned message with that ID, stale
// tags, reuse of the queue's space and failing what is left.
func TestPubChannelConfirmQueue(t *testing.T) {
	pc := &pubChannel{}
	b := newTestBatch(8)
	for i := range 6 {
		pc.push(pending{tag: uint64(i + 1), b: b, i: i, id: fmt.Sprintf("m%d", i%3)})
	}
	pc.confirm(amqp091.Confirmation{DeliveryTag: 1, Ack: true})
	pc.confirm(amqp091.Confirmation{DeliveryTag: 3, Ack: false}) // out of order
	pc.markReturned(amqp091.Return{MessageId: "m1", ReplyCode: 312, ReplyText: "NO_ROUTE"})
	pc.confirm(amqp091.Confirmation{DeliveryTag: 2, Ack: true})
	pc.confirm(amqp091.Confirmation{DeliveryTag: 2, Ack: true}) // stale: ignored
	pc.confirm(amqp091.Confirmation{DeliveryTag: 4, Ack: true})
	if got := len(pc.queue) - pc.head; got != 2 {
		t.Fatalf("%d messages pending, want 2", got)
	}
	// Space of confirmed messages is reused.
	pc.push(pending{tag: 7, b: b, i: 6, id: "m6"})
	pc.confirm(amqp091.Confirmation{DeliveryTag: 5, Ack: true})
	pc.fail(errors.New("channel closed"))
	if len(pc.queue) != 0 || pc.dead == nil {
		t.Fatalf("after fail: %d queued, dead=%v", len(pc.queue), pc.dead)
	}
	pc.push(pending{tag: 8, b: b, i: 7, id: "m7"})
	pc.confirm(amqp091.Confirmation{DeliveryTag: 8, Ack: true})
	select {
	case <-b.done:
	default:
		t.Fatalf("batch not done: %d remaining", b.remaining)
	}
	want := []string{"", "unroutable", "nacked", "", "", "closed", "closed", ""}
	for i, w := range want {
		err := b.state[i].err
		switch {
		case w == "" && err != nil:
			t.Errorf("message %d: %v, want success", i, err)
		case w == "unroutable" && !errors.Is(err, driver.ErrUnroutable):
			t.Errorf("message %d: %v, want ErrUnroutable", i, err)
		case w == "nacked" && (err == nil || errors.Is(err, driver.ErrUnroutable)):
			t.Errorf("message %d: %v, want a nack", i, err)
		case w == "closed" && (err == nil || err.Error() != "channel closed"):
			t.Errorf("message %d: %v, want the channel's failure", i, err)
		}
	}
	var pe *driver.PublishError
	if err := b.err(); !errors.As(err, &pe) || len(pe.Failed) != 4 || pe.Failed[0].UUID != "m1" {
		t.Errorf("batch error %v, want a PublishError naming m1, m2, m5, m6", err)
	}
}

// TestFillPublishingReusesHeaders checks that converting message after
// message into one publishing leaves exactly each message's headers and
// properties.
func TestFillPublishingReusesHeaders(t *testing.T) {
	var pub amqp091.Publishing
	a := message.NewMessage("id-a", []byte(`1`))
	a.Metadata = message.Metadata{"ce_type": "x.y", "ce_correlationid": "c-a", "content-type": "application/json", "ce_time": "2026-01-02T03:04:05.123456789Z", "meta_k": "v"}
	b := message.NewMessage("id-b", []byte(`2`))
	b.Metadata = message.Metadata{"ce_type": "x.y", "ce_time": "bad", "other": "o"}
	mustFill(t, &pub, a)
	mustFill(t, &pub, b)
	if len(pub.Headers) != 3 || pub.Headers["ce_type"] != "x.y" || pub.Headers["ce_time"] != "bad" || pub.Headers["other"] != "o" {
		t.Errorf("headers %v, want b's metadata", pub.Headers)
	}
	if pub.MessageId != "id-b" || pub.CorrelationId != "" || pub.ContentType != "" || string(pub.Body) != "2" || pub.DeliveryMode != amqp091.Persistent || pub.Timestamp.IsZero() {
		t.Errorf("properties %+v, want b's", pub)
	}
	mustFill(t, &pub, a)
	if len(pub.Headers) != 5 || pub.Headers["meta_k"] != "v" || pub.CorrelationId != "c-a" || pub.ContentType != "application/json" || pub.Timestamp.Unix() != 1767323045 {
		t.Errorf("publishing %+v, want a's", pub)
	}
}

func mustFill(t *testing.T, pub *amqp091.Publishing, m *message.Message) {
	t.Helper()
	if err := fillPublishing(pub, m, 131072, DefaultMaxMessageSize); err != nil {
		t.Fatalf("fillPublishing(%s): %v", m.UUID, err)
	}
}

// TestFailSparesMessageBeingWritten: when a channel dies, the messages
// awaiting confirms fail, except the one being written, whose writer
// decides: amqp091-go writes nothing on a closed channel, so the writer
// sends it again on another channel rather than failing it.
func TestFailSparesMessageBeingWritten(t *testing.T) {
	pc := &pubChannel{}
	b := newTestBatch(3)
	pc.push(pending{tag: 1, b: b, i: 0, id: "m0"})
	pc.push(pending{tag: 2, b: b, i: 1, id: "m1"})
	pc.push(pending{tag: 3, b: b, i: 2, id: "m2", writing: true})
	pc.fail(errors.New("channel closed"))
	if b.state[0].err == nil || b.state[1].err == nil {
		t.Errorf("written messages not failed: %v, %v", b.state[0].err, b.state[1].err)
	}
	if b.state[2].resolved {
		t.Errorf("the message being written was failed: %v", b.state[2].err)
	}
	if len(pc.queue) != 1 || pc.queue[0].tag != 3 {
		t.Errorf("queue after fail: %+v, want the message being written", pc.queue)
	}
}
