package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/wire"
)

// Publisher is the transport's message.Publisher: Publish(name, msgs...)
// sends msgs to the exchange with routing key name and returns once the
// broker confirmed all of them.
//
// It is written on amqp091-go rather than taken from watermill-amqp,
// whose publisher with ConfirmDelivery waits for each message's confirm
// before sending the next one (about 580 messages/s on the reference
// machine), fails immediately while reconnecting and silently loses
// unroutable messages. This one sends all messages of a call before
// waiting, so their confirms are in flight together; concurrent calls
// share a small pool of confirm-mode channels, whose confirms the broker
// also batches; every message is mandatory, and a basic.return turns into
// driver.ErrUnroutable for that message (or, with ?unroutable=accept,
// into a success counted by Transport.UnroutableAccepted).
//
// A message's context bounds the whole call: waiting for the connection,
// for a channel to open, for the socket (a write to a frozen broker blocks
// once the socket's buffers are full, and a broker under a resource alarm
// stops reading) and for the confirm. When the messages' contexts can end,
// the call's messages are written by a goroutine of their own, so that the
// caller can return when they end whatever the writer waits for.
//
// Before a message is written it is checked against the limits whose
// violation would make the broker or amqp091-go close the connection or
// the channel, and with it the other messages in flight: header names of
// at most 255 bytes, headers and properties that fit in one frame of the
// size negotiated with the broker, a body of at most max_message_size. A
// message over a limit fails alone with an error wrapping
// driver.ErrTooLarge that names the limit.
type Publisher struct {
	t      *Transport
	slots  []*pubSlot
	next   atomic.Uint32
	closed atomic.Bool
}

var _ message.Publisher = (*Publisher)(nil)

// pubSlot holds one pooled channel, replaced after it dies.
type pubSlot struct {
	// opening is a lock held while the slot's channel is opened; it is a
	// channel so that waiting for it ends with the waiter's ctx.
	opening chan struct{}
	mu      sync.Mutex // guards pc; never held while waiting for the broker
	pc      *pubChannel
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
	for i := range p.slots {
		p.slots[i] = &pubSlot{opening: make(chan struct{}, 1)}
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
	var accept *atomic.Uint64
	if p.t.opts.acceptUnroutable {
		accept = &p.t.unroutable
	}
	return p.publishBatch(msgs[0].Context(), false, p.t.opts.exchange, topic, msgs, accept)
}

// Close stops the publisher: later Publish calls fail, and calls waiting
// for confirms fail when the transport closes. The transport closes it
// too; closing twice is harmless. It waits at most 2 s for the broker.
func (p *Publisher) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
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
	return nil
}

// errChannelGone is returned by pubChannel.send when the channel had died
// before the message was written, so it can be sent on another one.
var errChannelGone = errors.New("publishing channel closed")

// publish sends msgs to exchange with routing key key and waits for their
// confirms, until ctx or the message's own context ends. It serves the
// transport's own calls that take a ctx: Redeliver and the poison queue.
func (p *Publisher) publish(ctx context.Context, exchange, key string, msgs []*message.Message) error {
	return p.publishBatch(ctx, true, exchange, key, msgs, nil)
}

// publishBatch sends msgs to exchange with routing key key and waits for
// their confirms. ctx is the context of the messages that carry none and,
// when bound is set, also bounds every message. Messages the broker
// returns as unroutable fail with driver.ErrUnroutable, unless accept is
// set: then they succeed and are counted there.
func (p *Publisher) publishBatch(ctx context.Context, bound bool, exchange, key string, msgs []*message.Message, accept *atomic.Uint64) error {
	if p.closed.Load() || p.t.isClosed() {
		return errClosed
	}
	b := newBatch(msgs)
	b.acceptUnroutable = accept
	if len(key) > maxShortString {
		// amqp091-go would fail writing basic.publish and close the
		// connection.
		err := fmt.Errorf("%w: the routing key %q is %d bytes; AMQP limits routing keys to 255 bytes", driver.ErrTooLarge, abbreviate(key), len(key))
		for i := range msgs {
			b.resolve(i, err)
		}
		return b.err(key)
	}
	b.offline = p.offline
	stops, bounded := b.watchContexts(ctx, bound)
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	if bounded {
		go p.send(exchange, key, b)
	} else {
		p.send(exchange, key, b)
	}
	<-b.done
	return b.err(key)
}

