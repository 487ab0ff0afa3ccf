package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/syncbuf"
	"github.com/paissive/go-eventbus/transports/memory"
)

// TestHealthReportsPoisonStoreFailure: while the poison queue refuses a
// subscription's records, Health names the error (the URL's password
// redacted) and the bus stays ready; once a record is stored, the error
// is cleared and the event is in the poison queue, stored once. The log
// lines that quote the store's error do not show the password either.
func TestHealthReportsPoisonStoreFailure(t *testing.T) {
	var logs syncbuf.Buffer
	b, q := refusingPoisonBus(t, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	permanent := fmt.Errorf("%w: this event is wrong", eventbus.ErrPermanent)
	if err := b.Subscribe("refused.#", func(context.Context, eventbus.Event) error { return permanent }); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if s := b.Health().Subscriptions[0]; s.PoisonStoreError != "" || !s.PoisonStoreErrorTime.IsZero() {
		t.Fatalf("before any failure: %+v, want no poison store error", s)
	}
	q.refuse.Store(true)
	ev, _ := eventbus.NewEvent("refused.one", nil)
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the store failure in Health", func() bool { return b.Health().Subscriptions[0].PoisonStoreError != "" })
	h := b.Health()
	s := h.Subscriptions[0]
	if strings.Contains(s.PoisonStoreError, "s3cret") || !strings.Contains(s.PoisonStoreError, "xxxxx") || !strings.Contains(s.PoisonStoreError, "refused the record") {
		t.Errorf("PoisonStoreError %q, want the store's error with the URL's password redacted", s.PoisonStoreError)
	}
	if s.PoisonStoreErrorTime.IsZero() || !h.Ready {
		t.Errorf("while the store fails: %+v, want an error time and a ready bus", h)
	}
	if out := logs.String(); strings.Contains(out, "s3cret") || !strings.Contains(out, "amqp://app:xxxxx@10.0.0.1") {
		t.Errorf("the log shows the password, or not the redacted error:\n%s", out)
	}

	q.refuse.Store(false)
	waitUntil(t, "the error cleared once a record is stored", func() bool { return b.Health().Subscriptions[0].PoisonStoreError == "" })
	if s := b.Health().Subscriptions[0]; !s.PoisonStoreErrorTime.IsZero() {
		t.Errorf("after a stored record: %+v, want no error time", s)
	}
	got, err := b.Poisoned(ctx, eventbus.PoisonFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Event.ID != ev.ID || q.added.Load() != 1 {
		t.Errorf("poison queue holds %d records (%d stored), want the one event once", len(got), q.added.Load())
	}
}

// refusingQueue is a poison queue that refuses every record while refuse
// is set, with an error that quotes a broker URL and its password, as a
// careless driver's error might.
type refusingQueue struct {
	driver.PoisonQueue
	refuse atomic.Bool
	added  atomic.Int32
}

func (q *refusingQueue) Add(ctx context.Context, msg *message.Message) error {
	if q.refuse.Load() {
		return errors.New("the broker refused the record: amqp://app:s3cret@10.0.0.1:5672/ is read-only")
	}
	if err := q.PoisonQueue.Add(ctx, msg); err != nil {
		return err
	}
	q.added.Add(1)
	return nil
}

// refusingTransport is a memory transport with a refusingQueue.
type refusingTransport struct {
	driver.Transport
	q *refusingQueue
}

func (t *refusingTransport) PoisonQueue() (driver.PoisonQueue, error) { return t.q, nil }

// refusingPoisonBus opens a bus logging to log on a refusingTransport of
// its own, whose URL holds a password.
func refusingPoisonBus(t *testing.T, log *slog.Logger) (*eventbus.Bus, *refusingQueue) {
	t.Helper()
	q := &refusingQueue{}
	host := testDriver(t, "refusingtest", func(ctx context.Context, cfg driver.Config) (driver.Transport, error) {
		inner, err := driver.Open(ctx, "mem://"+cfg.URL.Host, driver.Config{ServiceName: cfg.ServiceName, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		pq, err := inner.PoisonQueue()
		if err != nil {
			_ = inner.Close()
			return nil, err
		}
		q.PoisonQueue = pq
		return &refusingTransport{Transport: inner, q: q}, nil
	})
	t.Cleanup(func() { memory.Forget(host) })
	b, err := eventbus.New(context.Background(), eventbus.Config{ServiceName: "refused", URL: "refusingtest://app:s3cret@" + host + "/",
		Policy: eventbus.Policy{MaxAttempts: 1}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b, q
}
