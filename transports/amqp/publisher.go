package amqp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/wire"
)

// Publisher is the transport's message.Publisher: Publish(name, msgs...)
// sends msgs to the exchange with routing key name and returns once the
// broker confirmed all of them; PublishBatch does the same for messages
// of different names (driver.BatchPublisher).
//
// It is written on amqp091-go rather than taken from watermill-amqp,
// whose publisher with ConfirmDelivery waits for each message's confirm
// before sending the next one (about 580 messages/s on the reference
// machine), fails immediately while reconnecting and silently loses
// unroutable messages. Here every message is mandatory, and a
// basic.return turns into driver.ErrUnroutable for that message (or, with
// ?unroutable=accept, into a success counted by
// Transport.UnroutableAccepted).
//
// Concurrent calls share confirm windows (group commit). Each pooled
// confirm-mode channel has a queue and one writer goroutine: a call puts
// its messages on a channel's queue and waits for their confirms; the
// writer sends whatever is queued back to back, so the messages of many
// callers are in flight together and the broker confirms them together
// (one basic.ack with multiple=true covers many), without a goroutine or a
// lock wait per call. Calls take the channels in turn, skipping one that
// holds 512 messages queued or awaiting confirms while another has room.
// The messages of one call stay on one channel, in order.
//
// A message's context bounds the whole call: waiting for the connection,
// for a channel to open, for the socket (a write to a frozen broker blocks
// once the socket's buffers are full, and a broker under a resource alarm
// stops reading) and for the confirm. The caller waits for its messages'
// outcome or their context, whichever comes first, so it returns at its
// deadline whatever the writer waits for; a message whose context ended
// before it was written is skipped by the writer.
//
// Before a message is written it is checked against the limits whose
// violation would make the broker or amqp091-go close the connection or
// the channel, and with it the other messages in flight: header names of
// at most 255 bytes, headers and properties that fit in one frame of the
// size negotiated with the broker, a body of at most max_message_size, a
// routing key of at most 255 bytes. A message over a limit fails alone
// with an error wrapping driver.ErrTooLarge that names the limit.
type Publisher struct {
	t      *Transport
	slots  []*pubSlot
	next   atomic.Uint32 // the slot of the next call, round robin
	closed atomic.Bool
	// life ends when the publisher closes; the writers stop with it.
	life    context.Context
	stop    context.CancelFunc
	writers sync.WaitGroup
}

var (
	_ message.Publisher     = (*Publisher)(nil)
	_ driver.BatchPublisher = (*Publisher)(nil)
)

// channelWindow is how many messages a pooled channel holds (queued or
// awaiting confirms) before calls skip it while another channel has room.
// The raw client reaches the broker's speed with 1,000 confirms in flight
// on one channel.
const channelWindow = 512

// pubSlot is one pooled channel, replaced after it dies, with its queue of
// messages to send and the writer that sends them.
type pubSlot struct {
	p *Publisher
	// load counts the messages given to the slot and not yet resolved.
	load atomic.Int64

	mu      sync.Mutex // guards the fields below; never held while waiting for the broker
	pc      *pubChannel
	queue   []queued // messages to send, oldest first
	spare   []queued // the writer's previous queue, reused
	busy    bool     // the writer is sending (it looks at queue again before it waits)
	started bool     // the writer runs
	pruneAt int      // queue length at which resolved messages are dropped from it
	wake    chan struct{}
}

// queued is message i of batch b, waiting to be written.
type queued struct {
	b *batch
	i int
}

func (s *pubSlot) current() *pubChannel {
	s.mu.Lock()
	pc := s.pc
	s.mu.Unlock()
	if pc != nil && !pc.isDead() {
		return pc
	}
	return nil
}

func newPublisher(t *Transport) *Publisher {
	p := &Publisher{t: t, slots: make([]*pubSlot, t.opts.publishChannels)}
	p.life, p.stop = context.WithCancel(context.Background())
	for i := range p.slots {
		p.slots[i] = &pubSlot{p: p, wake: make(chan struct{}, 1), pruneAt: minPrune}
	}
	return p
}

