package driver

import (
	"errors"
	"strings"
	"testing"
)

// TestConnectivityState: a new state is not connected; Up and Down move
// Since only when the state changes; an error recorded never shows a
// secret, and stays after the transport reconnects.
func TestConnectivityState(t *testing.T) {
	s := NewConnectivityState("s3cret", "", "t0ken")
	if c := s.Get(); c.Connected || c.Since.IsZero() {
		t.Fatalf("new state %+v, want not connected with a Since", c)
	}
	s.Up()
	up := s.Get()
	s.Up()
	if c := s.Get(); !c.Connected || !c.Since.Equal(up.Since) {
		t.Errorf("Up twice: %+v, want connected since the first Up (%v)", c, up.Since)
	}
	s.Down(errors.New("authorization violation for user:s3cret, token t0ken"))
	c := s.Get()
	if c.Connected || strings.Contains(c.LastError, "s3cret") || strings.Contains(c.LastError, "t0ken") || !strings.Contains(c.LastError, "xxxxx") {
		t.Errorf("after Down: %+v, want disconnected with the secrets replaced", c)
	}
	s.Up()
	if c := s.Get(); !c.Connected || c.LastError == "" {
		t.Errorf("after reconnecting: %+v, want connected with the last error kept", c)
	}
}
