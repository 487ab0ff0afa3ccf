package nats

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// awkwardMetadata is metadata nats.go cannot send as it is: keys it
// refuses or the server acts on, values it trims or changes.
var awkwardMetadata = message.Metadata{
	"plain":                "value",
	"empty":                "",
	"":                     "empty key",
	"key with spaces":      "v",
	"colon:key":            "v",
	"ünïcode-kéy":          "v",
	"meta_leading":         "  two spaces before",
	"meta_trailing":        "tab after\t",
	"meta_crlf":            "line one\r\nNats-Msg-Id: injected",
	"meta_lf":              "a\nb",
	"Nats-Expected-Stream": "some-other-stream",
	"Nats-Msg-Id":          "not-a-dedup-id",
	"Eventbus-Uuid":        "not-the-uuid",
	"eventbus-group":       "not-a-group",
	"x-unicode-value":      "значение 🚀 ✓",
	"long":                 strings.Repeat("x", 10000),
}

func TestHeaderRoundTrip(t *testing.T) {
	in := message.NewMessage("uuid-1", []byte(`{"a":1}`))
	maps.Copy(in.Metadata, awkwardMetadata)
	in.Metadata[driver.HeaderID] = "event-id" // differs from the UUID
	nm := toNATS("ns.a.b", in)
	// What goes on the wire must be what nats.go sends unchanged.
	for k, vs := range nm.Header {
		if !plainKey(k) && k != headerEscaped && k != headerUUID {
			t.Errorf("header key %q sent as it is", k)
		}
		for _, v := range vs {
			if !plainValue(v) {
				t.Errorf("header %s value %q sent as it is", k, v)
			}
		}
	}
	// Through nats.go's own encoding and decoding.
	raw := encodeHeader(t, nm.Header)
	h, err := nats.DecodeHeadersMsg(raw)
	if err != nil {
		t.Fatal(err)
	}
	out := fromNATS(h, nm.Data, "fallback", 0)
	if out.UUID != "uuid-1" {
		t.Errorf("UUID = %q, want uuid-1", out.UUID)
	}
	if !maps.Equal(out.Metadata, in.Metadata) {
		t.Errorf("metadata changed:\n got %q\nwant %q", out.Metadata, in.Metadata)
	}
	// The CloudEvents headers stay plain for foreign consumers.
	if nm.Header.Get(driver.HeaderID) != "event-id" {
		t.Errorf("ce_id travels as %q", nm.Header.Get(driver.HeaderID))
	}
}

// encodeHeader encodes h as nats.go puts it on the wire.
func encodeHeader(t *testing.T, h nats.Header) []byte {
	t.Helper()
	var b strings.Builder
	b.WriteString("NATS/1.0\r\n")
	for k, vs := range h {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	if n := headerSize(h); n != b.Len() {
		t.Errorf("headerSize = %d, the encoding is %d bytes", n, b.Len())
	}
	return []byte(b.String())
}

// TestHeaderRoundTripThroughServer publishes a raw message with awkward
// metadata through the transport's publisher and checks that a subscriber
// of the transport receives every key and value unchanged, and that the
// server did not act on the "Nats-" keys (the message is stored once, in
// this stream, despite Nats-Expected-Stream and a repeated Nats-Msg-Id).
func TestHeaderRoundTripThroughServer(t *testing.T) {
	url := isolatedURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	service := unique("hdr-")
	tr, err := driver.Open(ctx, url, driver.Config{ServiceName: service})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	sub, err := tr.NewSubscriber(driver.SubscriberConfig{
		Group: service + ".raw", Service: service, Subscription: "raw", Pattern: "raw.#",
		Match: matcher("raw.#"), Concurrency: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(ctx, "raw.#")
	if err != nil {
		t.Fatal(err)
	}
	var sent []*message.Message
	for _, id := range []string{"raw-1", "raw-2"} {
		m := message.NewMessage(id, []byte("not even JSON"))
		maps.Copy(m.Metadata, awkwardMetadata)
		sent = append(sent, m)
	}
	if err := tr.Publisher().Publish("raw.awkward", sent...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	byID := map[string]*message.Message{}
	for _, m := range sent {
		byID[m.UUID] = m
	}
	for range sent {
		select {
		case got := <-ch:
			want := byID[got.UUID]
			if want == nil {
				t.Fatalf("got %s, want one of the published messages", got.UUID)
			}
			delete(byID, got.UUID)
			wantMD := maps.Clone(want.Metadata)
			wantMD[metadataSubject] = tr.(*Transport).Stream() + ".raw.awkward"
			if !maps.Equal(got.Metadata, wantMD) {
				t.Errorf("metadata changed:\n got %q\nwant %q", got.Metadata, wantMD)
			}
			got.Ack()
		case <-ctx.Done():
			t.Fatal("not delivered")
		}
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}
	events, _ := tr.(*Transport).streams()
	info, err := events.Info(ctx)
	if err != nil || info.State.Msgs != 2 {
		t.Errorf("stream holds %d messages (%v), want the 2 published", info.State.Msgs, err)
	}
}

// BenchmarkConvert is the subscriber's conversion of a delivered bus event
// (its CloudEvents headers and a Nats-Msg-Id) into the message the bus
// decodes.
func BenchmarkConvert(b *testing.B) {
	wm := driver.Encode(driver.Envelope{
		ID: "8f3c2b1a-0000-4000-8000-000000000001", Name: "user.registered", Source: "bench",
		Type: "user.registered", Time: time.Now(), CorrelationID: "8f3c2b1a-0000-4000-8000-000000000001",
		Data: []byte(`{"p":"x"}`),
	})
	m := toNATS("events.user.registered", wm)
	m.Header[headerMsgID] = []string{"id"}
	p := &puller{s: &subscriber{t: &Transport{msgCtx: context.Background()}}, prefix: "events."}
	p.s.t.opts.stream = "events"
	b.ReportAllocs()
	for b.Loop() {
		if got := p.convert(m, m.Data); got.UUID == "" {
			b.Fatal("no UUID")
		}
	}
}
