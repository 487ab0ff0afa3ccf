// Command bench runs the project's benchmark: one table per transport
// comparing the bus with the raw clients (and Watermill's publishers and
// subscribers) in one run, with ratios computed within each round, and,
// with -growth, the cost-growth matrix. docs/performance.md explains every
// row and shows the figures.
//
//	go run ./cmd/bench                      # every transport, 3 rounds
//	go run ./cmd/bench -only amqp -rounds 5
//	go run ./cmd/bench -growth -json growth.json
//
// See bench.Main for the flags.
package main

import (
	"os"

	"github.com/paissive/go-eventbus/internal/bench"
)

func main() {
	os.Exit(bench.Main(os.Args[1:], "go run ./cmd/bench"))
}
