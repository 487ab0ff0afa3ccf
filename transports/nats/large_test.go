package nats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// bigData returns a JSON string of about n bytes, different for each seed.
func bigData(n int, seed byte) json.RawMessage {
	b := bytes.Repeat([]byte{'a' + seed%26}, n)
	for i := 0; i < n; i += 4096 {
		b[i] = '0' + byte(i/4096%10)
	}
	return json.RawMessage(`"` + string(b) + `"`)
}

// subjectCount returns how many messages of stream are on subjects
// matching filter.
func subjectCount(t *testing.T, s jetstream.Stream, filter string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// TestLargeEvents publishes events above the server's max_payload (1 MiB
// by default, as on the machine's server and the embedded one) among
// small ones: their bodies travel in chunks, they arrive intact and in
// order, and one above max_message_bytes fails alone with ErrTooLarge.
func TestLargeEvents(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("large-"))
	var mu sync.Mutex
	var got []eventbus.Event
	if err := b.Subscribe("large.#", func(_ context.Context, ev eventbus.Event) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, ev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr := transportOf(t, b)
	if mp := tr.nc.MaxPayload(); mp >= 3<<20 {
		t.Fatalf("the server's max_payload is %d; this test needs one below 3 MiB to exercise chunking", mp)
	}
	evs := []eventbus.Event{
		mustEvent(t, "large.small1", nil, eventbus.WithPartitionKey("k")),
		mustEvent(t, "large.big1", bigData(1536<<10, 1)),
		mustEvent(t, "large.small2", nil),
		mustEvent(t, "large.big2", bigData(4<<20-64<<10, 2)),
		mustEvent(t, "large.small3", nil),
	}
	if err := b.Publish(context.Background(), evs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	transporttest.WaitFor(t, 30*time.Second, "every event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(evs)
	}, func() string { return "missing" })
	for i, ev := range evs {
		if got[i].ID != ev.ID || !bytes.Equal(got[i].Data, ev.Data) {
			t.Errorf("event %d: got %s (%d bytes), want %s (%d bytes) in publish order", i, got[i].ID, len(got[i].Data), ev.ID, len(ev.Data))
		}
	}
	events, _ := tr.streams()
	if n := subjectCount(t, events, largeRoot(tr.Stream())+".>"); n < 5 {
		t.Errorf("%d chunks in the stream; want the bodies of the two large events in chunks", n)
	}

	tooBig := mustEvent(t, "large.toobig", bigData(4<<20, 3))
	small := mustEvent(t, "large.small4", nil)
	err := b.Publish(context.Background(), tooBig, small)
	var pe *eventbus.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].ID != tooBig.ID || !errors.Is(err, eventbus.ErrTooLarge) || !strings.Contains(err.Error(), "max_message_bytes") {
		t.Fatalf("Publish of an event over max_message_bytes: %v; want a PublishError naming only it, wrapping ErrTooLarge and naming the limit", err)
	}
}

