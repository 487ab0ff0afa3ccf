package kafka

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/eventbustest"
	"github.com/paissive/go-eventbus/internal/faultnet"
)

// boundMargin is how late after its ctx's deadline a call may return in
// these tests. The transport itself adds only the scheduling of a
// goroutine (bounded); the rest is room for a loaded 2-core machine under
// -race. Calls that are not bounded block for Sarama's 30s read timeout
// or longer.
const boundMargin = time.Second

// hardLimit is how long checkBounded waits for a call before declaring it
// hung, so that an unbounded call fails the test instead of hanging it.
const hardLimit = 15 * time.Second

// checkBounded runs f with a ctx of d and fails t if f returns later than
// d + boundMargin, or succeeds although the broker is down (when
// wantErr). It returns f's error.
func checkBounded(t *testing.T, what string, d time.Duration, wantErr bool, f func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	select {
	case err := <-done:
		took := time.Since(start)
		if took > d+boundMargin {
			t.Errorf("%s returned %v after its %v ctx ended (margin %v)", what, (took - d).Round(time.Millisecond), d, boundMargin)
		}
		if wantErr && err == nil {
			t.Errorf("%s succeeded while the broker was down", what)
		}
		t.Logf("%s: returned after %v: %v", what, took.Round(time.Millisecond), err)
		return err
	case <-time.After(hardLimit):
		t.Errorf("%s still blocked %v after its %v ctx ended", what, hardLimit-d, d)
		return context.DeadlineExceeded
	}
}

// checkReturns fails t if f, which takes no ctx, does not return within d.
func checkReturns(t *testing.T, what string, d time.Duration, f func() error) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		took := time.Since(start)
		if took > d {
			t.Errorf("%s took %v, want at most %v", what, took.Round(time.Millisecond), d)
		}
		t.Logf("%s: returned after %v: %v", what, took.Round(time.Millisecond), err)
	case <-time.After(d + hardLimit):
		t.Errorf("%s still blocked after %v", what, d+hardLimit)
	}
}

// waitSettled fails t unless what a closed transport left running (the
// work Close gave up waiting for) stops within testTimeout, so that
// nothing outlives it.
func waitSettled(t testing.TB, tr *Transport) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	if !waitUntil(&tr.bg, deadline) || !waitUntil(&tr.after, deadline) {
		t.Errorf("the transport's background work had not stopped %v after Close", testTimeout)
	}
}

func rawEvent(t testing.TB, ctx context.Context, name string) *message.Message {
	t.Helper()
	ev, err := eventbus.NewEvent(name, map[string]int{"seq": 1}, eventbus.WithSource("kafka-test"))
	if err != nil {
		t.Fatal(err)
	}
	m := eventbustest.Message(ev)
	m.SetContext(ctx)
	return m
}

func openTransport(t testing.TB, ctx context.Context, rawURL, service string) (*Transport, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return open(ctx, driver.Config{URL: u, ServiceName: service, Logger: quietLogger})
}

