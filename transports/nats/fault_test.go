package nats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/paissive/go-eventbus/brokertest"
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
	url, px := faultyURL(t)
	sub := newBus(t, url, unique("fault-sub-"))
	pub := newBus(t, url, unique("fault-pub-"))
	handled := handled.NewCounter()
	if err := sub.Subscribe("fault.#", handled.Handle, eventbus.Concurrency(16)); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	subNC, pubNC := transportOf(t, sub).Conn(), transportOf(t, pub).Conn()

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
	waitFor(t, 20*time.Second, "both connections notice the cut", func() bool {
		return !subNC.IsConnected() && !pubNC.IsConnected()
	}, func() string { return "still connected" })
	px.Heal()
	waitFor(t, 30*time.Second, "both connections reconnect", func() bool {
		return subNC.IsConnected() && pubNC.IsConnected() && subNC.Stats().Reconnects > 0 && pubNC.Stats().Reconnects > 0
	}, func() string { return "not reconnected" })
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(ok)+len(failed) != total {
		t.Fatalf("%d events succeeded and %d failed, want %d in all", len(ok), len(failed), total)
	}
	waitFor(t, 60*time.Second, "every acknowledged event handled", func() bool {
		n, _ := handled.Missing(ok)
		return n == 0
	}, handled.DescribeMissing(ok))
	lateFailed := 0
	for _, id := range failed {
		if handled.Has(id) {
			lateFailed++
		}
	}
	t.Logf("cut after %d of %d events were published (%d Publish calls in flight, %d events handled); %d acknowledged, %d reported failed (%d of those reached the subscriber anyway), %d other errors %v; %d duplicate deliveries",
		cutAt, total, cutInFlight, handledAtCut, len(ok), len(failed), lateFailed, len(otherErrs), otherErrs, handled.Duplicates())
	if cutAt >= total {
		t.Errorf("the cut came after publishing ended")
	}
}

// TestFaultServerRestart stops an in-process server with file storage in
// the middle of a stream and starts it again on the same port and store,
// as a process restart would: every event whose Publish returned nil is
// handled, the durable consumer resumes where it was (events handled
// before the restart are not all delivered again), and the poison record
// stored before the restart is still there.
func TestFaultServerRestart(t *testing.T) {
	srv := brokertest.StartNATSServer(t, brokertest.NATSServerConfig{})
	url := ownServerURL(t, srv)
	sub := newBus(t, url, unique("restart-sub-"))
	pub := newBus(t, url, unique("restart-pub-"))
	handled := handled.NewCounter()
	var poisonID string
	if err := sub.Subscribe("restart.#", func(ctx context.Context, ev eventbus.Event) error {
		if ev.Name == "restart.poison" {
			return eventbus.Permanent(errors.New("bad event"))
		}
		return handled.Handle(ctx, ev)
	}, eventbus.Concurrency(8)); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	bad := mustEvent(t, "restart.poison", nil)
	poisonID = bad.ID
	if err := pub.Publish(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the bad event poisoned", func() bool {
		ps, err := sub.Poisoned(context.Background(), eventbus.PoisonFilter{IDs: []string{poisonID}})
		return err == nil && len(ps) == 1
	}, func() string { return "not poisoned" })

	publish := func(from, n int) (ok []string) {
		for i := from; i < from+n; i += 50 {
			var batch []eventbus.Event
			for j := i; j < i+50; j++ {
				batch = append(batch, mustEvent(t, fmt.Sprintf("restart.e%d", j%5), map[string]int{"n": j}))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := pub.Publish(ctx, batch...)
			cancel()
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
			for _, ev := range batch {
				ok = append(ok, ev.ID)
			}
		}
		return ok
	}
	before := publish(0, 1000)
	waitFor(t, 30*time.Second, "the events before the restart handled", func() bool {
		n, _ := handled.Missing(before)
		return n == 0
	}, handled.DescribeMissing(before))
	deliveredBefore := handled.Deliveries()

	// Publish during the restart: each call rides out the outage within
	// its 30 s context.
	var wg sync.WaitGroup
	var during []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		during = publish(1000, 1000)
	}()
	time.Sleep(20 * time.Millisecond) // let some of them be in flight
	srv.Shutdown()
	time.Sleep(500 * time.Millisecond) // an outage, not a blip
	srv.Restart(t)
	wg.Wait()
	after := publish(2000, 500)

	all := append(append(append([]string(nil), before...), during...), after...)
	waitFor(t, 60*time.Second, "every acknowledged event handled after the restart", func() bool {
		n, _ := handled.Missing(all)
		return n == 0
	}, handled.DescribeMissing(all))
	if d := handled.Duplicates(); d >= len(before) {
		t.Errorf("%d duplicate deliveries: the consumer did not keep its position across the restart", d)
	}
	ps, err := sub.Poisoned(context.Background(), eventbus.PoisonFilter{})
	if err != nil || len(ps) != 1 || ps[0].Event.ID != poisonID {
		t.Errorf("poison queue after the restart: %d records, %v; want the one stored before", len(ps), err)
	}
	t.Logf("%d events handled before the restart (%d deliveries), %d in all, %d duplicate deliveries", len(before), deliveredBefore, len(all), handled.Duplicates())
}

