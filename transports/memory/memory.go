// Package memory is the in-process transport, registered for "mem://" URLs.
// It has the semantics of the brokers: RabbitMQ topic patterns, durable
// subscription groups that keep events while no instance consumes, competing
// consumers within a group, acknowledgement after the handler with
// redelivery of nacked and abandoned events, and a poison store. It is the
// default for examples and for tests of code that uses the bus.
//
// Buses opened with the same URL host share one broker: "mem://" is the
// process-wide default, "mem://name" a separate one (tests use a fresh name
// each).
//
// Publish fails an event no subscription group matches with
// driver.ErrUnroutable, as the RabbitMQ transport does; with the query
// parameter unroutable=accept it accepts such an event, which nobody
// receives, and counts it (the transport implements
// driver.UnroutableCounter).
//
// The query parameter buffer (default 1024) sets how many events a
// subscription group holds before Publish blocks: back-pressure instead of
// unbounded memory. A group that nobody consumes any more therefore blocks
// publishers of its events once full, until their ctx ends, as a RabbitMQ
// queue without consumers would grow; groups cannot be deleted one by one,
// but [Forget] drops a whole named broker with all its groups. A
// blocked Publish goes on once the group has drained to half, so that
// publishers and consumers work in bursts instead of taking turns for every
// event; if the group has room but stops draining above half, it goes on
// once it notices, within a few milliseconds (0.2 s after a long wait).
//
// Work is done by a fixed number of goroutines per subscriber (its
// concurrency), never by a goroutine per event.
package memory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// DefaultBuffer is the number of events a subscription group holds.
const DefaultBuffer = 1024

func init() {
	driver.Register("mem", driver.OpenFunc(open))
}

// errClosed is returned by operations on a closed transport.
var errClosed = fmt.Errorf("memory transport: %w", driver.ErrClosed)

var (
	brokersMu sync.Mutex
	brokers   = map[string]*broker{}
)

// Forget removes the named in-process broker ("" for the default), with its
// groups, queued events and poison store. Transports already open keep
// using it; the next Open of that name gets a new, empty broker.
func Forget(name string) {
	brokersMu.Lock()
	defer brokersMu.Unlock()
	delete(brokers, name)
}

func getBroker(name string, buffer int) *broker {
	brokersMu.Lock()
	defer brokersMu.Unlock()
	b, ok := brokers[name]
	if !ok {
		b = &broker{
			buffer: buffer,
			groups: map[string]*group{},
			routes: map[string][]*group{},
			poison: map[string]*poisonStore{},
		}
		brokers[name] = b
	}
	return b
}

func open(_ context.Context, cfg driver.Config) (driver.Transport, error) {
	u := cfg.URL
	buffer := DefaultBuffer
	q := u.Query()
	if v := q.Get("buffer"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("memory transport: buffer=%q must be a positive integer", v)
		}
		buffer = n
	}
	accept := false
	switch v := q.Get("unroutable"); v {
	case "", "error":
	case "accept":
		accept = true
	default:
		return nil, fmt.Errorf("memory transport: unroutable=%q must be error (Publish fails with ErrUnroutable for an event no subscription matches) or accept (Publish accepts and counts it)", v)
	}
	for k := range q {
		if k != "buffer" && k != "unroutable" {
			return nil, fmt.Errorf("memory transport: unknown URL parameter %q (known: buffer, unroutable)", k)
		}
	}
	name := brokerName(u)
	ctx, cancel := context.WithCancel(context.Background())
	t := &transport{b: getBroker(name, buffer), service: cfg.ServiceName, ctx: ctx, cancel: cancel, opened: time.Now(), acceptUnroutable: accept}
	t.pub = &publisher{t: t}
	return t, nil
}

func brokerName(u *url.URL) string {
	if u.Opaque != "" {
		return u.Opaque
	}
	return u.Host + u.Path
}

// broker is one in-process namespace of groups.
type broker struct {
	buffer int

	mu     sync.RWMutex
	groups map[string]*group
	// routes caches, per event name, the groups whose patterns match it;
	// it is dropped whenever a binding is added.
	routes map[string][]*group
	poison map[string]*poisonStore
}

// binding is a group's pattern and its matcher.
type binding struct {
	pattern string
	match   func(name string) bool
}

