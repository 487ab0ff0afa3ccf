package amqp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The topology of a subscription (see the package documentation, "Topology"):
//
//	exchange "events" (topic) --pattern--> exchange <queue> (fanout, internal) --> queue <queue>
//
// The subscription's queue is bound only to the subscription's own
// exchange, and that exchange is bound to the topic exchange with the
// pattern. A pattern change therefore needs no knowledge of the old
// pattern: deleting the subscription's exchange removes its binding to the
// topic exchange, whatever its key was. AMQP 0-9-1 cannot list bindings;
// without the management plugin this is the only way to remove a binding
// whose key is unknown.
//
// The exchange records its pattern in its alternate-exchange argument, the
// one exchange argument RabbitMQ compares when an exchange is declared
// again: declaring it with another pattern fails with PRECONDITION_FAILED,
// which is how a changed pattern is detected. The argument names an
// exchange that never exists; RabbitMQ consults it only for a message the
// subscription's exchange cannot route, that is when its queue has been
// deleted, and such a message stays unroutable.

// maxName is the longest queue or exchange name AMQP allows (a short
// string).
const maxName = 255

// sep separates a prefix from the names it namespaces. Neither prefixes
// nor service names may contain it, so a prefixed name never equals a name
// of another prefix, or an unprefixed one.
const sep = ":"

// helperMark starts the suffix of the names derived from a subscription's
// queue name (its lock, its temporary exchange, its pattern stamp). The
// transport refuses subscription names containing it, so a derived name
// is never a subscription's.
const helperMark = "@"

// queueName returns the name of a group's queue, which is also the name of
// its exchange: the group, "<service>.<subscription>", after the prefix.
func (t *Transport) queueName(group string) string {
	if t.opts.prefix == "" {
		return group
	}
	return t.opts.prefix + sep + group
}

// QueueName returns the name of the queue of a subscription group
// ("<service>.<subscription>"), which is also the name of the
// subscription's exchange: the group itself, or "<prefix>:<group>" when the
// URL sets ?prefix=.
func (t *Transport) QueueName(group string) string { return t.queueName(group) }

// poisonName returns the name of a service's poison queue.
func (t *Transport) poisonName(service string) string {
	if t.opts.prefix == "" {
		return PoisonQueueName(service)
	}
	return t.opts.prefix + sep + PoisonQueueName(service)
}

// derived returns base with suffix, shortened to AMQP's limit by replacing
// the end of base with a hash of base when needed.
func derived(base, suffix string) string {
	if len(base)+len(suffix) <= maxName {
		return base + suffix
	}
	sum := sha256.Sum256([]byte(base))
	h := "~" + hex.EncodeToString(sum[:8])
	return base[:maxName-len(suffix)-len(h)] + h + suffix
}

// subNames are the broker objects of one subscription.
type subNames struct {
	queue    string // the queue, and the subscription's exchange
	lock     string // exclusive queue held while the pattern changes
	next     string // temporary exchange that carries the new pattern meanwhile
	exchange string // the topic exchange
}

func (t *Transport) subNames(group string) subNames {
	q := t.queueName(group)
	return subNames{queue: q, lock: derived(q, helperMark+"lock"), next: derived(q, helperMark+"next"), exchange: t.opts.exchange}
}

// stamp returns the alternate-exchange argument that records pattern on
// the subscription's exchange: a name derived from the queue's and a hash
// of the pattern, which fits AMQP's limit whatever the pattern's length
// and within the permissions granted on the queue's name.
func (n subNames) stamp(pattern string) amqp091.Table {
	sum := sha256.Sum256([]byte(pattern))
	return amqp091.Table{"alternate-exchange": derived(n.queue, helperMark+"pattern-"+hex.EncodeToString(sum[:8]))}
}

// errOtherPattern reports that the subscription's exchange carries another
// pattern than the one it was declared with. The broker has closed the
// channel of the declaration.
var errOtherPattern = errors.New("the subscription's exchange is bound with another pattern")

