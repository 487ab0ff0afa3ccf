package faultnet

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers every line with the same line.
func echoServer(t *testing.T, ln net.Listener) {
	t.Helper()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}

// roundTrip sends a line on c and reads it back within d; ok is false if
// the answer did not come.
func roundTrip(c net.Conn, d time.Duration) bool {
	_ = c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "ping\n"
}

type faulty interface {
	Cut()
	Stall()
	Heal()
}

func exercise(t *testing.T, f faulty, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !roundTrip(c, 5*time.Second) {
		t.Fatal("no echo through a healthy path")
	}

	f.Stall()
	if roundTrip(c, 200*time.Millisecond) {
		t.Fatal("an echo came through a stalled path")
	}
	// A connection made during the stall is accepted and not answered.
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial during a stall: %v", err)
	}
	defer held.Close()
	if roundTrip(held, 200*time.Millisecond) {
		t.Fatal("a new connection was answered during a stall")
	}
	f.Heal()
	// The stalled ping's echo and a new one now come through.
	fresh, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if !roundTrip(fresh, 5*time.Second) {
		t.Fatal("no echo after healing a stall")
	}

	f.Cut()
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := c.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("a cut did not close the connection")
			}
			break
		}
	}
	if refused, err := net.Dial("tcp", addr); err == nil {
		if roundTrip(refused, 200*time.Millisecond) {
			t.Fatal("a connection made while cut was answered")
		}
		refused.Close()
	}
	f.Heal()
	again, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if !roundTrip(again, 5*time.Second) {
		t.Fatal("no echo after healing a cut")
	}
}

func TestProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echoServer(t, ln)
	p, err := NewProxy(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	exercise(t, p, p.Addr())
	if p.Refused() == 0 {
		t.Error("no connection counted as refused while cut")
	}
}

func TestListener(t *testing.T) {
	l, err := Listen()
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, l)
	defer l.Close()
	exercise(t, l, l.Addr().String())
}