// bind returns the group, creating it, and adds the pattern to its bindings.
func (b *broker) bind(name string, p binding) *group {
	b.mu.Lock()
	defer b.mu.Unlock()
	g, ok := b.groups[name]
	if !ok {
		g = &group{name: name, queue: make(chan *message.Message, b.buffer), wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
		b.groups[name] = g
	}
	for _, q := range g.patterns {
		if q.pattern == p.pattern {
			return g
		}
	}
	g.patterns = append(g.patterns, p)
	b.routes = map[string][]*group{}
	return g
}

func (b *broker) route(name string) []*group {
	b.mu.RLock()
	gs, ok := b.routes[name]
	b.mu.RUnlock()
	if ok {
		return gs
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if gs, ok := b.routes[name]; ok {
		return gs
	}
	gs = []*group{}
	for _, g := range b.groups {
		for _, p := range g.patterns {
			if p.match(name) {
				gs = append(gs, g)
				break
			}
		}
	}
	b.routes[name] = gs
	return gs
}

func (b *broker) group(name string) *group {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.groups[name]
}

// group is a durable subscription: a bounded queue shared by its
// subscribers, plus the events given back (nacked or abandoned), which are
// delivered first.
type group struct {
	name     string
	patterns []binding // guarded by broker.mu
	queue    chan *message.Message

	mu    sync.Mutex
	back  []*message.Message
	nback atomic.Int32
	wake  chan struct{} // signalled when back gains an event

	// Publishers that found the queue full wait until it has drained to
	// half, not for the first free slot: waking a publisher for every event
	// a consumer takes made both sides trade places on one CPU per event.
	full atomic.Int32  // publishers waiting for room
	room chan struct{} // signalled by took when the queue drained to half
}

// giveBack requeues an event. It never blocks: the events given back are at
// most the ones in flight, which the concurrency of the subscribers bounds.
func (g *group) giveBack(m *message.Message) {
	g.mu.Lock()
	g.back = append(g.back, m)
	g.nback.Add(1)
	g.mu.Unlock()
	g.signal()
}

func (g *group) signal() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *group) takeBack() *message.Message {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.back) == 0 {
		return nil
	}
	m := g.back[0]
	g.back[0] = nil
	g.back = g.back[1:]
	if g.nback.Add(-1) > 0 {
		g.signal()
	}
	return m
}

// push enqueues m, waiting while the group is full until ctx or abort ends.
func (g *group) push(ctx context.Context, abort <-chan struct{}, m *message.Message) error {
	select {
	case g.queue <- m:
		return nil
	default:
	}
	// Full: wait for took's signal that the queue has drained to half. The
	// timer covers a queue that has room but stops draining above half,
	// which happens when the group's handlers cannot go on until this
	// Publish returns (one publishing into its own group while holding a
	// lock the others need): when the queue did not shrink between two
	// looks, the publisher takes the room there is. The looks come after a
	// millisecond at first, then at growing intervals, so a publisher
	// waiting on a group without consumers is not a busy loop.
	g.full.Add(1)
	defer g.full.Add(-1)
	// Look again after saying so: a consumer that drained the queue before
	// seeing the count would not signal.
	select {
	case g.queue <- m:
		return nil
	default:
	}
	wait := time.Millisecond
	t := time.NewTimer(wait)
	defer t.Stop()
	last := len(g.queue)
	for {
		select {
		case <-g.room:
		case <-t.C:
			wait = min(2*wait, maxRoomWait)
			if n := len(g.queue); n < last {
				// Still draining: keep waiting for half.
				last = n
				t.Reset(wait)
				continue
			}
		case <-ctx.Done():
			return fmt.Errorf("subscription %s is full (back-pressure): %w", g.name, ctx.Err())
		case <-abort:
			return errClosed
		}
		select {
		case g.queue <- m:
			return nil
		default:
		}
		last = len(g.queue)
		t.Reset(wait)
	}
}

// maxRoomWait is the longest a publisher waiting on a full group goes
// without looking for room.
const maxRoomWait = 100 * time.Millisecond

// took is called by consumers after taking an event from the queue: once
// the queue has drained to half, a waiting publisher may go on.
func (g *group) took() {
	if g.full.Load() > 0 && len(g.queue) <= cap(g.queue)/2 {
		g.signalRoom()
	}
}

func (g *group) signalRoom() {
	select {
	case g.room <- struct{}{}:
	default:
	}
}

type transport struct {
	b       *broker
	service string
	pub     *publisher
	// ctx is every delivered message's context: live until Close, so that
	// handlers in flight see cancellation only when the bus gives up.
	ctx    context.Context
	cancel context.CancelFunc
	closed atomic.Bool
	opened time.Time
	// acceptUnroutable makes Publish accept events no group matches
	// (?unroutable=accept), counting them in unroutable.
	acceptUnroutable bool
	unroutable       atomic.Uint64
}

// System is the transport's "messaging.system" in the bus's telemetry.
const System = "memory"

// Describe states the transport's messaging system, "memory".
func (t *transport) Describe() driver.Description { return driver.Description{System: System} }

