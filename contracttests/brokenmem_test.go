package contracttests_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/contracttests"
	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/transports/memory"
)

// The "ctmem" transport wraps the memory transport for the suite's own
// tests. It stands for a networked transport: its broker can be cut or
// frozen (the fault injector the suite's fault tests use), and each of
// the faults below, named in the URL (ctmem://name?faults=a,b), breaks
// one guarantee of driver.Transport the way a real driver could. Without
// faults it keeps every guarantee; with "redeliver-tenth" it redelivers
// every tenth acknowledged message, as at-least-once brokers may, and
// still keeps every guarantee; with "retain-unroutable" it keeps
// messages no subscription matches instead of reporting them, as Kafka
// does.
func init() { driver.Register("ctmem", driver.OpenFunc(openCtmem)) }

// The faults and modes of ctmem.
const (
	// Modes that keep the contract.
	modeRedeliverTenth   = "redeliver-tenth"   // every tenth acknowledged message is delivered again while the subscription runs
	modeRetainUnroutable = "retain-unroutable" // messages no subscription matches are kept, not reported

	// Subscriptions.
	faultRoutesWide     = "routes-wide"      // every subscription gets every message (no filtering by pattern)
	faultHashOneOrMore  = "hash-one-or-more" // '#' matches one or more segments instead of zero or more
	faultCaseFold       = "case-fold"        // names are routed in lower case
	faultTruncateNames  = "truncate-names"   // names are routed by their first 200 bytes
	faultSerial         = "serial"           // one message at a time whatever the Concurrency
	faultPrefetch       = "prefetch"         // 64 messages unacknowledged at once whatever the Concurrency
	faultGroupPerInst   = "group-per-instance"
	faultSubscribeAsync = "subscribe-async"   // Subscribe returns before the subscription is bound
	faultBoundToCtx     = "bound-to-ctx"      // the subscription ends with Subscribe's ctx
	faultChannelOpen    = "channel-open"      // Close does not close the channel
	faultCloseNoWait    = "close-no-wait"     // a subscriber's Close returns without waiting for acknowledgements
	faultCloseCancels   = "close-cancels-ctx" // a subscriber's Close cancels the contexts of messages in flight
	faultLazyAcks       = "lazy-acks"         // acknowledgements reach the broker 300 ms later; Close does not flush them
	faultNackDrops      = "nack-drops"        // a nacked message is dropped, not delivered again
	faultCrashLoses     = "crash-loses"       // the transport's Close acknowledges what is in flight

	// Publishing.
	faultAsyncPublish     = "async-publish"       // Publish returns once routed, sends 100 ms later from a buffer Close drops
	faultIgnoreCtx        = "ignore-ctx"          // Publish waits for the broker whatever the messages' contexts
	faultSwallowErrors    = "swallow-errors"      // Publish returns nil whatever happened
	faultPublishAfterCls  = "publish-after-close" // the publisher has its own connection, which Close forgets
	faultRedeliverFansOut = "redeliver-fans-out"  // Redeliver publishes to every matching group
)

var errCtClosed = fmt.Errorf("ctmem transport: %w", driver.ErrClosed)

// gate is a ctmem broker's health: open, cut (connections refused) or
// stalled (connections that never answer). Calls that talk to the broker
// wait at the gate until it opens or their ctx ends; deliveries pause.
type gate struct {
	mu    sync.Mutex
	state string        // "", "cut" or "stalled"
	open  chan struct{} // closed while the broker is healthy
}

func newGate() *gate {
	g := &gate{open: make(chan struct{})}
	close(g.open)
	return g
}

func (g *gate) set(state string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
		g.open = make(chan struct{})
	default:
	}
	g.state = state
}

// Cut makes the broker refuse connections.
func (g *gate) Cut() { g.set("cut") }

// Stall freezes the broker.
func (g *gate) Stall() { g.set("stalled") }

// Heal ends a cut or a stall.
func (g *gate) Heal() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
	g.state = ""
}

// wait returns once the broker is healthy, or with an error when ctx ends
// or abort closes first.
func (g *gate) wait(ctx context.Context, abort <-chan struct{}) error {
	g.mu.Lock()
	open, state := g.open, g.state
	g.mu.Unlock()
	select {
	case <-open:
		return nil
	case <-ctx.Done():
		what := "connection refused"
		if state == "stalled" {
			what = "no answer from the broker"
		}
		return fmt.Errorf("ctmem transport: %s: %w", what, ctx.Err())
	case <-abort:
		return errCtClosed
	}
}

