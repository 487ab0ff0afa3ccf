package eventbus

import "testing"

// FuzzValidName checks that the one-pass validName accepts exactly the names
// checkSegments (which explains rejections) accepts.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"", ".", "a", "a.b", "a..b", ".a", "a.", "user.registered", "a.*", "a.#", "ü.b", "a b", "A-_9.z", string(make([]byte, 256))} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if fast, slow := validName(s), checkSegments(s, false) == nil; fast != slow {
			t.Fatalf("validName(%q) = %v, checkSegments says %v", s, fast, slow)
		}
	})
}
