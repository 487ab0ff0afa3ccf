package redactlog

import (
	"bytes"
	"errors"
	"log/slog"
	"net/url"
	"strings"
	"testing"
)

type valuer struct{}

func (valuer) LogValue() slog.Value { return slog.StringValue("via LogValuer hunter2") }

func TestRedacts(t *testing.T) {
	var buf bytes.Buffer
	base := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	log := slog.New(New(base, []string{"hunter2", "t0ken", ""}))
	u, _ := url.Parse("amqp://app:hunter2@10.0.0.1:5672/")
	log.With("url", "amqp://app:hunter2@h/").WithGroup("g").Error("cannot reach amqp://app:hunter2@h/",
		"error", errors.New("dial amqp://app:hunter2@h/: refused"),
		"stringer", u,
		"valuer", valuer{},
		slog.Group("inner", "token", "t0ken"),
		"count", 3,
	)
	out := buf.String()
	for _, secret := range []string{"hunter2", "t0ken"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds %q: %s", secret, out)
		}
	}
	for _, kept := range []string{`"msg":"cannot reach amqp://app:xxxxx@h/"`, `"url":"amqp://app:xxxxx@h/"`, `"error":"dial amqp://app:xxxxx@h/: refused"`,
		`"stringer":"amqp://app:xxxxx@10.0.0.1:5672/"`, `"valuer":"via LogValuer xxxxx"`, `"inner":{"token":"xxxxx"}`, `"count":3`, `"g":{`} {
		if !strings.Contains(out, kept) {
			t.Errorf("the log lacks %s: %s", kept, out)
		}
	}
}

func TestNoSecretsNoWrapper(t *testing.T) {
	base := slog.NewTextHandler(&bytes.Buffer{}, nil)
	if h := New(base, []string{"", "abc"}); h != base {
		t.Errorf("New without secrets returned %T, want the handler itself", h)
	}
}

func TestReplacerKeepsShortSecretsOutOfTheLogOnly(t *testing.T) {
	if got := Replacer([]string{"abc", ""}).Replace("pw abc"); got != "pw xxxxx" {
		t.Errorf("Replacer: %q, want the short secret replaced in an error text", got)
	}
	if Replacer([]string{""}) != nil {
		t.Error("Replacer without secrets is not nil")
	}
}
