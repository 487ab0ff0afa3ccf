package kafka

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/paissive/go-eventbus/eventbus"
)

// ErrPatternNotServed is wrapped by the error Subscribe returns for a
// pattern the configured topic mapping cannot serve (a pattern whose first
// segment is a wildcard under mapping=segment).
var ErrPatternNotServed = fmt.Errorf("kafka transport: the topic mapping cannot serve this pattern")

// names derives every topic and group name of one namespace.
type names struct {
	prefix  string
	mapping Mapping
}

func (n names) join(s string) string {
	if n.prefix == "" {
		return s
	}
	return n.prefix + "." + s
}

// EventTopic returns the topic an event name is published to.
func (n names) eventTopic(name string) (string, error) {
	if n.mapping == MappingSingle {
		return n.join("events"), nil
	}
	first, _, _ := strings.Cut(name, ".")
	if !validTopic(first) {
		return "", fmt.Errorf("kafka transport: event name %q has no first segment usable in a topic name", name)
	}
	return n.join("events." + first), nil
}

// patternTopics returns the topics a subscription with pattern p reads.
func (n names) patternTopics(p eventbus.Pattern) ([]string, error) {
	if n.mapping == MappingSingle {
		return []string{n.join("events")}, nil
	}
	first, _, _ := strings.Cut(p.String(), ".")
	if first == "*" || first == "#" {
		return nil, fmt.Errorf("%w: pattern %q starts with a wildcard, but mapping=segment keeps a topic per first name segment "+
			"and cannot read topics that do not exist yet; start the pattern with a literal segment, or use the default mapping=single", ErrPatternNotServed, p.String())
	}
	return []string{n.join("events." + first)}, nil
}

// poisonTopic is the service's poison topic.
func (n names) poisonTopic(service string) string { return n.join("poison." + safeName(service)) }

// replayTopic is the topic only one subscription group reads; poison
// replay publishes to it.
func (n names) replayTopic(group string) string { return n.join("replay." + safeName(group)) }

// groupID is the Kafka consumer group of a subscription group.
func (n names) groupID(group string) string { return n.join(group) }

// safeName maps s to a string of legal topic characters. Names that had to
// change (a subscription named after its pattern contains '*' or '#') or
// that are too long get a hash of the original, so distinct names stay
// distinct.
func safeName(s string) string {
	const max = 180
	ok := len(s) <= max
	var b strings.Builder
	for _, r := range s {
		if topicChar(r) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
			ok = false
		}
	}
	if ok {
		return s
	}
	out := b.String()
	if len(out) > max {
		out = out[:max]
	}
	sum := sha256.Sum256([]byte(s))
	return out + "-" + hex.EncodeToString(sum[:5])
}