// ctBroker is the state one ctmem broker shares among its transports.
type ctBroker struct {
	gate *gate
	mu   sync.Mutex
	// bindings are the groups' routing functions, for faults that route
	// themselves.
	bindings map[string]func(string) bool
}

func (b *ctBroker) bind(group string, match func(string) bool) {
	b.mu.Lock()
	b.bindings[group] = match
	b.mu.Unlock()
}

func (b *ctBroker) routable(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.bindings {
		if m(name) {
			return true
		}
	}
	return false
}

var (
	ctBrokersMu sync.Mutex
	ctBrokers   = map[string]*ctBroker{}
)

func ctBrokerOf(name string) *ctBroker {
	ctBrokersMu.Lock()
	defer ctBrokersMu.Unlock()
	b, ok := ctBrokers[name]
	if !ok {
		b = &ctBroker{gate: newGate(), bindings: map[string]func(string) bool{}}
		ctBrokers[name] = b
	}
	return b
}

// ctmemURL returns the URL of a new ctmem broker with the given faults,
// forgotten when the test ends.
func ctmemURL(t testing.TB, faults string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "ct" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		memory.Forget(name)
		ctBrokersMu.Lock()
		delete(ctBrokers, name)
		ctBrokersMu.Unlock()
	})
	u := "ctmem://" + name
	if faults != "" {
		u += "?faults=" + url.QueryEscape(faults)
	}
	return u
}

// ctmemHarness is the suite's harness for ctmem with the given faults.
func ctmemHarness(faults string, timeout time.Duration, parallel bool) contracttests.Harness {
	return contracttests.Harness{
		Name:              "ctmem?faults=" + faults,
		URL:               func(t testing.TB) string { return ctmemURL(t, faults) },
		RetainsUnroutable: strings.Contains(faults, modeRetainUnroutable),
		Faulty: func(t testing.TB) (string, contracttests.Faults) {
			u := ctmemURL(t, faults)
			pu, _ := url.Parse(u)
			return u, ctBrokerOf(pu.Host).gate
		},
		Timeout:  timeout,
		Parallel: parallel,
	}
}

type faultSet map[string]bool

func openCtmem(ctx context.Context, cfg driver.Config) (driver.Transport, error) {
	f := faultSet{}
	for _, x := range strings.Split(cfg.URL.Query().Get("faults"), ",") {
		if x != "" {
			f[x] = true
		}
	}
	b := ctBrokerOf(cfg.URL.Host)
	if err := b.gate.wait(ctx, nil); err != nil {
		return nil, err
	}
	open := func() (driver.Transport, error) {
		return driver.Open(ctx, "mem://"+cfg.URL.Host, driver.Config{ServiceName: cfg.ServiceName, Logger: cfg.Logger})
	}
	inner, err := open()
	if err != nil {
		return nil, err
	}
	pubInner, err := open()
	if err != nil {
		_ = inner.Close()
		return nil, err
	}
	t := &ctTransport{inner: inner, pubInner: pubInner, b: b, f: f, closed: make(chan struct{}), outstanding: map[*message.Message]bool{}}
	t.pub = &ctPublisher{t: t}
	if f[faultAsyncPublish] {
		t.async = make(chan asyncBatch, 1024)
		t.asyncDone = make(chan struct{})
		go t.sendLater()
	}
	return t, nil
}

type ctTransport struct {
	inner, pubInner driver.Transport
	b               *ctBroker
	f               faultSet
	pub             *ctPublisher
	closeOnce       sync.Once
	closed          chan struct{}
	acks            atomic.Int64

	mu          sync.Mutex
	outstanding map[*message.Message]bool // inner messages delivered and not settled

	async     chan asyncBatch
	asyncDone chan struct{}
}

type asyncBatch struct {
	topic string
	msgs  []*message.Message
	at    time.Time
}

// sendLater sends what Publish buffered, 100 ms later, until Close, which
// drops what is left.
func (t *ctTransport) sendLater() {
	defer close(t.asyncDone)
	for {
		select {
		case ab := <-t.async:
			select {
			case <-time.After(time.Until(ab.at)):
			case <-t.closed:
				return
			}
			_ = t.pubInner.Publisher().Publish(ab.topic, ab.msgs...)
		case <-t.closed:
			return
		}
	}
}

