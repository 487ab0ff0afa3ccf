package eventbus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
	"github.com/paissive/go-eventbus/internal/wire"
	"github.com/paissive/go-eventbus/middleware"
)

// PoisonReason says why an event was poisoned.
type PoisonReason string

// The reasons the bus records.
const (
	// ReasonRetriesExhausted: the handler failed on every attempt the
	// policy allows.
	ReasonRetriesExhausted PoisonReason = middleware.ReasonRetriesExhausted
	// ReasonPermanent: the handler returned a permanent error (see
	// [Permanent]), or the data failed its schema.
	ReasonPermanent PoisonReason = middleware.ReasonPermanent
	// ReasonPanic: the handler panicked on every attempt; the error holds
	// the stack.
	ReasonPanic PoisonReason = middleware.ReasonPanic
	// ReasonUndecodable: the message is not an event in the wire format
	// (missing attributes, a body that is not JSON).
	ReasonUndecodable PoisonReason = middleware.ReasonUndecodable
	// ReasonMisrouted: the broker delivered an event whose name the
	// subscription's pattern does not match.
	ReasonMisrouted PoisonReason = middleware.ReasonMisrouted
)

// PoisonedEvent is an event in the poison queue with the record of its
// failure.
type PoisonedEvent struct {
	// Event is the stored event; for an undecodable message only its ID is
	// set and DecodeError says why.
	Event       Event
	DecodeError error
	// Headers and Payload are the stored message as it was received (for
	// a reduced record, as it was before the broker refused it).
	Headers map[string]string
	Payload []byte

	// RecordID identifies this record in the poison queue: the same event
	// poisoned twice is two records.
	RecordID string
	// Reason is why the event was poisoned.
	Reason PoisonReason
	// Error is the handler's last error; at most 8 KiB of it, and
	// ErrorLength gives the full length when it was cut.
	Error       string
	ErrorLength int
	// Attempts is the number of handler calls made.
	Attempts                  int
	Subscription, Pattern     string
	FirstFailure, LastFailure time.Time
}

// PoisonFilter selects poisoned events for [Bus.Poisoned], [Bus.Replay] and
// [Bus.PurgePoison]. Its zero value selects every event; set fields narrow
// the selection, all of them at once.
type PoisonFilter struct {
	// IDs selects events by event ID.
	IDs []string
	// Subscription selects events a subscription of this name failed.
	Subscription string
	// Reason selects events poisoned for this reason.
	Reason PoisonReason
	// Name is a pattern (see [Pattern]) the event's name must match.
	Name string
	// After and Before bound the time of the last failure.
	After, Before time.Time
	// Limit, when positive, stops after this many events.
	Limit int
	// Each, when set, is called with every selected event once the call
	// is done with it, in queue order: listed ([Bus.Poisoned], which then
	// returns no slice, so that a queue of any size streams through the
	// memory of one page), redelivered and removed from the queue
	// ([Bus.Replay]), removed ([Bus.PurgePoison], except with the zero
	// filter, which empties the queue at once). For Replay and
	// PurgePoison it is called a page at a time, once the page's records
	// are removed, so it serves as progress. An error from Each stops the
	// call before it reads the next page and is returned (errors.Is finds it):
	// returning one on an interrupt (Ctrl-C) ends a Replay with its page in
	// flight complete, neither lost nor to be replayed again.
	Each func(PoisonedEvent) error
}

// poisonPage is how many records the bus asks a poison queue for at once:
// listing, replaying or purging any number of records holds at most this
// many in memory.
const poisonPage = 500

// errStopScan ends a scan early without an error.
var errStopScan = errors.New("eventbus: stop scan")

// match returns a function reporting whether a poisoned event passes f.
func (f PoisonFilter) match() (func(*PoisonedEvent) bool, error) {
	var name Pattern
	if f.Name != "" {
		var err error
		if name, err = CompilePattern(f.Name); err != nil {
			return nil, fmt.Errorf("eventbus: PoisonFilter.Name: %w", err)
		}
	}
	return func(p *PoisonedEvent) bool {
		switch {
		case len(f.IDs) > 0 && !slices.Contains(f.IDs, p.Event.ID):
			return false
		case f.Subscription != "" && p.Subscription != f.Subscription:
			return false
		case f.Reason != "" && p.Reason != f.Reason:
			return false
		case f.Name != "" && !name.Match(p.Event.Name):
			return false
		case !f.After.IsZero() && !p.LastFailure.After(f.After):
			return false
		case !f.Before.IsZero() && !p.LastFailure.Before(f.Before):
			return false
		}
		return true
	}, nil
}

// poisonQueue returns the transport's poison queue, or ErrClosed once the
// bus is closing.
func (b *Bus) poisonQueue() (driver.PoisonQueue, error) {
	if b.isClosing() {
		return nil, ErrClosed
	}
	return b.transport.PoisonQueue()
}

