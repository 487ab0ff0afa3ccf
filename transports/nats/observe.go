package nats

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

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
func (t *Transport) Connectivity() driver.Connectivity { return t.state.get() }

// connState is the connection's state for Connectivity, updated from
// nats.go's connection callbacks and the transport's own dial attempts.
type connState struct {
	secrets []string // replaced in error texts: the URL's password or token
	mu      sync.Mutex
	c       driver.Connectivity
}

func newConnState(secrets ...string) *connState {
	s := &connState{c: driver.Connectivity{Since: time.Now()}}
	for _, v := range secrets {
		if v != "" {
			s.secrets = append(s.secrets, v)
		}
	}
	return s
}

func (s *connState) up() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.c.Connected {
		s.c.Connected, s.c.Since = true, time.Now()
	}
}

// down records that the server cannot be reached, because of err (nil
// when the transport closed).
func (s *connState) down(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.c.Connected {
		s.c.Connected, s.c.Since = false, now
	}
	if err != nil {
		text := err.Error()
		for _, v := range s.secrets {
			text = strings.ReplaceAll(text, v, "xxxxx")
		}
		s.c.LastError, s.c.LastErrorTime = text, now
	}
}

func (s *connState) get() driver.Connectivity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c
}

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
