package driver

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/paissive/go-eventbus/internal/redactlog"
)

// ConnectivityState keeps a transport's connection state for its
// [ConnectivityReporter]: the transport reports what it sees as it works
// (a connection made or lost, a broker operation that failed or worked),
// and Connectivity reads it without talking to the broker. It is safe for
// concurrent use; Up costs one atomic load while the state does not
// change, so a transport may call it on every successful operation.
type ConnectivityState struct {
	up     atomic.Bool
	redact *strings.Replacer // hides the secrets in error texts; nil when none

	mu sync.Mutex
	c  Connectivity
}

// NewConnectivityState returns a state that is not connected yet. Error
// texts it records have every occurrence of each non-empty secret (the
// password or token of the broker URL) replaced by "xxxxx".
func NewConnectivityState(secrets ...string) *ConnectivityState {
	return &ConnectivityState{c: Connectivity{Since: time.Now()}, redact: redactlog.Replacer(secrets)}
}

// Up records that the broker is reachable.
func (s *ConnectivityState) Up() {
	if s.up.Load() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.c.Connected {
		s.c.Connected, s.c.Since = true, time.Now()
		s.up.Store(true)
	}
}

// Down records that the broker is not reachable, because of err (nil when
// the transport closed).
func (s *ConnectivityState) Down(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.c.Connected {
		s.c.Connected, s.c.Since = false, now
		s.up.Store(false)
	}
	if err != nil {
		text := err.Error()
		if s.redact != nil {
			text = s.redact.Replace(text)
		}
		s.c.LastError, s.c.LastErrorTime = text, now
	}
}

// Get returns the state.
func (s *ConnectivityState) Get() Connectivity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c
}
