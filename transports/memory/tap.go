package memory

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

var _ driver.Tapper = (*transport)(nil)

// Tap opens a tap: a group that is not durable, bound with the patterns,
// whose events are delivered without acknowledgement and which is removed
// from the broker by Close. Like any group it holds up to the broker's
// buffer of events; a tap whose reader stops holds up publishers of the
// events it matches, as a subscription would, until it is closed. The
// memory broker keeps no history, so FromBeginning is unsupported.
func (t *transport) Tap(ctx context.Context, cfg driver.TapConfig) (driver.Tap, error) {
	if len(cfg.Patterns) == 0 || cfg.Match == nil {
		return nil, fmt.Errorf("memory transport: a tap needs patterns and their Match function")
	}
	if cfg.FromBeginning {
		return nil, fmt.Errorf("memory transport: a tap from the beginning: the in-process broker keeps no events once delivered: %w", driver.ErrUnsupported)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if t.closed.Load() {
		return nil, errClosed
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	// Group names of subscriptions are "<service>.<subscription>" and
	// never contain a space.
	name := "tap " + hex.EncodeToString(id[:])
	g := t.b.bind(name, binding{strings.Join(cfg.Patterns, " "), cfg.Match})
	tp := &memTap{t: t, g: g, out: make(chan *message.Message), stop: make(chan struct{}), done: make(chan struct{})}
	go tp.run()
	return tp, nil
}

type memTap struct {
	t    *transport
	g    *group
	out  chan *message.Message
	stop chan struct{}
	once sync.Once
	done chan struct{}
}

func (tp *memTap) Messages() <-chan *message.Message { return tp.out }

func (tp *memTap) Err() error { return nil }

func (tp *memTap) run() {
	defer close(tp.done)
	defer close(tp.out)
	defer tp.t.b.unbind(tp.g)
	for {
		var m *message.Message
		select {
		case m = <-tp.g.queue:
			tp.g.took()
		case <-tp.stop:
			return
		case <-tp.t.ctx.Done():
			return
		}
		m.SetContext(tp.t.ctx)
		select {
		case tp.out <- m:
		case <-tp.stop:
			return
		case <-tp.t.ctx.Done():
			return
		}
	}
}

// Close removes the tap's group from the broker, dropping what it held.
func (tp *memTap) Close() error {
	tp.once.Do(func() { close(tp.stop) })
	<-tp.done
	return nil
}

// unbind removes a group from the broker: a tap's, which is not durable.
// Publishers that routed to it before and wait for room in it are let
// through: the group is drained until none waits (they look for room at
// least every maxRoomWait).
func (b *broker) unbind(g *group) {
	b.mu.Lock()
	delete(b.groups, g.name)
	b.routes = map[string][]*group{}
	b.mu.Unlock()
	for {
		for drained := false; !drained; {
			select {
			case <-g.queue:
			default:
				drained = true
			}
		}
		if g.full.Load() == 0 {
			return
		}
		g.signalRoom()
		time.Sleep(time.Millisecond)
	}
}
