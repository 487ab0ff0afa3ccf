package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// poisonQueue is a service's poison queue: the messages on one subject of
// the namespace's poison stream, "<stream>_poison.<service>", oldest
// first. A record's body may travel in chunks on
// "<stream>_poison.<service>.large.<id>" (see large.go), which Scan and
// Purge delete with the record.
type poisonQueue struct {
	t       *Transport
	subject string
}

var _ driver.PoisonQueue = (*poisonQueue)(nil)

// Add stores msg as a new record and returns once the stream acknowledged
// it. The record's Nats-Msg-Id is its poison ID, so an Add sent again after
// a lost acknowledgement is stored once. A record larger than
// max_message_bytes plus PoisonHeadroom fails with an error wrapping
// driver.ErrTooLarge.
func (q *poisonQueue) Add(ctx context.Context, msg *message.Message) error {
	if q.t.isClosed() {
		return errClosed
	}
	nm := toNATS(q.subject, msg)
	chunks, err := q.t.split(nm, q.subject+".large", q.t.opts.poisonMaxBytes(), int(q.t.nc.MaxPayload()), "max_message_bytes + PoisonHeadroom")
	if err != nil {
		return err
	}
	if id := msg.Metadata.Get(driver.HeaderPoisonID); id != "" {
		nm.Header[headerMsgID] = []string{id}
	}
	a := attempt{ctx: ctx, m: nm}
	if chunks != nil {
		if err := q.t.storeChunks(ctx, chunks, &a); err != nil {
			return err
		}
	}
	q.t.send(&a)
	q.t.await(&a)
	if a.err != nil {
		return fmt.Errorf("nats transport: storing a poison record of %s: %w", msg.UUID, a.err)
	}
	return nil
}

// record is one stored record.
type record struct {
	seq   uint64
	large string // the subject of its chunks, if any
}

// Scan visits the records stored when it starts, oldest first, in pages of
// at most pageSize: it notes the stream's last sequence, then reads the
// service's records one by one with the stream's message-get API (next
// message on the subject from a sequence), up to that sequence. It deletes
// the records visit names (and their chunks) before reading the next
// page.
func (q *poisonQueue) Scan(ctx context.Context, pageSize int, visit func(page []*message.Message) (del []int, err error)) error {
	if q.t.isClosed() {
		return errClosed
	}
	if pageSize < 1 {
		pageSize = 1
	}
	_, ps := q.t.streams()
	info, err := ps.Info(ctx)
	if err != nil {
		return q.t.apiError(ctx, "reading the poison stream's state", err)
	}
	last := info.State.LastSeq
	seq := uint64(1)
	for seq <= last {
		var page []*message.Message
		var recs []record
		for len(page) < pageSize && seq <= last {
			rm, err := ps.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(q.subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				seq = last + 1
				break
			}
			if err != nil {
				return q.t.apiError(ctx, "reading the poison queue", err)
			}
			if rm.Sequence > last {
				seq = last + 1
				break
			}
			seq = rm.Sequence + 1
			data := rm.Data
			rec := record{seq: rm.Sequence}
			if v := rm.Header.Get(headerLarge); v != "" {
				ref, err := parseLargeRef(v)
				if err == nil {
					rec.large = ref.subject
					data, err = assemble(ctx, ps, ref)
				}
				if err != nil && !errors.Is(err, errChunksMissing) {
					return q.t.apiError(ctx, "reading the body of a large poison record", err)
				}
			}
			m := fromNATS(rm.Header, data, ps.CachedInfo().Config.Name+":"+strconv.FormatUint(rm.Sequence, 10), 0)
			page = append(page, m)
			recs = append(recs, rec)
		}
		if len(page) == 0 {
			break
		}
		del, verr := visit(page)
		for _, i := range del {
			if i < 0 || i >= len(recs) {
				continue
			}
			if err := q.delete(ctx, ps, recs[i]); err != nil {
				return errors.Join(verr, err)
			}
		}
		if verr != nil {
			return verr
		}
	}
	return nil
}

// delete removes a record, then its chunks.
func (q *poisonQueue) delete(ctx context.Context, ps jetstream.Stream, r record) error {
	if err := ps.DeleteMsg(ctx, r.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !isNoMessage(err) {
		return q.t.apiError(ctx, fmt.Sprintf("deleting poison record %d", r.seq), err)
	}
	if r.large != "" {
		if err := ps.Purge(ctx, jetstream.WithPurgeSubject(r.large)); err != nil {
			return q.t.apiError(ctx, "deleting the chunks of poison record "+strconv.FormatUint(r.seq, 10), err)
		}
	}
	return nil
}

// isNoMessage reports the server's "no message found" for a delete of a
// record that is already gone (a concurrent Scan deleted it).
func isNoMessage(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeMessageNotFound || apiErr.Code == 404)
}

// Purge deletes every record stored when it starts: the records on the
// service's subject up to the stream's last sequence, in one purge
// request. When the service has large records, it first notes their
// chunks' subjects and deletes those after the records.
func (q *poisonQueue) Purge(ctx context.Context) error {
	if q.t.isClosed() {
		return errClosed
	}
	_, ps := q.t.streams()
	info, err := ps.Info(ctx)
	if err != nil {
		return q.t.apiError(ctx, "reading the poison stream's state", err)
	}
	last := info.State.LastSeq
	if last == 0 {
		return nil
	}
	// Chunks of records stored before the purge: only when the service has
	// chunks at all does it read its records.
	var chunks []string
	if _, err := ps.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(q.subject+".large.>")); err == nil {
		for seq := uint64(1); seq <= last; {
			rm, err := ps.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(q.subject))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				break
			}
			if err != nil {
				return q.t.apiError(ctx, "reading the poison queue", err)
			}
			if rm.Sequence > last {
				break
			}
			seq = rm.Sequence + 1
			if ref, err := parseLargeRef(rm.Header.Get(headerLarge)); err == nil {
				chunks = append(chunks, ref.subject)
			}
		}
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return q.t.apiError(ctx, "reading the poison queue", err)
	}
	if err := ps.Purge(ctx, jetstream.WithPurgeSubject(q.subject), jetstream.WithPurgeSequence(last+1)); err != nil {
		return q.t.apiError(ctx, "purging the poison queue", err)
	}
	for _, c := range chunks {
		if err := ps.Purge(ctx, jetstream.WithPurgeSubject(c)); err != nil {
			return q.t.apiError(ctx, "deleting the chunks of a purged poison record", err)
		}
	}
	return nil
}