// Connectivity reports the in-process broker as connected from Open until
// Close.
func (t *transport) Connectivity() driver.Connectivity {
	return driver.Connectivity{Connected: !t.closed.Load(), Since: t.opened}
}

var _ driver.UnroutableCounter = (*transport)(nil)

func (t *transport) Publisher() message.Publisher { return t.pub }

// UnroutableAccepted returns how many events Publish accepted with no
// group matching them; see driver.UnroutableCounter.
func (t *transport) UnroutableAccepted() uint64 { return t.unroutable.Load() }

func (t *transport) NewSubscriber(cfg driver.SubscriberConfig) (message.Subscriber, error) {
	if cfg.Group == "" {
		return nil, errors.New("memory transport: subscriber needs a group")
	}
	if cfg.Concurrency < 1 {
		cfg.Concurrency = 1
	}
	return &subscriber{t: t, cfg: cfg, closing: make(chan struct{})}, nil
}

func (t *transport) PoisonQueue() (driver.PoisonQueue, error) {
	t.b.mu.Lock()
	defer t.b.mu.Unlock()
	p, ok := t.b.poison[t.service]
	if !ok {
		p = &poisonStore{}
		t.b.poison[t.service] = p
	}
	return p, nil
}

func (t *transport) Redeliver(ctx context.Context, group string, msgs ...*message.Message) error {
	if t.closed.Load() {
		return errClosed
	}
	g := t.b.group(group)
	if g == nil {
		return fmt.Errorf("memory transport: no subscription group %q", group)
	}
	for _, m := range msgs {
		if err := g.push(ctx, t.ctx.Done(), m.Copy()); err != nil {
			return err
		}
	}
	return nil
}

// Close cancels the contexts of messages in flight and gives every event
// not yet acknowledged back to its group.
func (t *transport) Close() error {
	if t.closed.CompareAndSwap(false, true) {
		t.cancel()
	}
	return nil
}

type publisher struct{ t *transport }

var _ driver.BatchPublisher = (*publisher)(nil)

// Publish enqueues each message in every group whose patterns match topic.
// A message no group matches fails with driver.ErrUnroutable, or with
// ?unroutable=accept is dropped and counted.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	return p.publish(func(int) string { return topic }, msgs)
}

// PublishBatch enqueues msgs[i] in every group whose patterns match
// topics[i], in the order given.
func (p *publisher) PublishBatch(topics []string, msgs []*message.Message) error {
	if len(topics) != len(msgs) {
		return fmt.Errorf("memory transport: PublishBatch with %d topics for %d messages", len(topics), len(msgs))
	}
	return p.publish(func(i int) string { return topics[i] }, msgs)
}

func (p *publisher) publish(topicOf func(int) string, msgs []*message.Message) error {
	t := p.t
	if t.closed.Load() {
		return errClosed
	}
	var groups []*group
	var topic string
	var failed []driver.Failure
	for i, m := range msgs {
		if tp := topicOf(i); i == 0 || tp != topic {
			topic = tp
			groups = t.b.route(topic)
		}
		if len(groups) == 0 {
			if t.acceptUnroutable {
				t.unroutable.Add(1)
				continue
			}
			failed = append(failed, driver.Failure{UUID: m.UUID, Err: driver.ErrUnroutable})
			continue
		}
		ctx := m.Context()
		for k, g := range groups {
			dm := m
			if k < len(groups)-1 {
				dm = m.Copy()
			}
			if err := g.push(ctx, t.ctx.Done(), dm); err != nil {
				failed = append(failed, driver.Failure{UUID: m.UUID, Err: err})
				break
			}
		}
	}
	if failed != nil {
		return &driver.PublishError{Failed: failed}
	}
	return nil
}

func (p *publisher) Close() error { return nil }

type subscriber struct {
	t       *transport
	cfg     driver.SubscriberConfig
	closing chan struct{}
	once    sync.Once
	workers sync.WaitGroup
}

// Subscribe binds pattern to the subscriber's group and starts Concurrency
// workers, each delivering one event at a time and waiting for its ack.
// The subscription lasts until the subscriber or the transport closes; ctx
// only bounds the setup, which never waits.
func (s *subscriber) Subscribe(ctx context.Context, pattern string) (<-chan *message.Message, error) {
	if pattern != s.cfg.Pattern || s.cfg.Match == nil {
		return nil, fmt.Errorf("memory transport: Subscribe(%q) of a subscriber configured for %q (with a Match function)", pattern, s.cfg.Pattern)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.t.closed.Load() {
		return nil, errClosed
	}
	g := s.t.b.bind(s.cfg.Group, binding{s.cfg.Pattern, s.cfg.Match})
	out := make(chan *message.Message, s.cfg.Concurrency)
	stop := make(chan struct{})
	var workers sync.WaitGroup
	for range s.cfg.Concurrency {
		workers.Add(1)
		go func() {
			defer workers.Done()
			s.work(g, out, stop)
		}()
	}
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		select {
		case <-s.closing:
		case <-s.t.ctx.Done():
		}
		close(stop)
		// Events a worker put in the channel that nobody took are given
		// back (a worker waits for the ack of each), so that Close does
		// not wait for a reader that is gone.
		done := make(chan struct{})
		go func() {
			workers.Wait()
			close(done)
		}()
		for {
			select {
			case m := <-out:
				m.Nack()
				continue
			case <-done:
			}
			break
		}
		close(out)
	}()
	return out, nil
}