// TestCallsBoundedWhileBrokerDown: while the broker is cut (connections
// closed, new ones refused) or frozen (connections accepted, nothing
// answered), every call that takes a ctx returns by its deadline (plus
// boundMargin) with an error: opening a transport or a bus, publishing to
// a known and to a new topic, redelivering, subscribing (creating topics,
// waiting for the join), the client calls the poison queue uses, and
// creating a topic. A subscriber whose Subscribe failed closes at once.
// After Heal the same transport publishes and subscribes again. Then,
// with the broker down again and a Publish waiting, Close returns within
// CloseTimeout and the waiting Publish returns too.
func TestCallsBoundedWhileBrokerDown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault func(*faultnet.Listener)
	}{
		{"cut", (*faultnet.Listener).Cut},
		{"stall", (*faultnet.Listener).Stall},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ln, addrs := faultCluster(t)
			u := faultURL(addrs, "mapping", "segment", "join_timeout", "20s")
			tr, err := openTransport(t, testCtx(t), u, "bounded")
			if err != nil {
				t.Fatal(err)
			}
			closed := false
			t.Cleanup(func() {
				if !closed {
					ln.Heal()
					_ = tr.Close()
				}
			})
			pub := tr.Publisher()
			if err := pub.Publish("warm.a", rawEvent(t, testCtx(t), "warm.a")); err != nil {
				t.Fatal(err)
			}
			poison := tr.names.poisonTopic("bounded")
			if err := tr.ensureTopic(testCtx(t), poison, 1, true); err != nil {
				t.Fatal(err)
			}
			if err := tr.ensureTopic(testCtx(t), tr.names.replayTopic("bounded.joiner"), 1, false); err != nil {
				t.Fatal(err)
			}

			tc.fault(ln)
			const d = 1500 * time.Millisecond
			checkBounded(t, "eventbus.New", d, true, func(ctx context.Context) error {
				b, err := eventbus.New(ctx, eventbus.Config{ServiceName: "late", URL: u, Logger: quietLogger})
				if err == nil {
					_ = b.Close(context.Background())
				}
				return err
			})
			checkBounded(t, "Publish to an existing topic", d, true, func(ctx context.Context) error {
				return pub.Publish("warm.a", rawEvent(t, ctx, "warm.a"))
			})
			checkBounded(t, "Publish to a new topic", d, true, func(ctx context.Context) error {
				return pub.Publish("cold.a", rawEvent(t, ctx, "cold.a"))
			})
			checkBounded(t, "Redeliver", d, true, func(ctx context.Context) error {
				return tr.Redeliver(ctx, "bounded.other", rawEvent(t, context.Background(), "warm.a"))
			})
			for _, s := range []struct{ what, sub, pattern string }{
				{"Subscribe waiting for the join", "joiner", "warm.#"},
				{"Subscribe creating topics", "fresh", "fresh.#"},
			} {
				sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "bounded." + s.sub, Service: "bounded", Subscription: s.sub, Pattern: s.pattern, Concurrency: 1, Match: matcher(s.pattern)})
				if err != nil {
					t.Fatal(err)
				}
				checkBounded(t, s.what, d, true, func(ctx context.Context) error {
					_, err := sub.Subscribe(ctx, s.pattern)
					return err
				})
				checkReturns(t, "Close of a subscriber whose Subscribe failed", boundMargin, sub.Close)
			}
			checkBounded(t, "getOffset", d, true, func(ctx context.Context) error {
				_, err := tr.getOffset(ctx, poison, 0, sarama.OffsetNewest)
				return err
			})
			checkBounded(t, "consumePartition", d, true, func(ctx context.Context) error {
				_, release, err := tr.consumePartition(ctx, poison, 0, sarama.OffsetOldest)
				release()
				return err
			})
			checkBounded(t, "deleteRecords", d, true, func(ctx context.Context) error {
				return tr.deleteRecords(ctx, poison, map[int32]int64{0: 0})
			})
			checkBounded(t, "ensureTopic of a poison topic", d, true, func(ctx context.Context) error {
				return tr.ensureTopic(ctx, tr.names.poisonTopic("other"), 1, true)
			})

			// The same transport works once the broker is back.
			ln.Heal()
			if err := pub.Publish("cold.a", rawEvent(t, testCtx(t), "cold.a")); err != nil {
				t.Fatalf("Publish after Heal: %v", err)
			}
			sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "bounded.fresh", Service: "bounded", Subscription: "fresh", Pattern: "fresh.#", Concurrency: 1, Match: matcher("fresh.#")})
			if err != nil {
				t.Fatal(err)
			}
			ch, err := sub.Subscribe(testCtx(t), "fresh.#")
			if err != nil {
				t.Fatalf("Subscribe after Heal: %v", err)
			}
			want := rawEvent(t, testCtx(t), "fresh.x")
			if err := pub.Publish("fresh.x", want); err != nil {
				t.Fatalf("Publish after Heal: %v", err)
			}
			select {
			case got := <-ch:
				if got.UUID != want.UUID {
					t.Errorf("received %s, want %s", got.UUID, want.UUID)
				}
				got.Ack()
			case <-time.After(testTimeout):
				t.Fatal("nothing received after Heal")
			}
			if _, err := tr.getOffset(testCtx(t), poison, 0, sarama.OffsetNewest); err != nil {
				t.Errorf("getOffset after Heal: %v", err)
			}

			// Close while the broker is down and a Publish waits.
			tc.fault(ln)
			waiting := make(chan error, 1)
			go func() { waiting <- pub.Publish("warm.a", rawEvent(t, context.Background(), "warm.a")) }()
			waitFor(t, "the record handed to the producer", func() bool { return tr.pub.events.inflight.Load() > 0 },
				func() string { return "no record in flight" })
			closed = true
			checkReturns(t, "Close", CloseTimeout+boundMargin, tr.Close)
			select {
			case err := <-waiting:
				t.Logf("the Publish waiting during Close: %v", err)
				if !errors.Is(err, errClosed) {
					t.Errorf("the Publish waiting during Close returned %v, want errClosed", err)
				}
			case <-time.After(boundMargin):
				t.Error("a Publish without a deadline still waits after Close returned")
			}
			ln.Heal()
			waitSettled(t, tr)
		})
	}
}

// TestSubscriptionOutlivesSetupCtx: Subscribe's ctx bounds only the setup;
// the subscription goes on delivering after that ctx is cancelled, until
// the subscriber closes.
func TestSubscriptionOutlivesSetupCtx(t *testing.T) {
	t.Parallel()
	tr, err := openTransport(t, testCtx(t), testURL(t), "outlive")
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{Group: "outlive.s", Service: "outlive", Subscription: "s", Pattern: "o.#", Concurrency: 1, Match: matcher("o.#")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sub.Subscribe(ctx, "o.#")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	want := rawEvent(t, testCtx(t), "o.k")
	if err := tr.Publisher().Publish("o.k", want); err != nil {
		t.Fatal(err)
	}
	select {
	case got, ok := <-ch:
		if !ok {
			t.Fatal("the channel closed when Subscribe's ctx was cancelled")
		}
		if got.UUID != want.UUID {
			t.Errorf("received %s, want %s", got.UUID, want.UUID)
		}
		got.Ack()
	case <-time.After(testTimeout):
		t.Fatal("nothing delivered after Subscribe's ctx was cancelled")
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("a message after Close")
		}
	case <-time.After(testTimeout):
		t.Error("the channel is still open after the subscriber's Close")
	}
}
