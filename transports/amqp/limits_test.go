package amqp

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/internal/transporttest"
)

// frameSize returns the frame size tr's connection negotiated.
func frameSize(t testing.TB, tr *Transport) int {
	t.Helper()
	conn, _, err := tr.conn.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return conn.Config.FrameSize
}

// generation returns tr's connection generation, failing the test when it
// is not connected.
func generation(t testing.TB, tr *Transport) uint64 {
	t.Helper()
	up, gen := tr.conn.connected()
	if !up {
		t.Fatal("transport not connected")
	}
	return gen
}

// TestOversizedEventsFailAlone publishes, in one Publish call, two good
// events, an event with a 300-byte metadata key, one with a value the size
// of the frame, one with 10,000 metadata keys, and one with a 130,000-byte
// value (about 130.4 kB of headers in all, which fits in RabbitMQ's
// 131,072-byte frame), while four other publishers publish unrelated
// events. Exactly the three events over a limit fail, with ErrTooLarge and
// an error naming the limit; the connection stays up (before the check,
// the long key made amqp091-go close it and the large headers made the
// broker close it, failing the other publishers' events); every other
// event is handled exactly once.
func TestOversizedEventsFailAlone(t *testing.T) {
	url := isolatedURL(t)
	sub := transporttest.NewBus(t, url, unique("limits-sub-"))
	handled := transporttest.NewCounter()
	if err := sub.Subscribe("limits.#", handled.Handle, eventbus.Concurrency(16)); err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	pub := transporttest.NewBus(t, url, unique("limits-pub-"))
	pubT, subT := transportOf(t, pub), transportOf(t, sub)
	pubGen, subGen := generation(t, pubT), generation(t, subT)
	frameMax := frameSize(t, pubT)

	many := make([]eventbus.EventOption, 10000)
	for i := range many {
		many[i] = eventbus.WithMetadata(fmt.Sprintf("k%05d", i), "v")
	}
	good1 := mustEvent(t, "limits.mixed", map[string]int{"n": 1})
	longKey := mustEvent(t, "limits.mixed", nil, eventbus.WithMetadata(strings.Repeat("k", 300), "v"))
	nearFrame := mustEvent(t, "limits.mixed", nil, eventbus.WithMetadata("big", strings.Repeat("v", 130_000)))
	overFrame := mustEvent(t, "limits.mixed", nil, eventbus.WithMetadata("big", strings.Repeat("v", frameMax)))
	manyKeys := mustEvent(t, "limits.mixed", nil, many...)
	good2 := mustEvent(t, "limits.mixed", map[string]int{"n": 2})

	// Other publishers run before, during and after the mixed call.
	var mu sync.Mutex
	var others []string
	var otherErrs []error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				evs := make([]eventbus.Event, 10)
				for i := range evs {
					evs[i] = mustEvent(t, "limits.other", nil)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err := pub.Publish(ctx, evs...)
				cancel()
				mu.Lock()
				if err != nil {
					otherErrs = append(otherErrs, err)
				}
				for _, ev := range evs {
					others = append(others, ev.ID)
				}
				mu.Unlock()
			}
		}()
	}
	published := func() int { mu.Lock(); defer mu.Unlock(); return len(others) }
	transporttest.WaitFor(t, 20*time.Second, "other publishers under way", func() bool { return published() >= 200 }, func() string { return strconv.Itoa(published()) })

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := pub.Publish(ctx, good1, longKey, nearFrame, overFrame, manyKeys, good2)
	before := published()
	transporttest.WaitFor(t, 20*time.Second, "other publishers go on", func() bool { return published() >= before+200 }, func() string { return strconv.Itoa(published()) })
	close(stop)
	wg.Wait()

	var pe *eventbus.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish: %v; want a PublishError naming the three oversized events", err)
	}
	failed := map[string]error{}
	for _, f := range pe.Failed {
		failed[f.ID] = f.Err
	}
	bad := map[string]string{
		longKey.ID:   "header names to 255 bytes",
		overFrame.ID: fmt.Sprintf("exceeds the frame size %d negotiated with the broker", frameMax),
		manyKeys.ID:  fmt.Sprintf("header(s)) exceeds the frame size %d", frameMax),
	}
	if len(failed) != len(bad) {
		t.Errorf("%d events failed, want 3: %v", len(failed), err)
	}
	for id, want := range bad {
		got := failed[id]
		if !errors.Is(got, driver.ErrTooLarge) || got == nil || !strings.Contains(got.Error(), want) {
			t.Errorf("event %s: %v; want ErrTooLarge saying %q", id, got, want)
		}
	}
	mu.Lock()
	if len(otherErrs) > 0 {
		t.Errorf("%d other Publish calls failed, e.g. %v", len(otherErrs), otherErrs[0])
	}
	goods := append([]string{good1.ID, nearFrame.ID, good2.ID}, others...)
	mu.Unlock()
	transporttest.WaitFor(t, 30*time.Second, "every good event handled", func() bool { n, _ := handled.Missing(goods); return n == 0 }, handled.DescribeMissing(goods))

	if g := generation(t, pubT); g != pubGen {
		t.Errorf("the publisher's connection was replaced (generation %d -> %d)", pubGen, g)
	}
	if g := generation(t, subT); g != subGen {
		t.Errorf("the subscriber's connection was replaced (generation %d -> %d)", subGen, g)
	}
	for _, id := range goods {
		if n := handled.Times(id); n != 1 {
			t.Errorf("event %s handled %d times", id, n)
		}
	}
	for id := range bad {
		if handled.Times(id) != 0 {
			t.Errorf("oversized event %s was handled", id)
		}
	}
	t.Logf("%d other events published concurrently; frame size %d", len(goods)-3, frameMax)
}

