package amqp

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/paissive/go-eventbus/internal/faultnet"
)

// startFaultProxy starts a faultnet proxy in front of the test broker,
// closed when the test ends.
func startFaultProxy(t testing.TB) *faultnet.Proxy {
	t.Helper()
	px, err := faultnet.NewProxy(brokerURL(t).Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = px.Close() })
	return px
}

// tlsProxy is a TCP proxy on 127.0.0.1 in front of the broker that
// terminates TLS, as a load balancer in front of RabbitMQ would.
type tlsProxy struct {
	ln     net.Listener
	target string
	tls    *tls.Config
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startTLSProxy(t testing.TB, target string, tlsCfg *tls.Config) *tlsProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tlsProxy{ln: ln, target: target, tls: tlsCfg, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *tlsProxy) addr() string { return p.ln.Addr().String() }

func (p *tlsProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		c = tls.Server(c, p.tls)
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		p.conns[up] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *tlsProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

func (p *tlsProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
