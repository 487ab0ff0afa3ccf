// Command bench runs the NATS table of the project's benchmark: the bus
// next to nats.go's jetstream package on one server, publishing with
// acknowledgements from a file-storage stream (asynchronously, in batches
// of -batch, as one Bus.Publish call of that many events must) and
// consuming with an ack per message, with ratios computed within each
// round. It is go run ./cmd/bench -only nats; see docs/performance.md for
// what each row means.
//
//	go run ./transports/nats/bench [-rounds 3] [-scale 1] [-batch 100] [-nats-url nats://...] [-cpuprofile file]
//
// The server is EVENTBUS_TEST_NATS_URL (or -nats-url), else the local one
// on 127.0.0.1:4222. Every stream the run creates is deleted at the end.
package main

import (
	"os"

	"github.com/paissive/go-eventbus/internal/bench"
)

func main() {
	os.Exit(bench.Main(append([]string{"-only", "nats"}, os.Args[1:]...), "go run ./transports/nats/bench"))
}
