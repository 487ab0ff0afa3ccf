// Package names validates event names and subscription patterns, for the
// eventbus package (which exports the rules) and the driver package's
// decoder (which applies them to every event consumed).
package names

import (
	"errors"
	"fmt"
)

// MaxLength is the longest event name or pattern in bytes: the AMQP
// routing-key limit, so that a name valid here is valid on every broker.
const MaxLength = 255

var (
	// ErrInvalidName is wrapped by every error about a malformed event name.
	ErrInvalidName = errors.New("eventbus: invalid event name")
	// ErrInvalidPattern is wrapped by every error about a malformed pattern.
	ErrInvalidPattern = errors.New("eventbus: invalid pattern")
)

// Validate reports whether name is a valid event name: one or more
// segments of letters, digits, '_' and '-', joined by '.', at most
// MaxLength bytes. The error wraps ErrInvalidName and names the offending
// segment.
func Validate(name string) error {
	if Valid(name) {
		return nil
	}
	return Check(name, false)
}

// nameByte marks the bytes allowed in a name segment.
var nameByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
	}
	return t
}()

// Valid is Validate's answer without the explanation, in one pass over the
// bytes: every published and every consumed event is checked, and Check,
// which finds the offending segment, runs only for names that fail here.
func Valid(s string) bool {
	if len(s) == 0 || len(s) > MaxLength {
		return false
	}
	segStart := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' {
			if segStart {
				return false
			}
			segStart = true
			continue
		}
		if !nameByte[c] {
			return false
		}
		segStart = false
	}
	return !segStart
}

// Check validates names and, with wildcards set, patterns: in a pattern a
// segment may also be exactly "*" or "#".
func Check(s string, wildcards bool) error {
	kind, sentinel := "event name", ErrInvalidName
	if wildcards {
		kind, sentinel = "pattern", ErrInvalidPattern
	}
	if s == "" {
		return fmt.Errorf("%w: empty %s", sentinel, kind)
	}
	if len(s) > MaxLength {
		return fmt.Errorf("%w: %s is %d bytes long, the limit is %d", sentinel, kind, len(s), MaxLength)
	}
	start, index := 0, 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			continue
		}
		seg := s[start:i]
		if err := checkSegment(seg, wildcards); err != "" {
			return fmt.Errorf("%w: %s %q: segment %d %q %s", sentinel, kind, s, index+1, seg, err)
		}
		start, index = i+1, index+1
	}
	return nil
}

func checkSegment(seg string, wildcards bool) string {
	if seg == "" {
		return "is empty (names are segments joined by single dots)"
	}
	if seg == "*" || seg == "#" {
		if wildcards {
			return ""
		}
		return "is a wildcard; '*' and '#' are only legal in subscription patterns"
	}
	for _, c := range seg {
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			continue
		}
		if (c == '*' || c == '#') && wildcards {
			return fmt.Sprintf("mixes %q with other characters; a wildcard must be a whole segment", c)
		}
		return fmt.Sprintf("contains %q; allowed are letters, digits, '_' and '-'", c)
	}
	return ""
}