func (t *ctTransport) track(m *message.Message, on bool) {
	t.mu.Lock()
	if on {
		t.outstanding[m] = true
	} else {
		delete(t.outstanding, m)
	}
	t.mu.Unlock()
}

func (t *ctTransport) Publisher() message.Publisher { return t.pub }

func (t *ctTransport) PoisonQueue() (driver.PoisonQueue, error) {
	pq, err := t.inner.PoisonQueue()
	if err != nil {
		return nil, err
	}
	return &ctPoison{t: t, pq: pq}, nil
}

func (t *ctTransport) Redeliver(ctx context.Context, group string, msgs ...*message.Message) error {
	if err := t.b.gate.wait(ctx, t.closed); err != nil {
		return err
	}
	if t.f[faultRedeliverFansOut] && len(msgs) > 0 {
		return t.pubInner.Publisher().Publish(msgs[0].Metadata.Get(driver.HeaderType), msgs...)
	}
	return t.inner.Redeliver(ctx, group, msgs...)
}

func (t *ctTransport) Close() error {
	t.closeOnce.Do(func() {
		if t.f[faultCrashLoses] {
			t.mu.Lock()
			for m := range t.outstanding {
				m.Ack()
			}
			t.mu.Unlock()
		}
		close(t.closed)
		_ = t.inner.Close()
		if !t.f[faultPublishAfterCls] {
			_ = t.pubInner.Close()
		}
		if t.asyncDone != nil {
			<-t.asyncDone
		}
	})
	return nil
}

type ctPublisher struct{ t *ctTransport }

func (p *ctPublisher) Publish(topic string, msgs ...*message.Message) error {
	t := p.t
	if len(msgs) == 0 {
		return nil
	}
	ctx := msgs[0].Context()
	if t.f[faultIgnoreCtx] {
		ctx = context.Background()
		in := make([]*message.Message, len(msgs))
		for i, m := range msgs {
			in[i] = m.Copy()
		}
		msgs = in
	}
	abort := t.closed
	if t.f[faultPublishAfterCls] {
		abort = nil
	}
	if err := t.b.gate.wait(ctx, abort); err != nil {
		if t.f[faultSwallowErrors] {
			return nil
		}
		return failAll(msgs, err)
	}
	route := topic
	if t.f[faultCaseFold] {
		route = strings.ToLower(route)
	}
	if t.f[faultTruncateNames] && len(route) > 200 {
		route = route[:200]
	}
	if t.f[faultAsyncPublish] {
		select {
		case <-t.closed:
			return failAll(msgs, errCtClosed)
		default:
		}
		if !t.b.routable(route) {
			return failAll(msgs, driver.ErrUnroutable)
		}
		cp := make([]*message.Message, len(msgs))
		for i, m := range msgs {
			cp[i] = m.Copy()
		}
		select {
		case t.async <- asyncBatch{topic: route, msgs: cp, at: time.Now().Add(100 * time.Millisecond)}:
			return nil
		case <-ctx.Done():
			return failAll(msgs, ctx.Err())
		}
	}
	err := t.pubInner.Publisher().Publish(route, msgs...)
	if t.f[faultSwallowErrors] {
		return nil
	}
	if t.f[modeRetainUnroutable] {
		err = dropUnroutable(err)
	}
	return err
}

func (p *ctPublisher) Close() error { return nil }

func failAll(msgs []*message.Message, err error) error {
	pe := &driver.PublishError{}
	for _, m := range msgs {
		pe.Failed = append(pe.Failed, driver.Failure{UUID: m.UUID, Err: err})
	}
	return pe
}

// dropUnroutable removes the unroutable messages from err: a transport
// that keeps them (in a topic) has published them.
func dropUnroutable(err error) error {
	var pe *driver.PublishError
	if !errors.As(err, &pe) {
		return err
	}
	kept := &driver.PublishError{}
	for _, f := range pe.Failed {
		if !errors.Is(f.Err, driver.ErrUnroutable) {
			kept.Failed = append(kept.Failed, f)
		}
	}
	if len(kept.Failed) == 0 {
		return nil
	}
	return kept
}

type ctPoison struct {
	t  *ctTransport
	pq driver.PoisonQueue
}

func (p *ctPoison) Add(ctx context.Context, m *message.Message) error {
	if err := p.t.b.gate.wait(ctx, p.t.closed); err != nil {
		return err
	}
	return p.pq.Add(ctx, m)
}

