package eventbustest

import (
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Message returns the wire message the bus sends for ev, for tests and
// benchmarks that publish through a transport directly (a raw client's
// baseline, a message with extra headers). Fields Publish would fill in
// must be set on ev: Source, a non-zero Type, CorrelationID.
func Message(ev eventbus.Event) *message.Message {
	return driver.Encode(driver.Envelope{
		ID: ev.ID, Name: ev.Name, Source: ev.Source, Type: ev.Type.String(), Time: ev.Time,
		DataVersion: ev.DataVersion, CorrelationID: ev.CorrelationID, CausationID: ev.CausationID,
		PartitionKey: ev.PartitionKey, Metadata: ev.Metadata, Data: ev.Data,
	})
}
