package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/faultnet"
)

// faultCluster starts an in-process one-broker cluster whose connections
// pass through a faultnet.Listener, so a test can cut or freeze the broker.
// The cluster is healed and closed when the test ends.
func faultCluster(t testing.TB, opts ...kfake.Opt) (*faultnet.Listener, []string) {
	t.Helper()
	var ln *faultnet.Listener
	c, err := kfake.NewCluster(append([]kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(func(string, string) (net.Listener, error) {
			l, err := faultnet.Listen()
			ln = l
			return l, err
		}),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ln.Heal()
		c.Close()
	})
	return ln, c.ListenAddrs()
}

func faultURL(addrs []string, params ...string) string {
	q := []string{"prefix=" + unique("f")}
	for i := 0; i+1 < len(params); i += 2 {
		q = append(q, params[i]+"="+params[i+1])
	}
	return "kafka://" + strings.Join(addrs, ",") + "/?" + strings.Join(q, "&")
}

// outageResult is what one run of the outage scenario measured.
type outageResult struct {
	published, failed, failedLate int
	lost, duplicates, reordered   int
	maxLatency                    time.Duration
	firstErr                      error
}

// runOutage publishes total events from publishers goroutines (Publish
// calls of batch events, each with a 30s ctx, keys per publisher), applies
// fault to the broker for outage once about 40% are published, heals, and
// waits until every event whose Publish returned nil was handled by a bus
// subscriber. failedLate counts events whose Publish failed later than 1s
// after Heal.
func runOutage(t *testing.T, fault func(*faultnet.Listener), outage time.Duration) outageResult {
	const (
		total      = 5000
		publishers = 10
		batch      = 10
		callCtx    = 30 * time.Second
	)
	ln, addrs := faultCluster(t)
	u := faultURL(addrs)
	pub, sub := newBus(t, u, "outage-pub"), newBus(t, u, "outage-sub")

	c := newCounter()
	var mu sync.Mutex
	last := map[string]int{}
	reordered := 0
	err := sub.Subscribe("out.#", func(_ context.Context, ev eventbus.Event) error {
		seq := seqOf(t, ev)
		mu.Lock()
		if prev, ok := last[ev.PartitionKey]; ok && seq < prev && !c.has(ev.ID) {
			reordered++
		}
		if seq > last[ev.PartitionKey] {
			last[ev.PartitionKey] = seq
		}
		mu.Unlock()
		c.add(ev.ID)
		return nil
	}, eventbus.Concurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}

	var (
		submitted  atomic.Int64
		healedAt   atomic.Pointer[time.Time]
		resMu      sync.Mutex
		res        outageResult
		succeeded  []eventbus.Event
		publishing sync.WaitGroup
	)
	for p := 0; p < publishers; p++ {
		evs := make([]eventbus.Event, total/publishers)
		for i := range evs {
			// seq counts per key, so the subscriber can check order.
			ev, err := eventbus.NewEvent("out.tick", map[string]int{"seq": i + 1}, eventbus.WithSource("kafka-test"), eventbus.WithPartitionKey(fmt.Sprintf("key-%d", p)))
			if err != nil {
				t.Fatal(err)
			}
			evs[i] = ev
		}
		publishing.Add(1)
		go func() {
			defer publishing.Done()
			for i := 0; i < len(evs); i += batch {
				part := evs[i : i+batch]
				submitted.Add(int64(len(part)))
				ctx, cancel := context.WithTimeout(context.Background(), callCtx)
				start := time.Now()
				err := pub.Publish(ctx, part...)
				cancel()
				done := time.Now()
				failedIDs := map[string]bool{}
				if err != nil {
					var pe *eventbus.PublishError
					if errors.As(err, &pe) {
						for _, f := range pe.Failed {
							failedIDs[f.ID] = true
						}
					} else {
						for _, ev := range part {
							failedIDs[ev.ID] = true
						}
					}
				}
				resMu.Lock()
				res.maxLatency = max(res.maxLatency, done.Sub(start))
				for _, ev := range part {
					if !failedIDs[ev.ID] {
						succeeded = append(succeeded, ev)
						continue
					}
					res.failed++
					if res.firstErr == nil {
						res.firstErr = err
					}
					if h := healedAt.Load(); h != nil && done.After(h.Add(time.Second)) {
						res.failedLate++
					}
				}
				resMu.Unlock()
			}
		}()
	}
	waitFor(t, "40% of the events submitted", func() bool { return submitted.Load() >= total*2/5 },
		func() string { return fmt.Sprintf("%d submitted", submitted.Load()) })
	fault(ln)
	time.Sleep(outage) // the length of the outage, not a synchronisation
	ln.Heal()
	now := time.Now()
	healedAt.Store(&now)
	publishing.Wait()

	res.published = len(succeeded)
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		if c.distinct() >= res.published && allHandled(c, succeeded) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, ev := range succeeded {
		if !c.has(ev.ID) {
			res.lost++
		}
	}
	res.duplicates = c.duplicates()
	mu.Lock()
	res.reordered = reordered
	mu.Unlock()
	t.Logf("%s: %d events: published %d, failed %d (later than 1s after Heal: %d), lost %d, duplicates %d, handled out of key order %d, slowest Publish %v; first error: %v",
		t.Name(), total, res.published, res.failed, res.failedLate, res.lost, res.duplicates, res.reordered, res.maxLatency.Round(time.Millisecond), res.firstErr)
	return res
}

func allHandled(c *counter, evs []eventbus.Event) bool {
	for _, ev := range evs {
		if !c.has(ev.ID) {
			return false
		}
	}
	return true
}

// TestPublishRidesOutOutage: 5,000 events from 10 concurrent publishers
// (Publish ctx 30s) while the broker is cut (connections closed, new ones
// refused, as when the process dies) or frozen (nothing answers, as under
// SIGSTOP) for 5s: no Publish fails, and every event whose Publish
// returned nil is handled by a subscriber that lived through the same
// outage.
func TestPublishRidesOutOutage(t *testing.T) {
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
			r := runOutage(t, tc.fault, 5*time.Second)
			if r.failed > 0 {
				t.Errorf("%d event(s) failed to publish within a 30s ctx around a 5s outage (%d later than 1s after the broker was back); first error: %v",
					r.failed, r.failedLate, r.firstErr)
			}
			if r.lost > 0 {
				t.Errorf("%d event(s) whose Publish returned nil were never handled", r.lost)
			}
		})
	}
}
