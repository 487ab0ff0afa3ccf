package nats

import (
	"encoding/base64"
	"encoding/json"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Headers the transport adds to NATS messages besides the event's own. A
// consumer removes them before the bus sees the message.
const (
	// headerMsgID is JetStream's deduplication ID: unique per message and
	// Publish call, and the same for that call's retries, so that a
	// message sent again after a lost acknowledgement is stored once.
	headerMsgID = jetstream.MsgIDHeader
	// headerUUID carries the Watermill UUID when it is not the event ID
	// (ce_id), as for a raw message published through Publisher().
	headerUUID = "Eventbus-Uuid"
	// headerEscaped carries, as base64 of a JSON object, the headers that
	// NATS cannot carry as they are; see toNATS.
	headerEscaped = "Eventbus-Escaped"
	// headerGroup names the one subscription group a message replayed by
	// Redeliver is for; every other group skips it.
	headerGroup = "Eventbus-Group"
	// headerLarge marks a message whose body travels in chunks; see
	// large.go.
	headerLarge = "Eventbus-Large"
	// headerChunk is the index of a chunk.
	headerChunk = "Eventbus-Chunk"
)

// toNATS converts a Watermill message to NATS headers for subject. The
// headers are the message's metadata (the "ce_" attributes, "meta_" keys
// and anything a raw publisher set), except what NATS cannot carry
// faithfully: a key that is not printable ASCII without ':' and the other
// characters nats.go refuses, a value with a leading or trailing space or
// a line break (nats.go trims and replaces them), and keys beginning with
// "Nats-" (which the server would act on) or "Eventbus-" (the
// transport's own). Those go, as base64 of a JSON object, in the single
// header Eventbus-Escaped, so that any metadata survives the trip
// unchanged and a foreign NATS client still sees the CloudEvents headers
// as plain headers.
func toNATS(subject string, msg *message.Message) *nats.Msg {
	h := make(nats.Header, len(msg.Metadata)+2)
	// One backing array for the values rather than a slice per header.
	vals := make([]string, 0, len(msg.Metadata)+3)
	var escaped map[string]string
	for k, v := range msg.Metadata {
		if plainKey(k) && plainValue(v) {
			vals = append(vals, v)
			h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
			continue
		}
		if escaped == nil {
			escaped = make(map[string]string)
		}
		escaped[k] = v
	}
	if escaped != nil {
		b, _ := json.Marshal(escaped) // a map of strings always marshals
		h[headerEscaped] = []string{base64.StdEncoding.EncodeToString(b)}
	}
	if msg.UUID != msg.Metadata[driver.HeaderID] {
		h[headerUUID] = []string{msg.UUID}
	}
	return &nats.Msg{Subject: subject, Header: h, Data: msg.Payload}
}

// fromNATS converts a stored or delivered NATS message back to a Watermill
// message, undoing toNATS. fallbackID is the UUID of a message that names
// none (a foreign producer's without ce_id): something stable, such as
// the stream and sequence, so that every delivery of it has the same ID.
//
// extra is room for entries the caller adds. The map is sized for exactly
// what it will hold: a map of up to 8 entries (a bus event's CloudEvents
// attributes) is one group, a larger one a table that costs more than
// the rest of the conversion.
func fromNATS(h nats.Header, data []byte, fallbackID string, extra int) *message.Message {
	n := len(h) + extra
	for _, k := range [...]string{headerMsgID, headerGroup, headerLarge, headerChunk, headerUUID} {
		if _, ok := h[k]; ok {
			n--
		}
	}
	md := make(message.Metadata, n)
	var uuid string
	for k, vs := range h {
		if len(vs) == 0 {
			continue
		}
		switch k {
		case headerMsgID, headerGroup, headerLarge, headerChunk:
			continue
		case headerUUID:
			uuid = vs[0]
			continue
		case headerEscaped:
			if unescape(vs[0], md) {
				continue
			}
		}
		md[k] = vs[0]
	}
	if uuid == "" {
		uuid = md[driver.HeaderID]
	}
	if uuid == "" {
		uuid = fallbackID
	}
	msg := message.NewMessage(uuid, data)
	msg.Metadata = md
	return msg
}

// unescape adds the headers of an Eventbus-Escaped value to md; false
// means the value is not one (a foreign header of that name), which is then
// kept as it is.
func unescape(v string, md message.Metadata) bool {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return false
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return false
	}
	for k, v := range m {
		md[k] = v
	}
	return true
}

// plainKey reports whether nats.go sends k as it is and the server ignores
// it: printable ASCII other than "()/,:;<=>?@[\]{} and '"', and not one of
// the reserved prefixes.
func plainKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c < 33 || c > 126 || strings.IndexByte(`"()/,:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return !hasPrefixFold(k, "Nats-") && !hasPrefixFold(k, "Eventbus-")
}

// plainValue reports whether nats.go sends v unchanged: no line break, and
// no space or other ASCII white space at either end.
func plainValue(v string) bool {
	if v == "" {
		return true
	}
	if isSpace(v[0]) || isSpace(v[len(v)-1]) {
		return false
	}
	return strings.IndexByte(v, '\n') < 0 && strings.IndexByte(v, '\r') < 0
}

// isSpace is textproto.TrimString's notion of white space.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// headerSize is the size NATS counts for h: the "NATS/1.0" line, each
// "key: value" line and the blank line.
func headerSize(h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}
