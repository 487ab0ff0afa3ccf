package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
)

// poisonQueue is the service's durable poison queue, "poison:<service>".
// Add publishes to it with confirms; List and Remove read it with
// basic.get and requeue what they keep, which puts the messages back in
// their original order. While a List or Remove runs, the messages it holds
// are invisible to another List of the same queue.
type poisonQueue struct {
	t    *Transport
	name string

	mu          sync.Mutex
	declaredGen uint64 // connection generation the queue was declared on
}

// declare makes sure the queue exists on the current connection.
func (p *poisonQueue) declare(ctx context.Context) error {
	conn, gen, err := p.t.conn.get(ctx)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.declaredGen == gen {
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := p.t.declareQueue(ch, p.name); err != nil {
		return err
	}
	p.declaredGen = gen
	return nil
}

// Add stores msg durably: nil means the broker confirmed it.
func (p *poisonQueue) Add(ctx context.Context, msg *message.Message) error {
	if err := p.declare(ctx); err != nil {
		return fmt.Errorf("amqp transport: poison queue %s: %w", p.name, err)
	}
	err := p.t.pub.publish(ctx, "", p.name, []*message.Message{msg})
	if errors.Is(err, eventbus.ErrUnroutable) {
		// Someone deleted the queue since it was declared: declare it
		// again and retry once.
		p.mu.Lock()
		p.declaredGen = 0
		p.mu.Unlock()
		if err = p.declare(ctx); err == nil {
			err = p.t.pub.publish(ctx, "", p.name, []*message.Message{msg})
		}
	}
	if err != nil {
		return fmt.Errorf("amqp transport: storing in poison queue %s: %w", p.name, err)
	}
	return nil
}

// channel opens a channel with the queue declared.
func (p *poisonQueue) channel(ctx context.Context) (*amqp091.Channel, error) {
	conn, _, err := p.t.conn.get(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := p.t.declareQueue(ch, p.name); err != nil {
		_ = ch.Close()
		return nil, err
	}
	return ch, nil
}

// List returns the stored messages, oldest first, and leaves them stored.
func (p *poisonQueue) List(ctx context.Context) ([]*message.Message, error) {
	var out []*message.Message
	err := p.scan(ctx, func(d *amqp091.Delivery) bool {
		out = append(out, toMessage(d))
		return false
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Remove deletes the stored messages with the given UUIDs, or all of them
// when none are given.
func (p *poisonQueue) Remove(ctx context.Context, uuids ...string) error {
	if len(uuids) == 0 {
		ch, err := p.channel(ctx)
		if err != nil {
			return fmt.Errorf("amqp transport: poison queue %s: %w", p.name, err)
		}
		defer ch.Close()
		if _, err := ch.QueuePurge(p.name, false); err != nil {
			return fmt.Errorf("amqp transport: purging poison queue %s: %w", p.name, err)
		}
		return nil
	}
	drop := make(map[string]bool, len(uuids))
	for _, id := range uuids {
		drop[id] = true
	}
	return p.scan(ctx, func(d *amqp091.Delivery) bool { return drop[toMessage(d).UUID] })
}

// scan gets every message of the queue; those for which take returns true
// are acknowledged (deleted), the others requeued.
func (p *poisonQueue) scan(ctx context.Context, take func(*amqp091.Delivery) bool) error {
	ch, err := p.channel(ctx)
	if err != nil {
		return fmt.Errorf("amqp transport: poison queue %s: %w", p.name, err)
	}
	defer ch.Close()
	var keepLast uint64
	for {
		if err := ctx.Err(); err != nil {
			return err // closing the channel requeues what was taken
		}
		d, ok, err := ch.Get(p.name, false)
		if err != nil {
			return fmt.Errorf("amqp transport: reading poison queue %s: %w", p.name, err)
		}
		if !ok {
			break
		}
		if take(&d) {
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("amqp transport: removing from poison queue %s: %w", p.name, err)
			}
		} else {
			keepLast = d.DeliveryTag
		}
	}
	if keepLast > 0 {
		if err := ch.Nack(keepLast, true, true); err != nil {
			return fmt.Errorf("amqp transport: requeueing poison queue %s: %w", p.name, err)
		}
	}
	return nil
}