// TestLargePoisonReplayPurge poisons large events: the poison records keep
// their bodies (in chunks of the poison stream), a replay delivers them
// intact and deletes the records with their chunks, and a purge deletes
// both too.
func TestLargePoisonReplayPurge(t *testing.T) {
	url := isolatedURL(t)
	b := transporttest.NewBus(t, url, unique("lpoison-"))
	var fixed atomic.Bool
	handled := map[string][]byte{}
	var mu sync.Mutex
	if err := b.Subscribe("big.#", func(_ context.Context, ev eventbus.Event) error {
		if !fixed.Load() {
			return eventbus.Permanent(errors.New("not yet"))
		}
		mu.Lock()
		defer mu.Unlock()
		handled[ev.ID] = ev.Data
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr := transportOf(t, b)
	_, ps := tr.streams()
	chunks := tr.pq.subject + ".large.>"
	evs := []eventbus.Event{mustEvent(t, "big.one", bigData(2<<20, 4)), mustEvent(t, "big.two", bigData(3<<20, 5))}
	if err := b.Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 30*time.Second, "both poisoned", func() bool {
		p, err := b.Poisoned(context.Background(), eventbus.PoisonFilter{})
		return err == nil && len(p) == 2
	}, func() string { return "not poisoned" })
	p, err := b.Poisoned(context.Background(), eventbus.PoisonFilter{IDs: []string{evs[1].ID}})
	if err != nil || len(p) != 1 || !bytes.Equal(p[0].Event.Data, evs[1].Data) || p[0].Headers["poison_wrapped"] != "" {
		t.Fatalf("poison record of the 3 MiB event: %d records, %v; want it whole", len(p), err)
	}
	if n := subjectCount(t, ps, chunks); n == 0 {
		t.Fatal("no chunks in the poison stream")
	}

	fixed.Store(true)
	if n, err := b.Replay(context.Background(), eventbus.PoisonFilter{IDs: []string{evs[0].ID}}); err != nil || n != 1 {
		t.Fatalf("Replay: %d, %v", n, err)
	}
	transporttest.WaitFor(t, 30*time.Second, "the replayed event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled[evs[0].ID] != nil
	}, func() string { return "not handled" })
	if !bytes.Equal(handled[evs[0].ID], evs[0].Data) {
		t.Errorf("replayed event arrived with %d bytes, want %d", len(handled[evs[0].ID]), len(evs[0].Data))
	}
	left := subjectCount(t, ps, chunks)
	if _, err := b.PurgePoison(context.Background(), eventbus.PoisonFilter{}); err != nil {
		t.Fatal(err)
	}
	if n := subjectCount(t, ps, chunks); n != 0 || left == 0 {
		t.Errorf("chunks in the poison stream: %d after the replay, %d after the purge; want some, then none", left, n)
	}
	if n := subjectCount(t, ps, tr.pq.subject); n != 0 {
		t.Errorf("%d records after the purge", n)
	}
}

// TestLargeEventWithoutChunks: an event whose chunks the stream lost (its
// limits removed them) is poisoned as undecodable with its headers; the
// consumer goes on.
func TestLargeEventWithoutChunks(t *testing.T) {
	url := isolatedURL(t)
	pub := transporttest.NewBus(t, url, unique("lost-pub-"))
	lost := mustEvent(t, "lost.big", bigData(2<<20, 6))
	if err := pub.Publish(context.Background(), lost); err != nil {
		t.Fatal(err)
	}
	tr := transportOf(t, pub)
	events, _ := tr.streams()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := events.Purge(ctx, jetstream.WithPurgeSubject(largeRoot(tr.Stream())+".>")); err != nil {
		t.Fatal(err)
	}
	b := transporttest.NewBus(t, url, unique("lost-"))
	handled := transporttest.NewCounter()
	if err := b.Subscribe("lost.#", handled.Handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	var ps []eventbus.PoisonedEvent
	transporttest.WaitFor(t, 20*time.Second, "the event poisoned", func() bool {
		ps, _ = b.Poisoned(context.Background(), eventbus.PoisonFilter{})
		return len(ps) == 1
	}, func() string { return "not poisoned" })
	if ps[0].Reason != "undecodable" || ps[0].Headers["ce_id"] != lost.ID || !strings.Contains(ps[0].Error, "body is lost") {
		t.Errorf("poison record: reason %q, ce_id %q, error %q; want undecodable with the event's headers, saying the body is lost", ps[0].Reason, ps[0].Headers["ce_id"], ps[0].Error)
	}
	if handled.Has(lost.ID) {
		t.Error("the handler got the event without its data")
	}
	next := mustEvent(t, "lost.next", nil)
	if err := pub.Publish(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the next event", func() bool { return handled.Has(next.ID) }, func() string { return "consumer stopped" })
}

// TestLargeEventsOnLargerMaxPayload: on a server whose max_payload fits
// the event, nothing is split.
func TestLargeEventsOnLargerMaxPayload(t *testing.T) {
	srv := brokertest.StartNATSServer(t, brokertest.NATSServerConfig{MaxPayload: 8 << 20})
	url := ownServerURL(t, srv)
	b := transporttest.NewBus(t, url, unique("bigpayload-"))
	handled := transporttest.NewCounter()
	if err := b.Subscribe("big.#", handled.Handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ev := mustEvent(t, "big.one", bigData(3<<20, 7))
	if err := b.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	transporttest.WaitFor(t, 20*time.Second, "the event", func() bool { return handled.Has(ev.ID) }, func() string { return "not handled" })
	tr := transportOf(t, b)
	events, _ := tr.streams()
	if n := subjectCount(t, events, largeRoot(tr.Stream())+".>"); n != 0 {
		t.Errorf("%d chunks for an event the server takes whole", n)
	}
}
