package eventbus

import (
	"strings"

	"github.com/paissive/go-eventbus/internal/names"
)

// Pattern is a compiled subscription pattern. Its semantics are those of a
// RabbitMQ topic exchange on every transport: segments are separated by '.',
// "*" matches exactly one segment and "#" matches zero or more segments.
//
//	user.registered  matches only "user.registered"
//	user.*           matches "user.registered", not "user" or "user.a.b"
//	user.#           matches "user", "user.registered", "user.a.b"
//	*.registered     matches "user.registered", not "registered"
//	#.completed      matches "completed", "order.completed", "a.b.completed"
//
// The zero Pattern matches nothing. A Pattern is safe for concurrent use;
// compare patterns by their String.
type Pattern struct {
	raw string
	// segs holds the pattern's segments; nil for a pattern without
	// wildcards, which matches by string equality.
	segs []string
}

// CompilePattern parses a pattern. Segments are letters, digits, '_' and
// '-', or exactly "*" or "#"; the error wraps [ErrInvalidPattern] and names
// the offending segment.
func CompilePattern(s string) (Pattern, error) {
	if err := names.Check(s, true); err != nil {
		return Pattern{}, err
	}
	p := Pattern{raw: s}
	if strings.ContainsAny(s, "*#") {
		p.segs = strings.Split(s, ".")
	}
	return p, nil
}

// String returns the pattern as written.
func (p Pattern) String() string { return p.raw }

// Match reports whether the event name matches the pattern. It does not
// allocate. Names are not validated here; the bus validates them when they
// are published.
func (p Pattern) Match(name string) bool {
	if p.segs == nil {
		return p.raw != "" && name == p.raw
	}
	// Glob matching over segments, with "#" as the star: on a mismatch,
	// let the most recent "#" swallow one more segment and retry from there.
	// Name positions are byte offsets; end means "no segment left".
	end := len(name) + 1
	n, i := 0, 0
	if name == "" {
		n = end
	}
	hashI, hashN := -1, 0
	for n < end {
		seg, next := segmentAt(name, n)
		if i < len(p.segs) {
			switch s := p.segs[i]; {
			case s == "#":
				hashI, hashN = i, n
				i++
				continue
			case s == "*" || s == seg:
				i, n = i+1, next
				continue
			}
		}
		if hashI < 0 {
			return false
		}
		_, hashN = segmentAt(name, hashN)
		i, n = hashI+1, hashN
	}
	for i < len(p.segs) && p.segs[i] == "#" {
		i++
	}
	return i == len(p.segs)
}

// segmentAt returns the segment of name starting at byte offset n and the
// offset of the next segment (len(name)+1 when there is none).
func segmentAt(name string, n int) (seg string, next int) {
	if j := strings.IndexByte(name[n:], '.'); j >= 0 {
		return name[n : n+j], n + j + 1
	}
	return name[n:], len(name) + 1
}