func (p *ctPoison) Scan(ctx context.Context, pageSize int, visit func([]*message.Message) ([]int, error)) error {
	if err := p.t.b.gate.wait(ctx, p.t.closed); err != nil {
		return err
	}
	return p.pq.Scan(ctx, pageSize, visit)
}

func (p *ctPoison) Purge(ctx context.Context) error {
	if err := p.t.b.gate.wait(ctx, p.t.closed); err != nil {
		return err
	}
	return p.pq.Purge(ctx)
}

func (t *ctTransport) NewSubscriber(cfg driver.SubscriberConfig) (message.Subscriber, error) {
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	icfg := cfg
	outer := cfg.Concurrency
	switch {
	case t.f[faultSerial]:
		icfg.Concurrency, outer = 1, 1
	case t.f[faultPrefetch]:
		icfg.Concurrency, outer = 64, 64
	case t.f[faultLazyAcks]:
		// Room for messages acknowledged by the reader and not yet by
		// the broker.
		icfg.Concurrency = 4*cfg.Concurrency + 16
	}
	if t.f[faultGroupPerInst] {
		var b [4]byte
		_, _ = rand.Read(b[:])
		icfg.Group += "~" + hex.EncodeToString(b[:])
	}
	switch {
	case t.f[faultRoutesWide]:
		icfg.Pattern, icfg.Match = "#", func(string) bool { return true }
	case t.f[faultHashOneOrMore]:
		segs := strings.Split(cfg.Pattern, ".")
		icfg.Match = func(name string) bool { return matchOneOrMore(segs, strings.Split(name, ".")) }
	case t.f[faultCaseFold]:
		p, err := eventbus.CompilePattern(strings.ToLower(cfg.Pattern))
		if err != nil {
			return nil, err
		}
		icfg.Match = p.Match
	}
	inner, err := t.inner.NewSubscriber(icfg)
	if err != nil {
		return nil, err
	}
	closing, stop := context.WithCancel(context.Background())
	return &ctSub{t: t, cfg: cfg, icfg: icfg, inner: inner, sem: make(chan struct{}, outer), closing: closing, stop: stop, relayDone: make(chan struct{}), forwarding: make(chan struct{})}, nil
}

// matchOneOrMore is a pattern match in which '#' wrongly needs at least
// one segment.
func matchOneOrMore(p, n []string) bool {
	if len(p) == 0 {
		return len(n) == 0
	}
	switch p[0] {
	case "#":
		for k := 1; k <= len(n); k++ {
			if matchOneOrMore(p[1:], n[k:]) {
				return true
			}
		}
		return false
	case "*":
		return len(n) > 0 && matchOneOrMore(p[1:], n[1:])
	default:
		return len(n) > 0 && n[0] == p[0] && matchOneOrMore(p[1:], n[1:])
	}
}

// ctSub relays an inner memory subscription: each inner message is copied
// to the outer channel, and the outer verdict settles the inner message.
type ctSub struct {
	t           *ctTransport
	cfg, icfg   driver.SubscriberConfig
	inner       message.Subscriber
	sem         chan struct{} // outer concurrency
	closing     context.Context
	stop        context.CancelFunc
	out         chan *message.Message
	subscribed  atomic.Bool
	relayDone   chan struct{}
	forwarding  chan struct{} // closed when the relay stops forwarding
	settles     sync.WaitGroup
	outstanding sync.WaitGroup // outer messages without a verdict
}

func (s *ctSub) Subscribe(ctx context.Context, pattern string) (<-chan *message.Message, error) {
	t := s.t
	if pattern != s.cfg.Pattern {
		return nil, fmt.Errorf("ctmem transport: Subscribe(%q) of a subscriber for %q", pattern, s.cfg.Pattern)
	}
	if err := t.b.gate.wait(ctx, t.closed); err != nil {
		return nil, err
	}
	if s.subscribed.Swap(true) {
		return nil, errors.New("ctmem transport: Subscribe called twice")
	}
	s.out = make(chan *message.Message)
	if t.f[faultSubscribeAsync] {
		go func() {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-s.closing.Done():
				close(s.forwarding)
				close(s.relayDone)
				close(s.out)
				return
			}
			in, err := s.inner.Subscribe(context.Background(), s.icfg.Pattern)
			if err != nil {
				close(s.forwarding)
				close(s.relayDone)
				close(s.out)
				return
			}
			t.b.bind(s.icfg.Group, s.icfg.Match)
			s.relay(in, context.Background())
		}()
		return s.out, nil
	}
	in, err := s.inner.Subscribe(ctx, s.icfg.Pattern)
	if err != nil {
		return nil, err
	}
	t.b.bind(s.icfg.Group, s.icfg.Match)
	life := context.Background()
	if t.f[faultBoundToCtx] {
		life = ctx
	}
	go s.relay(in, life)
	return s.out, nil
}