// TestRoutingKeyTooLong: a routing key over 255 bytes (here a replay to a
// group with a long name) fails with ErrTooLarge instead of making
// amqp091-go close the connection.
func TestRoutingKeyTooLong(t *testing.T) {
	ctx := context.Background()
	tr, err := open(ctx, driver.Config{URL: mustParse(t, isolatedURL(t)), ServiceName: unique("rk-")})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	gen := generation(t, tr)
	err = tr.Redeliver(ctx, strings.Repeat("g", 300), message.NewMessage("r1", []byte(`{}`)))
	if !errors.Is(err, driver.ErrTooLarge) || !strings.Contains(err.Error(), "routing keys to 255 bytes") {
		t.Errorf("Redeliver to a 300-byte group: %v; want ErrTooLarge naming the routing-key limit", err)
	}
	err = tr.Redeliver(ctx, unique("nobody."), message.NewMessage("r2", []byte(`{}`)))
	if !errors.Is(err, driver.ErrUnroutable) {
		t.Errorf("the next Redeliver: %v; want ErrUnroutable", err)
	}
	if g := generation(t, tr); g != gen {
		t.Errorf("the connection was replaced (generation %d -> %d)", gen, g)
	}
}

// TestBodyOverMaxMessageSize: a body larger than max_message_size fails
// alone, before it is sent (RabbitMQ would close the channel, failing the
// other messages in flight on it); a body of exactly that size goes
// through. The default is RabbitMQ's default, 128 MiB.
func TestBodyOverMaxMessageSize(t *testing.T) {
	ctx := context.Background()
	url := isolatedURL(t, "max_message_size", "1000", "publish_channels", "1")
	tr, err := open(ctx, driver.Config{URL: mustParse(t, url), ServiceName: unique("body-")})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	q := sinkQueue(t, tr, "body.#")
	gen := generation(t, tr)
	fits := message.NewMessage("fits", make([]byte, 1000))
	over := message.NewMessage("over", make([]byte, 1001))
	err = tr.Publisher().Publish("body.x", fits, over)
	var pe *driver.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].UUID != "over" || !errors.Is(err, driver.ErrTooLarge) || !strings.Contains(err.Error(), "more than max_message_size 1000") {
		t.Errorf("Publish: %v; want only \"over\" failed with ErrTooLarge naming max_message_size", err)
	}
	if n := queueLength(t, q); n != 1 {
		t.Errorf("the sink queue holds %d messages, want 1", n)
	}

	def, err := open(ctx, driver.Config{URL: mustParse(t, isolatedURL(t)), ServiceName: unique("body-")})
	if err != nil {
		t.Fatal(err)
	}
	defer def.Close()
	huge := message.NewMessage("huge", make([]byte, DefaultMaxMessageSize+1)) // never written, so never touched
	if err := def.Publisher().Publish("body.x", huge); !errors.Is(err, driver.ErrTooLarge) || !strings.Contains(err.Error(), "max_message_size 134217728") {
		t.Errorf("a body of 128 MiB + 1: %v; want ErrTooLarge", err)
	}
	if g := generation(t, tr); g != gen {
		t.Errorf("the connection was replaced (generation %d -> %d)", gen, g)
	}
}

