package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/internal/handled"
)

// TestFaultCutMidStream publishes 10,000 events while a subscriber consumes
// them, cuts every connection in the middle, heals it, and checks the
// outcome: every event whose Publish returned nil is handled at least once,
// and every other event was reported failed by its Publish.
func TestFaultCutMidStream(t *testing.T) {
	const total, batchSize = 10000, 100
	px := startFaultProxy(t)
	url := isolatedURLVia(t, px.Addr())
	sub := newBus(t, url, unique("fault-sub-"))
	pub := newBus(t, url, unique("fault-pub-"))
	handled := handled.NewCounter()
	if err := sub.Subscribe("fault.#", handled.Handle, eventbus.Concurrency(16)); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	subT, pubT := transportOf(t, sub), transportOf(t, pub)
	_, subGen := subT.conn.connected()
	_, pubGen := pubT.conn.connected()

	evs := make([]eventbus.Event, total)
	for i := range evs {
		evs[i] = mustEvent(t, fmt.Sprintf("fault.e%d", i%7), map[string]int{"n": i})
	}
	var mu sync.Mutex
	var ok, failed []string
	var otherErrs []error
	var published, inFlight atomic.Int64
	var nextBatch atomic.Int64
	half := make(chan struct{})
	var halfOnce sync.Once
	var wg sync.WaitGroup
	// Four publishers keep batches in flight all the time, so the cut
	// lands in the middle of some.
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(nextBatch.Add(1)-1) * batchSize
				if i >= total {
					return
				}
				if i >= total/2 {
					halfOnce.Do(func() { close(half) })
				}
				batch := evs[i : i+batchSize]
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				inFlight.Add(1)
				err := pub.Publish(ctx, batch...)
				inFlight.Add(-1)
				cancel()
				mu.Lock()
				bad := map[string]bool{}
				var pe *eventbus.PublishError
				switch {
				case err == nil:
				case errors.As(err, &pe):
					for _, f := range pe.Failed {
						bad[f.ID] = true
					}
				default:
					otherErrs = append(otherErrs, err)
					for _, ev := range batch {
						bad[ev.ID] = true
					}
				}
				for _, ev := range batch {
					if bad[ev.ID] {
						failed = append(failed, ev.ID)
					} else {
						ok = append(ok, ev.ID)
					}
				}
				mu.Unlock()
				published.Add(int64(len(batch)))
			}
		}()
	}

	<-half
	px.Cut()
	cutAt, cutInFlight, handledAtCut := published.Load(), inFlight.Load(), handled.Distinct()
	waitFor(t, 20*time.Second, "both transports notice the cut", func() bool {
		up1, _ := subT.conn.connected()
		up2, _ := pubT.conn.connected()
		return !up1 && !up2
	}, func() string { return "still connected" })
	px.Heal()
	waitFor(t, 30*time.Second, "both transports reconnect", func() bool {
		up1, g1 := subT.conn.connected()
		up2, g2 := pubT.conn.connected()
		return up1 && up2 && g1 > subGen && g2 > pubGen
	}, func() string { return "not reconnected" })
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(ok)+len(failed) != total {
		t.Fatalf("%d events succeeded and %d failed, want %d in all", len(ok), len(failed), total)
	}
	waitFor(t, 60*time.Second, "every confirmed event handled", func() bool {
		n, _ := handled.Missing(ok)
		return n == 0
	}, handled.DescribeMissing(ok))
	lateFailed := 0
	for _, id := range failed {
		if handled.Has(id) {
			lateFailed++
		}
	}
	t.Logf("cut after %d of %d events were published (%d Publish calls in flight, %d events handled); %d confirmed, %d reported failed (%d of those reached the subscriber anyway), %d other errors %v; %d duplicate deliveries",
		cutAt, total, cutInFlight, handledAtCut, len(ok), len(failed), lateFailed, len(otherErrs), otherErrs, handled.Duplicates())
	if cutAt >= total {
		t.Errorf("the cut came after publishing ended")
	}
}

// TestFaultRawMessageIsPoisoned publishes, with a plain AMQP client, a
// message with a non-JSON body and no ce_ headers, then a valid event
// carrying non-string headers (x-death, numbers, a timestamp); the first
// goes to the poison queue as undecodable, the second is handled, and the
// consumer keeps serving events after both.
func TestFaultRawMessageIsPoisoned(t *testing.T) {
	url := isolatedURL(t)
	b := newBus(t, url, unique("raw-"))
	handled := handled.NewCounter()
	if err := b.Subscribe("raw.#", handled.Handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	ex := transportOf(t, b).Exchange()
	if err := ch.Publish(ex, "raw.junk", false, false, amqp091.Publishing{Body: []byte("not JSON {")}); err != nil {
		t.Fatal(err)
	}

	good := mustEvent(t, "raw.good", map[string]string{"k": "v"})
	msg := eventbustest.Message(good)
	headers := amqp091.Table{
		"x-death": []any{amqp091.Table{"count": int64(1), "reason": "rejected", "queue": "q", "time": time.Unix(1700000000, 0)}},
		"x-int":   int32(7), "x-float": 1.5, "x-bool": true, "x-bytes": []byte{1, 2}, "x-time": time.Unix(1700000000, 0),
	}
	for k, v := range msg.Metadata {
		headers[k] = v
	}
	if err := ch.Publish(ex, "raw.good", false, false, amqp091.Publishing{Headers: headers, Body: msg.Payload, MessageId: good.ID}); err != nil {
		t.Fatal(err)
	}

	waitFor(t, 20*time.Second, "the good event with non-string headers", func() bool { return handled.Has(good.ID) }, func() string { return "not handled" })
	var poisoned []eventbus.PoisonedEvent
	waitFor(t, 20*time.Second, "the raw message in the poison queue", func() bool {
		ps, err := b.Poisoned(context.Background(), eventbus.PoisonFilter{})
		if err != nil {
			t.Fatal(err)
		}
		poisoned = ps
		return len(ps) == 1
	}, func() string { return fmt.Sprintf("%d poisoned", len(poisoned)) })
	p := poisoned[0]
	if p.Reason != "undecodable" || string(p.Payload) != "not JSON {" || p.DecodeError == nil {
		t.Errorf("poisoned: reason %q payload %q decode error %v", p.Reason, p.Payload, p.DecodeError)
	}
	next := mustEvent(t, "raw.next", nil)
	if err := b.Publish(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the next event", func() bool { return handled.Has(next.ID) }, func() string { return "consumer stopped" })
	if handled.Distinct() != 2 {
		t.Errorf("handler saw %d events, want 2", handled.Distinct())
	}
}