// Publish sends msgs to the exchange with topic as routing key (the bus
// passes the event name) and waits for the broker's confirms. Messages
// whose context ends first, that the broker nacks or returns as
// unroutable, that exceed a limit of the broker, or that were not
// confirmed when the connection dropped are named in an
// *driver.PublishError; the others were durably accepted. While the
// connection is down it waits for it within each message's context.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	return p.publishBatch(msgs[0].Context(), false, p.t.opts.exchange, topic, nil, msgs, p.accept())
}

// PublishBatch is Publish for messages of different names: msgs[i] is
// sent with routing key topics[i]. All of them go out on one channel in
// the order given, so they are in flight together and a queue that
// receives several of them receives them in that order.
func (p *Publisher) PublishBatch(topics []string, msgs []*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if len(topics) != len(msgs) {
		return fmt.Errorf("amqp transport: PublishBatch with %d topics for %d messages", len(topics), len(msgs))
	}
	return p.publishBatch(msgs[0].Context(), false, p.t.opts.exchange, "", topics, msgs, p.accept())
}

// Close stops the publisher: later Publish calls fail, messages not yet
// written fail with ErrClosed, and calls waiting for confirms fail when
// the transport closes. The transport closes it too; closing twice is
// harmless. It waits at most 2 s for the broker.
func (p *Publisher) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	p.stop()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	for _, s := range p.slots {
		s.mu.Lock()
		pc := s.pc
		s.pc = nil
		s.mu.Unlock()
		if pc != nil {
			p.t.closeChannel(ctx, pc.ch)
		}
	}
	// A writer blocked on a frozen broker's socket ends when the
	// connection is closed (the transport closes it first); do not wait
	// for it past the bound.
	stopped := make(chan struct{})
	go func() {
		p.writers.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
	}
	return nil
}

// errChannelGone is returned by pubChannel.send when the channel had died
// before the message was written, so it can be sent on another one.
var errChannelGone = errors.New("publishing channel closed")

// publish sends msgs to exchange with routing key key and waits for their
// confirms, until ctx or the message's own context ends. It serves the
// transport's own calls that take a ctx: Redeliver and the poison queue.
func (p *Publisher) publish(ctx context.Context, exchange, key string, msgs []*message.Message) error {
	return p.publishBatch(ctx, true, exchange, key, nil, msgs, nil)
}

// accept returns the counter of accepted unroutable messages when Publish
// accepts them (?unroutable=accept), else nil.
func (p *Publisher) accept() *atomic.Uint64 {
	if p.t.opts.acceptUnroutable {
		return &p.t.unroutable
	}
	return nil
}

// publishBatch sends msgs to exchange, each with routing key key or, when
// keys is set, keys[i], and waits for their confirms. ctx is the context
// of the messages that carry none and, when bound is set, also bounds
// every message. Messages the broker returns as unroutable fail with
// driver.ErrUnroutable, unless accept is set: then they succeed and are
// counted there.
func (p *Publisher) publishBatch(ctx context.Context, bound bool, exchange, key string, keys []string, msgs []*message.Message, accept *atomic.Uint64) error {
	if p.closed.Load() || p.t.isClosed() {
		return errClosed
	}
	b := newBatch(msgs)
	b.acceptUnroutable = accept
	b.exchange, b.key, b.keys = exchange, key, keys
	b.offline = p.offline
	single := b.contexts(ctx, bound)
	todo := make([]int, 0, len(msgs))
	for i := range msgs {
		if k := b.routingKey(i); len(k) > maxShortString {
			// amqp091-go would fail writing basic.publish and close the
			// connection.
			b.resolve(i, fmt.Errorf("%w: the routing key %q is %d bytes; AMQP limits routing keys to 255 bytes", driver.ErrTooLarge, abbreviate(k), len(k)))
			continue
		}
		if err := b.state[i].ctx.Err(); err != nil {
			b.resolve(i, notSent(err))
			continue
		}
		todo = append(todo, i)
	}
	if len(todo) > 0 {
		if !p.pick().enqueue(b, todo) {
			for _, i := range todo {
				b.resolve(i, errClosed)
			}
		}
	}
	b.wait(ctx, bound, single)
	return b.err()
}

