package middleware

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

var errFlaky = errors.New("flaky")

func TestRetryCallsMaxAttempts(t *testing.T) {
	for _, attempts := range []int{1, 2, 5} {
		var c calls
		h := Retry{MaxAttempts: attempts, InitialInterval: time.Millisecond, Multiplier: 1}.Middleware(failing(&c, errFlaky))
		out, err := h(newMsg("m"))
		if !errors.Is(err, errFlaky) || out != nil {
			t.Errorf("MaxAttempts %d: returned %v, %v; want the handler's error", attempts, out, err)
		}
		if c.count() != attempts {
			t.Errorf("MaxAttempts %d: handler called %d times", attempts, c.count())
		}
	}
	// Zero or negative MaxAttempts means one call, not an endless loop.
	var c calls
	if _, err := (Retry{}).Middleware(failing(&c, errFlaky))(newMsg("m")); !errors.Is(err, errFlaky) || c.count() != 1 {
		t.Errorf("zero Retry: %v after %d calls", err, c.count())
	}
}

func TestRetryStopsOnSuccess(t *testing.T) {
	var c calls
	produced := message.NewMessage("out", nil)
	h := Retry{MaxAttempts: 5, InitialInterval: time.Millisecond, Multiplier: 2}.Middleware(func(*message.Message) ([]*message.Message, error) {
		if c.add() < 3 {
			return []*message.Message{message.NewMessage("discarded", nil)}, errFlaky
		}
		return []*message.Message{produced}, nil
	})
	out, err := h(newMsg("m"))
	if err != nil || len(out) != 1 || out[0] != produced {
		t.Errorf("returned %v, %v; want the successful attempt's messages", out, err)
	}
	if c.count() != 3 {
		t.Errorf("handler called %d times, want 3", c.count())
	}
}

func TestRetrySkipsPermanentErrors(t *testing.T) {
	for label, err := range map[string]error{
		"permanent":         permanentErr{"bad payload"},
		"wrapped permanent": fmt.Errorf("handling: %w", permanentErr{"bad payload"}),
		"joined permanent":  errors.Join(errFlaky, permanentErr{"bad payload"}),
	} {
		var c calls
		_, got := Retry{MaxAttempts: 5, InitialInterval: time.Hour}.Middleware(failing(&c, err))(newMsg("m"))
		if !errors.Is(got, err) || got.Error() != err.Error() {
			t.Errorf("%s: returned %v, want %v", label, got, err)
		}
		if c.count() != 1 {
			t.Errorf("%s: handler called %d times, want 1", label, c.count())
		}
	}
	var c calls
	Retry{MaxAttempts: 3, InitialInterval: time.Millisecond}.Middleware(failing(&c, notPermanentErr{}))(newMsg("m"))
	if c.count() != 3 {
		t.Errorf("an error whose Permanent() is false was called %d times, want 3", c.count())
	}
}

// TestRetryDelays measures the pauses between handler calls. It is a
// behaviour test with a generous tolerance, not a benchmark: each delay must
// be at least 80% of the configured one (timers never fire early, so a
// shorter delay is a bug) and at most 150ms more. A machine under load can
// oversleep, so a run with a delay that is too long is repeated, up to three
// runs; a wrong backoff fails every run.
func TestRetryDelays(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		label string
		retry Retry
		want  []time.Duration
	}{
		{"doubling without MaxInterval",
			Retry{MaxAttempts: 5, InitialInterval: 40 * ms, Multiplier: 2, RandomizationFactor: 1e-9},
			[]time.Duration{40 * ms, 80 * ms, 160 * ms, 320 * ms}},
		{"tripling capped by MaxInterval",
			Retry{MaxAttempts: 5, InitialInterval: 30 * ms, Multiplier: 3, MaxInterval: 100 * ms, RandomizationFactor: 1e-9},
			[]time.Duration{30 * ms, 90 * ms, 100 * ms, 100 * ms}},
		{"constant",
			Retry{MaxAttempts: 4, InitialInterval: 60 * ms, Multiplier: 1},
			[]time.Duration{60 * ms, 60 * ms, 60 * ms}},
	}
	for _, tc := range cases {
		t.Run(tc.label, func(t *testing.T) {
			const runs = 3
			for run := 1; ; run++ {
				var c calls
				tc.retry.Middleware(failing(&c, errFlaky))(newMsg("m"))
				times := c.snapshot()
				if len(times) != len(tc.want)+1 {
					t.Fatalf("%d calls, want %d", len(times), len(tc.want)+1)
				}
				tooLong := ""
				for i, want := range tc.want {
					got := times[i+1].Sub(times[i])
					lo, hi := time.Duration(float64(want)*0.8), time.Duration(float64(want)*0.8)+150*ms
					if got < lo {
						t.Fatalf("delay %d = %v, want %v (at least %v); calls at %v", i+1, got, want, lo, offsets(times))
					}
					if got > hi && tooLong == "" {
						tooLong = fmt.Sprintf("delay %d = %v, want %v (at most %v); calls at %v", i+1, got, want, hi, offsets(times))
					}
				}
				if tooLong == "" {
					return
				}
				if run == runs {
					t.Fatalf("in %d runs: %s", runs, tooLong)
				}
				t.Logf("run %d: %s; the machine may be busy, measuring again", run, tooLong)
			}
		})
	}
}