// TestPoisonRecordTooLarge: a poison record whose headers do not fit in a
// frame comes back from Add as ErrTooLarge (so that the bus can store a
// reduced record) and the connection stays up.
func TestPoisonRecordTooLarge(t *testing.T) {
	ctx := context.Background()
	tr, err := open(ctx, driver.Config{URL: mustParse(t, isolatedURL(t)), ServiceName: unique("poison-big-")})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	pq, _ := tr.PoisonQueue()
	gen := generation(t, tr)
	big := message.NewMessage("big", []byte(`{}`))
	big.Metadata.Set("poison_error", strings.Repeat("e", 300<<10))
	if err := pq.Add(ctx, big); !errors.Is(err, driver.ErrTooLarge) {
		t.Errorf("Add of a record with a 300 KiB header: %v; want ErrTooLarge", err)
	}
	small := message.NewMessage("small", []byte(`{}`))
	small.Metadata.Set("poison_error", "short")
	if err := pq.Add(ctx, small); err != nil {
		t.Errorf("Add of a small record: %v", err)
	}
	if g := generation(t, tr); g != gen {
		t.Errorf("the connection was replaced (generation %d -> %d)", gen, g)
	}
	var msgs []*message.Message
	err = pq.Scan(ctx, 10, func(page []*message.Message) ([]int, error) {
		msgs = append(msgs, page...)
		return nil, nil
	})
	if err != nil || len(msgs) != 1 || msgs[0].UUID != "small" {
		t.Errorf("Scan: %d messages, %v; want the small record only", len(msgs), err)
	}
}