// pick returns the slot a call goes to: the next one in turn whose
// window has room, else the least loaded.
func (p *Publisher) pick() *pubSlot {
	n := len(p.slots)
	start := int(p.next.Add(1))
	var best *pubSlot
	var bestLoad int64
	for k := range n {
		s := p.slots[(start+k)%n]
		l := s.load.Load()
		if l < channelWindow {
			return s
		}
		if best == nil || l < bestLoad {
			best, bestLoad = s, l
		}
	}
	return best
}

// minPrune is the queue length from which enqueue drops the messages that
// were resolved while they waited (their context ended while the writer
// waited for the broker), so that a long outage does not pile them up.
const minPrune = 1024

// enqueue gives messages todo of b to the slot's writer, starting it if
// needed; false means the publisher is closed.
func (s *pubSlot) enqueue(b *batch, todo []int) bool {
	b.slot = s
	s.load.Add(int64(len(todo)))
	s.mu.Lock()
	if s.p.closed.Load() {
		s.mu.Unlock()
		s.load.Add(-int64(len(todo)))
		b.slot = nil
		return false
	}
	if len(s.queue)+len(todo) >= s.pruneAt {
		s.prune()
	}
	for _, i := range todo {
		s.queue = append(s.queue, queued{b, i})
	}
	if !s.started {
		s.started = true
		s.p.writers.Add(1)
		go s.run()
	}
	wake := !s.busy
	s.mu.Unlock()
	if wake {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// prune drops resolved messages from the queue; s.mu is held.
func (s *pubSlot) prune() {
	kept := s.queue[:0]
	for _, q := range s.queue {
		if !q.b.resolved(q.i) {
			kept = append(kept, q)
		}
	}
	clear(s.queue[len(kept):])
	s.queue = kept
	s.pruneAt = max(2*len(kept), minPrune)
}

// run is the slot's writer: it sends what is queued, in order, until the
// publisher closes.
func (s *pubSlot) run() {
	defer s.p.writers.Done()
	for {
		s.mu.Lock()
		for len(s.queue) == 0 {
			s.busy = false
			s.mu.Unlock()
			select {
			case <-s.wake:
			case <-s.p.life.Done():
				s.closeQueue()
				return
			}
			s.mu.Lock()
		}
		items := s.queue
		s.queue, s.spare = s.spare[:0], nil
		s.busy = true
		s.mu.Unlock()
		s.write(items)
		clear(items)
		s.mu.Lock()
		s.spare = items[:0]
		s.mu.Unlock()
		if s.p.life.Err() != nil {
			s.closeQueue()
			return
		}
	}
}

// closeQueue fails what is still queued when the publisher closes.
func (s *pubSlot) closeQueue() {
	s.mu.Lock()
	items := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, q := range items {
		q.b.resolve(q.i, errClosed)
	}
}

// write sends items in order, each once the slot's channel is open,
// unless its context ended first or the publisher closed.
func (s *pubSlot) write(items []queued) {
	var pc *pubChannel
	for k, q := range items {
		b, i := q.b, q.i
		if s.p.life.Err() != nil {
			for _, q := range items[k:] {
				q.b.resolve(q.i, errClosed)
			}
			return
		}
		if b.resolved(i) {
			continue
		}
		for {
			if pc == nil || pc.isDead() {
				var err error
				if pc, err = s.channel(b.state[i].ctx); err != nil {
					b.resolve(i, err)
					break
				}
			}
			err := pc.send(b, i)
			if err == nil {
				break
			}
			if errors.Is(err, errConnBroken) {
				// Send it once the channel is known closed, so that the
				// next channel opens on the next connection.
				select {
				case <-pc.done:
				case <-b.state[i].ctx.Done():
				case <-s.p.life.Done():
				}
				err = errChannelGone
			}
			if errors.Is(err, errChannelGone) {
				s.drop(pc)
				pc = nil
				continue
			}
			b.resolve(i, err)
			break
		}
	}
}

// channel returns the slot's live channel, opening one (waiting for the
// connection) when it has none, until mctx (the context of the message
// to send) ends or the publisher closes.
func (s *pubSlot) channel(mctx context.Context) (*pubChannel, error) {
	if pc := s.current(); pc != nil {
		return pc, nil
	}
	ctx, cancel := context.WithCancel(mctx)
	defer cancel()
	stop := context.AfterFunc(s.p.life, cancel)
	defer stop()
	p := s.p
	for {
		if p.closed.Load() {
			return nil, errClosed
		}
		conn, _, err := p.t.conn.get(ctx)
		if err != nil {
			if p.life.Err() != nil {
				return nil, errClosed
			}
			return nil, err
		}
		pc, err := p.openPubChannel(ctx, conn)
		if err == nil {
			s.mu.Lock()
			if p.closed.Load() {
				s.mu.Unlock()
				p.t.closeChannel(ctx, pc.ch)
				return nil, errClosed
			}
			s.pc = pc
			s.mu.Unlock()
			return pc, nil
		}
		if ctx.Err() == nil && conn.IsClosed() {
			// The connection died under us; wait for the next one.
			p.t.conn.lost(conn)
			continue
		}
		if p.life.Err() != nil {
			return nil, errClosed
		}
		return nil, fmt.Errorf("opening a publishing channel: %w", err)
	}
}

// offline says why a message could not be sent when the transport is not
// connected, and returns "" when it is.
func (p *Publisher) offline() string {
	if up, _ := p.t.conn.connected(); up {
		return ""
	}
	return fmt.Sprintf("%v (%s)", errNotConnected, p.t.conn.redacted)
}

func (s *pubSlot) drop(pc *pubChannel) {
	s.mu.Lock()
	if s.pc == pc {
		s.pc = nil
	}
	s.mu.Unlock()
}

// pubChannel is a confirm-mode channel with the messages awaiting their
// confirms. One goroutine reads both its returns and its confirms: the
// broker sends a message's basic.return before its basic.ack, and
// amqp091-go hands the return over (unbuffered) before it reads the ack, so
// reading both in one goroutine sees the return first.
//
// amqp091-go delivers confirms in delivery-tag order (it resequences them),
// and tags are consecutive on a channel, so the messages awaiting confirms
// are a FIFO queue rather than a map: registering and confirming a message
// costs no allocation and no hashing.
type pubChannel struct {
	ch *amqp091.Channel
	// frameMax is the frame size negotiated on the channel's connection,
	// 0 for no limit; maxBody is the transport's max_message_size.
	frameMax, maxBody int
	// sendLock is held while a message is written (only the slot's writer
	// writes); a write that stays held blocks on the broker's socket.
	sendLock chan struct{}
	// pub is the publishing being sent, reused from message to message
	// with its header table: amqp091-go has serialised it when Publish
	// returns, so reusing it saves a map and the boxing of header values
	// that did not change (the spec version, source, name, event type,
	// content type).
	pub amqp091.Publishing

	mu    sync.Mutex // guards queue, head and dead
	queue []pending  // awaiting confirms in publishing order, from queue[head]
	head  int
	dead  error
	done  chan struct{}
}

type pending struct {
	tag      uint64 // delivery tag
	b        *batch
	i        int
	id       string // the message-id property, to match returns
	returned *amqp091.Return
	// writing marks the message being written: if the channel dies
	// meanwhile, its writer decides its fate (sent again on another
	// channel when nothing was written).
	writing bool
}

// openPubChannel opens a confirm-mode channel on conn within ctx.
func (p *Publisher) openPubChannel(ctx context.Context, conn *amqp091.Connection) (*pubChannel, error) {
	t := p.t
	ch, err := t.channelOn(ctx, conn)
	if err != nil {
		return nil, err
	}
	err = t.within(ctx, ch, "setting up a publishing channel", func() error {
		if err := ch.Confirm(false); err != nil {
			return err
		}
		// Channels are long-lived, so declaring the exchange on each
		// costs little, and a channel closed by a publish to a deleted
		// exchange is replaced by one that works.
		return t.declareExchange(ch)
	})
	if err != nil {
		t.closeChannel(ctx, ch)
		return nil, err
	}
	pc := &pubChannel{
		ch: ch, frameMax: conn.Config.FrameSize, maxBody: t.opts.maxMessageSize,
		sendLock: make(chan struct{}, 1), done: make(chan struct{}),
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	returns := ch.NotifyReturn(make(chan amqp091.Return))
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	go pc.run(confirms, returns, closes, t)
	return pc, nil
}

func (pc *pubChannel) isDead() bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.dead != nil
}

func (pc *pubChannel) run(confirms <-chan amqp091.Confirmation, returns <-chan amqp091.Return, closes <-chan *amqp091.Error, t *Transport) {
	defer close(pc.done)
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			pc.markReturned(r)
		case c, ok := <-confirms:
			if !ok {
				var reason error = errors.New("channel closed")
				select {
				case e := <-closes:
					if e != nil {
						reason = e
					}
				default:
				}
				if t.isClosed() {
					reason = errClosed
				}
				pc.fail(fmt.Errorf("publishing channel closed before the broker confirmed the message: %w", reason))
				return
			}
			pc.confirm(c)
		}
	}
}