func (s *subscriber) work(g *group, out chan<- *message.Message, stop <-chan struct{}) {
	abort := s.t.ctx.Done()
	for {
		m := s.next(g, stop)
		if m == nil {
			return
		}
		m.SetContext(s.t.ctx)
		// Non-blocking attempts first: a select with a default case
		// compiles to a plain channel operation, far cheaper than a
		// blocking multi-way select, and this runs once per event.
		select {
		case out <- m:
		default:
			select {
			case out <- m:
			case <-stop:
				g.giveBack(m)
				return
			}
		}
		select {
		case <-m.Acked():
		case <-m.Nacked():
			g.giveBack(m.Copy())
		case <-abort:
			// select picks at random among ready cases: an ack that
			// raced with the abort must still count.
			select {
			case <-m.Acked():
			default:
				g.giveBack(m.Copy())
			}
			return
		}
	}
}

func (s *subscriber) next(g *group, stop <-chan struct{}) *message.Message {
	for {
		// Stop first: a closing subscriber gives back the events it had
		// put in its channel, and must not take them again.
		select {
		case <-stop:
			return nil
		default:
		}
		if g.nback.Load() > 0 {
			if m := g.takeBack(); m != nil {
				return m
			}
		}
		select {
		case m := <-g.queue:
			g.took()
			return m
		default:
		}
		select {
		case m := <-g.queue:
			g.took()
			return m
		case <-g.wake:
		case <-stop:
			return nil
		}
	}
}

// Close stops delivering and returns once the events in flight were
// acknowledged, or given back because the transport closed.
func (s *subscriber) Close() error {
	s.once.Do(func() { close(s.closing) })
	s.workers.Wait()
	return nil
}

// poisonStore is the service's poison queue: records in the order they
// were added, each with a sequence number that Scan uses to skip records
// added after it started.
type poisonStore struct {
	mu   sync.Mutex
	seq  uint64
	recs []poisonRecord
}

type poisonRecord struct {
	seq uint64
	msg *message.Message
}

func (p *poisonStore) Add(ctx context.Context, m *message.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	p.recs = append(p.recs, poisonRecord{seq: p.seq, msg: m.Copy()})
	return nil
}

// PoisonCount returns the number of records stored.
func (p *poisonStore) PoisonCount(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.recs), nil
}

func (p *poisonStore) Scan(ctx context.Context, pageSize int, visit func([]*message.Message) ([]int, error)) error {
	if pageSize < 1 {
		pageSize = 1
	}
	p.mu.Lock()
	last := p.seq
	p.mu.Unlock()
	var after uint64 // the last sequence number visited
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		p.mu.Lock()
		var seqs []uint64
		var page []*message.Message
		// recs stay sorted by seq: find the first one after the last page.
		i, _ := slices.BinarySearchFunc(p.recs, after+1, func(r poisonRecord, seq uint64) int { return cmp.Compare(r.seq, seq) })
		for _, r := range p.recs[i:] {
			if r.seq > last || len(page) == pageSize {
				break
			}
			seqs = append(seqs, r.seq)
			page = append(page, r.msg.Copy())
		}
		p.mu.Unlock()
		if len(page) == 0 {
			return nil
		}
		after = seqs[len(seqs)-1]
		del, err := visit(page)
		if len(del) > 0 {
			drop := make(map[uint64]bool, len(del))
			for _, i := range del {
				if i >= 0 && i < len(seqs) {
					drop[seqs[i]] = true
				}
			}
			p.remove(func(r poisonRecord) bool { return drop[r.seq] })
		}
		if err != nil {
			return err
		}
	}
}

func (p *poisonStore) Purge(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.mu.Lock()
	last := p.seq
	p.mu.Unlock()
	p.remove(func(r poisonRecord) bool { return r.seq <= last })
	return nil
}

func (p *poisonStore) remove(drop func(poisonRecord) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.recs[:0]
	for _, r := range p.recs {
		if !drop(r) {
			kept = append(kept, r)
		}
	}
	clear(p.recs[len(kept):])
	p.recs = kept
}
