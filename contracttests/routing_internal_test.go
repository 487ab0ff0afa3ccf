package contracttests

import (
	"slices"
	"testing"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/internal/names"
)

// TestRoutingTable checks the routing test's expectations against the
// bus's own pattern matcher, so that a mistake in the table cannot fail a
// correct transport (or pass a broken one), and checks that every name is
// valid and the long ones are at the 255-byte limit.
func TestRoutingTable(t *testing.T) {
	for _, n := range routingNames {
		if err := names.Validate(n); err != nil {
			t.Errorf("routing name %s: %v", shortName(n), err)
		}
	}
	for _, n := range []string{long1, long2, long3, long4} {
		if len(n) != names.MaxLength {
			t.Errorf("long name %s is %d bytes, want %d", shortName(n), len(n), names.MaxLength)
		}
	}
	for _, rc := range routingCases {
		p, err := eventbus.CompilePattern(rc.pattern)
		if err != nil {
			t.Errorf("pattern %s: %v", shortName(rc.pattern), err)
			continue
		}
		var want []string
		for _, n := range routingNames {
			if p.Match(n) {
				want = append(want, n)
			}
		}
		got := slices.Clone(rc.want)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("pattern %s: the table says %s, the matcher %s", shortName(rc.pattern), shortNames(got), shortNames(want))
		}
	}
}
