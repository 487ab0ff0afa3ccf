package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// cloudEvent is an event in CloudEvents 1.0 JSON (structured mode), the
// format of `tail --json` and of the lines `publish` reads. The bus's own
// attributes are extensions (eventtype, dataversion, correlationid,
// causationid, partitionkey); metadata, which CloudEvents has no place
// for, is the one non-standard member, "metadata", an object of strings
// (omitted when empty).
type cloudEvent struct {
	SpecVersion     string            `json:"specversion"`
	ID              string            `json:"id"`
	Source          string            `json:"source"`
	Type            string            `json:"type"`
	Time            string            `json:"time,omitempty"`
	DataContentType string            `json:"datacontenttype,omitempty"`
	EventType       string            `json:"eventtype,omitempty"`
	DataVersion     string            `json:"dataversion,omitempty"`
	CorrelationID   string            `json:"correlationid,omitempty"`
	CausationID     string            `json:"causationid,omitempty"`
	PartitionKey    string            `json:"partitionkey,omitempty"`
	Metadata        map[string]string `json:"metadata,omitempty"`
	Data            json.RawMessage   `json:"data,omitempty"`
	DataBase64      []byte            `json:"data_base64,omitempty"`
}

// fromEnvelope converts an event read from the wire.
func fromEnvelope(e driver.Envelope) cloudEvent {
	ce := cloudEvent{
		SpecVersion: "1.0", ID: e.ID, Source: e.Source, Type: e.Name, DataContentType: "application/json",
		EventType: e.Type, DataVersion: e.DataVersion, CorrelationID: e.CorrelationID, CausationID: e.CausationID,
		PartitionKey: e.PartitionKey, Metadata: e.Metadata, Data: e.Data,
	}
	if !e.Time.IsZero() {
		ce.Time = e.Time.UTC().Format(time.RFC3339Nano)
	}
	return ce
}

// fromEvent converts a decoded event.
func fromEvent(e eventbus.Event) cloudEvent {
	return fromEnvelope(driver.Envelope{ID: e.ID, Name: e.Name, Source: e.Source, Type: e.Type.String(), Time: e.Time,
		DataVersion: e.DataVersion, CorrelationID: e.CorrelationID, CausationID: e.CausationID, PartitionKey: e.PartitionKey,
		Metadata: e.Metadata, Data: e.Data})
}

// knownMembers are the members parseCloudEvent accepts.
var knownMembers = []string{"specversion", "id", "source", "type", "time", "datacontenttype", "eventtype", "dataversion",
	"correlationid", "causationid", "partitionkey", "metadata", "data", "data_base64"}

// parseCloudEvent reads one CloudEvents JSON object as an event to
// publish. Only "type" is required; what is missing is filled in by
// Publish (ID, time, source, kind, correlation ID).
func parseCloudEvent(line []byte) (eventbus.Event, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(line, &members); err != nil {
		return eventbus.Event{}, fmt.Errorf("not a JSON object: %v", err)
	}
	for k := range members {
		if !contains(knownMembers, k) {
			return eventbus.Event{}, fmt.Errorf("unknown attribute %q (known: %s); put custom values in \"metadata\": {\"key\": \"value\"}", k, strings.Join(knownMembers, ", "))
		}
	}
	var ce cloudEvent
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&ce); err != nil {
		return eventbus.Event{}, fmt.Errorf("reading the attributes: %v (attributes are strings; metadata is an object of strings)", err)
	}
	switch {
	case ce.SpecVersion != "" && ce.SpecVersion != "1.0":
		return eventbus.Event{}, fmt.Errorf("specversion %q: only CloudEvents 1.0 is read", ce.SpecVersion)
	case ce.Type == "":
		return eventbus.Event{}, fmt.Errorf("no \"type\": the event name, such as \"order.placed\"")
	case len(ce.DataBase64) > 0:
		return eventbus.Event{}, fmt.Errorf("data_base64: the bus carries JSON data only; give it as \"data\"")
	case ce.DataContentType != "" && ce.DataContentType != "application/json" && !strings.HasSuffix(ce.DataContentType, "+json"):
		return eventbus.Event{}, fmt.Errorf("datacontenttype %q: the bus carries application/json only", ce.DataContentType)
	}
	ev := eventbus.Event{ID: ce.ID, Name: ce.Type, Source: ce.Source, DataVersion: ce.DataVersion, CorrelationID: ce.CorrelationID,
		CausationID: ce.CausationID, PartitionKey: ce.PartitionKey, Metadata: ce.Metadata, Data: ce.Data}
	if ce.Time != "" {
		t, err := time.Parse(time.RFC3339Nano, ce.Time)
		if err != nil {
			return eventbus.Event{}, fmt.Errorf("time %q is not RFC 3339", ce.Time)
		}
		ev.Time = t.UTC()
	}
	if ce.EventType != "" {
		t, err := eventbus.ParseEventType(ce.EventType)
		if err != nil {
			return eventbus.Event{}, err
		}
		ev.Type = t
	}
	if len(ev.Data) == 0 {
		ev.Data = json.RawMessage("null")
	}
	return ev, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// humanLine is the one-line form of an event for people.
