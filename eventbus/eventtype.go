package eventbus

import (
	"fmt"
	"strings"
)

// EventType classifies an event by its role. The zero value means "not
// set": Publish sends it as [Domain].
type EventType uint8

// The five kinds of events.
const (
	// Domain events record business facts inside one service.
	Domain EventType = iota + 1
	// Integration events are shared between services.
	Integration
	// System events come from infrastructure and technical processes.
	System
	// User events are initiated by a user.
	User
	// Notification events carry alerts and notifications.
	Notification
)

var eventTypeNames = [...]string{"", "domain", "integration", "system", "user", "notification"}

// String returns the lower-case name ("domain", "integration", ...), which is
// also the wire form of the ce_eventtype header.
func (t EventType) String() string {
	if t.valid() {
		return eventTypeNames[t]
	}
	return fmt.Sprintf("EventType(%d)", uint8(t))
}

// valid reports whether t is one of the five defined types.
func (t EventType) valid() bool { return t >= Domain && t <= Notification }

// ParseEventType parses the name of an event type, ignoring case, so both
// "domain" and "DOMAIN" give [Domain]. Unknown names are an error.
func ParseEventType(s string) (EventType, error) {
	for i := Domain; i <= Notification; i++ { // exact, as on the wire
		if s == eventTypeNames[i] {
			return i, nil
		}
	}
	for i := Domain; i <= Notification; i++ {
		if strings.EqualFold(s, eventTypeNames[i]) {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: unknown event type %q (want one of domain, integration, system, user, notification)", ErrInvalidEvent, s)
}
