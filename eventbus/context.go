package eventbus

import (
	"context"

	"github.com/paissive/go-eventbus/middleware"
)

// CorrelationID returns the correlation ID of the event a handler is
// handling, from the handler's ctx, or "" outside a handler. Use it to tag
// log lines; events published with that ctx inherit it automatically.
func CorrelationID(ctx context.Context) string {
	t, _ := middleware.CausationFromContext(ctx)
	return t.CorrelationID
}
