package kafka

import (
	"fmt"
	"strings"

	"github.com/IBM/sarama"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/wire"
)

// UUIDHeader carries a message's UUID when it differs from its "ce_id"
// header, which only happens for messages that are not events (raw
// messages published through the transport's Watermill publisher). It is
// watermill-kafka's header name, so watermill-kafka consumers read it too.
const UUIDHeader = wkafka.UUIDHeaderKey

// Marshaler converts Watermill messages in the go-eventbus wire format to
// Kafka records and back: the record's headers are the message metadata
// (the CloudEvents "ce_" attributes of the Kafka binding), its value the
// payload and its key the "ce_partitionkey" header. It implements
// watermill-kafka's MarshalerUnmarshaler, so a plain watermill-kafka
// publisher or subscriber can exchange events with the bus.
type Marshaler struct{}

var _ wkafka.MarshalerUnmarshaler = Marshaler{}

// Marshal converts msg to a record for topic.
func (Marshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	return encode(topic, msg), nil
}

// Unmarshal converts a record to a message; see [Marshaler]. Like the
// transport's subscribers, it takes the record key as the partition key
// of an event without a "ce_partitionkey" header.
func (Marshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	if rec == nil {
		return nil, fmt.Errorf("kafka transport: nil record")
	}
	return decodeEvent(rec), nil
}

func encode(topic string, msg *message.Message) *sarama.ProducerMessage {
	headers := make([]sarama.RecordHeader, 0, len(msg.Metadata)+1)
	for k, v := range msg.Metadata {
		if k == UUIDHeader {
			continue
		}
		headers = append(headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	if msg.UUID != msg.Metadata[wire.ID] {
		headers = append(headers, sarama.RecordHeader{Key: []byte(UUIDHeader), Value: []byte(msg.UUID)})
	}
	pm := &sarama.ProducerMessage{Topic: topic, Headers: headers, Value: sarama.ByteEncoder(payload(msg))}
	if k := msg.Metadata[wire.PartitionKey]; k != "" {
		pm.Key = sarama.StringEncoder(k)
	}
	return pm
}

// recordBatchOverhead is the size of the header of a Kafka record batch
// (message format v2): base offset, length, leader epoch, magic, CRC,
// attributes, last offset delta, two timestamps, producer ID, epoch, base
// sequence and record count.
const recordBatchOverhead = 61

// recordSize is the size of rec as Kafka counts it against a topic's
// max.message.bytes when rec is alone in its batch: the batch header plus
// the record with its key, value and headers. The varints of the record
// are counted at their widest (Sarama's ProducerMessage.ByteSize), so the
// count is at most 29 bytes, plus 8 per header, above the encoded size and
// never below it: a record that passes is never refused by the broker for
// its size, and neither is a batch Sarama fills up to the same limit (see
// Transport.producerConfig).
func recordSize(rec *sarama.ProducerMessage) int {
	return recordBatchOverhead + rec.ByteSize(2)
}

// payload never returns nil: a nil record value is a tombstone to Kafka.
func payload(msg *message.Message) []byte {
	if msg.Payload == nil {
		return []byte{}
	}
	return msg.Payload
}

func decode(rec *sarama.ConsumerMessage) *message.Message {
	md := make(message.Metadata, len(rec.Headers))
	var uuid string
	vals, off := headerValues(rec.Headers), 0
	for _, h := range rec.Headers {
		if h == nil {
			continue
		}
		v := vals[off : off+len(h.Value)]
		off += len(h.Value)
		if string(h.Key) == UUIDHeader {
			uuid = v
			continue
		}
		md[headerKey(h.Key)] = v
	}
	if uuid == "" {
		uuid = md[wire.ID]
	}
	if uuid == "" {
		// A record from a foreign producer: a stable ID, so that its
		// redeliveries are recognisable.
		uuid = fmt.Sprintf("kafka:%s/%d/%d", rec.Topic, rec.Partition, rec.Offset)
	}
	msg := message.NewMessage(uuid, rec.Value)
	msg.Metadata = md
	return msg
}

// decodeEvent converts a record of an event topic to a message, as decode
// does, and takes the record key as the partition key when the record has
// no "ce_partitionkey" header: the CloudEvents Kafka binding maps the
// partitionkey extension to the key, and producers that know nothing of
// the extension (kcat, a CloudEvents SDK without it) still key their
// records. Poison records are read with decode, since their key is the
// poison topic's own.
func decodeEvent(rec *sarama.ConsumerMessage) *message.Message {
	msg := decode(rec)
	if len(rec.Key) > 0 {
		if _, ok := msg.Metadata[wire.PartitionKey]; !ok {
			msg.Metadata[wire.PartitionKey] = string(rec.Key)
		}
	}
	return msg
}

// eventName returns the event name of a record for the subscription
// filter: its "ce_type" header or, for a CloudEvent in structured content
// mode, the "type" attribute of its body. A record without a name is
// delivered, so that the bus moves it to the poison queue as undecodable.
func eventName(rec *sarama.ConsumerMessage) (string, bool) {
	var ct string
	for _, h := range rec.Headers {
		if h == nil {
			continue
		}
		switch string(h.Key) {
		case wire.Type:
			return string(h.Value), true
		case wire.ContentType:
			ct = string(h.Value)
		}
	}
	if strings.HasPrefix(strings.ToLower(ct), driver.ContentTypeStructured) {
		if t := gjson.GetBytes(rec.Value, "type"); t.Type == gjson.String {
			return t.Str, true
		}
	}
	return "", false
}

// headerValues returns the values of hs, concatenated in one string:
// decode slices each value out of it, one allocation for all of them
// instead of one per header (decoding was a third of the transport's own
// CPU time per consumed record).
func headerValues(hs []*sarama.RecordHeader) string {
	n := 0
	for _, h := range hs {
		if h != nil {
			n += len(h.Value)
		}
	}
	b := make([]byte, 0, n)
	for _, h := range hs {
		if h != nil {
			b = append(b, h.Value...)
		}
	}
	return string(b)
}

// knownKeys are the header names of the wire format, which decode uses
// rather than allocate a copy of each record's.
var knownKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{wire.SpecVersion, wire.ID, wire.Source, wire.Type, wire.Time, wire.EventType,
		wire.ContentType, wire.CorrelationID, wire.CausationID, wire.PartitionKey, wire.DataVersion,
		wire.TraceParent, wire.TraceState} {
		m[k] = k
	}
	return m
}()

// headerKey returns the string of a header name, without allocating for
// the names of the wire format.
func headerKey(k []byte) string {
	if s, ok := knownKeys[string(k)]; ok { // no allocation: the compiler looks up without converting
		return s
	}
	return string(k)
}

// header returns the value of a record header.
func header(rec *sarama.ConsumerMessage, key string) (string, bool) {
	for _, h := range rec.Headers {
		if h != nil && string(h.Key) == key {
			return string(h.Value), true
		}
	}
	return "", false
}
