// Command bench runs the RabbitMQ table of the project's benchmark: the
// bus next to raw amqp091-go and watermill-amqp v2, persistent messages
// with publisher confirms, consumed with an ack per message, with ratios
// computed within each round. It is go run ./cmd/bench -only amqp; see
// docs/performance.md for what each row means.
//
//	go run ./transports/amqp/bench [-rounds 3] [-scale 1] [-amqp-url amqp://...] [-bus-params prefetch=64] [-cpuprofile file]
package main

import (
	"os"

	"github.com/paissive/go-eventbus/internal/bench"
)

func main() {
	os.Exit(bench.Main(append([]string{"-only", "amqp"}, os.Args[1:]...), "go run ./transports/amqp/bench"))
}
