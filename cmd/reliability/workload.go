package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/paissive/go-eventbus/eventbus"
	// The transports register the amqp:// and kafka:// schemes.
	_ "github.com/paissive/go-eventbus/transports/amqp"
	_ "github.com/paissive/go-eventbus/transports/kafka"
)

const (
	// eventName is the name of every event the workload publishes, and
	// eventPattern the subscriber's pattern.
	eventName    = "reliability.probe"
	eventPattern = "reliability.#"
	// subService and pubService are the two buses' service names;
	// subName is the subscription's name, so its queue or consumer group
	// is "rel-sub.events".
	subService = "rel-sub"
	pubService = "rel-pub"
	subName    = "events"

	// setupTimeout bounds eventbus.New, Subscribe and Start.
	setupTimeout = time.Minute
	// faultTimeout bounds each outage action (a command, a restart).
	faultTimeout = 2 * time.Minute
	// closeTimeout bounds each bus's Close at the end.
	closeTimeout = 15 * time.Second
)

// recorder collects what the workload observes; it is safe for concurrent
// use by the publishers, the handler and the outage.
type recorder struct {
	prefix string // of this run's event IDs

	mu           sync.Mutex
	outcomes     map[string]outcome
	handled      map[string]int
	foreign      int
	lastDelivery time.Time
	marks        []mark
	notes        []string
	publishCalls int
	overruns     int
	maxOverrun   time.Duration
}

func newRecorder(prefix string) *recorder {
	return &recorder{prefix: prefix, outcomes: map[string]outcome{}, handled: map[string]int{}}
}

// handle is the subscriber's handler: it counts each delivery by event ID.
func (r *recorder) handle(_ context.Context, ev eventbus.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastDelivery = time.Now()
	if !strings.HasPrefix(ev.ID, r.prefix) {
		r.foreign++ // left in the queue or group by an earlier run
		return nil
	}
	r.handled[ev.ID]++
	return nil
}

