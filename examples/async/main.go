// Command async is the original event bus's "asynchronous event handling"
// example in Go. There is no separate async bus: handlers take a
// context.Context and the bus runs up to Concurrency(n) of them at once per
// subscription. The handler here works for one second (the original's
// `await asyncio.sleep(1)`), giving up early when its ctx is cancelled.
//
// The program shows, in three acts:
//
//  1. concurrency: with Concurrency(8), eight one-second handlers finish in
//     about one second, not eight;
//
//  2. graceful shutdown: Close waits for the handlers in flight to finish;
//
//  3. cancellation: a Close whose ctx expires first cancels the ctx of the
//     handler still running; its event is not acknowledged, so it comes back
//     and a new instance of the service handles it.
//
//     go run ./examples/async
//
// It runs on the in-process broker unless EVENTBUS_URL names another, e.g.
// EVENTBUS_URL=amqp://guest:guest@localhost:5672/ for the local RabbitMQ.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	_ "github.com/paissive/go-eventbus/transports/amqp"
	_ "github.com/paissive/go-eventbus/transports/kafka"
	_ "github.com/paissive/go-eventbus/transports/memory"
	_ "github.com/paissive/go-eventbus/transports/nats"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := run(ctx, os.Stdout, os.Getenv("EVENTBUS_URL")); err != nil {
		fmt.Fprintln(os.Stderr, "async:", err)
		os.Exit(1)
	}
}

// UserRegistered is the data of a "user.registered" event.
type UserRegistered struct {
	UserID   string `json:"user_id" validate:"required"`
	Username string `json:"username" validate:"required"`
	Email    string `json:"email" validate:"required,email"`
}

var userRegistered = eventbus.MustSchema[UserRegistered]("user.registered")

const (
	// concurrency is how many handlers of the subscription run at once.
	concurrency = 8
	// workTime is how long one handler works.
	workTime = time.Second
	// impatience is how long the third act's Close waits for handlers.
	impatience = 200 * time.Millisecond
)

// Result is what the scenario observed.
type Result struct {
	// Act 1: Handled handlers finished in Elapsed, with at most PeakInFlight
	// running at once.
	Handled      int
	Elapsed      time.Duration
	PeakInFlight int
	// Act 2: FinishedBeforeClose of the InFlightAtClose handlers had
	// finished when Close returned, after CloseTook.
	InFlightAtClose, FinishedBeforeClose int
	CloseTook                            time.Duration
	// Act 3: Cancelled is the event whose handler saw its ctx cancelled
	// when Close gave up (with CloseErr); Redelivered is the event a new
	// instance then handled (the same one).
	Cancelled, CloseErr, Redelivered string
	// Duplicates counts deliveries of events already handled, which the
	// handler skipped.
	Duplicates int
}

// service is the state shared by the instances of the service in one run.
type service struct {
	out io.Writer

	mu         sync.Mutex
	ours       map[string]bool // IDs of the events this run published
	inFlight   int
	peak       int
	finished   map[string]bool
	cancelled  []string
	duplicates int

	started, done chan string // event IDs
}

// handle is the slow handler: one second of work that stops when ctx does.
func (s *service) handle(ctx context.Context, u UserRegistered, ev eventbus.Event) error {
	s.mu.Lock()
	if !s.ours[ev.ID] {
		s.mu.Unlock()
		// On a durable broker, events of an interrupted earlier run may
		// still be queued: acknowledge and ignore them.
		return nil
	}
	if s.finished[ev.ID] {
		// Delivery is at least once: an event whose acknowledgement was
		// lost comes again. Handlers should be idempotent; this one
		// remembers what it finished.
		s.duplicates++
		s.mu.Unlock()
		fmt.Fprintf(s.out, "  skip   %s: already handled (redelivered duplicate)\n", u.Username)
		return nil
	}
	s.inFlight++
	s.peak = max(s.peak, s.inFlight)
	n := s.inFlight
	s.mu.Unlock()
	fmt.Fprintf(s.out, "  start  %-5s (%d in flight)\n", u.Username, n)
	s.started <- ev.ID

	t := time.NewTimer(workTime)
	defer t.Stop()
	var err error
	select {
	case <-t.C:
	case <-ctx.Done():
		err = ctx.Err()
	}

	s.mu.Lock()
	s.inFlight--
	if err != nil {
		s.cancelled = append(s.cancelled, ev.ID)
	} else {
		s.finished[ev.ID] = true
	}
	s.mu.Unlock()
	if err != nil {
		fmt.Fprintf(s.out, "  cancel %s: %v\n", u.Username, err)
		return err
	}
	fmt.Fprintf(s.out, "  finish %s\n", u.Username)
	s.done <- ev.ID
	return nil
}

// instance opens and starts one instance of the service.
func (s *service) instance(ctx context.Context, url string, logger *slog.Logger) (*eventbus.Bus, error) {
	bus, err := eventbus.New(ctx, eventbus.Config{ServiceName: "profile-service", URL: url, Logger: logger})
	if err != nil {
		return nil, err
	}
	if err := bus.Subscribe(userRegistered.Name(), userRegistered.Handler(s.handle), eventbus.Concurrency(concurrency)); err != nil {
		_ = bus.Close(ctx)
		return nil, err
	}
	if err := bus.Start(ctx); err != nil {
		_ = bus.Close(ctx)
		return nil, err
	}
	return bus, nil
}

