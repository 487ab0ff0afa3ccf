package nats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// TestFaultCutMidStream cuts the connections of a publishing and a
// consuming bus in the middle of 10,000 events (transporttest.CutMidStream).
func TestFaultCutMidStream(t *testing.T) {
	url, px := faultyURL(t)
	sub := transporttest.NewBus(t, url, unique("fault-sub-"))
	pub := transporttest.NewBus(t, url, unique("fault-pub-"))
	subNC, pubNC := transportOf(t, sub).Conn(), transportOf(t, pub).Conn()
	transporttest.CutMidStream(t, sub, pub, transporttest.Cut{
		Cut: px.Cut, Heal: px.Heal,
		Down: func() bool { return !subNC.IsConnected() && !pubNC.IsConnected() },
		Up: func() bool {
			return subNC.IsConnected() && pubNC.IsConnected() && subNC.Stats().Reconnects > 0 && pubNC.Stats().Reconnects > 0
		},
	})
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
	sub := transporttest.NewBus(t, url, unique("restart-sub-"))
	pub := transporttest.NewBus(t, url, unique("restart-pub-"))
	handled := transporttest.NewCounter()
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
	transporttest.WaitFor(t, 20*time.Second, "the bad event poisoned", func() bool {
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
	transporttest.WaitFor(t, 30*time.Second, "the events before the restart handled", func() bool {
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
	transporttest.WaitFor(t, 60*time.Second, "every acknowledged event handled after the restart", func() bool {
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
	b := transporttest.NewBus(t, url, unique("raw-"))
	handled := transporttest.NewCounter()
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

	transporttest.WaitFor(t, 20*time.Second, "the good event with foreign headers", func() bool { return handled.Has(good.ID) }, func() string { return "not handled" })
	var poisoned []eventbus.PoisonedEvent
	transporttest.WaitFor(t, 20*time.Second, "the raw message in the poison queue", func() bool {
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
	transporttest.WaitFor(t, 20*time.Second, "the next event", func() bool { return handled.Has(next.ID) }, func() string { return "consumer stopped" })
	if handled.Distinct() != 2 {
		t.Errorf("handler saw %d events, want 2", handled.Distinct())
	}
	// The raw message replays to its subject: still undecodable, it is
	// poisoned again, as a new record.
	if n, err := b.Replay(context.Background(), eventbus.PoisonFilter{}); err != nil || n != 1 {
		t.Fatalf("Replay: %d, %v", n, err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the replayed raw message poisoned again", func() bool {
		ps, err := b.Poisoned(context.Background(), eventbus.PoisonFilter{})
		return err == nil && len(ps) == 1 && ps[0].RecordID != p.RecordID
	}, func() string { return "not poisoned again" })
}