// published records the result of one Publish call of ids, which returned
// err at at, late after its ctx deadline (negative: before it).
func (r *recorder) published(ids []string, err error, at time.Time, late time.Duration) {
	failed := map[string]string{}
	var pe *eventbus.PublishError
	switch {
	case err == nil:
	case errors.As(err, &pe):
		for _, f := range pe.Failed {
			failed[f.ID] = fmt.Sprint(f.Err)
		}
	default:
		for _, id := range ids {
			failed[id] = err.Error()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.publishCalls++
	if late > overrunMargin {
		r.overruns++
		r.maxOverrun = max(r.maxOverrun, late)
	}
	for _, id := range ids {
		text, bad := failed[id]
		r.outcomes[id] = outcome{ok: !bad, returned: at, err: text}
	}
}

func (r *recorder) mark(what string) {
	r.mu.Lock()
	r.marks = append(r.marks, mark{time.Now(), what})
	r.mu.Unlock()
}

func (r *recorder) note(what string) {
	r.mu.Lock()
	r.notes = append(r.notes, what)
	r.mu.Unlock()
}

// progress returns how many events Publish has reported on, how many of
// those it accepted and are not handled yet, and when the last delivery
// happened.
func (r *recorder) progress() (reported, pending int, lastDelivery time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, o := range r.outcomes {
		if o.ok && r.handled[id] == 0 {
			pending++
		}
	}
	return len(r.outcomes), pending, r.lastDelivery
}

// fill copies the recorded facts into res.
func (r *recorder) fill(res *results) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res.marks = append(res.marks, r.marks...)
	res.notes = append(res.notes, r.notes...)
	res.outcomes, res.handled, res.foreign = r.outcomes, r.handled, r.foreign
	res.publishCalls, res.overruns, res.maxOverrun = r.publishCalls, r.overruns, r.maxOverrun
}

// runScenario starts the scenario's broker (or takes the user's), runs the
// workload against it with the outage half way, and stops the broker.
func runScenario(ctx context.Context, s settings, name string) (results, error) {
	tg, err := openTarget(ctx, s, name)
	if err != nil {
		return results{}, fmt.Errorf("%s: %w", name, err)
	}
	res, err := runWorkload(ctx, s, name, tg)
	if tg.close != nil {
		if cerr := tg.close(); cerr != nil {
			res.notes = append(res.notes, "stopping the broker: "+cerr.Error())
		}
	}
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	return res, nil
}

// runWorkload opens a subscriber bus and a publisher bus on tg, publishes
// s.events events from s.publishers goroutines with tg's outage half way,
// waits until every event Publish accepted was handled (or the drain
// deadline passed) and closes both buses.
func runWorkload(ctx context.Context, s settings, name string, tg target) (res results, err error) {
	var idb [4]byte
	_, _ = rand.Read(idb[:])
	rec := newRecorder(hex.EncodeToString(idb[:]) + "-")
	res = results{
		scenario: name, broker: tg.describe, kafka: strings.HasPrefix(tg.url, "kafka:"),
		events: s.events, publishers: s.publishers, batch: s.batch, outage: s.outage, grace: s.grace,
	}

	setup, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	sub, err := eventbus.New(setup, eventbus.Config{ServiceName: subService, URL: tg.url, Logger: s.logger})
	if err != nil {
		return res, fmt.Errorf("subscriber bus: %w", err)
	}
	defer closeBus(sub, "subscriber", &res)
	if err := sub.Subscribe(eventPattern, rec.handle, eventbus.SubscriptionName(subName), eventbus.Concurrency(s.concurrency)); err != nil {
		return res, fmt.Errorf("subscribe: %w", err)
	}
	if err := sub.Start(setup); err != nil {
		return res, fmt.Errorf("starting the subscriber: %w", err)
	}
	pub, err := eventbus.New(setup, eventbus.Config{ServiceName: pubService, URL: tg.url, Logger: s.logger})
	if err != nil {
		return res, fmt.Errorf("publisher bus: %w", err)
	}
	// Closed before the subscriber (defers run last in, first out).
	defer closeBus(pub, "publisher", &res)

	res.start = time.Now()
	rec.mark(fmt.Sprintf("publishing starts (%s)", pace(s)))
	trigger := make(chan struct{})
	var fire sync.Once
	outage := make(chan time.Time, 1)
	go func() { outage <- runOutage(ctx, s, tg, trigger, rec) }()

	batches := (s.events + s.batch - 1) / s.batch
	var next atomic.Int64
	var wg sync.WaitGroup
	for range s.publishers {
		wg.Go(func() {
			for {
				k := int(next.Add(1) - 1)
				if k >= batches || ctx.Err() != nil {
					return
				}
				first := k * s.batch
				if s.rate > 0 {
					due := res.start.Add(time.Duration(float64(first) / s.rate * float64(time.Second)))
					if !sleepUntil(ctx, due) {
						return
					}
				}
				n := min(s.batch, s.events-first)
				if first+n > s.events/2 { // the batch holding the middle event
					fire.Do(func() { close(trigger) })
				}
				publishBatch(ctx, s, pub, rec, first, n)
			}
		})
	}
	wg.Wait()
	fire.Do(func() { close(trigger) }) // publishing was interrupted before the middle
	rec.mark("the last Publish call returned")
	res.recovered = <-outage

	drain(ctx, s, rec)
	rec.fill(&res)
	return res, nil
}

// publishBatch publishes events first..first+n-1 in one Publish call with
// its own ctx of s.publishTimeout and records the outcome.
func publishBatch(ctx context.Context, s settings, pub *eventbus.Bus, rec *recorder, first, n int) {
	evs := make([]eventbus.Event, n)
	ids := make([]string, n)
	for j := range n {
		ids[j] = fmt.Sprintf("%s%06d", rec.prefix, first+j)
		ev, err := eventbus.NewEvent(eventName, map[string]int{"seq": first + j}, eventbus.WithSource(pubService))
		if err != nil {
			panic(err) // the name and data are constants of this program
		}
		ev.ID = ids[j]
		evs[j] = ev
	}
	pctx, cancel := context.WithTimeout(ctx, s.publishTimeout)
	deadline, _ := pctx.Deadline()
	err := pub.Publish(pctx, evs...)
	cancel()
	now := time.Now()
	rec.published(ids, err, now, now.Sub(deadline))
}

// runOutage waits for trigger, applies tg's fault for s.outage, ends it
// and returns when the broker first answered a new connection again (zero
// if it did not within s.recoveryTimeout). Once started, the outage is
// always ended, even after Ctrl-C, so that a user's broker comes back.
func runOutage(ctx context.Context, s settings, tg target, trigger <-chan struct{}, rec *recorder) time.Time {
	select {
	case <-trigger:
	case <-ctx.Done():
	}
	if ctx.Err() != nil {
		return time.Time{}
	}
	reported, _, _ := rec.progress()
	rec.mark(fmt.Sprintf("outage starts: %s (Publish has reported on %d events)", tg.fault.downWhat, reported))
	always := context.WithoutCancel(ctx)
	dctx, cancel := context.WithTimeout(always, faultTimeout)
	err := tg.fault.down(dctx)
	cancel()
	stillUp := make(chan bool, 1)
	if err != nil {
		rec.mark("taking the broker down failed: " + err.Error())
		rec.note("taking the broker down failed: " + err.Error())
		stillUp <- false
	} else {
		rec.mark("the broker is down")
		// A stop command that did nothing would make the run prove
		// nothing: say so.
		go func() { stillUp <- probe(always, tg.url) == nil }()
	}
	select {
	case <-time.After(s.outage):
	case <-ctx.Done():
	}
	if <-stillUp {
		rec.note("the broker still answered a new connection after " + tg.fault.downWhat + ": the outage may not have happened")
	}

	rec.mark("outage ends: " + tg.fault.upWhat)
	pctx, cancelProbe := context.WithTimeout(ctx, s.recoveryTimeout)
	defer cancelProbe()
	type answer struct {
		at  time.Time
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		at, err := waitAnswering(pctx, tg.url)
		answered <- answer{at, err}
	}()
	uctx, cancel := context.WithTimeout(always, faultTimeout)
	err = tg.fault.up(uctx)
	cancel()
	if err != nil {
		rec.mark("bringing the broker back failed: " + err.Error())
		rec.note("bringing the broker back failed: " + err.Error())
		cancelProbe()
	} else {
		rec.mark(tg.fault.upWhat + ": done")
	}
	a := <-answered
	switch {
	case a.err != nil && ctx.Err() != nil:
		rec.mark("interrupted before the broker answered again")
		return time.Time{}
	case a.err != nil:
		rec.mark(fmt.Sprintf("the broker did not answer again within %v: %v", s.recoveryTimeout, a.err))
		return time.Time{}
	}
	rec.mark("recovery: the broker answered a new connection")
	return a.at
}

// drain waits until every event Publish accepted was handled and no
// delivery came for s.settle (so late duplicates are counted too), at
// most s.drainTimeout.
func drain(ctx context.Context, s settings, rec *recorder) {
	deadline := time.Now().Add(s.drainTimeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	allHandled := false
	for {
		_, pending, last := rec.progress()
		if ctx.Err() != nil {
			rec.mark(fmt.Sprintf("interrupted with %d accepted events not handled", pending))
			return
		}
		if pending == 0 && !allHandled {
			allHandled = true
			rec.mark("every event Publish accepted has been handled")
		}
		if allHandled && time.Since(last) >= s.settle {
			rec.mark(fmt.Sprintf("no delivery for %v: counting", s.settle))
			return
		}
		if time.Now().After(deadline) {
			rec.mark(fmt.Sprintf("drain deadline (%v) passed with %d accepted events not handled", s.drainTimeout, pending))
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
}

// closeBus closes b within closeTimeout and notes an error or a Close
// that outlived its ctx.
func closeBus(b *eventbus.Bus, what string, res *results) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	start := time.Now()
	err := b.Close(ctx)
	if took := time.Since(start); took > closeTimeout+overrunMargin {
		res.notes = append(res.notes, fmt.Sprintf("%s Close took %v with a ctx of %v", what, took.Round(time.Millisecond), closeTimeout))
	}
	if err != nil {
		res.notes = append(res.notes, fmt.Sprintf("%s Close: %v", what, err))
	}
}

// sleepUntil waits until t; false means ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// pace describes the publishing rate for the timeline.
func pace(s settings) string {
	if s.rate <= 0 {
		return "as fast as Publish returns"
	}
	return fmt.Sprintf("paced at %g events/s", s.rate)
}