// publish publishes one user.registered event per name.
func (s *service) publish(ctx context.Context, bus *eventbus.Bus, names ...string) ([]string, error) {
	evs := make([]eventbus.Event, len(names))
	ids := make([]string, len(names))
	for i, name := range names {
		ev, err := userRegistered.NewEvent(UserRegistered{UserID: "u-" + name, Username: name, Email: name + "@example.com"})
		if err != nil {
			return nil, err
		}
		evs[i], ids[i] = ev, ev.ID
	}
	s.mu.Lock()
	for _, id := range ids {
		s.ours[id] = true
	}
	s.mu.Unlock()
	return ids, bus.Publish(ctx, evs...)
}

// await receives n IDs from ch, or fails when ctx ends.
func await(ctx context.Context, ch <-chan string, n int, what string) ([]string, error) {
	var ids []string
	for len(ids) < n {
		select {
		case id := <-ch:
			ids = append(ids, id)
		case <-ctx.Done():
			return ids, fmt.Errorf("waiting for %s: %d of %d: %w", what, len(ids), n, ctx.Err())
		}
	}
	return ids, nil
}

// run plays the three acts and returns what it observed.
func run(ctx context.Context, out io.Writer, url string) (res Result, err error) {
	if url == "" {
		url = "mem://"
	}
	out = &syncWriter{w: out}
	logger := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := &service{
		out: out, ours: map[string]bool{}, finished: map[string]bool{},
		started: make(chan string, 64), done: make(chan string, 64),
	}
	// Every bus opened is closed on the way out, whatever happens.
	var open []*eventbus.Bus
	defer func() {
		for _, b := range open {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = b.Close(cctx)
			cancel()
		}
	}()

	// Act 1: eight one-second handlers at once.
	fmt.Fprintf(out, "act 1: %d events, %v of work each, Concurrency(%d)\n", concurrency, workTime, concurrency)
	first, err := s.instance(ctx, url, logger)
	if err != nil {
		return res, err
	}
	open = append(open, first)
	start := time.Now()
	if _, err := s.publish(ctx, first, "ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal"); err != nil {
		return res, err
	}
	if _, err := await(ctx, s.done, concurrency, "act 1's handlers to finish"); err != nil {
		return res, err
	}
	if _, err := await(ctx, s.started, concurrency, "act 1's start reports"); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start).Round(time.Millisecond)
	s.mu.Lock()
	res.Handled, res.PeakInFlight = len(s.finished), s.peak
	s.mu.Unlock()
	fmt.Fprintf(out, "act 1: %d handlers finished in %v (at most %d in flight), not %v\n", res.Handled, res.Elapsed, res.PeakInFlight, time.Duration(res.Handled)*workTime)

	// Act 2: Close waits for the handlers in flight.
	fmt.Fprintln(out, "act 2: Close while 3 handlers are running")
	ids, err := s.publish(ctx, first, "ivy", "jon", "kim")
	if err != nil {
		return res, err
	}
	if _, err := await(ctx, s.started, len(ids), "act 2's handlers to start"); err != nil {
		return res, err
	}
	res.InFlightAtClose = len(ids)
	closeStart := time.Now()
	open = open[:0]
	if err := first.Close(ctx); err != nil {
		return res, fmt.Errorf("act 2: Close: %w", err)
	}
	res.CloseTook = time.Since(closeStart).Round(time.Millisecond)
	s.mu.Lock()
	for _, id := range ids {
		if s.finished[id] {
			res.FinishedBeforeClose++
		}
	}
	s.mu.Unlock()
	if _, err := await(ctx, s.done, len(ids), "act 2's handlers to report"); err != nil {
		return res, err
	}
	fmt.Fprintf(out, "act 2: Close returned after %v; %d of %d handlers in flight had finished\n", res.CloseTook, res.FinishedBeforeClose, res.InFlightAtClose)

	// Act 3: an impatient Close cancels the handler; its event comes back.
	fmt.Fprintf(out, "act 3: Close that waits only %v for a 1s handler\n", impatience)
	second, err := s.instance(ctx, url, logger)
	if err != nil {
		return res, err
	}
	open = append(open, second)
	ids, err = s.publish(ctx, second, "lee")
	if err != nil {
		return res, err
	}
	if _, err := await(ctx, s.started, 1, "act 3's handler to start"); err != nil {
		return res, err
	}
	cctx, cancel := context.WithTimeout(ctx, impatience)
	err = second.Close(cctx)
	cancel()
	open = open[:0]
	if !errors.Is(err, context.DeadlineExceeded) {
		return res, fmt.Errorf("act 3: Close returned %v; want it to give up waiting", err)
	}
	res.CloseErr = err.Error()
	fmt.Fprintf(out, "act 3: Close gave up: %v\n", err)

	third, err := s.instance(ctx, url, logger)
	if err != nil {
		return res, err
	}
	open = append(open, third)
	fmt.Fprintln(out, "act 3: a new instance started; the unacknowledged event comes back to it")
	got, err := await(ctx, s.done, 1, "the cancelled event to be handled again")
	if err != nil {
		return res, err
	}
	res.Redelivered = got[0]
	s.mu.Lock()
	if len(s.cancelled) > 0 {
		res.Cancelled = s.cancelled[0]
	}
	res.Duplicates = s.duplicates
	s.mu.Unlock()
	if res.Cancelled != ids[0] || res.Redelivered != ids[0] {
		return res, fmt.Errorf("act 3: cancelled %q and handled again %q; want both to be %q", res.Cancelled, res.Redelivered, ids[0])
	}
	fmt.Fprintf(out, "act 3: event %s was cancelled, redelivered and handled\n", ids[0])
	return res, nil
}

// syncWriter serialises writes: handlers run concurrently.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
