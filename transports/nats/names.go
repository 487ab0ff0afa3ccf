package nats

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Names of the streams, subjects and consumers of one namespace; see the
// package documentation.

// eventSubject is the subject of an event name: "<stream>.<name>".
func (t *Transport) eventSubject(name string) string { return t.opts.stream + "." + name }

// largeRoot is the subject root of the chunks of large events,
// "<stream>_large"; the event stream captures it besides "<stream>.>".
func largeRoot(stream string) string { return stream + "_large" }

// poisonStreamName is the stream of the namespace's poison records.
func poisonStreamName(stream string) string { return stream + "_poison" }

// poisonSubject is where a service's poison records are stored.
func poisonSubject(stream, service string) string {
	return poisonStreamName(stream) + "." + service
}

// consumerName returns the durable consumer of a subscription group
// "<service>.<subscription>": "<service>~<subscription>", with every byte
// of the subscription that is not a letter, digit, '_' or '-' replaced by
// '_' and then, so that distinct groups never share a consumer, '~' and 12
// hex digits of the group's SHA-256 appended ("billing~user___~3f1a...").
// Service names cannot contain '~', so the first '~' always separates.
func consumerName(service, subscription string) string {
	var b strings.Builder
	b.Grow(len(service) + 1 + len(subscription) + 13)
	b.WriteString(service)
	b.WriteByte('~')
	changed := false
	for i := 0; i < len(subscription); i++ {
		c := subscription[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
			changed = true
		}
	}
	const maxLen = 255 - 13 // JetStream's limit on names, less the suffix
	name := b.String()
	if len(name) > maxLen {
		name, changed = name[:maxLen], true
	}
	if changed {
		sum := sha256.Sum256([]byte(service + "." + subscription))
		name += "~" + hex.EncodeToString(sum[:6])
	}
	return name
}

// filterSubjects returns the subjects a consumer filters on for a pattern
// (RabbitMQ topic-exchange semantics: '*' one segment, '#' zero or more)
// and whether they select exactly the pattern's names. NATS wildcards
// differ: '*' is one token, as in a pattern, but '>' is one or more tokens
// and only at the end, so '#' has no equivalent of its own.
//
//   - A pattern without '#' translates token for token ("user.*").
//   - After its first '#', a pattern that has only wildcards needs some
//     number k of further segments: with k > 0 that is k-1 '*' and a '>'
//     ("#.*", "user.#.*"), exactly.
//   - "P.#" (a prefix P, then zero or more segments) is exactly the two
//     subjects "P" and "P.>", which a consumer takes when the server
//     accepts several filter subjects (multi, NATS 2.10 and later); "#"
//     and a P of '*' only ("*.#") need no second subject.
//   - Otherwise ("a.#.b", "#.completed", or "user.#" on a 2.9 server) the
//     result is a single, wider subject: the prefix before the first '#'
//     (less its last token when the '#' may match nothing), then '>';
//     "#.completed" and "user.#" become "<stream>.>". The subscriber then
//     drops in Go what the pattern does not match.
func filterSubjects(stream, pattern string, multi bool) (subjects []string, exact bool) {
	root := stream + "."
	segs := strings.Split(pattern, ".")
	first := -1
	for i, s := range segs {
		if s == "#" {
			first = i
			break
		}
	}
	if first < 0 {
		return []string{root + pattern}, true
	}
	pre, tail := segs[:first], segs[first+1:]
	need, onlyWild := 0, true // segments the tail needs at least
	for _, s := range tail {
		if s != "#" {
			need++
			onlyWild = onlyWild && s == "*"
		}
	}
	// atLeast is pre followed by at least n >= 1 more segments.
	atLeast := func(pre []string, n int) string {
		return root + strings.Join(append(append([]string(nil), pre...), strings.Repeat("*.", n-1)+">"), ".")
	}
	switch {
	case need > 0 && onlyWild:
		return []string{atLeast(pre, need)}, true
	case need > 0:
		return []string{atLeast(pre, need)}, false
	case len(pre) == 0:
		return []string{root + ">"}, true // every name has a segment
	case allStars(pre):
		return []string{atLeast(nil, len(pre))}, true
	case multi:
		p := root + strings.Join(pre, ".")
		return []string{p, p + ".>"}, true
	case len(pre) == 1:
		return []string{root + ">"}, false
	default:
		return []string{atLeast(pre[:len(pre)-1], 1)}, false
	}
}

func allStars(segs []string) bool {
	for _, s := range segs {
		if s != "*" {
			return false
		}
	}
	return true
}