// TestHeaderSizeMatchesBroker checks the content-header size the
// publisher computes against the broker, to the byte. RabbitMQ accepts
// frames up to 8 bytes over the negotiated size (its FRAME_SIZE_FUDGE, a
// tolerance for old clients) and closes the connection beyond: so a
// message the check finds exactly 8 bytes too large must be accepted, and
// one 9 bytes too large refused. A size computed d bytes off moves the
// broker's boundary by d and fails the test.
func TestHeaderSizeMatchesBroker(t *testing.T) {
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	frameMax := conn.Config.FrameSize
	_ = conn.Close()
	ev := mustEvent(t, "size.check", map[string]int{"n": 1}, eventbus.WithMetadata("tenant", "acme"))
	ev.CorrelationID = ev.ID
	withPad := func(n int) *message.Message {
		ev.Metadata["pad"] = strings.Repeat("p", n)
		return eventbustest.Message(ev)
	}
	// The largest pad the check accepts.
	lo, hi := 0, frameMax
	for lo < hi {
		mid := (lo + hi + 1) / 2
		var pub amqp091.Publishing
		if fillPublishing(&pub, withPad(mid), frameMax, 0) == nil {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	var pub amqp091.Publishing
	if err := fillPublishing(&pub, withPad(lo+1), frameMax, 0); !errors.Is(err, driver.ErrTooLarge) || !strings.Contains(err.Error(), fmt.Sprintf("here of %d bytes", frameMax+1)) {
		t.Fatalf("one byte over the largest accepted pad: %v; want a frame of %d bytes", err, frameMax+1)
	}
	send := func(pad int) (acked bool) {
		conn, err := amqp091.Dial(brokerURL(t).String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1))
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		var pub amqp091.Publishing
		_ = fillPublishing(&pub, withPad(pad), 0, 0)
		if err := ch.Publish("", q.Name, false, false, pub); err != nil {
			t.Fatal(err)
		}
		select {
		case c := <-confirms:
			return c.Ack
		case <-time.After(20 * time.Second):
			t.Fatal("no confirm and no close from the broker")
			return false
		}
	}
	if !send(lo + 8) {
		t.Errorf("the broker refused a frame the check computes as %d bytes (frame size %d, tolerance 8)", frameMax+8, frameMax)
	}
	if send(lo + 9) {
		t.Errorf("the broker accepted a frame the check computes as %d bytes (frame size %d, tolerance 8)", frameMax+9, frameMax)
	}
}

// TestFillPublishingLimits checks the limits without a broker, and that a
// rejected message leaves nothing behind in the reused publishing.
func TestFillPublishingLimits(t *testing.T) {
	msg := func(id string, md map[string]string, body int) *message.Message {
		m := message.NewMessage(id, make([]byte, body))
		for k, v := range md {
			m.Metadata.Set(k, v)
		}
		return m
	}
	many := map[string]string{}
	for i := range 10000 {
		many[fmt.Sprintf("meta_k%05d", i)] = "v"
	}
	cases := []struct {
		name string
		m    *message.Message
		want string // "" for no error
	}{
		{"key of 255 bytes", msg("a", map[string]string{strings.Repeat("k", 255): "v"}, 1), ""},
		{"key of 256 bytes", msg("b", map[string]string{strings.Repeat("k", 256): "v"}, 1), "is 256 bytes; AMQP limits header names to 255 bytes"},
		{"body at the limit", msg("c", nil, 1000), ""},
		{"body over the limit", msg("d", nil, 1001), "the body is 1001 bytes, more than max_message_size 1000"},
		{"10,000 keys", msg("e", many, 1), "(10000 header(s)) exceeds the frame size 131072"},
		{"value as large as the frame", msg("f", map[string]string{"v": strings.Repeat("v", 131072)}, 1), "the header table of 131.1 kB (1 header(s)) exceeds the frame size 131072"},
		{"long properties are dropped, not refused", msg(strings.Repeat("i", 300), map[string]string{"content-type": strings.Repeat("c", 300), "ce_correlationid": strings.Repeat("c", 300)}, 1), ""},
	}
	var pub amqp091.Publishing
	for _, c := range cases {
		err := fillPublishing(&pub, c.m, 131072, 1000)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (!errors.Is(err, driver.ErrTooLarge) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v; want ErrTooLarge saying %q", c.name, err, c.want)
		}
		if err != nil {
			(&pubChannel{pub: pub}).reset()
		}
	}
	pc := &pubChannel{}
	_ = fillPublishing(&pc.pub, msg("many", many, 1), 131072, 1000)
	pc.reset()
	if pc.pub.Headers != nil {
		t.Errorf("a header table of %d entries is kept for the next message", len(pc.pub.Headers))
	}
	good := msg("good", map[string]string{"ce_type": "x.y", "meta_a": "1"}, 1)
	if err := fillPublishing(&pc.pub, good, 131072, 1000); err != nil || len(pc.pub.Headers) != 2 || pc.pub.MessageId != "good" {
		t.Errorf("after a rejected message: %v, headers %v", err, pc.pub.Headers)
	}
}

// BenchmarkFillPublishing measures converting a typical event (the
// CloudEvents headers and two metadata pairs) into the reused publishing,
// size check included. Its one allocation is the boxing of the header
// value that changes from event to event (ce_id), as without the check;
// interleaved runs with and without the check differed by less than the
// noise (about 1.35 µs either way on the shared 2-core machine).
func BenchmarkFillPublishing(b *testing.B) {
	ev, err := eventbus.NewEvent("bench.event", map[string]string{"p": "x"}, eventbus.WithSource("bench"), eventbus.WithMetadata("tenant", "acme"), eventbus.WithMetadata("region", "eu"))
	if err != nil {
		b.Fatal(err)
	}
	ev.CorrelationID = ev.ID
	msgs := make([]*message.Message, 64)
	for i := range msgs {
		ev.ID = fmt.Sprintf("00000000-0000-0000-0000-%012d", i)
		msgs[i] = eventbustest.Message(ev)
	}
	var pub amqp091.Publishing
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := fillPublishing(&pub, msgs[i%len(msgs)], 131072, DefaultMaxMessageSize); err != nil {
			b.Fatal(err)
		}
	}
}

func mustParse(t testing.TB, raw string) *neturl.URL {
	t.Helper()
	u, err := neturl.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// sinkQueue declares a queue bound to tr's exchange with pattern, deleted
// when the test ends, and returns its name.
func sinkQueue(t testing.TB, tr *Transport, pattern string) string {
	t.Helper()
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q := unique("sink-")
	declared.add(tr.Exchange(), q)
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(tr.Exchange(), amqp091.ExchangeTopic, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q, pattern, tr.Exchange(), false, nil); err != nil {
		t.Fatal(err)
	}
	return q
}

// queueLength returns the number of ready messages in queue q.
func queueLength(t testing.TB, q string) int {
	t.Helper()
	conn, err := amqp091.Dial(brokerURL(t).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st.Messages
}
