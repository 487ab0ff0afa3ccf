package middleware

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/paissive/go-eventbus/internal/wire"
)

func TestCorrelation(t *testing.T) {
	msg := message.NewMessage("uuid-1", nil)
	msg.Metadata.Set(wire.ID, "ev-1")
	msg.Metadata.Set(wire.CorrelationID, "corr-1")
	orig := msg.Context()

	var seen Causation
	var ok bool
	preset := message.NewMessage("preset", nil)
	preset.Metadata.Set(wire.CorrelationID, "other-corr")
	preset.Metadata.Set(wire.CausationID, "other-cause")
	plain := message.NewMessage("plain", nil)
	out, err := Correlation(func(m *message.Message) ([]*message.Message, error) {
		seen, ok = CausationFromContext(m.Context())
		return []*message.Message{plain, preset}, errFlaky
	})(msg)
	if !ok || seen != (Causation{CorrelationID: "corr-1", EventID: "ev-1"}) {
		t.Errorf("handler ctx trace = %+v, %v", seen, ok)
	}
	if !errors.Is(err, errFlaky) || len(out) != 2 {
		t.Errorf("returned %v, %v; want the handler's results", out, err)
	}
	if plain.Metadata.Get(wire.CorrelationID) != "corr-1" || plain.Metadata.Get(wire.CausationID) != "ev-1" {
		t.Errorf("returned message headers = %v, want correlation corr-1 and causation ev-1", plain.Metadata)
	}
	if preset.Metadata.Get(wire.CorrelationID) != "other-corr" || preset.Metadata.Get(wire.CausationID) != "other-cause" {
		t.Errorf("preset headers overwritten: %v", preset.Metadata)
	}
	if msg.Context() != orig {
		t.Error("the message's ctx was not restored")
	}
	if _, ok := CausationFromContext(msg.Context()); ok {
		t.Error("the trace leaked into the restored ctx")
	}
}

func TestCorrelationDefaults(t *testing.T) {
	// No event headers: the message UUID is the event and its correlation.
	var seen Causation
	Correlation(func(m *message.Message) ([]*message.Message, error) {
		seen, _ = CausationFromContext(m.Context())
		return nil, nil
	})(message.NewMessage("uuid-2", nil))
	if seen != (Causation{CorrelationID: "uuid-2", EventID: "uuid-2"}) {
		t.Errorf("trace = %+v", seen)
	}
	// An event without correlation starts its own.
	msg := message.NewMessage("uuid-3", nil)
	msg.Metadata.Set(wire.ID, "ev-3")
	Correlation(func(m *message.Message) ([]*message.Message, error) {
		seen, _ = CausationFromContext(m.Context())
		return nil, nil
	})(msg)
	if seen != (Causation{CorrelationID: "ev-3", EventID: "ev-3"}) {
		t.Errorf("trace = %+v", seen)
	}
}

func TestTraceContext(t *testing.T) {
	if _, ok := CausationFromContext(context.Background()); ok {
		t.Error("a plain ctx has a trace")
	}
	ctx := WithCausation(context.Background(), Causation{CorrelationID: "c", EventID: "e"})
	if tr, ok := CausationFromContext(ctx); !ok || tr.CorrelationID != "c" || tr.EventID != "e" {
		t.Errorf("CausationFromContext = %+v, %v", tr, ok)
	}
}

func TestTimeoutGivesEachAttemptAFreshDeadline(t *testing.T) {
	const d = 30 * time.Millisecond
	var c calls
	var deadlines []time.Time
	var startErrs []error
	h := chain(func(m *message.Message) ([]*message.Message, error) {
		c.add()
		ctx := m.Context()
		dl, ok := ctx.Deadline()
		if !ok {
			t.Error("the handler's ctx has no deadline")
		}
		deadlines = append(deadlines, dl)
		startErrs = append(startErrs, ctx.Err())
		if c.count() == 1 {
			<-ctx.Done() // the first attempt hangs until its deadline
			return nil, ctx.Err()
		}
		return nil, nil
	}, Retry{MaxAttempts: 3, InitialInterval: time.Millisecond}.Middleware, Timeout(d))
	msg := newMsg("m")
	orig := msg.Context()
	if _, err := h(msg); err != nil {
		t.Fatalf("returned %v; the second attempt should have succeeded", err)
	}
	if c.count() != 2 {
		t.Fatalf("handler called %d times, want 2", c.count())
	}
	if startErrs[1] != nil {
		t.Errorf("the retry was born with ctx error %v", startErrs[1])
	}
	if !deadlines[1].After(deadlines[0]) {
		t.Errorf("the retry's deadline %v is not later than the first %v", deadlines[1], deadlines[0])
	}
	if msg.Context() != orig {
		t.Error("the message's ctx was not restored")
	}
}

func TestTimeoutDeadline(t *testing.T) {
	var dl time.Time
	var ok bool
	before := time.Now()
	Timeout(time.Minute)(func(m *message.Message) ([]*message.Message, error) {
		dl, ok = m.Context().Deadline()
		return nil, nil
	})(newMsg("m"))
	if !ok || dl.Before(before.Add(time.Minute)) || dl.After(time.Now().Add(time.Minute)) {
		t.Errorf("deadline %v, %v; want about a minute from the call", dl, ok)
	}
	for _, d := range []time.Duration{0, -1} {
		Timeout(d)(func(m *message.Message) ([]*message.Message, error) {
			_, ok = m.Context().Deadline()
			return nil, nil
		})(newMsg("m"))
		if ok {
			t.Errorf("Timeout(%v) set a deadline", d)
		}
	}
	// An earlier deadline of the delivery wins.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	outer, _ := ctx.Deadline()
	msg := newMsg("m")
	msg.SetContext(ctx)
	Timeout(time.Hour)(func(m *message.Message) ([]*message.Message, error) {
		dl, _ = m.Context().Deadline()
		return nil, nil
	})(msg)
	if !dl.Equal(outer) {
		t.Errorf("deadline %v, want the delivery's %v", dl, outer)
	}
}

func TestRecoverer(t *testing.T) {
	var c calls
	h := Recoverer(func(*message.Message) ([]*message.Message, error) {
		c.add()
		panic(errors.New("nil map write"))
	})
	out, err := h(newMsg("m"))
	if err == nil || out != nil {
		t.Fatalf("returned %v, %v; want an error", out, err)
	}
	var rp wmmiddleware.RecoveredPanicError
	if !errors.As(err, &rp) {
		t.Fatalf("error %T is not a RecoveredPanicError", err)
	}
	for _, w := range []string{"nil map write", "goroutine", "correlation_test.go", "runtime/debug.Stack"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%s", w, err)
		}
	}
	if Reason(err) != ReasonPanic || IsPermanent(err) {
		t.Errorf("Reason = %q, IsPermanent = %v; want a retryable panic", Reason(err), IsPermanent(err))
	}
	// Errors and results pass through.
	out, err = Recoverer(func(*message.Message) ([]*message.Message, error) {
		return []*message.Message{newMsg("o")}, errFlaky
	})(newMsg("m"))
	if err != errFlaky || len(out) != 1 {
		t.Errorf("returned %v, %v", out, err)
	}
	// The panic is retried like any failure.
	c = calls{}
	_, err = chain(func(*message.Message) ([]*message.Message, error) {
		if c.add() == 1 {
			panic("once")
		}
		return nil, nil
	}, Retry{MaxAttempts: 2, InitialInterval: time.Millisecond}.Middleware, Recoverer)(newMsg("m"))
	if err != nil || c.count() != 2 {
		t.Errorf("retrying a panic: %v after %d calls", err, c.count())
	}
}