func humanLine(e driver.Envelope) string {
	corr := ""
	if e.CorrelationID != "" && e.CorrelationID != e.ID {
		corr = "  corr=" + e.CorrelationID
	}
	return fmt.Sprintf("%s  %-28s  id=%s  source=%s%s", e.Time.UTC().Format("2006-01-02T15:04:05.000Z"), e.Name, e.ID, e.Source, corr)
}

// lineWriter writes whole lines to w and flushes each, so that a reader
// of a pipe (jq) sees every event at once.
type lineWriter struct {
	w *bufio.Writer
}

func newLineWriter(w io.Writer) *lineWriter { return &lineWriter{bufio.NewWriter(w)} }

func (l *lineWriter) line(s string) error {
	if _, err := l.w.WriteString(s); err != nil {
		return err
	}
	if err := l.w.WriteByte('\n'); err != nil {
		return err
	}
	return l.w.Flush()
}

func (l *lineWriter) json(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return l.line(string(b))
}

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress is a progress bar on stderr when stderr is a terminal, and
// nothing otherwise; total -1 means unknown (a counter with a rate).
type progress struct {
	bar *progressbar.ProgressBar
}

func (g *globals) progress(total int, what string) *progress {
	if !isTerminal(g.stderr) {
		return &progress{}
	}
	return &progress{progressbar.NewOptions(total,
		progressbar.OptionSetWriter(g.stderr),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("events"),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)}
}

func (p *progress) add(n int) {
	if p.bar != nil {
		_ = p.bar.Add(n)
	}
}

func (p *progress) done() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

// confirm asks question on stderr and reads the answer from stdin, unless
// yes is set. Without a terminal to ask on, it refuses.
func (g *globals) confirm(question string, yes bool) error {
	if yes {
		return nil
	}
	if !isTerminal(g.stdin) {
		return usageErrorf("%s: not confirmed; pass --yes to run without asking (standard input is not a terminal)", strings.TrimSuffix(question, "?"))
	}
	fmt.Fprintf(g.stderr, "%s [y/N] ", question)
	answer, _ := bufio.NewReader(g.stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return withCode(exitFailure, fmt.Errorf("not confirmed; nothing was changed"))
}

// signals returns a context cancelled by the first SIGINT or SIGTERM.
func signals(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

// gracefulStop returns a flag set by the first SIGINT or SIGTERM and a
// context cancelled by the second: a command checks the flag between
// pages of work, so that the page in flight completes.
func (g *globals) gracefulStop(parent context.Context, what string) (*atomic.Bool, context.Context, context.CancelFunc) {
	var stop atomic.Bool
	ctx, cancel := context.WithCancel(parent)
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		defer signal.Stop(sig)
		select {
		case <-sig:
		case <-ctx.Done():
			return
		}
		stop.Store(true)
		fmt.Fprintf(g.stderr, "\neventbus: interrupted; finishing the %s in flight (Ctrl-C again to abandon it)\n", what)
		select {
		case <-sig:
			cancel()
		case <-ctx.Done():
		}
	}()
	return &stop, ctx, cancel
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
