// Package middleware holds the Watermill handler middleware that make up the
// go-eventbus failure policy. Each works on its own with a plain Watermill
// router; the eventbus.Bus assembles them for every subscription in this
// order, outermost first:
//
//	(the bus's tracking: health counters and the delivery's process span)
//	Correlation   puts the event's correlation and ID in the ctx, stamps produced messages
//	Poison        stores the event in the poison queue when the handler finally fails, then acks
//	Idempotency   skips events already handled (when the policy asks for it)
//	Retry         calls the handler again with exponential backoff, skipping permanent errors
//	(the bus's attempt reports to the process span)
//	Timeout       gives each attempt a deadline through the ctx
//	Recoverer     turns a panic into an error carrying the stack
//	(user middleware, then the handler)
//
// The order matters: a poison queue inside the retry loop would poison on the
// first failure and skip the retries (Watermill issue 645); a timeout outside
// the retry loop would share one deadline among all attempts; a recoverer
// outside the retry loop would not retry panics.
//
// Errors are classified without importing the eventbus package: an error
// with a method Permanent() bool that reports true (eventbus.Permanent makes
// such errors) is not retried, and an error with a method PoisonReason()
// string names the reason recorded in the poison queue.
package middleware
