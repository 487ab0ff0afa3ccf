package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/paissive/go-eventbus/eventbus"
)

// maxLine is the longest JSON line publish reads: the largest event the
// transports accept by default (Kafka's 4 MiB) with room for attributes.
const maxLine = 8 << 20

func newPublishCmd(g *globals) *cobra.Command {
	var (
		data, kind, source, corr, key, id, dataVersion string
		meta                                           []string
		batch                                          int
	)
	c := &cobra.Command{
		Use:   "publish [NAME]",
		Short: "Publish one event, or CloudEvents JSON lines from stdin",
		Long: `publish NAME publishes one event with the data --data gives: JSON inline,
@file for a file's content, or - for standard input. The event's ID is
printed on stdout once the broker has it durably.

Without NAME, publish reads events from standard input, one CloudEvents 1.0
JSON object per line (the format of 'eventbus tail --json', so a tail can
be replayed into another broker), and publishes them in batches of --batch,
with a progress bar on a terminal. Only "type" (the event name) is
required; id, time, source (default --source), eventtype (default domain),
correlationid, causationid, partitionkey, dataversion, data and metadata (an
object of strings) are read when present. Lines are read and published
batch by batch, so any number of lines takes the memory of one batch. An
invalid line stops the run: what came before it is published (exit 4), or
nothing was (exit 2). Events the broker refused are listed and the run
goes on (exit 4).`,
		Example: `  eventbus publish order.placed --data '{"order_id":"42"}' --key customer-7 --meta tenant=acme
  eventbus publish invoice.sent --data @invoice.json --type integration --correlation-id c-123
  curl -s https://example.internal/order | eventbus publish order.imported --data -
  eventbus tail --json --count 1000 'order.#' > orders.jsonl
  eventbus publish --url amqp://guest:guest@staging:5672/ < orders.jsonl`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signals(cmd.Context())
			defer stop()
			if len(args) == 0 {
				if cmd.Flags().Changed("data") || len(meta) > 0 || corr != "" || key != "" || id != "" || dataVersion != "" || cmd.Flags().Changed("type") {
					return usageErrorf("--data, --type, --correlation-id, --key, --id, --data-version and --meta go with NAME; without NAME the events come from stdin as CloudEvents JSON lines")
				}
				if batch < 1 {
					return usageErrorf("--batch must be at least 1")
				}
				if isTerminal(g.stdin) {
					fmt.Fprintln(g.stderr, "reading CloudEvents JSON lines from the terminal; end with Ctrl-D (give NAME to publish a single event)")
				}
				return publishLines(ctx, g, source, batch)
			}
			ev, err := singleEvent(g, args[0], data, kind, source, corr, key, id, dataVersion, meta)
			if err != nil {
				return err
			}
			b, err := g.open(ctx, cliService)
			if err != nil {
				return err
			}
			defer closeBus(b)
			if err := b.Publish(ctx, ev); err != nil {
				return publishFailure(err, 0)
			}
			fmt.Fprintln(g.stdout, ev.ID)
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&data, "data", "d", "null", "the event's JSON data, @file to read it from a file, - from stdin")
	f.StringVar(&kind, "type", "domain", "the event's kind: domain, integration, system, user or notification")
	f.StringVar(&source, "source", cliService, "the producing service recorded in the events (ce_source)")
	f.StringVar(&corr, "correlation-id", "", "correlation ID (default: the event's ID)")
	f.StringVar(&key, "key", "", "partition key (Kafka: events of one key keep their order)")
	f.StringVar(&id, "id", "", "event ID (default: a new UUID)")
	f.StringVar(&dataVersion, "data-version", "", "schema version of the data")
	f.StringArrayVar(&meta, "meta", nil, "metadata key=value (repeatable)")
	f.IntVar(&batch, "batch", 500, "events per Publish call when reading lines from stdin")
	return c
}

