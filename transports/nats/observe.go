package nats

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// System is the transport's "messaging.system" in the bus's telemetry.
// OpenTelemetry's messaging conventions name no value for NATS; this is
// the transport's own, lower-case, as the conventions ask of others.
const System = "nats"

var (
	_ driver.Describer            = (*Transport)(nil)
	_ driver.ConnectivityReporter = (*Transport)(nil)
	_ driver.PoisonCounter        = (*poisonQueue)(nil)
)

// Describe states the messaging system, "nats", and the server's host and
// port when the URL names one server.
func (t *Transport) Describe() driver.Description {
	d := driver.Description{System: System}
	if len(t.opts.servers) == 1 {
		if host, port, err := net.SplitHostPort(t.opts.servers[0]); err == nil {
			d.ServerAddress = host
			d.ServerPort, _ = strconv.Atoi(port)
		}
	}
	return d
}

// Connectivity reports the connection as nats.go last saw it: up from a
// successful connection until it drops, then reconnecting, with the error
// that ended it or the last failed reconnection attempt. It does not talk
// to the server.
func (t *Transport) Connectivity() driver.Connectivity { return t.state.Get() }

// PoisonCount returns the number of the service's poison records: one
// stream-info request for the record subject's message count, by ctx's
// deadline.
func (q *poisonQueue) PoisonCount(ctx context.Context) (int, error) {
	if q.t.isClosed() {
		return 0, errClosed
	}
	_, ps := q.t.streams()
	info, err := ps.Info(ctx, jetstream.WithSubjectFilter(q.subject))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("nats transport: counting the poison records of %s: %w", q.subject, err)
	}
	return int(info.State.Subjects[q.subject]), nil
}
