package driver

import (
	"testing"
	"time"
)

// FuzzParseTime checks that parseTime gives exactly what
// time.Parse(time.RFC3339Nano, s) gives, in UTC, and that the fast path
// covers the times Encode writes.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{
		"2026-11-27T04:58:06.123456789Z", "2026-11-27T04:58:06Z", "2026-11-27T04:58:06.1Z",
		"2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-12-31T23:59:59.999Z",
		"2026-11-27T24:00:00Z", "2026-11-27T04:60:06Z", "2026-11-27T04:58:60Z", "2026-13-01T00:00:00Z",
		"2026-11-27T04:58:06.Z", "2026-11-27T04:58:06,5Z", "2026-11-27T04:58:06+02:00", "2026-11-27t04:58:06z",
		"0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z", "2026-11-27T04:58:06.1234567890Z", "-026-11-27T04:58:06Z",
		"2026-1a-27T04:58:06Z", "", "Z",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseTime(s)
		want, werr := time.Parse(time.RFC3339Nano, s)
		if (err == nil) != (werr == nil) {
			t.Fatalf("parseTime(%q) error %v; time.Parse error %v", s, err, werr)
		}
		if err == nil && (!got.Equal(want) || got.Location() != time.UTC) {
			t.Fatalf("parseTime(%q) = %v; time.Parse gives %v", s, got, want.UTC())
		}
	})
}

func TestParseTimeFastPath(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(2026, 11, 27, 4, 58, 6, 123456789, time.UTC),
		time.Date(2024, 2, 29, 23, 59, 59, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 500_000_000, time.UTC),
	} {
		s := tm.Format(time.RFC3339Nano)
		if got, ok := parseUTCTime(s); !ok || !got.Equal(tm) {
			t.Errorf("parseUTCTime(%q) = %v, %v; want %v, true", s, got, ok, tm)
		}
	}
}