// push registers a message sent with delivery tag p.tag; pc.mu is held.
func (pc *pubChannel) push(p pending) {
	if pc.head > 0 && len(pc.queue) == cap(pc.queue) {
		// Reuse the space of confirmed messages rather than grow.
		n := copy(pc.queue, pc.queue[pc.head:])
		clear(pc.queue[n:])
		pc.queue = pc.queue[:n]
		pc.head = 0
	}
	pc.queue = append(pc.queue, p)
}

// take removes and returns the message awaiting the confirm of tag; pc.mu
// is held. It is the oldest one, unless the broker confirmed a tag that is
// no longer awaited.
func (pc *pubChannel) take(tag uint64) (pending, bool) {
	q := pc.queue
	if pc.head < len(q) && q[pc.head].tag == tag {
		p := q[pc.head]
		q[pc.head] = pending{}
		pc.head++
		if pc.head == len(q) {
			pc.queue, pc.head = q[:0], 0
		}
		return p, true
	}
	for j := pc.head; j < len(q); j++ {
		if q[j].tag == tag {
			p := q[j]
			copy(q[j:], q[j+1:])
			q[len(q)-1] = pending{}
			pc.queue = q[:len(q)-1]
			if pc.head == len(pc.queue) {
				pc.queue, pc.head = pc.queue[:0], 0
			}
			return p, true
		}
	}
	return pending{}, false
}

