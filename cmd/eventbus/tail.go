package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

func newTailCmd(g *globals) *cobra.Command {
	var (
		asJSON        bool
		count         int
		timeout       time.Duration
		fromBeginning bool
	)
	c := &cobra.Command{
		Use:   "tail [pattern ...]",
		Short: "Print events as they are published, without taking any from the services",
		Long: `tail prints the events whose names match the patterns (default "#", every
event) as they are published, one line each, until Ctrl-C, --count or
--timeout. It reads through a tap, which takes nothing away from the
services' subscriptions: on RabbitMQ an exclusive, auto-delete queue bound
with the patterns (deleted when tail stops), on Kafka a consumer outside
any consumer group, from the end of the event topics or, with
--from-beginning, from the oldest record retained.

A line shows the time, name, ID, source and, when it differs from the ID,
the correlation ID. --json prints each event as a CloudEvents 1.0 JSON
object instead (one per line, for jq); metadata is the extra member
"metadata".

"tailing ..." on stderr means the tap is in place: events published from
then on are shown. Ctrl-C ends tail normally (exit 0); with --count, tail
exits 1 when --timeout ends first.`,
		Example: `  eventbus tail                          # every event
  eventbus tail 'order.#' '#.failed'     # two patterns
  eventbus tail 'user.*' --json | jq -r .data.email
  eventbus tail --count 1 --timeout 30s order.shipped   # wait for one event
  EVENTBUS_URL=kafka://localhost:9092 eventbus tail --from-beginning 'order.#'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = []string{"#"}
			}
			var ps []eventbus.Pattern
			for _, a := range args {
				p, err := eventbus.CompilePattern(a)
				if err != nil {
					return usageErrorf("pattern %q: %v", a, err)
				}
				ps = append(ps, p)
			}
			if count < 0 || timeout < 0 {
				return usageErrorf("--count and --timeout must not be negative")
			}
			ctx, stop := signals(cmd.Context())
			defer stop()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			b, err := g.open(ctx, cliService)
			if err != nil {
				return err
			}
			defer closeBus(b)
			tp, ok := b.Transport().(driver.Tapper)
			if !ok {
				return withCode(exitUnsupported, fmt.Errorf("the transport of %s (%T) cannot tap: it does not implement driver.Tapper, so tail cannot read events without taking them from the services", g.redacted(), b.Transport()))
			}
			tap, err := tp.Tap(ctx, driver.TapConfig{Patterns: args, FromBeginning: fromBeginning, Match: func(name string) bool {
				for _, p := range ps {
					if p.Match(name) {
						return true
					}
				}
				return false
			}})
			switch {
			case errors.Is(err, driver.ErrUnsupported):
				return withCode(exitUnsupported, fmt.Errorf("%w; run tail without --from-beginning", err))
			case err != nil && ctx.Err() != nil && cmd.Context().Err() == nil && timeout > 0:
				return fmt.Errorf("opening the tap within --timeout %v: %w", timeout, err)
			case err != nil:
				return err
			}
			defer tap.Close()
			fmt.Fprintf(g.stderr, "tailing %s on %s (Ctrl-C to stop)\n", strings.Join(args, " "), g.redacted())
			out := newLineWriter(g.stdout)
			seen := 0
			for {
				select {
				case m, open := <-tap.Messages():
					if !open {
						if err := tap.Err(); err != nil {
							return err
						}
						return nil
					}
					env, err := driver.Decode(m)
					switch {
					case err != nil && asJSON:
						err = out.json(map[string]string{"undecodable": m.UUID, "error": err.Error()})
					case err != nil:
						err = out.line(fmt.Sprintf("(undecodable message %s: %v)", m.UUID, err))
					case asJSON:
						err = out.json(fromEnvelope(env))
					default:
						err = out.line(humanLine(env))
					}
					if err != nil {
						return fmt.Errorf("writing the output: %w", err)
					}
					seen++
					if count > 0 && seen >= count {
						return nil
					}
				case <-ctx.Done():
					if cmd.Context().Err() == nil && timeout > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
						if count > 0 {
							return fmt.Errorf("--timeout %v ended after %d of the %d events of --count", timeout, seen, count)
						}
						return nil
					}
					fmt.Fprintf(g.stderr, "stopped after %d event(s)\n", seen)
					return nil
				}
			}
		},
	}
	f := c.Flags()
	f.BoolVar(&asJSON, "json", false, "print each event as a CloudEvents JSON object on one line")
	f.IntVar(&count, "count", 0, "exit after this many events (0: no limit)")
	f.DurationVar(&timeout, "timeout", 0, "exit after this long (0: until Ctrl-C)")
	f.BoolVar(&fromBeginning, "from-beginning", false, "Kafka: start with the oldest events retained")
	return c
}
