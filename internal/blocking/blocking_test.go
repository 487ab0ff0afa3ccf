package blocking

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCallReturnsResult(t *testing.T) {
	v, err := Call(context.Background(), func() (int, error) { return 7, nil }, nil)
	if v != 7 || err != nil {
		t.Fatalf("got %d, %v", v, err)
	}
	boom := errors.New("boom")
	if err := Do(context.Background(), func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
}

// TestCallAbandonsAtDeadline: a call that blocks returns ctx's error by the
// deadline, and what it yields later is cleaned up, not lost.
func TestCallAbandonsAtDeadline(t *testing.T) {
	release := make(chan struct{})
	cleaned := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Call(ctx, func() (int, error) { <-release; return 42, nil }, func(v int) { cleaned <- v })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("returned after %v", d)
	}
	close(release)
	select {
	case v := <-cleaned:
		if v != 42 {
			t.Fatalf("cleanup got %d", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the late result was not cleaned up")
	}
}

// TestCallNeverCleansUpWhatItReturned races the deadline with the result:
// a value is either returned or cleaned up, never both, never neither.
func TestCallNeverCleansUpWhatItReturned(t *testing.T) {
	for i := range 2000 {
		var cleaned, ran atomic.Int32
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { cancel(); close(done) }()
		v, err := Call(ctx, func() (int, error) { ran.Add(1); return i + 1, nil }, func(int) { cleaned.Add(1) })
		<-done
		// Wait for the goroutine of an abandoned call to finish.
		deadline := time.Now().Add(5 * time.Second)
		for err != nil && cleaned.Load() != ran.Load() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		switch {
		case err == nil && (v != i+1 || cleaned.Load() != 0):
			t.Fatalf("round %d: returned %d and cleaned up %d times", i, v, cleaned.Load())
		case err != nil && cleaned.Load() != ran.Load():
			t.Fatalf("round %d: abandoned after running %d times but cleaned up %d times", i, ran.Load(), cleaned.Load())
		}
	}
}
