// Package blocking bounds calls that take no context by one: broker client
// calls (opening an AMQP channel, a Sarama metadata request) that can block
// for as long as a frozen broker keeps a TCP connection open.
package blocking

import (
	"context"
	"sync"
)

// Call runs f and returns its result, or ctx's error as soon as ctx ends.
// An abandoned f keeps running in its goroutine until it returns by itself
// (the client's own timeouts, or closing its connection, end it); what it
// returns then is passed to cleanup, when not nil, so that a channel or
// client opened too late is released.
func Call[T any](ctx context.Context, f func() (T, error), cleanup func(T)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	const (
		pending = iota
		delivered
		abandoned
	)
	var mu sync.Mutex
	state := pending
	done := make(chan result, 1)
	go func() {
		v, err := f()
		mu.Lock()
		if state == abandoned {
			mu.Unlock()
			if err == nil && cleanup != nil {
				cleanup(v)
			}
			return
		}
		state = delivered
		mu.Unlock()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		mu.Lock()
		if state == delivered { // f finished at the same moment
			mu.Unlock()
			r := <-done
			return r.v, r.err
		}
		state = abandoned
		mu.Unlock()
		return zero, ctx.Err()
	}
}

// Do is Call for functions that return only an error.
func Do(ctx context.Context, f func() error) error {
	_, err := Call(ctx, func() (struct{}, error) { return struct{}{}, f() }, nil)
	return err
}
