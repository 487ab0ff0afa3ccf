package names

import "testing"

// FuzzValid checks that the one-pass Valid accepts exactly the names Check
// (which explains rejections) accepts.
func FuzzValid(f *testing.F) {
	for _, s := range []string{"", ".", "a", "a.b", "a..b", ".a", "a.", "user.registered", "a.*", "a.#", "ü.b", "a b", "A-_9.z", string(make([]byte, 256))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if fast, slow := Valid(s), Check(s, false) == nil; fast != slow {
			t.Fatalf("Valid(%q) = %v, Check says %v", s, fast, slow)
		}
	})
}