// scanPoison visits the poisoned events that pass f, a page at a time;
// visit returns the indexes (into the page) of the records to delete.
func (b *Bus) scanPoison(ctx context.Context, f PoisonFilter, visit func(page []*message.Message, ps []*PoisonedEvent) ([]int, error)) error {
	pq, err := b.poisonQueue()
	if err != nil {
		return err
	}
	match, err := f.match()
	if err != nil {
		return err
	}
	n := 0
	err = pq.Scan(ctx, poisonPage, func(page []*message.Message) ([]int, error) {
		ps := make([]*PoisonedEvent, len(page))
		var stop bool
		for i, m := range page {
			p := toPoisoned(m)
			if !match(&p) {
				continue
			}
			if f.Limit > 0 && n == f.Limit {
				stop = true
				break
			}
			n++
			ps[i] = &p
		}
		del, err := visit(page, ps)
		if err == nil && stop {
			err = errStopScan
		}
		return del, err
	})
	if errors.Is(err, errStopScan) {
		return nil
	}
	return err
}

// Poisoned lists the events in the service's poison queue that pass f,
// oldest first, without removing them. It reads the queue a page at a
// time, but returns every selected event at once: set f.Limit, or f.Each
// to stream them, for a queue that may be large.
func (b *Bus) Poisoned(ctx context.Context, f PoisonFilter) ([]PoisonedEvent, error) {
	var out []PoisonedEvent
	err := b.scanPoison(ctx, f, func(_ []*message.Message, ps []*PoisonedEvent) ([]int, error) {
		for _, p := range ps {
			switch {
			case p == nil:
			case f.Each != nil:
				if err := f.Each(*p); err != nil {
					return nil, err
				}
			default:
				out = append(out, *p)
			}
		}
		return nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("eventbus: listing poison queue: %w", err)
	}
	return out, nil
}

// Replay sends the poisoned events that pass f back to the subscription
// that failed them, and only to it, and removes exactly the records it
// sent from the poison queue. Replayed events keep their ID, correlation
// and headers, without the poison headers. An event that fails again is
// poisoned again as a new record, which this Replay neither sends again
// nor removes. It returns how many events were replayed.
//
// The queue is read and replayed a page at a time: a page's events are
// redelivered (with the transport's publish guarantees), then their
// records removed. A record is removed only after its event was accepted
// for the subscription, so nothing is lost; if Replay stops between the
// two (ctx ends, the process dies), the events of that page are replayed
// again by the next Replay (at most one page, 500 events; they keep their
// IDs, so an idempotent subscription skips them).
func (b *Bus) Replay(ctx context.Context, f PoisonFilter) (int, error) {
	n := 0
	// Events of a group this Replay sent already: a record of the same
	// event the queue gives again (stored again meanwhile) is left alone.
	sent := map[string]bool{}
	var orphans []string // records without a subscription: left stored
	done := f.doneReporter()
	err := b.scanPoison(ctx, f, done.visit(func(page []*message.Message, ps []*PoisonedEvent) ([]int, error) {
		byGroup := map[string][]int{}
		var groups []string
		for i, p := range ps {
			if p == nil {
				continue
			}
			if p.Subscription == "" {
				orphans = append(orphans, p.Event.ID)
				continue
			}
			g := b.cfg.ServiceName + "." + p.Subscription
			if sent[g+"\x00"+p.Event.ID] {
				continue
			}
			if byGroup[g] == nil {
				groups = append(groups, g)
			}
			byGroup[g] = append(byGroup[g], i)
		}
		var del []int
		for _, g := range groups {
			idx := byGroup[g]
			msgs := make([]*message.Message, len(idx))
			for j, i := range idx {
				msgs[j] = replayMessage(ps[i])
				msgs[j].SetContext(ctx)
			}
			err := b.transport.Redeliver(ctx, g, msgs...)
			failed := map[string]bool{}
			var pe *driver.PublishError
			switch {
			case err == nil:
			case errors.As(err, &pe):
				for _, fe := range pe.Failed {
					failed[fe.UUID] = true
				}
			default:
				return del, fmt.Errorf("eventbus: replaying to %s: %w", g, err)
			}
			for j, i := range idx {
				if !failed[msgs[j].UUID] {
					del = append(del, i)
					sent[g+"\x00"+msgs[j].UUID] = true
					n++
				}
			}
			if err != nil {
				return del, fmt.Errorf("eventbus: replaying to %s: %w", g, err)
			}
		}
		return del, nil
	}))
	err = done.finish(err)
	if err == nil && len(orphans) > 0 {
		err = fmt.Errorf("eventbus: %d poisoned message(s) have no %s header, so the subscription to replay them to is unknown; they stay in the poison queue (first: %s)", len(orphans), wire.PoisonSubscription, orphans[0])
	}
	return n, err
}

// doneReporter calls f.Each for the events whose records a scan removed.
// A page's records are removed after its visit returns, so the events of
// a page are reported when the next page is visited, or when the scan
// returns.
type doneReporter struct {
	each     func(PoisonedEvent) error
	pending  []*PoisonedEvent
	visitErr error
}

func (f PoisonFilter) doneReporter() *doneReporter { return &doneReporter{each: f.Each} }

// visit wraps a scan's visit: it reports the previous page first, and
// remembers the events of this page that visit removes.
func (d *doneReporter) visit(v func([]*message.Message, []*PoisonedEvent) ([]int, error)) func([]*message.Message, []*PoisonedEvent) ([]int, error) {
	if d.each == nil {
		return v
	}
	return func(page []*message.Message, ps []*PoisonedEvent) ([]int, error) {
		if err := d.flush(); err != nil {
			return nil, err
		}
		del, err := v(page, ps)
		for _, i := range del {
			if i >= 0 && i < len(ps) && ps[i] != nil {
				d.pending = append(d.pending, ps[i])
			}
		}
		d.visitErr = err
		return del, err
	}
}

func (d *doneReporter) flush() error {
	pending := d.pending
	d.pending = nil
	for _, p := range pending {
		if err := d.each(*p); err != nil {
			return err
		}
	}
	return nil
}

// finish reports the last page, whose records the scan removed when it
// returned nil or the error of that page's visit (see
// driver.PoisonQueue.Scan), and returns the scan's error, or Each's.
func (d *doneReporter) finish(scanErr error) error {
	if d.each == nil {
		return scanErr
	}
	if scanErr != nil && (d.visitErr == nil || !errors.Is(scanErr, d.visitErr)) {
		return scanErr // the last page's removal is not known to be done
	}
	if err := d.flush(); err != nil && scanErr == nil {
		return err
	}
	return scanErr
}

// replayMessage is the message a poisoned event is replayed as: the stored
// message without the poison headers.
func replayMessage(p *PoisonedEvent) *message.Message {
	m := message.NewMessage(p.Event.ID, p.Payload)
	for k, v := range p.Headers {
		if !strings.HasPrefix(k, "poison_") {
			m.Metadata[k] = v
		}
	}
	return m
}

// PurgePoison deletes the poisoned events that pass f and returns how many
// it deleted; with the zero filter it empties the queue (and returns -1
// when the transport does not count what it purged).
func (b *Bus) PurgePoison(ctx context.Context, f PoisonFilter) (int, error) {
	if f.IDs == nil && f.Subscription == "" && f.Reason == "" && f.Name == "" && f.After.IsZero() && f.Before.IsZero() && f.Limit == 0 {
		pq, err := b.poisonQueue()
		if err != nil {
			return 0, err
		}
		if err := pq.Purge(ctx); err != nil {
			return 0, fmt.Errorf("eventbus: purging poison queue: %w", err)
		}
		return -1, nil
	}
	n := 0
	done := f.doneReporter()
	err := b.scanPoison(ctx, f, done.visit(func(_ []*message.Message, ps []*PoisonedEvent) ([]int, error) {
		var del []int
		for i, p := range ps {
			if p != nil {
				del = append(del, i)
			}
		}
		n += len(del)
		return del, nil
	}))
	if err = done.finish(err); err != nil {
		return n, fmt.Errorf("eventbus: purging poison queue: %w", err)
	}
	return n, nil
}

func toPoisoned(rec *message.Message) PoisonedEvent {
	p := PoisonedEvent{RecordID: rec.Metadata.Get(wire.PoisonID)}
	m, err := middleware.Unwrap(rec)
	if err != nil {
		p.DecodeError = err
		m = rec
	}
	md := m.Metadata
	headers := make(map[string]string, len(md))
	for k, v := range md {
		headers[k] = v
	}
	p.Headers, p.Payload = headers, m.Payload
	p.Reason, p.Error = PoisonReason(md[wire.PoisonReason]), md[wire.PoisonError]
	p.Subscription, p.Pattern = md[wire.PoisonSubscription], md[wire.PoisonPattern]
	p.Attempts, _ = strconv.Atoi(md[wire.PoisonAttempts])
	p.ErrorLength = len(p.Error)
	if n, err := strconv.Atoi(md[wire.PoisonErrorTruncated]); err == nil {
		p.ErrorLength = n
	}
	p.FirstFailure, _ = time.Parse(time.RFC3339Nano, md[wire.PoisonFirstFailure])
	p.LastFailure, _ = time.Parse(time.RFC3339Nano, md[wire.PoisonLastFailure])
	if p.DecodeError != nil {
		p.Event = Event{ID: m.UUID}
		return p
	}
	p.Event, p.DecodeError = decode(m)
	if p.DecodeError != nil {
		p.Event = Event{ID: m.UUID}
	}
	return p
}