// declareSubExchange declares the subscription's exchange stamped with
// pattern. It returns errOtherPattern when the exchange exists with
// another pattern, and an error saying so when an exchange of that name
// exists that is not a subscription's exchange (another type, say), which
// is never deleted.
func declareSubExchange(ch *amqp091.Channel, n subNames, pattern string) error {
	err := ch.ExchangeDeclare(n.queue, amqp091.ExchangeFanout, true, false, true, false, n.stamp(pattern))
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.PreconditionFailed {
		// RabbitMQ names the argument that differs; only a different
		// alternate-exchange (pattern stamp) is a pattern change.
		if strings.Contains(ae.Reason, "alternate-exchange") {
			return errOtherPattern
		}
		return fmt.Errorf("an exchange named %q exists with other properties than a subscription's exchange (%s); it was not made by this transport: delete or rename it, or choose another subscription name or ?prefix=", n.queue, ae.Reason)
	}
	if err != nil {
		return fmt.Errorf("declaring the subscription's exchange %q: %w", n.queue, err)
	}
	return nil
}

// bindSubscription binds the subscription's exchange to its queue and the
// topic exchange to the subscription's exchange with pattern. Bindings are
// idempotent.
func bindSubscription(ch *amqp091.Channel, n subNames, pattern string) error {
	if err := ch.QueueBind(n.queue, "", n.queue, false, nil); err != nil {
		return fmt.Errorf("binding queue %q to its exchange: %w", n.queue, err)
	}
	if err := ch.ExchangeBind(n.queue, pattern, n.exchange, false, nil); err != nil {
		return fmt.Errorf("binding the subscription's exchange %q to exchange %q with %q: %w", n.queue, n.exchange, pattern, err)
	}
	return nil
}

// unbindLegacy removes the binding of the queue to the topic exchange with
// pattern that versions of the transport before the subscription
// exchanges made, once the subscription's exchange carries the pattern.
// Unbinding what does not exist is no error in RabbitMQ.
func unbindLegacy(ch *amqp091.Channel, n subNames, pattern string) error {
	if err := ch.QueueUnbind(n.queue, pattern, n.exchange, nil); err != nil {
		return fmt.Errorf("removing the direct binding of queue %q to exchange %q: %w", n.queue, n.exchange, err)
	}
	return nil
}

// onChannel runs f on a channel of its own on conn within ctx, and closes
// the channel.
func (t *Transport) onChannel(ctx context.Context, conn *amqp091.Connection, op string, f func(*amqp091.Channel) error) error {
	ch, err := t.channelOn(ctx, conn)
	if err != nil {
		return err
	}
	err = t.within(ctx, ch, op, func() error { return f(ch) })
	if err == nil || ctx.Err() == nil { // else within closes it
		t.closeChannel(ctx, ch)
	}
	return err
}

// testHookChange, when set by tests, is called after each step of
// changePattern that changes the broker's state, with the step's name.
var testHookChange func(step string)

func changed(step string) {
	if h := testHookChange; h != nil {
		h(step)
	}
}

