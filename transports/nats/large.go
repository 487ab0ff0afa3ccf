package nats

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Large messages. A NATS server refuses a message whose headers and body
// together exceed its max_payload (1 MiB unless configured), and a
// message of the transport may be up to max_message_bytes (4 MiB by
// default). The body of a larger message is therefore stored first as
// chunks of at most max_payload less chunkHeadroom, each a message of the
// same stream on a subject of its own, "<root>.<id>", that no consumer
// filters on; then the message itself (the head) is published with its
// headers, an empty body and the header
//
//	Eventbus-Large: <chunk subject> <chunks> <body bytes> <first chunk's sequence>
//
// A consumer that receives a head reads the chunks by subject (the
// stream's message-get API, one request per chunk) and hands the whole
// message on. The chunks of an event live as long as the event stream
// keeps messages (its max_age); the chunks of a poison record are deleted
// with the record.

// chunkHeadroom is what a chunk leaves of max_payload for its own headers.
const chunkHeadroom = 1024

// maxHeaderBytes is the most header bytes JetStream stores with a message
// (a larger header block is refused: "header size exceeds maximum allowed
// of 64k"). The transport checks it before sending, so that such a
// message fails alone with driver.ErrTooLarge; the check keeps room for
// the Eventbus-Large header, so that it holds for every message.
const maxHeaderBytes = 65535

// errChunksMissing is the cause of a head whose chunks are gone (the
// stream's limits removed them, or an operator did): the body cannot be
// recovered, so retrying cannot help.
var errChunksMissing = errors.New("the chunks of the message's body are missing from the stream")

// split checks nm against limit (the largest message accepted, named
// limitName in errors) and the server's maxPayload, and returns nil when
// nm is sent whole, or the chunks of its body (still to be stored with
// storeChunks) when it is larger than max_payload. It sets nm's
// Nats-Msg-Id unless ?dedup=false.
func (t *Transport) split(nm *nats.Msg, root string, limit, maxPayload int, limitName string) ([]*attempt, error) {
	id := nuid.Next()
	hs := headerSize(nm.Header)
	if t.opts.dedup {
		nm.Header[headerMsgID] = []string{id}
	}
	// Counted whether it is set or not, so that the limits do not depend
	// on the setting.
	hs += len(headerMsgID) + len(id) + 4
	size := hs + len(nm.Data)
	if size > limit {
		return nil, fmt.Errorf("nats transport: message of %d bytes (headers %d, body %d) exceeds %s %d: %w", size, hs, len(nm.Data), limitName, limit, driver.ErrTooLarge)
	}
	subject := root + "." + id
	// The head's reference: the subject, three numbers of at most 20
	// digits and the separators.
	ref := len(headerLarge) + 4 + len(subject) + 3*21
	if hs+ref > maxHeaderBytes {
		return nil, fmt.Errorf("nats transport: the headers of the message take %d bytes; JetStream stores at most %d bytes of headers per message: %w", hs, maxHeaderBytes-ref, driver.ErrTooLarge)
	}
	if size <= maxPayload {
		return nil, nil
	}
	chunkSize := maxPayload - chunkHeadroom
	if hs+ref > maxPayload || chunkSize < 1 {
		return nil, fmt.Errorf("nats transport: the headers of the message (%d bytes) exceed the server's max_payload (%d bytes); a body can be split, headers cannot: %w", hs, maxPayload, driver.ErrTooLarge)
	}
	n := (len(nm.Data) + chunkSize - 1) / chunkSize
	chunks := make([]*attempt, n)
	for i := range n {
		end := min((i+1)*chunkSize, len(nm.Data))
		chunks[i] = &attempt{m: &nats.Msg{
			Subject: subject,
			Header: nats.Header{
				// Always deduplicated: a chunk stored twice would only
				// cost space, but a retried large message is rare.
				headerMsgID: []string{id + "-" + strconv.Itoa(i)},
				headerChunk: []string{strconv.Itoa(i)},
			},
			Data: nm.Data[i*chunkSize : end],
		}}
	}
	return chunks, nil
}

// storeChunks stores the chunks of head's body, waiting for every
// acknowledgement within head's context, then turns head into the
// reference to them.
func (t *Transport) storeChunks(ctx context.Context, chunks []*attempt, head *attempt) error {
	for _, c := range chunks {
		c.ctx = ctx
		t.send(c)
	}
	first := uint64(0)
	for i, c := range chunks {
		t.await(c)
		if c.err != nil {
			return fmt.Errorf("nats transport: storing chunk %d of %d of a %d-byte body: %w", i+1, len(chunks), len(head.m.Data), c.err)
		}
		if first == 0 || c.ack.Sequence < first {
			first = c.ack.Sequence
		}
	}
	head.m.Header[headerLarge] = []string{fmt.Sprintf("%s %d %d %d", chunks[0].m.Subject, len(chunks), len(head.m.Data), first)}
	head.m.Data = nil
	return nil
}

// largeRef is a parsed Eventbus-Large header.
type largeRef struct {
	subject  string
	chunks   int
	size     int
	firstSeq uint64
}

func parseLargeRef(v string) (largeRef, error) {
	f := strings.Fields(v)
	var r largeRef
	if len(f) != 4 {
		return r, fmt.Errorf("malformed %s header %q", headerLarge, v)
	}
	var err1, err2, err3 error
	r.subject = f[0]
	r.chunks, err1 = strconv.Atoi(f[1])
	r.size, err2 = strconv.Atoi(f[2])
	r.firstSeq, err3 = strconv.ParseUint(f[3], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil || r.chunks < 1 || r.size < 0 || r.chunks > r.size+1 {
		return r, fmt.Errorf("malformed %s header %q", headerLarge, v)
	}
	return r, nil
}

// assemble reads the body a head refers to from stream. An error wrapping
// errChunksMissing means the body is gone; any other error may pass.
func assemble(ctx context.Context, stream jetstream.Stream, ref largeRef) ([]byte, error) {
	parts := make([][]byte, ref.chunks)
	got := 0
	seq := ref.firstSeq
	for got < ref.chunks {
		rm, err := stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(ref.subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("%w: %d of %d chunks on %s found", errChunksMissing, got, ref.chunks, ref.subject)
		}
		if err != nil {
			return nil, fmt.Errorf("reading chunk %d of %d on %s: %w", got+1, ref.chunks, ref.subject, err)
		}
		seq = rm.Sequence + 1
		i, err := strconv.Atoi(rm.Header.Get(headerChunk))
		if err != nil || i < 0 || i >= ref.chunks || parts[i] != nil {
			continue // a duplicate, or not a chunk
		}
		parts[i] = rm.Data
		got++
	}
	body := make([]byte, 0, ref.size)
	for _, p := range parts {
		body = append(body, p...)
	}
	if len(body) != ref.size {
		return nil, fmt.Errorf("%w: the chunks on %s hold %d bytes, want %d", errChunksMissing, ref.subject, len(body), ref.size)
	}
	return body, nil
}