// TestRetryJitterSpreadsDelays checks that RandomizationFactor is used:
// with factor 0.9 around 20ms the delays spread over 2ms to 38ms, so the
// longest of 20 is almost surely far longer than the shortest.
func TestRetryJitterSpreadsDelays(t *testing.T) {
	var c calls
	Retry{MaxAttempts: 21, InitialInterval: 20 * time.Millisecond, Multiplier: 1, RandomizationFactor: 0.9}.Middleware(failing(&c, errFlaky))(newMsg("m"))
	times := c.snapshot()
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	for i := 1; i < len(times); i++ {
		d := times[i].Sub(times[i-1])
		lo, hi = min(lo, d), max(hi, d)
	}
	if hi-lo < 10*time.Millisecond {
		t.Errorf("delays range from %v to %v only; the jitter was not applied: %v", lo, hi, offsets(times))
	}
}

func offsets(times []time.Time) []time.Duration {
	d := make([]time.Duration, len(times))
	for i, tm := range times {
		d[i] = tm.Sub(times[0]).Round(time.Millisecond)
	}
	return d
}

func TestRetryMaxElapsedTime(t *testing.T) {
	// The first delay alone would pass the limit: no retry, and no wait.
	var c calls
	start := time.Now()
	_, err := Retry{MaxAttempts: 5, InitialInterval: time.Hour, MaxElapsedTime: time.Second}.Middleware(failing(&c, errFlaky))(newMsg("m"))
	if !errors.Is(err, errFlaky) || c.count() != 1 {
		t.Errorf("returned %v after %d calls, want the handler's error after 1", err, c.count())
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("waited %v although the next attempt was past MaxElapsedTime", time.Since(start))
	}

	// Delays 20ms, 200ms, then 2s would end past the 1s limit: 3 calls of 10.
	c = calls{}
	_, err = Retry{MaxAttempts: 10, InitialInterval: 20 * time.Millisecond, Multiplier: 10, MaxElapsedTime: time.Second}.Middleware(failing(&c, errFlaky))(newMsg("m"))
	if !errors.Is(err, errFlaky) || c.count() != 3 {
		t.Errorf("returned %v after %d calls, want the handler's error after 3", err, c.count())
	}
}

func TestRetryContextCancellationAbortsWait(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	msg := newMsg("m")
	msg.SetContext(ctx)
	var c calls
	called := make(chan struct{}, 10)
	h := Retry{MaxAttempts: 5, InitialInterval: time.Hour, Multiplier: 1}.Middleware(func(*message.Message) ([]*message.Message, error) {
		c.add()
		called <- struct{}{}
		return nil, errFlaky
	})
	done := make(chan error, 1)
	go func() {
		_, err := h(msg)
		done <- err
	}()
	<-called
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("returned %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Retry kept waiting after its ctx was cancelled")
	}
	if c.count() != 1 {
		t.Errorf("handler called %d times, want 1", c.count())
	}
}

func TestRetryDoesNotOverflow(t *testing.T) {
	// A huge multiplier with jitter and no MaxInterval: the second delay is
	// years long and must stay so (not wrap to a negative, immediate one),
	// so MaxElapsedTime ends the retries after two calls.
	// The jitter is random, so try a few times.
	for range 20 {
		var c calls
		_, err := Retry{MaxAttempts: 10, InitialInterval: time.Millisecond, Multiplier: 1e300, RandomizationFactor: 0.9, MaxElapsedTime: 10 * time.Second}.
			Middleware(failing(&c, errFlaky))(newMsg("m"))
		if !errors.Is(err, errFlaky) || c.count() != 2 {
			t.Fatalf("returned %v after %d calls, want the handler's error after 2", err, c.count())
		}
	}
}

func TestRetryRecordsFailures(t *testing.T) {
	var c calls
	_, err := Retry{MaxAttempts: 3, InitialInterval: time.Millisecond}.Middleware(failing(&c, errFlaky))(newMsg("m"))
	if !errors.Is(err, errFlaky) || err.Error() != errFlaky.Error() {
		t.Fatalf("Retry returned %v, want the handler's error", err)
	}
	n, first, last := failureRecord(err)
	if n != 3 || first.IsZero() || !last.After(first) {
		t.Errorf("failure record = %d, %v, %v; want 3 calls, the last after the first", n, first, last)
	}
	// A permanent error ends it at once and is recorded as one call.
	c = calls{}
	_, err = Retry{MaxAttempts: 3, InitialInterval: time.Millisecond}.Middleware(failing(&c, permanentErr{"bad"}))(newMsg("m"))
	if n, _, _ := failureRecord(err); n != 1 || !IsPermanent(err) {
		t.Errorf("permanent error: %d calls recorded, IsPermanent %v; want 1, true", n, IsPermanent(err))
	}
}

// TestRetryWaitDoesNotBlockOthers: a message waiting for its retry holds no
// lock, so other messages through the same middleware go on.
func TestRetryWaitDoesNotBlockOthers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waiting calls
	h := Retry{MaxAttempts: 3, InitialInterval: time.Hour}.Middleware(func(m *message.Message) ([]*message.Message, error) {
		if m.UUID == "slow" {
			waiting.add()
			return nil, errFlaky
		}
		return nil, nil
	})
	slow := newMsg("slow")
	slow.SetContext(ctx)
	done := make(chan error, 1)
	go func() { _, err := h(slow); done <- err }()
	waitFor(t, "the slow message's first call", func() bool { return waiting.count() == 1 })
	for i := range 10 {
		if _, err := h(newMsg(fmt.Sprint("fast-", i))); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("slow message: %v", err)
	}
}
