package eventbus

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ErrDataVersion is wrapped by the error [Schema.Parse] (and so the typed
// handler) returns for an event whose data version the schema cannot read:
// a major version newer than the schema's, an older one it has no
// upcaster for, no version at all (unless [AssumeVersion]), a version that
// is not "MAJOR" or "MAJOR.MINOR", or an upcaster that failed. The error is
// permanent, so the event goes to the poison queue at once; its message
// names the event's and the schema's versions and what to do. Once a
// consumer that reads the version is deployed, replay the poison queue.
var ErrDataVersion = errors.New("eventbus: unreadable data version")

// dataVersion is a parsed data version. On the wire (Event.DataVersion,
// the ce_dataversion header) it is "MAJOR" or "MAJOR.MINOR"; "1" means
// "1.0". Events of one major version are compatible with each other: a
// minor version only adds optional fields, which a tolerant reader ignores
// when it does not know them and leaves zero when the producer is older.
// A new major version is a breaking change (a field renamed, removed or
// retyped) that an upcaster bridges.
type dataVersion struct{ major, minor int }

// String returns the version in its "MAJOR.MINOR" form, so that "3" and
// "3.0" read the same in errors.
func (v dataVersion) String() string { return strconv.Itoa(v.major) + "." + strconv.Itoa(v.minor) }

// parseVersion parses "MAJOR" or "MAJOR.MINOR": non-negative decimal
// integers without sign or leading zeros, so that each version has one
// spelling ("1.01" and "1.1" are not two names for one version).
func parseVersion(s string) (dataVersion, error) {
	bad := func() error {
		return fmt.Errorf(`%q is not a data version: use MAJOR or MAJOR.MINOR, non-negative integers without leading zeros, such as "2" or "2.1"`, s)
	}
	majorS, minorS, hasMinor := strings.Cut(s, ".")
	major, ok := versionNumber(majorS)
	if !ok {
		return dataVersion{}, bad()
	}
	minor := 0
	if hasMinor {
		if minor, ok = versionNumber(minorS); !ok {
			return dataVersion{}, bad()
		}
	}
	return dataVersion{major, minor}, nil
}

func versionNumber(s string) (int, bool) {
	if s == "" || len(s) > 9 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// upcaster turns the JSON data of one major version into that of the next.
type upcaster = func(json.RawMessage) (json.RawMessage, error)

// Upcast declares how the schema reads events of major version from: fn
// turns their JSON data into the data of major version from+1. A schema of
// version N reads an event of an older major M by running the upcasters of
// M, M+1, ..., N-1 in turn, then decodes and validates the result as
// usual, so a handler only ever sees the current type. The declared
// upcasters must form an unbroken chain ending at N-1 (NewSchema reports a
// gap); events older than the oldest upcaster are rejected with
// [ErrDataVersion].
//
// fn gets the data of any minor version of major from, and should read it
// as tolerantly as a consumer does. It runs on every old event the
// consumer handles, so keep it a pure function of its input: an error
// from it is permanent (the event goes to the poison queue), since the
// same data would fail the same way again. Its output must be JSON.
//
// Upcasters let a consumer be upgraded before its producers: one that
// knows version 2 reads the version-1 events still in queues and those of
// producers not yet upgraded. The opposite order (an old consumer meeting
// a newer major) poisons the events with an error that names both
// versions, so upgrade consumers first, or replay the poison queue once
// they are.
func Upcast(from int, fn func(data json.RawMessage) (json.RawMessage, error)) SchemaOption {
	return func(c *schemaConfig) {
		c.upcasts = append(c.upcasts, upcastDecl{from, fn})
	}
}

type upcastDecl struct {
	from int
	fn   upcaster
}

// AssumeVersion makes the schema read events that carry no data version as
// version v (for example "1", for producers written before they stamped
// one). By default such events are rejected with [ErrDataVersion], because
// once a schema has versions an unversioned event could be any of them:
// guessing wrong decodes a renamed field as missing rather than failing.
// v must be a version the schema can read, its own major or one its
// upcasters reach; it needs [SchemaVersion].
func AssumeVersion(v string) SchemaOption {
	return func(c *schemaConfig) { c.assume, c.hasAssume = v, true }
}

// versioning is a schema's version rules, checked once by NewSchema.
type versioning struct {
	declared string // as given to SchemaVersion, stamped on new events
	current  dataVersion
	assume   *dataVersion
	oldest   int        // major of upcasts[0]
	upcasts  []upcaster // upcasts[i] reads major oldest+i
}

// newVersioning checks the version options of schema name. Mistakes here
// are programming errors, so they fail NewSchema rather than each Parse.
func newVersioning(name string, c *schemaConfig) (*versioning, error) {
	fail := func(format string, args ...any) (*versioning, error) {
		return nil, fmt.Errorf("eventbus: NewSchema %s: "+format, append([]any{name}, args...)...)
	}
	if c.version == "" {
		switch {
		case len(c.upcasts) > 0:
			return fail("Upcast(%d, ...) needs SchemaVersion: upcasters carry older majors forward to the schema's version", c.upcasts[0].from)
		case c.hasAssume:
			return fail("AssumeVersion(%q) needs SchemaVersion: a schema without a version reads events of any version", c.assume)
		}
		return nil, nil
	}
	cur, err := parseVersion(c.version)
	if err != nil {
		return fail("SchemaVersion: %v", err)
	}
	v := &versioning{declared: c.version, current: cur, oldest: cur.major}
	ups := slices.Clone(c.upcasts)
	slices.SortFunc(ups, func(a, b upcastDecl) int { return a.from - b.from })
	for i, u := range ups {
		switch {
		case u.fn == nil:
			return fail("Upcast(%d, nil): the upcaster is nil", u.from)
		case u.from < 0:
			return fail("Upcast(%d, ...): major versions are not negative", u.from)
		case u.from >= cur.major:
			return fail("Upcast(%d, ...) reads major %d, but the schema is version %s: an upcaster reads an older major and returns the next one", u.from, u.from, cur)
		case i > 0 && ups[i-1].from == u.from:
			return fail("Upcast(%d, ...) is declared twice", u.from)
		}
	}
	if len(ups) > 0 {
		v.oldest = ups[0].from
		for i, u := range ups {
			if want := v.oldest + i; u.from != want {
				return fail("upcasters from majors %d and %d but not %d: an event of major %d must pass through every major up to %d; add Upcast(%d, ...)", ups[i-1].from, u.from, want, v.oldest, cur.major, want)
			}
			v.upcasts = append(v.upcasts, u.fn)
		}
		if last := ups[len(ups)-1].from; last != cur.major-1 {
			return fail("the upcasters stop at major %d, but the schema is version %s; add Upcast(%d, ...) to reach it", last+1, cur, cur.major-1)
		}
	}
	if c.hasAssume {
		a, err := parseVersion(c.assume)
		if err != nil {
			return fail("AssumeVersion: %v", err)
		}
		if a.major > cur.major || a.major < v.oldest {
			return fail("AssumeVersion(%q): the schema (version %s) cannot read major %d; it reads majors %d to %d", c.assume, cur, a.major, v.oldest, cur.major)
		}
		v.assume = &a
	}
	return v, nil
}

// versionError is the permanent error for an event whose data version the
// schema cannot read. It matches ErrDataVersion and ErrPermanent.
type versionError struct {
	msg string
	err error // an upcaster's error
}

func (e *versionError) Error() string {
	if e.err != nil {
		return "eventbus: " + e.msg + ": " + e.err.Error()
	}
	return "eventbus: " + e.msg
}
func (e *versionError) Unwrap() error   { return e.err }
func (e *versionError) Permanent() bool { return true }
func (e *versionError) Is(target error) bool {
	return target == ErrDataVersion || target == ErrPermanent
}

// upgrade returns the data of ev as data of the schema's major version:
// unchanged when ev is of that major, carried forward by the upcasters
// when older, and a versionError when the schema cannot read it.
func (v *versioning) upgrade(name string, ev Event) (json.RawMessage, error) {
	var got dataVersion
	switch {
	case ev.DataVersion != "":
		var err error
		if got, err = parseVersion(ev.DataVersion); err != nil {
			return nil, &versionError{msg: fmt.Sprintf("%s event %s: data version %v; have the producer stamp MAJOR.MINOR", name, ev.ID, err)}
		}
	case v.assume != nil:
		got = *v.assume
	default:
		return nil, &versionError{msg: fmt.Sprintf(
			"%s event %s has no data version, and this consumer's schema is version %s, so it cannot tell which version the data is; have the producer stamp its version (Schema.NewEvent does), or read unversioned events as one version with AssumeVersion",
			name, ev.ID, v.current)}
	}
	switch {
	case got.major == v.current.major:
		return ev.Data, nil
	case got.major > v.current.major:
		return nil, &versionError{msg: fmt.Sprintf(
			"%s data version %s is newer than this consumer's schema (%d.x); deploy a consumer that knows version %d, then replay the poison queue",
			name, got, v.current.major, got.major)}
	case got.major < v.oldest:
		have := "declares no upcasters"
		if len(v.upcasts) > 0 {
			have = fmt.Sprintf("upcasts from version %d on", v.oldest)
		}
		add := fmt.Sprintf("Upcast(%d, ...)", got.major)
		if got.major < v.oldest-1 {
			add = fmt.Sprintf("Upcast(%d, ...) to Upcast(%d, ...)", got.major, v.oldest-1)
		}
		return nil, &versionError{msg: fmt.Sprintf(
			"%s data version %s is older than this consumer's schema (%d.x), which %s; add %s to the schema, deploy it, then replay the poison queue",
			name, got, v.current.major, have, add)}
	}
	data := ev.Data
	for m := got.major; m < v.current.major; m++ {
		out, err := v.upcasts[m-v.oldest](data)
		if err != nil {
			return nil, &versionError{msg: fmt.Sprintf("upcasting %s event %s (data version %s) from version %d to %d", name, ev.ID, got, m, m+1), err: err}
		}
		if !json.Valid(out) {
			return nil, &versionError{msg: fmt.Sprintf("upcasting %s event %s (data version %s): the upcaster from version %d returned data that is not JSON; fix the upcaster", name, ev.ID, got, m)}
		}
		data = out
	}
	return data, nil
}
