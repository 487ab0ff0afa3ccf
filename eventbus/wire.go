package eventbus

import (
	"encoding/json"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/paissive/go-eventbus/eventbus/driver"
)

// encode converts an event to the message every transport sends (see
// driver.Encode); it does not validate the event.
func encode(e Event) *message.Message {
	return driver.Encode(driver.Envelope{
		ID: e.ID, Name: e.Name, Source: e.Source, Type: e.Type.String(), Time: e.Time,
		DataVersion: e.DataVersion, CorrelationID: e.CorrelationID, CausationID: e.CausationID,
		PartitionKey: e.PartitionKey, Metadata: e.Metadata, Data: e.Data,
	})
}

// decode converts a message in the wire format back to an event; its
// errors wrap ErrInvalidEvent (see driver.Decode).
func decode(msg *message.Message) (Event, error) {
	env, err := driver.Decode(msg)
	if err != nil {
		return Event{}, err
	}
	e := Event{
		ID: env.ID, Name: env.Name, Source: env.Source, Time: env.Time,
		DataVersion: env.DataVersion, CorrelationID: env.CorrelationID, CausationID: env.CausationID,
		PartitionKey: env.PartitionKey, Metadata: env.Metadata, Data: json.RawMessage(env.Data),
	}
	e.Type, _ = ParseEventType(env.Type) // driver.Decode checked it
	e.checked = e.Data
	return e, nil
}