// markReturned flags the oldest message awaiting a confirm with the
// returned message's ID; returns arrive in publishing order.
func (pc *pubChannel) markReturned(r amqp091.Return) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for j := pc.head; j < len(pc.queue); j++ {
		if p := &pc.queue[j]; p.returned == nil && p.id == r.MessageId {
			p.returned = &r
			return
		}
	}
}

func (pc *pubChannel) confirm(c amqp091.Confirmation) {
	pc.mu.Lock()
	p, ok := pc.take(c.DeliveryTag)
	pc.mu.Unlock()
	if !ok {
		return
	}
	switch {
	case !c.Ack:
		p.b.resolve(p.i, errors.New("the broker nacked the message"))
	case p.returned != nil && p.b.acceptUnroutable != nil:
		// ?unroutable=accept: the broker has it and drops it.
		p.b.acceptUnroutable.Add(1)
		p.b.resolve(p.i, nil)
	case p.returned != nil:
		p.b.resolve(p.i, fmt.Errorf("%w (%s %d %s)", driver.ErrUnroutable, p.returned.Exchange, p.returned.ReplyCode, p.returned.ReplyText))
	default:
		p.b.resolve(p.i, nil)
	}
}

// fail marks the channel dead and fails the messages awaiting confirms,
// except the one being written, which its writer settles.
func (pc *pubChannel) fail(err error) {
	pc.mu.Lock()
	pc.dead = err
	var ps, writing []pending
	for _, p := range pc.queue[pc.head:] {
		if p.writing {
			writing = append(writing, p)
		} else {
			ps = append(ps, p)
		}
	}
	pc.queue, pc.head = writing, 0
	pc.mu.Unlock()
	for _, p := range ps {
		p.b.resolve(p.i, err)
	}
}

// maxReusedHeaders is the largest header table a channel keeps for the
// next message: a map keeps the size it once had, and clearing it for
// each message would then cost as much as a fresh one.
const maxReusedHeaders = 64

