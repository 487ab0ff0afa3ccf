package eventbus_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/paissive/go-eventbus/eventbus"
)

// patternCases are RabbitMQ topic-exchange semantics: "*" is exactly one
// segment, "#" zero or more.
var patternCases = []struct {
	pattern string
	match   []string
	noMatch []string
}{
	// The five forms of the original.
	{"user.registered", []string{"user.registered"}, []string{"user", "user.registered.x", "x.user.registered", "user.registere", "user.registeredd", "User.registered", "user.*"}},
	{"user.*", []string{"user.registered", "user.x", "user.user"}, []string{"user", "user.a.b", "users.registered", "x.user.a", "registered"}},
	{"user.#", []string{"user", "user.registered", "user.a.b", "user.a.b.c.d"}, []string{"users", "x.user", "usera.b", "a.user.b"}},
	{"*.registered", []string{"user.registered", "order.registered"}, []string{"registered", "a.b.registered", "user.registered.x", "user.registeredx"}},
	{"#.completed", []string{"completed", "order.completed", "a.b.completed"}, []string{"completed.x", "order.completedx", "ordercompleted", "order"}},

	// Zero-segment and combination cases.
	{"a.#.b", []string{"a.b", "a.x.b", "a.x.y.b", "a.b.b", "a.a.b", "a.b.c.b"}, []string{"a", "b", "a.b.c", "x.a.b", "ab"}},
	{"#", []string{"a", "a.b", "a.b.c.d.e", "user.registered"}, nil},
	{"*", []string{"a", "user"}, []string{"a.b", "a.b.c"}},
	{"#.#", []string{"a", "a.b", "a.b.c"}, nil},
	{"*.#", []string{"a", "a.b", "a.b.c"}, nil},
	{"#.*", []string{"a", "a.b", "a.b.c"}, nil},
	{"*.*", []string{"a.b"}, []string{"a", "a.b.c"}},
	{"*.*.#", []string{"a.b", "a.b.c", "a.b.c.d"}, []string{"a"}},
	{"#.*.*", []string{"a.b", "a.b.c"}, []string{"a"}},
	{"a.*.#.b", []string{"a.x.b", "a.x.y.b", "a.b.b", "a.x.y.z.b"}, []string{"a.b", "a.x", "a.x.b.c", "b.x.b"}},
	{"#.a.#", []string{"a", "a.b", "b.a", "b.a.c", "x.y.a.z.w", "a.a"}, []string{"b", "b.c", "ab", "b.ab.c"}},
	{"a.#.b.#.c", []string{"a.b.c", "a.x.b.y.c", "a.b.b.c", "a.x.y.b.c.c", "a.b.c.b.c"}, []string{"a.b", "a.c", "a.c.b", "a.b.c.d", "x.a.b.c"}},
	{"#.a.#.b", []string{"a.b", "x.a.y.b", "a.a.b.b", "a.b.a.b"}, []string{"a", "b", "b.a", "a.b.c"}},
	{"a.#.#.b", []string{"a.b", "a.x.b", "a.x.y.b"}, []string{"a", "b", "a.b.c"}},
	{"#.#.a", []string{"a", "x.a", "x.y.a"}, []string{"a.x"}},
	{"a.*", []string{"a.a"}, []string{"a", "a.a.a"}},
	{"*.a.*", []string{"x.a.y", "a.a.a"}, []string{"a", "a.a", "x.a", "a.a.a.a"}},
	{"user-1.order_2.#", []string{"user-1.order_2", "user-1.order_2.x"}, []string{"user-1.order-2", "user_1.order_2"}},
}

func TestPatternMatch(t *testing.T) {
	for _, tc := range patternCases {
		p, err := eventbus.CompilePattern(tc.pattern)
		if err != nil {
			t.Fatalf("CompilePattern(%q): %v", tc.pattern, err)
		}
		if p.String() != tc.pattern {
			t.Errorf("CompilePattern(%q).String() = %q", tc.pattern, p.String())
		}
		for _, name := range tc.match {
			if !p.Match(name) {
				t.Errorf("%q should match %q", tc.pattern, name)
			}
			if !refMatchStrings(tc.pattern, name) {
				t.Errorf("reference matcher disagrees with the table: %q vs %q", tc.pattern, name)
			}
		}
		for _, name := range tc.noMatch {
			if p.Match(name) {
				t.Errorf("%q should not match %q", tc.pattern, name)
			}
			if refMatchStrings(tc.pattern, name) {
				t.Errorf("reference matcher disagrees with the table: %q vs %q", tc.pattern, name)
			}
		}
	}
}

