// Package redactlog wraps a slog.Handler so that the secrets of a broker
// URL never reach the log, whatever quotes them: the bus's own lines are
// careful, but an error text from a broker library or a third-party
// transport may carry the URL it failed to reach, password included.
package redactlog

import (
	"context"
	"log/slog"
	"strings"
)

// MinSecret is the length of the shortest secret the log handler
// replaces: replacing every "a" of a log would make it unreadable and
// hide nothing worth hiding.
const MinSecret = 4

// New returns h replacing every occurrence of each secret of at least
// MinSecret bytes in messages and in string, error and Stringer values
// (in groups too) with "xxxxx". A user name equal to the password is
// replaced too ("amqp://guest:guest@" is logged as "amqp://xxxxx:xxxxx@").
// With no such secret it returns h itself, so a URL without a password
// costs nothing.
func New(h slog.Handler, secrets []string) slog.Handler {
	var long []string
	for _, v := range secrets {
		if len(v) >= MinSecret {
			long = append(long, v)
		}
	}
	r := Replacer(long)
	if r == nil {
		return h
	}
	return &handler{inner: h, r: r}
}

// Replacer returns a replacer of each non-empty secret with "xxxxx", for
// a single error text (a connection error, a poison store error); nil
// when there is none.
func Replacer(secrets []string) *strings.Replacer {
	var pairs []string
	for _, v := range secrets {
		if v != "" {
			pairs = append(pairs, v, "xxxxx")
		}
	}
	if len(pairs) == 0 {
		return nil
	}
	return strings.NewReplacer(pairs...)
}

type handler struct {
	inner slog.Handler
	r     *strings.Replacer
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, h.r.Replace(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.inner.Handle(ctx, out)
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = h.attr(a)
	}
	return &handler{inner: h.inner.WithAttrs(red), r: h.r}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{inner: h.inner.WithGroup(name), r: h.r}
}

// attr returns a with its value's secrets replaced. Errors and Stringers
// become their (redacted) text, which is what the standard handlers
// print for them anyway.
func (h *handler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.r.Replace(v.String()))
	case slog.KindGroup:
		g := v.Group()
		red := make([]any, len(g))
		for i, ga := range g {
			red[i] = h.attr(ga)
		}
		return slog.Group(a.Key, red...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, h.r.Replace(x.Error()))
		case interface{ String() string }:
			return slog.String(a.Key, h.r.Replace(x.String()))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