// TestFaultRawMessageIsPoisoned publishes, with a plain NATS client, a
// message with a non-JSON body and no headers, then a valid event carrying
// foreign headers (repeated, and a Nats- header the server acts on); the
// first goes to the poison queue as undecodable, the second is handled,
// and the consumer keeps serving events after both.
func TestFaultRawMessageIsPoisoned(t *testing.T) {
	server := serverURL(t)
	url := isolatedURLOn(t, server, "")
	b := newBus(t, url, unique("raw-"))
	handled := handled.NewCounter()
	if err := b.Subscribe("raw.#", handled.Handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(server.String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	stream := transportOf(t, b).Stream()
	ack := func(m *nats.Msg) {
		t.Helper()
		r, err := nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatalf("raw publish to %s: %v", m.Subject, err)
		}
		if strings.Contains(string(r.Data), `"error"`) {
			t.Fatalf("raw publish to %s: %s", m.Subject, r.Data)
		}
	}
	ack(&nats.Msg{Subject: stream + ".raw.junk", Data: []byte("not JSON {")})

	good := mustEvent(t, "raw.good", map[string]string{"k": "v"})
	gm := eventbustest.Message(good)
	h := nats.Header{}
	for k, v := range gm.Metadata {
		h.Set(k, v)
	}
	h.Add("x-repeated", "one")
	h.Add("x-repeated", "two")
	h.Set("Nats-Msg-Id", "foreign-"+good.ID)
	ack(&nats.Msg{Subject: stream + ".raw.good", Header: h, Data: gm.Payload})

	waitFor(t, 20*time.Second, "the good event with foreign headers", func() bool { return handled.Has(good.ID) }, func() string { return "not handled" })
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
	if got := p.Headers[metadataSubject]; got != stream+".raw.junk" {
		t.Errorf("poison record's %s = %q, want the message's subject", metadataSubject, got)
	}
	next := mustEvent(t, "raw.next", nil)
	if err := b.Publish(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the next event", func() bool { return handled.Has(next.ID) }, func() string { return "consumer stopped" })
	if handled.Distinct() != 2 {
		t.Errorf("handler saw %d events, want 2", handled.Distinct())
	}
	// The raw message replays to its subject: still undecodable, it is
	// poisoned again, as a new record.
	if n, err := b.Replay(context.Background(), eventbus.PoisonFilter{}); err != nil || n != 1 {
		t.Fatalf("Replay: %d, %v", n, err)
	}
	waitFor(t, 20*time.Second, "the replayed raw message poisoned again", func() bool {
		ps, err := b.Poisoned(context.Background(), eventbus.PoisonFilter{})
		return err == nil && len(ps) == 1 && ps[0].RecordID != p.RecordID
	}, func() string { return "not poisoned again" })
}