// send writes the messages of b, each once its channel is open, unless its
// context ended first; b resolves each message.
func (p *Publisher) send(exchange, key string, b *batch) {
	slot := p.slots[int(p.next.Add(1))%len(p.slots)]
	var pc *pubChannel
	for i := range b.msgs {
		mctx := b.state[i].ctx
		if err := mctx.Err(); err != nil {
			b.resolve(i, notSent(err))
			continue
		}
		for {
			if pc == nil {
				var err error
				pc, err = p.channel(mctx, slot)
				if err != nil {
					b.resolve(i, err)
					break
				}
			}
			err := pc.send(mctx, exchange, key, b, i)
			if err == nil {
				break
			}
			if errors.Is(err, errChannelGone) {
				p.drop(slot, pc)
				pc = nil
				continue
			}
			b.resolve(i, err)
			break
		}
	}
}

// channel returns the slot's live channel, opening one (waiting for the
// connection within ctx) when it has none.
func (p *Publisher) channel(ctx context.Context, s *pubSlot) (*pubChannel, error) {
	for {
		if p.closed.Load() {
			return nil, errClosed
		}
		if pc := s.current(); pc != nil {
			return pc, nil
		}
		conn, _, err := p.t.conn.get(ctx)
		if err != nil {
			return nil, err
		}
		select {
		case s.opening <- struct{}{}:
		case <-ctx.Done():
			return nil, notSent(fmt.Errorf("waiting for a publishing channel to open: %w", ctx.Err()))
		}
		if pc := s.current(); pc != nil {
			<-s.opening
			return pc, nil
		}
		pc, err := p.openPubChannel(ctx, conn)
		if err == nil {
			s.mu.Lock()
			if p.closed.Load() {
				s.mu.Unlock()
				<-s.opening
				p.t.closeChannel(ctx, pc.ch)
				return nil, errClosed
			}
			s.pc = pc
			s.mu.Unlock()
		}
		<-s.opening
		if err == nil {
			return pc, nil
		}
		if ctx.Err() == nil && conn.IsClosed() {
			// The connection died under us; wait for the next one.
			p.t.conn.lost(conn)
			continue
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

func (p *Publisher) drop(s *pubSlot, pc *pubChannel) {
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
	// sendLock serialises sequence numbers and writes and guards pub; it
	// is a channel so that waiting for a write blocked on a frozen broker
	// ends with the waiter's ctx.
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
// nil without writing when the message's context ended first.
func (pc *pubChannel) send(ctx context.Context, exchange, key string, b *batch, i int) error {
	select {
	case pc.sendLock <- struct{}{}:
	default:
		// Another message is being written: wait for it within ctx,
		// since a write to a frozen broker may never end.
		select {
		case pc.sendLock <- struct{}{}:
		case <-ctx.Done():
			return notSent(ctx.Err())
		}
	}
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
	err = pc.ch.Publish(exchange, key, true, false, pc.pub)
	pc.reset()
	// The message is the last one queued (sendLock keeps others from
	// being queued meanwhile), unless its confirm came already.
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
	default:
		return fmt.Errorf("sending to the broker: %w", err)
	}
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
	msgs      []*message.Message
	state     []msgState
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

// watchContexts fails the unconfirmed messages of each distinct message
// context when it ends; messages without a context use ctx, and with all
// set every message fails when ctx ends. bounded reports whether any
// message can end.
func (b *batch) watchContexts(ctx context.Context, all bool) (stops []func() bool, bounded bool) {
	var seen []context.Context
	if all && ctx != nil && ctx.Done() != nil {
		bounded = true
		seen = append(seen, ctx)
		stops = append(stops, context.AfterFunc(ctx, func() { b.expire(ctx, true) }))
	}
	for i, m := range b.msgs {
		c := m.Context()
		if c == context.Background() && ctx != nil {
			c = ctx
		}
		b.state[i].ctx = c
		if c.Done() == nil {
			continue
		}
		bounded = true
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
	return stops, bounded
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
	b.remaining--
	if b.remaining == 0 {
		close(b.done)
	}
}

func (b *batch) err(key string) error {
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