// send writes message i of b and registers it for its confirm; it returns
// nil without writing when the message was resolved already (its context
// ended). Only the slot's writer calls it.
func (pc *pubChannel) send(b *batch, i int) error {
	pc.sendLock <- struct{}{}
	defer func() { <-pc.sendLock }()
	err := fillPublishing(&pc.pub, b.msgs[i], pc.frameMax, pc.maxBody)
	if err != nil {
		pc.reset()
		return err
	}
	pc.mu.Lock()
	if pc.dead != nil {
		pc.mu.Unlock()
		pc.reset()
		return errChannelGone
	}
	if !b.claim(i) {
		pc.mu.Unlock()
		pc.reset()
		return nil // its context ended: already reported
	}
	seq := pc.ch.GetNextPublishSeqNo()
	pc.push(pending{tag: seq, b: b, i: i, id: pc.pub.MessageId, writing: true})
	pc.mu.Unlock()
	err = pc.ch.Publish(b.exchange, b.routingKey(i), true, false, pc.pub)
	pc.reset()
	// The message is the last one queued (only this writer queues),
	// unless its confirm came already.
	pc.mu.Lock()
	queued := false
	if n := len(pc.queue); n > pc.head && pc.queue[n-1].tag == seq && pc.queue[n-1].b == b && pc.queue[n-1].i == i {
		queued = true
		if err == nil && pc.dead == nil {
			pc.queue[n-1].writing = false
			pc.mu.Unlock()
			return nil
		}
		pc.queue[n-1] = pending{}
		pc.queue = pc.queue[:n-1]
		if pc.head == len(pc.queue) {
			pc.queue, pc.head = pc.queue[:0], 0
		}
	}
	dead := pc.dead
	pc.mu.Unlock()
	switch {
	case err == nil && queued:
		// Written, but the channel died before it could be confirmed.
		b.resolve(i, dead)
		return nil
	case err == nil:
		return nil // confirmed already
	case errors.Is(err, amqp091.ErrClosed):
		// amqp091-go checks for a closed channel or connection before
		// writing anything: send it on another channel. (amqp091-go
		// has taken its sequence number back.)
		b.unclaim(i)
		return errChannelGone
	case socketError(err):
		// The connection broke while the message was written. A write
		// that fails has not written all it was given, and the message's
		// last frame is in the last write, so the broker does not have it
		// whole and drops it: it is sent again on the next connection.
		// (Writing a burst, the writer meets the broken socket before
		// amqp091-go has noticed the connection is gone.)
		b.unclaim(i)
		return errConnBroken
	default:
		return fmt.Errorf("sending to the broker: %w", err)
	}
}

// errConnBroken is returned by pubChannel.send when a write to the
// socket failed: the message was not (completely) written, and the
// channel's connection is going down.
var errConnBroken = errors.New("the connection broke while the message was written")

// socketError reports whether err is the failure of a write to the
// connection's socket, rather than of encoding the message.
func socketError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// reset drops what pub must not keep until the next message: the payload,
// and a header table grown too large.
func (pc *pubChannel) reset() {
	pc.pub.Body = nil
	if len(pc.pub.Headers) > maxReusedHeaders {
		pc.pub.Headers = nil
	}
}

// batch collects the outcome of one Publish call.
type batch struct {
	msgs     []*message.Message
	state    []msgState
	exchange string
	key      string   // the routing key of every message, unless keys is set
	keys     []string // the routing key of each message
	slot     *pubSlot // the slot the messages were given to, whose load they count in

	mu        sync.Mutex // guards state's err, resolved and sent, and remaining
	remaining int
	done      chan struct{}
	// offline, when set, says why a message was not sent when its
	// context ended.
	offline func() string
	// acceptUnroutable, when set, counts the messages the broker returned
	// as unroutable, which then succeed (?unroutable=accept).
	acceptUnroutable *atomic.Uint64
}

type msgState struct {
	ctx      context.Context
	err      error
	resolved bool
	sent     bool // written, or about to be
}

func newBatch(msgs []*message.Message) *batch {
	return &batch{msgs: msgs, state: make([]msgState, len(msgs)), remaining: len(msgs), done: make(chan struct{})}
}

func (b *batch) routingKey(i int) string {
	if b.keys != nil {
		return b.keys[i]
	}
	return b.key
}