// changePattern gives the subscription's exchange the pattern, without a
// moment in which an event matching the new pattern would miss the queue:
//
//  1. under the subscription's lock, an exclusive queue, so that instances
//     starting together change it one after the other (a lock its holder's
//     connection takes with it when it dies);
//  2. unless the exchange carries the pattern by now (another instance
//     changed it), a temporary exchange is bound to the queue and to the
//     topic exchange with the new pattern;
//  3. the subscription's exchange is deleted, which removes the old
//     pattern's binding, declared again with the new stamp, and bound;
//  4. the temporary exchange is deleted. A queue reached through both
//     exchanges meanwhile receives each event once: RabbitMQ delivers a
//     message at most once to a queue, whatever the routes.
//
// Events of the old pattern only stop arriving. Those already in the queue
// stay and reach the bus, which moves them to the poison queue as
// misrouted. A crash between 2 and 4 leaves the temporary exchange, with
// the new pattern; the next change removes it.
func (t *Transport) changePattern(ctx context.Context, conn *amqp091.Connection, n subNames, pattern string) error {
	release, err := t.lock(ctx, conn, n)
	if err != nil {
		return err
	}
	defer release()
	err = t.onChannel(ctx, conn, "checking the pattern of the subscription's exchange", func(ch *amqp091.Channel) error {
		return declareSubExchange(ch, n, pattern)
	})
	if err == nil {
		// Another instance changed it while this one waited for the lock.
		return t.onChannel(ctx, conn, "binding the subscription's exchange", func(ch *amqp091.Channel) error {
			return bindSubscription(ch, n, pattern)
		})
	}
	if !errors.Is(err, errOtherPattern) {
		return err
	}
	t.log.Info("amqp transport: the subscription's pattern changed; rebinding its queue", "queue", n.queue, "pattern", pattern)
	err = t.onChannel(ctx, conn, "binding the temporary exchange", func(ch *amqp091.Channel) error {
		if err := ch.ExchangeDeclare(n.next, amqp091.ExchangeFanout, true, false, true, false, nil); err != nil {
			return fmt.Errorf("declaring the temporary exchange %q: %w", n.next, err)
		}
		if err := ch.QueueBind(n.queue, "", n.next, false, nil); err != nil {
			return fmt.Errorf("binding queue %q to the temporary exchange: %w", n.queue, err)
		}
		changed("next bound to the queue")
		if err := ch.ExchangeBind(n.next, pattern, n.exchange, false, nil); err != nil {
			return fmt.Errorf("binding the temporary exchange %q to exchange %q with %q: %w", n.next, n.exchange, pattern, err)
		}
		changed("next bound with the new pattern")
		return nil
	})
	if err != nil {
		return err
	}
	// An instance of the old pattern that re-subscribes between the
	// deletion and the declaration declares the exchange with its own
	// pattern; then delete it again.
	for attempt := 1; ; attempt++ {
		err = t.onChannel(ctx, conn, "replacing the subscription's exchange", func(ch *amqp091.Channel) error {
			if err := ch.ExchangeDelete(n.queue, false, false); err != nil {
				return fmt.Errorf("deleting the subscription's exchange %q: %w", n.queue, err)
			}
			changed("exchange deleted")
			if err := declareSubExchange(ch, n, pattern); err != nil {
				return err
			}
			changed("exchange declared")
			if err := ch.QueueBind(n.queue, "", n.queue, false, nil); err != nil {
				return fmt.Errorf("binding queue %q to its exchange: %w", n.queue, err)
			}
			changed("exchange bound to the queue")
			if err := ch.ExchangeBind(n.queue, pattern, n.exchange, false, nil); err != nil {
				return fmt.Errorf("binding the subscription's exchange %q to exchange %q with %q: %w", n.queue, n.exchange, pattern, err)
			}
			changed("exchange bound with the new pattern")
			return nil
		})
		if !errors.Is(err, errOtherPattern) || attempt == 5 {
			break
		}
	}
	if err != nil {
		return err
	}
	return t.onChannel(ctx, conn, "deleting the temporary exchange", func(ch *amqp091.Channel) error {
		if err := unbindLegacy(ch, n, pattern); err != nil {
			return err
		}
		if err := ch.ExchangeDelete(n.next, false, false); err != nil {
			return fmt.Errorf("deleting the temporary exchange %q: %w", n.next, err)
		}
		changed("next deleted")
		return nil
	})
}

// lock takes the subscription's lock, an exclusive queue, waiting while
// another connection holds it, until ctx ends. release deletes the queue;
// the broker deletes it anyway when the connection closes.
func (t *Transport) lock(ctx context.Context, conn *amqp091.Connection, n subNames) (release func(), err error) {
	delay := 20 * time.Millisecond
	for {
		ch, err := t.channelOn(ctx, conn)
		if err != nil {
			return nil, err
		}
		err = t.within(ctx, ch, "taking the lock "+n.lock, func() error {
			_, err := ch.QueueDeclare(n.lock, false, false, true, false, amqp091.Table{"x-queue-type": "classic"})
			return err
		})
		if err == nil {
			return func() {
				rctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
				defer cancel()
				err := t.within(rctx, ch, "releasing the lock "+n.lock, func() error {
					_, err := ch.QueueDelete(n.lock, false, false, false)
					return err
				})
				if err == nil || rctx.Err() == nil { // else within closes it
					t.closeChannel(rctx, ch)
				}
			}, nil
		}
		var ae *amqp091.Error
		if !errors.As(err, &ae) || ae.Code != amqp091.ResourceLocked {
			if ctx.Err() == nil {
				t.closeChannel(ctx, ch)
			}
			return nil, fmt.Errorf("taking the lock %q: %w", n.lock, err)
		}
		t.log.Debug("amqp transport: another instance is changing the subscription's pattern; waiting", "queue", n.queue)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the lock %q, which another instance holds while it changes the subscription's pattern: %w", n.lock, context.Cause(ctx))
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}
