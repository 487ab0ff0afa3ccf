package driver

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
)

// PoisonQueue stores events a service could not handle, durably, until they
// are replayed or purged. Each Add stores a new record, even for a message
// already stored: a replayed event that fails again is a second record, and
// deleting the first must not touch it. Every method returns by ctx's
// deadline, also while the broker is down or frozen.
type PoisonQueue interface {
	// Add stores msg (with its poison headers) as a new record; nil means
	// it is stored durably. Every message the bus adds carries a unique
	// HeaderPoisonID, which a transport may use as the record's key. A
	// record larger than the broker accepts fails with an error wrapping
	// [ErrTooLarge], so that the bus can store a reduced record instead.
	Add(ctx context.Context, msg *message.Message) error

	// Scan visits the records stored when it starts, oldest first, in
	// pages of at most pageSize, and deletes exactly the records of a page
	// whose indexes visit returns, before it visits the next page. Records
	// added while it runs are not visited, so a replayed event poisoned
	// again is neither visited twice nor deleted. When visit returns an
	// error, Scan deletes the records visit returned, then stops and
	// returns that error; other records of the page stay stored. Scan never
	// holds more than one page of messages in memory. Concurrent Scans may
	// each miss the records another one holds at the moment.
	Scan(ctx context.Context, pageSize int, visit func(page []*message.Message) (del []int, err error)) error

	// Purge deletes every record stored when it starts.
	Purge(ctx context.Context) error
}