// contexts sets each message's context: its own, or ctx for those that
// carry none. It returns the one context every message has, with all
// set also ctx itself, or nil when there are several (or none that can
// end).
func (b *batch) contexts(ctx context.Context, all bool) context.Context {
	var single context.Context
	several := false
	for i, m := range b.msgs {
		c := m.Context()
		if c == context.Background() && ctx != nil {
			c = ctx
		}
		b.state[i].ctx = c
		switch {
		case i == 0:
			single = c
		case c != single:
			several = true
		}
	}
	if all && ctx != nil && ctx != single {
		several = true
	}
	if several || single == nil || single.Done() == nil {
		return nil
	}
	return single
}

// wait returns once every message is resolved or its context ended (then
// it is resolved as failed). single, when not nil, is the one context of
// every message: the common case costs no registration with the context.
func (b *batch) wait(ctx context.Context, all bool, single context.Context) {
	if single != nil {
		select {
		case <-b.done:
		case <-single.Done():
			b.expire(single, true)
		}
		return
	}
	stops := b.watchContexts(ctx, all)
	<-b.done
	for _, stop := range stops {
		stop()
	}
}

// watchContexts fails the unconfirmed messages of each distinct message
// context when it ends, and with all set every message when ctx ends.
func (b *batch) watchContexts(ctx context.Context, all bool) (stops []func() bool) {
	var seen []context.Context
	if all && ctx != nil && ctx.Done() != nil {
		seen = append(seen, ctx)
		stops = append(stops, context.AfterFunc(ctx, func() { b.expire(ctx, true) }))
	}
	for i := range b.msgs {
		c := b.state[i].ctx
		if c.Done() == nil {
			continue
		}
		dup := false
		for _, s := range seen {
			if s == c {
				dup = true
				break
			}
		}
		if dup {
			continue
		}
		seen = append(seen, c)
		stops = append(stops, context.AfterFunc(c, func() { b.expire(c, false) }))
	}
	return stops
}

// expire fails the unresolved messages whose context is c, which ended,
// or all of them.
func (b *batch) expire(c context.Context, all bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for j := range b.state {
		if st := &b.state[j]; (all || st.ctx == c) && !st.resolved {
			if st.sent {
				b.resolveLocked(j, fmt.Errorf("no confirm from the broker before the context ended; the broker may still have the message: %w", c.Err()))
			} else if why := b.why(); why != "" {
				b.resolveLocked(j, fmt.Errorf("not sent to the broker before the context ended: %s: %w", why, c.Err()))
			} else {
				b.resolveLocked(j, notSent(c.Err()))
			}
		}
	}
}

func (b *batch) why() string {
	if b.offline == nil {
		return ""
	}
	return b.offline()
}

// notSent is the error of a message that the context's end kept from
// being written.
func notSent(err error) error {
	return fmt.Errorf("not sent to the broker before the context ended: %w", err)
}

// claim marks message i as being written, unless it is resolved already
// (its context ended): then it returns false.
func (b *batch) claim(i int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state[i].resolved {
		return false
	}
	b.state[i].sent = true
	return true
}

// unclaim undoes claim for a message that was not written after all.
func (b *batch) unclaim(i int) {
	b.mu.Lock()
	b.state[i].sent = false
	b.mu.Unlock()
}

// resolved reports whether message i has its outcome.
func (b *batch) resolved(i int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state[i].resolved
}

func (b *batch) resolve(i int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.resolveLocked(i, err)
}

func (b *batch) resolveLocked(i int, err error) {
	st := &b.state[i]
	if st.resolved {
		return
	}
	st.resolved = true
	st.err = err
	if b.slot != nil {
		b.slot.load.Add(-1)
	}
	b.remaining--
	if b.remaining == 0 {
		close(b.done)
	}
}

func (b *batch) err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var failed []driver.Failure
	for i := range b.state {
		if err := b.state[i].err; err != nil {
			failed = append(failed, driver.Failure{UUID: b.msgs[i].UUID, Err: err})
		}
	}
	if failed == nil {
		return nil
	}
	return &driver.PublishError{Failed: failed}
}

