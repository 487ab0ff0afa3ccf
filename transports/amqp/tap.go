package amqp

import (
	"context"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

var _ driver.Tapper = (*Transport)(nil)

// tapPrefetch is how many messages the broker sends a tap ahead of its
// reader; the rest wait in the tap's queue.
const tapPrefetch = 256

// Tap opens a tap: an exclusive, auto-delete queue with a name the broker
// chooses, bound to the exchange with each pattern, so that it receives a
// copy of every matching event and takes nothing from the subscriptions'
// queues. The broker deletes the queue when the tap closes or its
// connection drops; a tap is not re-established after a connection loss
// (it would miss the events published meanwhile): its channel closes and
// Err says so. RabbitMQ keeps no history of routed events, so
// FromBeginning is unsupported.
func (t *Transport) Tap(ctx context.Context, cfg driver.TapConfig) (driver.Tap, error) {
	if len(cfg.Patterns) == 0 {
		return nil, fmt.Errorf("amqp transport: a tap needs at least one pattern")
	}
	if cfg.FromBeginning {
		return nil, fmt.Errorf("amqp transport: a tap from the beginning: RabbitMQ keeps no copy of events once routed to queues: %w", driver.ErrUnsupported)
	}
	if t.isClosed() {
		return nil, errClosed
	}
	ch, _, err := t.openChannel(ctx)
	if err != nil {
		return nil, fmt.Errorf("amqp transport: opening a tap: %w", err)
	}
	tag := "eventbus-tap-" + watermill.NewShortUUID()
	var q amqp091.Queue
	var d <-chan amqp091.Delivery
	err = t.within(ctx, ch, "setting up a tap", func() (err error) {
		if err = ch.Qos(tapPrefetch, 0, false); err != nil {
			return err
		}
		if q, err = ch.QueueDeclare("", false, true, true, false, nil); err != nil {
			return fmt.Errorf("declaring the tap's queue: %w", err)
		}
		for _, p := range cfg.Patterns {
			if err = ch.QueueBind(q.Name, p, t.opts.exchange, false, nil); err != nil {
				return fmt.Errorf("binding the tap's queue to exchange %q with %q: %w", t.opts.exchange, p, err)
			}
		}
		if d, err = ch.Consume(q.Name, tag, false, true, false, false, nil); err != nil {
			return fmt.Errorf("consuming the tap's queue: %w", err)
		}
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			t.closeChannel(ctx, ch)
		}
		return nil, fmt.Errorf("amqp transport: opening a tap: %w", err)
	}
	tp := &amqpTap{t: t, ch: ch, queue: q.Name, out: make(chan *message.Message), stop: make(chan struct{}), done: make(chan struct{})}
	go tp.run(d)
	return tp, nil
}

type amqpTap struct {
	t     *Transport
	ch    *amqp091.Channel
	queue string
	out   chan *message.Message
	stop  chan struct{}
	once  sync.Once
	done  chan struct{}
	err   error // set before done is closed
}

func (tp *amqpTap) Messages() <-chan *message.Message { return tp.out }

func (tp *amqpTap) Err() error {
	select {
	case <-tp.done:
		return tp.err
	default:
		return nil
	}
}

func (tp *amqpTap) run(d <-chan amqp091.Delivery) {
	defer close(tp.done)
	defer close(tp.out)
	for {
		var del amqp091.Delivery
		var ok bool
		select {
		case del, ok = <-d:
		case <-tp.stop:
			return
		}
		if !ok {
			select {
			case <-tp.stop:
			default:
				if !tp.t.isClosed() {
					tp.err = fmt.Errorf("amqp transport: the tap's channel to the broker at %s closed (connection lost, or its queue %s deleted); events published from now on are not seen: open a new tap", tp.t.conn.redacted, tp.queue)
				}
			}
			return
		}
		msg := toMessage(&del)
		msg.SetContext(tp.t.msgCtx)
		select {
		case tp.out <- msg:
		case <-tp.stop:
			return
		}
		// At most once: acknowledged once handed over.
		_ = del.Ack(false)
	}
}

// Close cancels the tap's consumer and closes its channel; the broker
// deletes its queue. It waits at most about 2 s for the broker.
func (tp *amqpTap) Close() error {
	tp.once.Do(func() {
		close(tp.stop)
		<-tp.done
		tp.t.closeChannel(context.Background(), tp.ch)
	})
	<-tp.done
	return nil
}
