package nats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

var _ driver.Tapper = (*Transport)(nil)

// Taps.
const (
	// tapBatch is how many messages a tap asks the server for at a time;
	// the rest wait in the stream, which keeps them whatever the tap does.
	tapBatch = 256
	// tapInactive is how long the server keeps a tap's consumer after its
	// client stopped asking (the tap's process died, or its connection
	// dropped): the server's own clean-up.
	tapInactive = 30 * time.Second
)

// Tap opens a tap: an ephemeral consumer of the event stream without
// acknowledgements, from the stream's end (or its first event with
// FromBeginning: the stream keeps events for max_age), filtered like a
// subscription of the patterns, so that it reads a copy of every matching
// event and takes nothing from the subscriptions' consumers. Events
// replayed to one group (Redeliver) are not shown, as on the other
// brokers. The server holds what the tap has not read yet, so a slow
// reader loses nothing. A consumer without acknowledgements cannot get
// back what the server sent into a connection that broke, so a tap ends
// when the connection is lost: its channel closes and Err says so. Close
// deletes the consumer; the server deletes one whose client is gone after
// 30 s.
func (t *Transport) Tap(ctx context.Context, cfg driver.TapConfig) (driver.Tap, error) {
	if len(cfg.Patterns) == 0 {
		return nil, errors.New("nats transport: a tap needs at least one pattern")
	}
	if t.isClosed() {
		return nil, errClosed
	}
	filters, exact := []string{t.opts.stream + ".>"}, false
	if len(cfg.Patterns) == 1 {
		// Several patterns' filter subjects may overlap, which a consumer
		// refuses: those taps read the namespace and match in Go.
		filters, exact = filterSubjects(t.opts.stream, cfg.Patterns[0], t.multiFilter)
	}
	if !exact && cfg.Match == nil {
		return nil, fmt.Errorf("nats transport: a tap of %v needs TapConfig.Match: the server cannot filter those patterns exactly", cfg.Patterns)
	}
	cc := jetstream.ConsumerConfig{
		Description:       "go-eventbus tap of " + strings.Join(cfg.Patterns, " "),
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: tapInactive,
		MemoryStorage:     true,
	}
	if cfg.FromBeginning {
		cc.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	setFilters(&cc, filters)
	events, _ := t.streams()
	cons, err := events.CreateConsumer(ctx, cc)
	if err != nil {
		return nil, t.apiError(ctx, fmt.Sprintf("creating a tap consumer of stream %s", t.opts.stream), err)
	}
	tp := &tap{
		t: t, stream: events, name: cons.CachedInfo().Name, match: cfg.Match, exact: exact,
		out: make(chan *message.Message), stop: make(chan struct{}), done: make(chan struct{}),
	}
	tp.life, tp.endLife = context.WithCancel(context.Background())
	// Messages sends its first pull request without waiting for the
	// server: it returns at once.
	if tp.iter, err = cons.Messages(jetstream.PullMaxMessages(tapBatch)); err != nil {
		tp.deleteConsumer()
		return nil, fmt.Errorf("nats transport: reading a tap consumer: %w", err)
	}
	t.subsMu.Lock()
	if t.closed.Load() {
		t.subsMu.Unlock()
		tp.iter.Stop()
		tp.deleteConsumer()
		return nil, errClosed
	}
	if t.taps == nil {
		t.taps = map[*tap]struct{}{}
	}
	t.taps[tp] = struct{}{}
	t.subsMu.Unlock()
	go tp.run()
	return tp, nil
}

// tap is an open tap; see Transport.Tap.
type tap struct {
	t      *Transport
	stream jetstream.Stream
	name   string // of the consumer
	match  func(name string) bool
	exact  bool
	iter   jetstream.MessagesContext
	out    chan *message.Message
	stop   chan struct{} // closed to end the tap
	done   chan struct{} // closed when run has returned and out is closed
	// life bounds the reads of large events' chunks, so that Close does
	// not wait for a server that does not answer.
	life    context.Context
	endLife context.CancelFunc

	once sync.Once
	mu   sync.Mutex
	err  error
}

// run hands the tap's messages to its reader until the tap ends.
func (tp *tap) run() {
	defer close(tp.done)
	defer close(tp.out)
	for {
		m, err := tp.iter.Next()
		if err != nil {
			select {
			case <-tp.stop:
			default:
				tp.end(fmt.Errorf("nats transport: tap of stream %s: %w", tp.t.opts.stream, err))
			}
			return
		}
		wm := tp.convert(m)
		select {
		case <-tp.stop:
			return // a body read cut short by Close is not shown
		default:
		}
		if wm == nil {
			continue
		}
		select {
		case tp.out <- wm:
		case <-tp.stop:
			return
		}
	}
}

// convert returns the message of m as the tap shows it, or nil for one it
// skips: a replay for one group, or an event its patterns do not match.
func (tp *tap) convert(m jetstream.Msg) *message.Message {
	h := m.Headers()
	if h.Get(headerGroup) != "" {
		return nil
	}
	name := strings.TrimPrefix(m.Subject(), tp.t.opts.stream+".")
	if !tp.exact && !tp.match(name) {
		return nil
	}
	data, lost := m.Data(), ""
	if v := h.Get(headerLarge); v != "" {
		ref, err := parseLargeRef(v)
		if err == nil {
			ctx, cancel := context.WithTimeout(tp.life, 30*time.Second)
			data, err = assemble(ctx, tp.stream, ref)
			cancel()
		}
		if err != nil {
			data, lost = nil, "the body could not be read: "+err.Error()
		}
	}
	wm := fromNATS(h, data, "", 0)
	if lost != "" {
		wm.Metadata[driver.HeaderIncomplete] = lost
	}
	return wm
}

// end stops the tap; err says why when it is not Close's doing.
func (tp *tap) end(err error) {
	tp.once.Do(func() {
		tp.mu.Lock()
		tp.err = err
		tp.mu.Unlock()
		close(tp.stop)
		tp.endLife()
		tp.iter.Stop()
		tp.t.subsMu.Lock()
		delete(tp.t.taps, tp)
		tp.t.subsMu.Unlock()
	})
}

// Messages returns the tap's channel; see driver.Tap.
func (tp *tap) Messages() <-chan *message.Message { return tp.out }

// Err returns why the tap ended, when neither its Close nor the
// transport's Close ended it.
func (tp *tap) Err() error {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.err
}

// Close ends the tap, waits until its channel is closed and deletes its
// consumer, within about 2 s also while the server does not answer.
func (tp *tap) Close() error {
	tp.end(nil)
	<-tp.done
	tp.deleteConsumer()
	return nil
}

func (tp *tap) deleteConsumer() {
	if tp.t.isClosed() {
		return // the connection is gone; the server removes it after tapInactive
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = tp.stream.DeleteConsumer(ctx, tp.name)
}

// endTaps ends every open tap with err (nil when the transport closes).
func (t *Transport) endTaps(err error) {
	t.subsMu.Lock()
	taps := make([]*tap, 0, len(t.taps))
	for tp := range t.taps {
		taps = append(taps, tp)
	}
	t.subsMu.Unlock()
	for _, tp := range taps {
		tp.end(err)
	}
}