// AMQP's framing, for the limits checked before a message is written.
const (
	// maxShortString is the longest AMQP short string: header names,
	// routing keys, and properties such as message-id.
	maxShortString = 255
	// frameOverhead is what a frame adds to its payload: type, channel,
	// size and the frame-end octet.
	frameOverhead = 8
	// contentHeaderFixed is the part of a content header's payload that
	// does not depend on the message: class-id, weight, body size and
	// property flags, and the delivery mode and timestamp every message
	// carries.
	contentHeaderFixed = 2 + 2 + 8 + 2 + 1 + 8
	// tableEntryOverhead is what a header table adds to a string entry's
	// name and value: the name's length octet, the type octet and the
	// value's four length octets.
	tableEntryOverhead = 1 + 1 + 4
)

// fillPublishing converts a message to an AMQP publishing in pub: the
// metadata become headers and fill the native properties other clients
// read. It reuses pub's header table, and the boxed header values that are
// unchanged since the previous message.
//
// It also measures the content header as it fills it, and returns an
// error wrapping driver.ErrTooLarge when the message breaks a limit
// whose violation would close the connection (a header name over 255
// bytes, which amqp091-go cannot encode; a content header larger than
// frameMax, which the broker rejects with a frame error) or the channel
// (a body larger than maxBody, which the broker refuses with
// PRECONDITION_FAILED). Header values are strings, which amqp091-go
// always encodes. The measurement adds a few additions to the loop that
// copies the headers: no allocation, no second pass.
func fillPublishing(pub *amqp091.Publishing, m *message.Message, frameMax, maxBody int) error {
	if maxBody > 0 && len(m.Payload) > maxBody {
		return fmt.Errorf("%w: the body is %d bytes, more than max_message_size %d (RabbitMQ's limit, 128 MiB unless the broker's max_message_size says otherwise; set ?max_message_size= in the URL to the broker's value)", driver.ErrTooLarge, len(m.Payload), maxBody)
	}
	h := pub.Headers
	if h == nil {
		h = make(amqp091.Table, len(m.Metadata))
	}
	for k := range h {
		if _, ok := m.Metadata[k]; !ok {
			delete(h, k)
		}
	}
	table, long := 0, ""
	for k, v := range m.Metadata {
		if len(k) > maxShortString {
			long = k
		}
		table += tableEntryOverhead + len(k) + len(v)
		if old, ok := h[k].(string); !ok || old != v {
			h[k] = v
		}
	}
	*pub = amqp091.Publishing{
		Headers:      h,
		DeliveryMode: amqp091.Persistent,
		Body:         m.Payload,
		ContentType:  shortstr(m.Metadata.Get(wire.ContentType)),
		MessageId:    shortstr(m.UUID),
	}
	if c := m.Metadata.Get(wire.CorrelationID); c != "" {
		pub.CorrelationId = shortstr(c)
	}
	if ts, err := time.Parse(time.RFC3339Nano, m.Metadata.Get(wire.Time)); err == nil {
		pub.Timestamp = ts
	} else {
		pub.Timestamp = time.Now()
	}
	if long != "" {
		return fmt.Errorf("%w: the header name %q is %d bytes; AMQP limits header names to 255 bytes (metadata keys travel with the prefix %q)", driver.ErrTooLarge, abbreviate(long), len(long), driver.MetadataPrefix)
	}
	size := contentHeaderFixed + shortLen(pub.ContentType) + shortLen(pub.MessageId) + shortLen(pub.CorrelationId)
	if len(m.Metadata) > 0 {
		size += 4 + table
	}
	if frameMax > 0 && size+frameOverhead > frameMax {
		return fmt.Errorf("%w: the header table of %.1f kB (%d header(s)) exceeds the frame size %d negotiated with the broker: AMQP sends all headers and properties in one frame, here of %d bytes; shorten or drop metadata", driver.ErrTooLarge, float64(table)/1000, len(m.Metadata), frameMax, size+frameOverhead)
	}
	return nil
}

// shortLen is the encoded size of a short-string property: its length
// octet and bytes, or nothing when it is empty (and so not sent).
func shortLen(s string) int {
	if s == "" {
		return 0
	}
	return 1 + len(s)
}

// shortstr drops values too long for an AMQP short string (255 bytes); the
// headers still carry them.
func shortstr(s string) string {
	if len(s) > maxShortString {
		return ""
	}
	return s
}

// abbreviate shortens s for an error message.
func abbreviate(s string) string {
	if len(s) <= 40 {
		return s
	}
	return s[:40] + "..."
}