func TestZeroPatternMatchesNothing(t *testing.T) {
	var p eventbus.Pattern
	for _, name := range []string{"", "a", "a.b"} {
		if p.Match(name) {
			t.Errorf("zero Pattern matches %q", name)
		}
	}
}

func TestCompilePatternInvalid(t *testing.T) {
	long := strings.Repeat("a.", 127) + "bb" // 256 bytes
	cases := []struct {
		pattern string
		want    []string // substrings of the error
	}{
		{"", []string{"empty pattern"}},
		{"user*", []string{`"user*"`, "segment 1", "wildcard must be a whole segment"}},
		{"user.re#", []string{`"re#"`, "segment 2"}},
		{"a..b", []string{"segment 2", `""`, "empty"}},
		{".a", []string{"segment 1", "empty"}},
		{"a.", []string{"segment 2", "empty"}},
		{".", []string{"segment 1", "empty"}},
		{long, []string{"256 bytes", "255"}},
		{"usér.registered", []string{`"usér"`, "segment 1", `'é'`}},
		{"user.reg istered", []string{`"reg istered"`, `' '`}},
		{"user/registered", []string{`"user/registered"`, `'/'`}},
		{"a.**", []string{`"**"`}},
		{"a.#*", []string{`"#*"`}},
		{"a.\xff", []string{"segment 2"}},
	}
	for _, tc := range cases {
		_, err := eventbus.CompilePattern(tc.pattern)
		if err == nil {
			t.Errorf("CompilePattern(%q) succeeded, want an error", tc.pattern)
			continue
		}
		if !errors.Is(err, eventbus.ErrInvalidPattern) {
			t.Errorf("CompilePattern(%q) error %v does not wrap ErrInvalidPattern", tc.pattern, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("CompilePattern(%q) error %q does not mention %s", tc.pattern, err, w)
			}
		}
	}
	// The limit itself is fine.
	if _, err := eventbus.CompilePattern(long[:255]); err != nil {
		t.Errorf("a 255-byte pattern is rejected: %v", err)
	}
}

// validateName checks a name the way every event is checked.
func validateName(name string) error {
	_, err := eventbus.NewEvent(name, nil)
	return err
}

