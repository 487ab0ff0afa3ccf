// Package connstate keeps a transport's connection state for
// driver.ConnectivityReporter: the transports report what they see as they
// work (a connection made or lost, a broker operation that failed or
// worked), and a probe reads it without talking to the broker.
package connstate

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// State is a transport's connection state. It is safe for concurrent use;
// Up costs one atomic load while the state does not change, so a
// transport may call it on every successful operation.
type State struct {
	up     atomic.Bool
	secret string // replaced in error texts

	mu sync.Mutex
	c  driver.Connectivity
}

// New returns a state that is not connected yet. Error texts it records
// have every occurrence of secret (a password of the broker URL, if any)
// replaced.
func New(secret string) *State {
	return &State{secret: secret, c: driver.Connectivity{Since: time.Now()}}
}

// Up records that the broker is reachable.
func (s *State) Up() {
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
func (s *State) Down(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.c.Connected {
		s.c.Connected, s.c.Since = false, now
		s.up.Store(false)
	}
	if err != nil {
		s.c.LastError, s.c.LastErrorTime = s.redact(err.Error()), now
	}
}

func (s *State) redact(text string) string {
	if s.secret != "" {
		text = strings.ReplaceAll(text, s.secret, "xxxxx")
	}
	return text
}

// Get returns the state.
func (s *State) Get() driver.Connectivity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c
}