// relay forwards inner messages while the subscriber is open, then nacks
// what still comes until the inner channel closes, and closes the outer
// channel once every forwarded message is settled.
func (s *ctSub) relay(in <-chan *message.Message, life context.Context) {
	t := s.t
	defer close(s.relayDone)
	defer func() {
		s.settles.Wait()
		if !t.f[faultChannelOpen] {
			close(s.out)
		}
	}()
	stopForwarding := sync.OnceFunc(func() { close(s.forwarding) })
	defer stopForwarding()
forward:
	for {
		var m *message.Message
		var ok bool
		select {
		case m, ok = <-in:
			if !ok {
				return
			}
		case <-s.closing.Done():
			break forward
		case <-life.Done():
			go func() { _ = s.inner.Close() }()
			break forward
		}
		// The broker delivers only while it is healthy, and the
		// subscriber holds at most its concurrency.
		if t.b.gate.wait(s.closing, t.closed) != nil {
			m.Nack()
			break forward
		}
		select {
		case s.sem <- struct{}{}:
		case <-s.closing.Done():
			m.Nack()
			break forward
		case <-t.closed:
			break forward
		}
		om := m.Copy()
		octx, cancel := m.Context(), context.CancelFunc(func() {})
		if t.f[faultCloseCancels] {
			octx, cancel = context.WithCancel(octx)
			context.AfterFunc(s.closing, cancel)
		}
		om.SetContext(octx)
		t.track(m, true)
		select {
		case s.out <- om:
		case <-s.closing.Done():
			<-s.sem
			t.track(m, false)
			cancel()
			m.Nack()
			break forward
		}
		s.settles.Add(1)
		s.outstanding.Add(1)
		go s.settle(m, om, cancel)
	}
	stopForwarding()
	for m := range in {
		m.Nack()
	}
}

// settle waits for the outer verdict on om and settles the inner m.
func (s *ctSub) settle(m, om *message.Message, cancel context.CancelFunc) {
	t := s.t
	defer s.settles.Done()
	defer cancel()
	defer t.track(m, false)
	answered := false
	answer := func() {
		if !answered {
			answered = true
			<-s.sem
			s.outstanding.Done()
		}
	}
	defer answer()
	for {
		select {
		case <-om.Acked():
			if t.f[modeRedeliverTenth] && t.acks.Add(1)%10 == 0 {
				// Deliver it again while the inner message is held, so
				// the subscriber's concurrency is unchanged; a Close
				// drops the copy (the original was acknowledged).
				dup := m.Copy()
				dup.SetContext(om.Context())
				select {
				case s.out <- dup:
					om = dup
					continue
				case <-s.closing.Done():
				case <-t.closed:
				}
			}
			answer()
			if t.f[faultLazyAcks] {
				time.AfterFunc(300*time.Millisecond, func() { m.Ack() })
				return
			}
			m.Ack()
			return
		case <-om.Nacked():
			answer()
			if t.f[faultNackDrops] {
				m.Ack()
			} else {
				m.Nack()
			}
			return
		case <-t.closed:
			// The inner transport gives m back, unless the verdict
			// came just before.
			select {
			case <-om.Acked():
				m.Ack()
			default:
			}
			return
		}
	}
}

func (s *ctSub) Close() error {
	s.stop()
	if !s.subscribed.Load() {
		return s.inner.Close()
	}
	switch {
	case s.t.f[faultCloseNoWait]:
		go func() { _ = s.inner.Close() }()
		return nil
	case s.t.f[faultLazyAcks]:
		// Waits for the reader's verdicts, not for the broker to have
		// them.
		done := make(chan struct{})
		go func() {
			<-s.forwarding // no more outstanding.Add
			s.outstanding.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-s.t.closed:
		}
		go func() { _ = s.inner.Close() }()
		return nil
	}
	err := s.inner.Close()
	select {
	case <-s.relayDone:
	case <-s.t.closed:
	}
	return err
}