func singleEvent(g *globals, name, data, kind, source, corr, key, id, dataVersion string, meta []string) (eventbus.Event, error) {
	raw := []byte(data)
	switch {
	case data == "-":
		b, err := io.ReadAll(io.LimitReader(g.stdin, maxLine+1))
		if err != nil {
			return eventbus.Event{}, fmt.Errorf("reading --data from stdin: %w", err)
		}
		raw = b
	case strings.HasPrefix(data, "@"):
		b, err := os.ReadFile(data[1:])
		if err != nil {
			return eventbus.Event{}, usageErrorf("--data %s: %v", data, err)
		}
		raw = b
	}
	if !json.Valid(raw) {
		return eventbus.Event{}, usageErrorf("--data is not JSON (give a JSON value: '{\"k\":\"v\"}', '\"text\"', 42; or @file, or -)")
	}
	t, err := eventbus.ParseEventType(kind)
	if err != nil {
		return eventbus.Event{}, usageErrorf("--type: %v", err)
	}
	opts := []eventbus.EventOption{eventbus.WithType(t), eventbus.WithSource(source)}
	if corr != "" {
		opts = append(opts, eventbus.WithCorrelationID(corr))
	}
	if key != "" {
		opts = append(opts, eventbus.WithPartitionKey(key))
	}
	if dataVersion != "" {
		opts = append(opts, eventbus.WithDataVersion(dataVersion))
	}
	for _, kv := range meta {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return eventbus.Event{}, usageErrorf("--meta %q: write key=value", kv)
		}
		opts = append(opts, eventbus.WithMetadata(k, v))
	}
	ev, err := eventbus.NewEvent(name, json.RawMessage(raw), opts...)
	if err != nil {
		return eventbus.Event{}, usageErrorf("%v", err)
	}
	if id != "" {
		ev.ID = id
	}
	return ev, nil
}

// publishFailure is the error of a failed Publish: partial when some
// events of the run were published.
func publishFailure(err error, published int) error {
	var pe *eventbus.PublishError
	if errors.As(err, &pe) && published > 0 {
		return withCode(exitPartial, err)
	}
	return err
}

// publishLines publishes CloudEvents JSON lines from stdin in batches.
func publishLines(ctx context.Context, g *globals, source string, batch int) error {
	b, err := g.open(ctx, cliService)
	if err != nil {
		return err
	}
	defer closeBus(b)
	sc := bufio.NewScanner(g.stdin)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	bar := g.progress(-1, "publishing")
	var (
		pending   []eventbus.Event
		published int
		failed    []eventbus.FailedEvent
		lineNo    int
	)
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		err := b.Publish(ctx, pending...)
		var pe *eventbus.PublishError
		switch {
		case err == nil:
			published += len(pending)
		case errors.As(err, &pe):
			failed = append(failed, pe.Failed...)
			published += len(pending) - len(pe.Failed)
		case ctx.Err() != nil:
			return errInterrupted
		default:
			return fmt.Errorf("publishing the events of lines %d to %d: %w", lineNo-len(pending)+1, lineNo, err)
		}
		bar.add(len(pending))
		pending = pending[:0]
		return nil
	}
	var lineErr, pubErr error // an unreadable line; a failed Publish
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		ev, err := parseCloudEvent([]byte(line))
		if err != nil {
			lineErr = fmt.Errorf("line %d: %v", lineNo, err)
			break
		}
		if ev.Source == "" {
			ev.Source = source
		}
		pending = append(pending, ev)
		if len(pending) == batch {
			if pubErr = flush(); pubErr != nil {
				break
			}
		}
	}
	if lineErr == nil && pubErr == nil {
		if err := sc.Err(); err != nil {
			lineErr = fmt.Errorf("reading line %d: %v (lines are limited to %d MiB)", lineNo+1, err, maxLine>>20)
		}
	}
	if pubErr == nil {
		// The events read before an unreadable line are published too.
		pubErr = flush()
	}
	bar.done()
	fmt.Fprintf(g.stderr, "published %d event(s)", published)
	if len(failed) > 0 {
		fmt.Fprintf(g.stderr, "; %d failed:", len(failed))
	}
	fmt.Fprintln(g.stderr)
	for _, f := range failed {
		fmt.Fprintf(g.stderr, "  %s %s: %v\n", f.ID, f.Name, f.Err)
	}
	switch {
	case errors.Is(pubErr, errInterrupted):
		return fmt.Errorf("%w after %d event(s) were published", errInterrupted, published)
	case pubErr != nil && published > 0:
		return withCode(exitPartial, fmt.Errorf("%w; the %d event(s) before were published", pubErr, published))
	case pubErr != nil:
		return pubErr
	case lineErr != nil && published == 0:
		return withCode(exitUsage, fmt.Errorf("%w; nothing was published", lineErr))
	case lineErr != nil:
		return withCode(exitPartial, fmt.Errorf("%w; the %d event(s) before it were published", lineErr, published))
	case len(failed) > 0 && published > 0:
		return withCode(exitPartial, fmt.Errorf("%d of %d event(s) were not published (listed above); publish their lines again", len(failed), published+len(failed)))
	case len(failed) > 0:
		return fmt.Errorf("no event was published (listed above)")
	}
	return nil
}
