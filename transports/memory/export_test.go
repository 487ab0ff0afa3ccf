package memory

import "github.com/paissive/go-eventbus/eventbus/driver"

// WaitingPublishers reports how many publishers wait for room in group.
func WaitingPublishers(tr driver.Transport, group string) int32 {
	return tr.(*transport).b.group(group).full.Load()
}
