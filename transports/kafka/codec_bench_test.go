package kafka

import (
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// BenchmarkDecode measures turning a record with the bus's headers into a
// message, which every consumed record goes through.
func BenchmarkDecode(b *testing.B) {
	env := driver.Envelope{ID: "0b6a1c9e-6f3c-4a53-9d1e-3f1c2b7a8e90", Name: "bench.item", Source: "bench", Type: "domain",
		Time: time.Now(), CorrelationID: "0b6a1c9e-6f3c-4a53-9d1e-3f1c2b7a8e90", PartitionKey: "42", Data: []byte(`{"p":"x"}`)}
	pm := encode("t", driver.Encode(env))
	rec := &sarama.ConsumerMessage{Topic: "t", Value: []byte(`{"p":"x"}`)}
	for _, h := range pm.Headers {
		rec.Headers = append(rec.Headers, &sarama.RecordHeader{Key: h.Key, Value: h.Value})
	}
	b.ReportAllocs()
	for b.Loop() {
		decode(rec)
	}
}
