package amqp

import (
	"testing"

	"github.com/paissive/go-eventbus/eventbus"
)

func transportOf(t testing.TB, b *eventbus.Bus) *Transport {
	t.Helper()
	tr, ok := b.Transport().(*Transport)
	if !ok {
		t.Fatalf("transport is %T", b.Transport())
	}
	return tr
}

func mustEvent(t testing.TB, name string, data any, opts ...eventbus.EventOption) eventbus.Event {
	t.Helper()
	ev, err := eventbus.NewEvent(name, data, append([]eventbus.EventOption{eventbus.WithSource("amqp-tests")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}