func TestEventNames(t *testing.T) {
	valid := []string{"user", "user.registered", "A-b_c.0-9", strings.Repeat("a.", 127) + "b"}
	for _, n := range valid {
		if err := validateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	cases := []struct {
		name string
		want []string
	}{
		{"", []string{"empty event name"}},
		{"user*", []string{`"user*"`, "segment 1"}},
		{"user.*", []string{`"*"`, "segment 2", "only legal in subscription patterns"}},
		{"#.completed", []string{`"#"`, "segment 1", "only legal in subscription patterns"}},
		{"a..b", []string{"segment 2", "empty"}},
		{"a.b.", []string{"segment 3", "empty"}},
		{strings.Repeat("a", 256), []string{"256 bytes", "255"}},
		{"order.créé", []string{`"créé"`, "segment 2", `'é'`}},
		{"日本.x", []string{`"日本"`, "segment 1"}},
		{"a b", []string{`"a b"`}},
		{"a\x00b", []string{"segment 1"}},
	}
	for _, tc := range cases {
		err := validateName(tc.name)
		if err == nil {
			t.Errorf("ValidateName(%q) = nil, want an error", tc.name)
			continue
		}
		if !errors.Is(err, eventbus.ErrInvalidName) {
			t.Errorf("ValidateName(%q) error %v does not wrap ErrInvalidName", tc.name, err)
		}
		if errors.Is(err, eventbus.ErrInvalidPattern) {
			t.Errorf("ValidateName(%q) error %v wraps ErrInvalidPattern", tc.name, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ValidateName(%q) error %q does not mention %s", tc.name, err, w)
			}
		}
	}
}

// refMatch is the reference matcher: a direct recursive transcription of
// the topic-exchange rules over segment slices.
func refMatch(pat, name []string) bool {
	if len(pat) == 0 {
		return len(name) == 0
	}
	switch pat[0] {
	case "#":
		return refMatch(pat[1:], name) || len(name) > 0 && refMatch(pat, name[1:])
	case "*":
		return len(name) > 0 && refMatch(pat[1:], name[1:])
	default:
		return len(name) > 0 && name[0] == pat[0] && refMatch(pat[1:], name[1:])
	}
}

func refMatchStrings(pat, name string) bool {
	return refMatch(strings.Split(pat, "."), strings.Split(name, "."))
}

// segmentsFrom maps each byte of b to one segment of alphabet, at most max
// segments, joined by dots; "" when b is empty.
func segmentsFrom(b []byte, alphabet []string, max int) string {
	if len(b) > max {
		b = b[:max]
	}
	segs := make([]string, len(b))
	for i, c := range b {
		segs[i] = alphabet[int(c)%len(alphabet)]
	}
	return strings.Join(segs, ".")
}

var (
	fuzzPatternAlphabet = []string{"a", "b", "*", "#", "ab"}
	fuzzNameAlphabet    = []string{"a", "b", "ab"}
)

func FuzzPatternMatch(f *testing.F) {
	for _, tc := range patternCases {
		for _, n := range append(append([]string{}, tc.match...), tc.noMatch...) {
			f.Add(tc.pattern, n, []byte{}, []byte{})
		}
	}
	f.Add("", "", []byte{3}, []byte{})                    // "#" vs no segments
	f.Add("", "", []byte{0, 3, 1}, []byte{0, 1})          // a.#.b vs a.b
	f.Add("", "", []byte{3, 3}, []byte{0})                // #.# vs a
	f.Add("", "", []byte{2, 3}, []byte{0})                // *.# vs a
	f.Add("", "", []byte{3, 0, 3}, []byte{1, 0, 1, 0})    // #.a.# vs b.a.b.a
	f.Add("", "", []byte{0, 3, 1, 3, 0}, []byte{0, 1, 0}) // a.#.b.#.a vs a.b.a
	f.Add("", "", []byte{3, 2, 3, 2}, []byte{0, 1, 2, 0}) // #.*.#.* vs a.b.ab.a
	f.Fuzz(func(t *testing.T, rawPattern, rawName string, patBytes, nameBytes []byte) {
		// Arbitrary text: when both are valid, Match must agree with the
		// reference; an invalid pattern must not compile into something.
		if p, err := eventbus.CompilePattern(rawPattern); err == nil {
			if validateName(rawName) == nil {
				if got, want := p.Match(rawName), refMatchStrings(rawPattern, rawName); got != want {
					t.Fatalf("CompilePattern(%q).Match(%q) = %v, reference says %v", rawPattern, rawName, got, want)
				}
			}
		} else if !errors.Is(err, eventbus.ErrInvalidPattern) {
			t.Fatalf("CompilePattern(%q) error %v does not wrap ErrInvalidPattern", rawPattern, err)
		}

		// Generated from a small alphabet, so that matches are frequent.
		pat := segmentsFrom(patBytes, fuzzPatternAlphabet, 12)
		name := segmentsFrom(nameBytes, fuzzNameAlphabet, 12)
		if pat == "" || name == "" {
			return
		}
		p, err := eventbus.CompilePattern(pat)
		if err != nil {
			t.Fatalf("CompilePattern(%q): %v", pat, err)
		}
		if got, want := p.Match(name), refMatchStrings(pat, name); got != want {
			t.Fatalf("CompilePattern(%q).Match(%q) = %v, reference says %v", pat, name, got, want)
		}
	})
}

var benchPatterns = []struct{ label, pattern, name string }{
	{"literal", "user.registered", "user.registered"},
	{"user.*", "user.*", "user.registered"},
	{"#.completed", "#.completed", "order.payment.completed"},
	{"a.#.b.#.c", "a.#.b.#.c", "a.x1.x2.b.y1.y2.y3.b.z1.z2.c"},
}

func BenchmarkPatternMatch(b *testing.B) {
	for _, bp := range benchPatterns {
		p := mustCompile(b, bp.pattern)
		if !p.Match(bp.name) {
			b.Fatalf("%q does not match %q", bp.pattern, bp.name)
		}
		b.Run(bp.label, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Match(bp.name)
			}
		})
	}
}

func TestPatternMatchDoesNotAllocate(t *testing.T) {
	for _, bp := range benchPatterns {
		p := mustCompile(t, bp.pattern)
		miss := bp.name + ".x"
		allocs := testing.AllocsPerRun(200, func() {
			p.Match(bp.name)
			p.Match(miss)
		})
		if allocs != 0 {
			t.Errorf("%q.Match allocates %v times per call", bp.pattern, allocs)
		}
	}
}

// mustCompile compiles a pattern of the test's own.
func mustCompile(t testing.TB, pattern string) eventbus.Pattern {
	t.Helper()
	p, err := eventbus.CompilePattern(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
