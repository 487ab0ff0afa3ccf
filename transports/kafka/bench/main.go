// Command bench runs the Kafka table of the project's benchmark: the bus
// next to Sarama and watermill-kafka, publishing with acks from all
// in-sync replicas and consuming with an ack per message, with ratios
// computed within each round, on an in-process kfake cluster unless
// EVENTBUS_TEST_KAFKA_BROKERS (or -kafka-brokers) names real brokers. It
// is go run ./cmd/bench -only kafka; see docs/performance.md for what each
// row means.
//
//	go run ./transports/kafka/bench [-rounds 3] [-scale 1] [-kafka-brokers host:9092] [-cpuprofile file]
package main

import (
	"os"

	"github.com/paissive/go-eventbus/internal/bench"
)

func main() {
	os.Exit(bench.Main(append([]string{"-only", "kafka"}, os.Args[1:]...), "go run ./transports/kafka/bench"))
}
