// Package faultnet puts network faults between a client and a broker on
// loopback, for tests and the reliability program: a TCP proxy in front of
// a broker ([Proxy]), or a wrapper around a server's own listener
// ([Listener], for in-process brokers such as kfake, whose clients must
// reach the address the broker advertises).
//
// Both can be
//
//   - cut: every connection is closed and new ones are refused, as when a
//     broker process dies;
//   - stalled: connections stay open but no byte moves in either
//     direction, and new connections are accepted and never answered, as
//     when a broker is frozen (SIGSTOP) or a network path blackholes;
//   - healed: bytes move again; connections held during a stall go on.
package faultnet

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// gate is the fault state shared by a proxy's or listener's connections.
type gate struct {
	mu      sync.Mutex
	cut     bool
	stalled bool
	healed  chan struct{} // closed when a stall ends
	conns   map[io.Closer]struct{}
	refused atomic.Int64
}

func newGate() *gate {
	return &gate{healed: closedChan(), conns: map[io.Closer]struct{}{}}
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// wait blocks while the gate is stalled; it returns false when done closes
// first (the connection was closed).
func (g *gate) wait(done <-chan struct{}) bool {
	g.mu.Lock()
	healed := g.healed
	g.mu.Unlock()
	select {
	case <-healed:
		return true
	case <-done:
		return false
	}
}

// track registers c; false means the gate is cut and c was closed.
func (g *gate) track(c io.Closer) bool {
	g.mu.Lock()
	if g.cut {
		g.mu.Unlock()
		g.refused.Add(1)
		_ = c.Close() // outside the lock: Close may untrack
		return false
	}
	g.conns[c] = struct{}{}
	g.mu.Unlock()
	return true
}

func (g *gate) untrack(c io.Closer) {
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
}

func (g *gate) setCut() {
	g.mu.Lock()
	g.cut = true
	conns := g.conns
	g.conns = map[io.Closer]struct{}{}
	g.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}

func (g *gate) setStalled() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.stalled {
		g.stalled = true
		g.healed = make(chan struct{})
	}
}

func (g *gate) heal() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cut = false
	if g.stalled {
		g.stalled = false
		close(g.healed)
	}
}

// Proxy forwards TCP connections from a loopback address to a target.
type Proxy struct {
	ln     net.Listener
	target string
	g      *gate
	wg     sync.WaitGroup
	once   sync.Once
}

// NewProxy starts a proxy on 127.0.0.1 with a free port, forwarding to
// target (host:port). Close it when done.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, g: newGate()}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every connection and refuses new ones until Heal.
func (p *Proxy) Cut() { p.g.setCut() }

// Stall stops forwarding on every connection, and holds new ones
// unanswered, until Heal (or Cut).
func (p *Proxy) Stall() { p.g.setStalled() }

// Heal ends a cut or a stall.
func (p *Proxy) Heal() { p.g.heal() }

// Refused is the number of connections refused while cut.
func (p *Proxy) Refused() int64 { return p.g.refused.Load() }

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	var err error
	p.once.Do(func() {
		err = p.ln.Close()
		p.g.setCut()
		p.g.heal() // release goroutines waiting in a stall
		p.wg.Wait()
	})
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		pc := &proxyConn{client: c, done: make(chan struct{})}
		if !p.g.track(pc) {
			continue
		}
		p.wg.Add(1)
		go p.serve(pc)
	}
}

// proxyConn is one proxied connection: the client's side and, once
// dialled, the target's.
type proxyConn struct {
	client net.Conn
	mu     sync.Mutex
	up     net.Conn
	once   sync.Once
	done   chan struct{}
}

func (pc *proxyConn) Close() error {
	pc.once.Do(func() {
		close(pc.done)
		_ = pc.client.Close()
		pc.mu.Lock()
		if pc.up != nil {
			_ = pc.up.Close()
		}
		pc.mu.Unlock()
	})
	return nil
}

// serve connects the client to the target once the gate lets it (a
// stalled proxy accepts and never answers), then pipes both ways.
func (p *Proxy) serve(pc *proxyConn) {
	defer p.wg.Done()
	defer p.g.untrack(pc)
	defer pc.Close()
	if !p.g.wait(pc.done) {
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	pc.mu.Lock()
	pc.up = up
	pc.mu.Unlock()
	select {
	case <-pc.done: // cut while dialling
		_ = up.Close()
		return
	default:
	}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); p.pipe(up, pc.client, pc) }()
	go func() { defer pipes.Done(); p.pipe(pc.client, up, pc) }()
	pipes.Wait()
}

func (p *Proxy) pipe(dst, src net.Conn, pc *proxyConn) {
	defer pc.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.g.wait(pc.done) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Listener wraps a server's listener so that the server's connections can
// be cut and stalled: give it to an in-process broker (kfake's ListenFn)
// so that its clients, which connect to the address the broker
// advertises, pass through it.
type Listener struct {
	net.Listener
	g *gate
}

// WrapListener wraps ln.
func WrapListener(ln net.Listener) *Listener { return &Listener{Listener: ln, g: newGate()} }

// Listen listens on 127.0.0.1 with a free port and wraps the listener.
func Listen() (*Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return WrapListener(ln), nil
}

// Cut closes every accepted connection and closes new ones at once until
// Heal.
func (l *Listener) Cut() { l.g.setCut() }

// Stall freezes every connection (the server neither reads requests nor
// sends replies) until Heal.
func (l *Listener) Stall() { l.g.setStalled() }

// Heal ends a cut or a stall.
func (l *Listener) Heal() { l.g.heal() }

// Accept returns the next connection, wrapped. Connections arriving while
// the listener is cut are closed at once.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		gc := &gatedConn{Conn: c, g: l.g, done: make(chan struct{})}
		if l.g.track(gc) {
			return gc, nil
		}
	}
}

// Close closes the listener; accepted connections stay open.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	l.g.heal()
	return err
}

// gatedConn freezes its reads and writes while its gate is stalled: a
// read returns its data only once the stall ends, a write waits before it
// starts.
type gatedConn struct {
	net.Conn
	g    *gate
	once sync.Once
	done chan struct{}
}

var errConnClosed = errors.New("faultnet: connection closed")

func (c *gatedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.g.wait(c.done) {
		return 0, errConnClosed
	}
	return n, err
}

func (c *gatedConn) Write(b []byte) (int, error) {
	if !c.g.wait(c.done) {
		return 0, errConnClosed
	}
	return c.Conn.Write(b)
}

func (c *gatedConn) Close() error {
	c.once.Do(func() { close(c.done) })
	c.g.untrack(c)
	return c.Conn.Close()
}
