package blocking

import (
	"context"
	"errors"
	"sync"
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
// every value f produces is either returned or cleaned up, never both,
// never neither.
func TestCallNeverCleansUpWhatItReturned(t *testing.T) {
	const rounds = 2000
	var ran atomic.Int32
	var mu sync.Mutex
	returned, cleaned := map[int]int{}, map[int]int{}
	for i := range rounds {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { cancel(); close(done) }()
		v, err := Call(ctx, func() (int, error) { ran.Add(1); return i, nil }, func(v int) {
			mu.Lock()
			cleaned[v]++
			mu.Unlock()
		})
		<-done
		if err == nil {
			mu.Lock()
			returned[v]++
			mu.Unlock()
		}
	}
	// Abandoned calls finish in their goroutines: wait until every value
	// f produced is accounted for.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(returned) + len(cleaned)
		mu.Unlock()
		if n == int(ran.Load()) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := len(returned) + len(cleaned); n != int(ran.Load()) {
		t.Fatalf("f produced %d values; %d were returned and %d cleaned up", ran.Load(), len(returned), len(cleaned))
	}
	for v, c := range cleaned {
		if c != 1 || returned[v] != 0 {
			t.Errorf("value %d: returned %d times and cleaned up %d times", v, returned[v], c)
		}
	}
	for v, c := range returned {
		if c != 1 {
			t.Errorf("value %d returned %d times", v, c)
		}
	}
}
