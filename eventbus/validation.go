package eventbus

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-playground/validator/v10"
)

// defaultValidator is shared by all schemas: a validator.Validate caches
// struct metadata and is safe for concurrent use. Its tag-name function
// gives the validator's own errors (ValidationError.Err) the JSON names
// that FieldError paths use; with WithTagNameFuncBlankOmit an embedded
// struct, whose fields encoding/json flattens into the parent object, adds
// no segment to them.
var defaultValidator = func() *validator.Validate {
	v := validator.New(validator.WithRequiredStructEnabled(), validator.WithTagNameFuncBlankOmit())
	v.RegisterTagNameFunc(func(f reflect.StructField) string {
		name, _ := jsonFieldName(f)
		return name
	})
	return v
}()

// ValidationError reports data that breaks a schema's rules. Its message
// names JSON fields and rules, the terms of the event's contract rather
// than of the Go type:
//
//	eventbus: data of order.placed is invalid: customer_id: required; email: must be an email address
//
// and Fields gives the same field by field to a program (get it with
// errors.As). The schema returns it wrapped by [Permanent]: a handler
// returning it is not retried.
type ValidationError struct {
	// Schema is the event name of the schema.
	Schema string
	// Fields lists what is wrong, one entry per broken rule, in the order
	// found. Data that does not decode has one entry (encoding/json stops
	// at the first problem, and validating half-decoded data would add
	// misleading ones). It is empty when the error is not about the
	// data's content (an event of another name); Err says what then.
	Fields []FieldError
	// Err is the underlying error: validator.ValidationErrors when tags
	// failed, the encoding/json error when the data did not decode.
	Err error
}

// FieldError is one broken rule of a [ValidationError].
//
// Path is computed from the Go field path the validator reports
// (StructNamespace) by following T's json tags as encoding/json does:
// tag names, Go names for untagged fields, embedded structs flattened. It
// does not depend on the validator's tag-name function, so a validator
// passed with [WithValidator] gets JSON paths too. A field tagged
// `json:"-"` is not in the JSON; a rule it breaks is reported under its Go
// name.
//
// Messages do not quote the data's values, which end up in logs and
// poison records and may be personal data; only the error of a type's own
// UnmarshalJSON or UnmarshalText method is passed on as it is.
type FieldError struct {
	// Path is the JSON path of the field, such as "customer_id" or
	// "items[0].sku" (map entries as "prices[EUR]"); empty for the data as
	// a whole.
	Path string
	// Rule is the broken rule: the validator tag ("required", "email",
	// "min", or a custom one), or for data that does not decode "type" (a
	// value of the wrong JSON type), "unknown" (a field the type lacks,
	// with Strict), "syntax" (not JSON) or "decode" (refused by the
	// type's UnmarshalJSON or UnmarshalText method).
	Rule string
	// Param is the rule's parameter as written in the tag ("3" for min=3,
	// Go field names for eqfield), or for "type" the JSON type expected:
	// "string", "number", "boolean", "array" or "object". Empty when the
	// rule has none.
	Param string
	// Message says what is wrong, for people: "required", "must be an
	// email address", "must be a number, got string". The validator's
	// common tags have their own messages; others read `fails the "even"
	// rule`.
	Message string
}

// maxShownFields bounds the fields a ValidationError's message lists: a
// list of a thousand invalid items says no more than its first ten, and
// the message ends up in logs and poison records. Fields has them all.
const maxShownFields = 10

// Error names the schema and each broken rule as "path: message".
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("eventbus: data of ")
	b.WriteString(e.Schema)
	b.WriteString(" is invalid: ")
	if len(e.Fields) == 0 {
		if e.Err != nil {
			b.WriteString(e.Err.Error())
		}
		return b.String()
	}
	for i, f := range e.Fields {
		if i == maxShownFields {
			fmt.Fprintf(&b, "; and %d more", len(e.Fields)-maxShownFields)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		if f.Path != "" {
			b.WriteString(f.Path)
			b.WriteString(": ")
		}
		b.WriteString(f.Message)
	}
	return b.String()
}

// Unwrap returns the underlying error: the validator's
// validator.ValidationErrors, or encoding/json's error.
func (e *ValidationError) Unwrap() error { return e.Err }

// check validates data with the schema's validator.
func (s *Schema[T]) check(data T) error {
	v := reflect.ValueOf(data)
	if v.Kind() == reflect.Pointer && v.IsNil() {
		return Permanent(&ValidationError{Schema: s.name, Fields: []FieldError{{Rule: "required", Message: "the data is null"}}})
	}
	err := s.validate.Struct(data)
	if err == nil {
		return nil
	}
	var verrs validator.ValidationErrors
	if !errors.As(err, &verrs) {
		return Permanent(&ValidationError{Schema: s.name, Err: err})
	}
	fields := make([]FieldError, len(verrs))
	for i, fe := range verrs {
		path, parent, ok := jsonPath(s.rt, fe.StructNamespace())
		if !ok { // a struct-level validation's own names: keep them
			path, parent = fe.Namespace(), nil
			if n := s.rt.Name(); n != "" {
				path = strings.TrimPrefix(path, n+".")
			}
		}
		fields[i] = FieldError{Path: path, Rule: fe.Tag(), Param: fe.Param(), Message: ruleMessage(fe, s.rt, parent)}
	}
	return Permanent(&ValidationError{Schema: s.name, Fields: fields, Err: err})
}

// jsonFieldName returns the name encoding/json gives struct field f: its
// json tag's name, else its Go name; "" for an embedded struct without a
// tag name, whose fields encoding/json flattens into the parent. A field
// tagged `json:"-"` is not in the JSON (inJSON false); its Go name is
// returned, so that an error about it still names it.
func jsonFieldName(f reflect.StructField) (name string, inJSON bool) {
	tag := f.Tag.Get("json")
	if tag == "-" {
		return f.Name, false
	}
	name, _, _ = strings.Cut(tag, ",")
	if name != "" {
		return name, true
	}
	if f.Anonymous && deref(f.Type).Kind() == reflect.Struct {
		return "", true
	}
	return f.Name, true
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// jsonPath turns the Go field path a validator reports for struct type rt
// ("Order.Items[0].SKU", StructNamespace) into the JSON path
// ("items[0].sku"). parent is the struct that holds the last field, for
// rules whose parameter names a sibling field. ok is false when ns does
// not follow rt's fields (a struct-level validation may report any name).
func jsonPath(rt reflect.Type, ns string) (path string, parent reflect.Type, ok bool) {
	if n := rt.Name(); n != "" {
		if ns, ok = strings.CutPrefix(ns, n+"."); !ok {
			return "", nil, false
		}
	}
	return jsonPathFrom(rt, ns)
}

func jsonPathFrom(t reflect.Type, ns string) (path string, parent reflect.Type, ok bool) {
	var b strings.Builder
	for ns != "" {
		t = deref(t)
		switch t.Kind() {
		case reflect.Struct:
			end := strings.IndexAny(ns, ".[")
			if end < 0 {
				end = len(ns)
			}
			f, found := t.FieldByName(ns[:end])
			if !found || len(f.Index) != 1 {
				return "", nil, false
			}
			parent = t
			if name, _ := jsonFieldName(f); name != "" {
				if b.Len() > 0 {
					b.WriteByte('.')
				}
				b.WriteString(name)
			}
			t, ns = f.Type, strings.TrimPrefix(ns[end:], ".")
		case reflect.Slice, reflect.Array, reflect.Map:
			end := -1
			if strings.HasPrefix(ns, "[") {
				// A map key may hold brackets and dots: its segment ends
				// at the first ']' that something else follows.
				for i := 1; i < len(ns); i++ {
					if ns[i] == ']' && (i+1 == len(ns) || ns[i+1] == '.' || ns[i+1] == '[') {
						end = i
						break
					}
				}
			}
			if end < 0 {
				return "", nil, false
			}
			b.WriteString(ns[:end+1])
			t, ns = t.Elem(), strings.TrimPrefix(ns[end+1:], ".")
		default:
			return "", nil, false
		}
	}
	return b.String(), parent, true
}

// fixedMessages are the messages of validator tags that need neither the
// parameter nor the field's kind.
var fixedMessages = map[string]string{
	"required": "required", "required_if": "required", "required_unless": "required",
	"required_with": "required", "required_with_all": "required",
	"required_without": "required", "required_without_all": "required",
	"excluded_if": "must be absent", "excluded_unless": "must be absent",
	"excluded_with": "must be absent", "excluded_with_all": "must be absent",
	"excluded_without": "must be absent", "excluded_without_all": "must be absent",
	"isdefault": "must be absent",
	"email":     "must be an email address",
	"url":       "must be a URL", "http_url": "must be an HTTP URL", "https_url": "must be an HTTPS URL",
	"uri":  "must be a URI",
	"uuid": "must be a UUID", "uuid_rfc4122": "must be a UUID",
	"uuid3": "must be a version 3 UUID", "uuid3_rfc4122": "must be a version 3 UUID",
	"uuid4": "must be a version 4 UUID", "uuid4_rfc4122": "must be a version 4 UUID",
	"uuid5": "must be a version 5 UUID", "uuid5_rfc4122": "must be a version 5 UUID",
	"uuid7": "must be a version 7 UUID",
	"ulid":  "must be a ULID",
	"alpha": "must contain only letters", "alphaunicode": "must contain only letters",
	"alphanum": "must contain only letters and digits", "alphanumunicode": "must contain only letters and digits",
	"alphaspace": "must contain only letters and spaces", "alphanumspace": "must contain only letters, digits and spaces",
	"numeric": "must be numeric", "number": "must contain only digits",
	"hexadecimal": "must be hexadecimal", "boolean": "must be a boolean",
	"lowercase": "must be lower case", "uppercase": "must be upper case",
	"ascii": "must contain only ASCII characters", "printascii": "must contain only printable ASCII characters",
	"ip": "must be an IP address", "ipv4": "must be an IPv4 address", "ipv6": "must be an IPv6 address",
	"cidr": "must be a CIDR network", "cidrv4": "must be an IPv4 CIDR network", "cidrv6": "must be an IPv6 CIDR network",
	"mac": "must be a MAC address", "hostname": "must be a host name", "hostname_rfc1123": "must be a host name",
	"fqdn": "must be a fully qualified domain name", "hostname_port": "must be a host:port", "port": "must be a port number",
	"e164":   "must be a phone number in E.164 format, such as +14155552671",
	"json":   "must be JSON",
	"jwt":    "must be a JWT",
	"base64": "must be base64", "base64url": "must be base64url", "base64rawurl": "must be unpadded base64url",
	"unique":           "must not contain duplicates",
	"semver":           "must be a semantic version",
	"iso3166_1_alpha2": "must be an ISO 3166-1 alpha-2 country code", "country_code": "must be a country code",
	"iso3166_1_alpha3":   "must be an ISO 3166-1 alpha-3 country code",
	"iso4217":            "must be an ISO 4217 currency code",
	"bcp47_language_tag": "must be a BCP 47 language tag", "timezone": "must be a time zone name",
	"latitude": "must be a latitude", "longitude": "must be a longitude",
	"hexcolor": "must be a hex colour", "iscolor": "must be a colour",
	"md5": "must be an MD5 hash", "sha256": "must be a SHA-256 hash", "credit_card": "must be a credit card number",
	"cron": "must be a cron expression", "duration": "must be a duration",
}

// fieldRules are the tags whose parameter names another field of the same
// struct; csfieldRules those whose parameter is a path from the top.
var (
	fieldRules = map[string]string{
		"eqfield": "must equal %s", "nefield": "must differ from %s",
		"gtfield": "must be greater than %s", "gtefield": "must be at least %s",
		"ltfield": "must be less than %s", "ltefield": "must be at most %s",
	}
	csfieldRules = map[string]string{
		"eqcsfield": "must equal %s", "necsfield": "must differ from %s",
		"gtcsfield": "must be greater than %s", "gtecsfield": "must be at least %s",
		"ltcsfield": "must be less than %s", "ltecsfield": "must be at most %s",
	}
)

// ruleMessage is the message for a broken validator rule. rt is the
// schema's struct type and parent the struct holding the field (nil if
// unknown), to name fields a rule's parameter refers to by their JSON
// names.
func ruleMessage(fe validator.FieldError, rt, parent reflect.Type) string {
	tag, param := fe.Tag(), fe.Param()
	if m, ok := fixedMessages[tag]; ok {
		return m
	}
	switch tag {
	case "min", "max", "len", "eq", "ne", "gt", "gte", "lt", "lte":
		if m := boundMessage(tag, param, fe.Kind(), fe.Type()); m != "" {
			return m
		}
	case "oneof", "oneofci":
		return "must be one of " + strings.Join(oneofValues(param), ", ")
	case "noneof", "noneofci":
		return "must not be one of " + strings.Join(oneofValues(param), ", ")
	case "eq_ignore_case":
		return fmt.Sprintf("must be %q (in any case)", param)
	case "ne_ignore_case":
		return fmt.Sprintf("must not be %q (in any case)", param)
	case "contains":
		return fmt.Sprintf("must contain %q", param)
	case "containsany":
		return fmt.Sprintf("must contain one of the characters %q", param)
	case "excludes":
		return fmt.Sprintf("must not contain %q", param)
	case "excludesall":
		return fmt.Sprintf("must not contain any of the characters %q", param)
	case "startswith":
		return fmt.Sprintf("must start with %q", param)
	case "endswith":
		return fmt.Sprintf("must end with %q", param)
	case "startsnotwith":
		return fmt.Sprintf("must not start with %q", param)
	case "endsnotwith":
		return fmt.Sprintf("must not end with %q", param)
	case "datetime":
		return fmt.Sprintf("must be a time in the layout %q", param)
	}
	if format, ok := fieldRules[tag]; ok {
		name := param
		if parent != nil {
			if p, _, ok := jsonPathFrom(parent, param); ok && p != "" {
				name = p
			}
		}
		return fmt.Sprintf(format, name)
	}
	if format, ok := csfieldRules[tag]; ok {
		name := param
		if p, _, ok := jsonPath(rt, param); ok && p != "" {
			name = p
		} else if p, _, ok := jsonPathFrom(rt, param); ok && p != "" {
			name = p
		}
		return fmt.Sprintf(format, name)
	}
	if param != "" {
		return fmt.Sprintf("fails the %q rule", tag+"="+param)
	}
	return fmt.Sprintf("fails the %q rule", tag)
}

var timeType = reflect.TypeFor[time.Time]()

// boundMessage words the size and comparison rules, whose meaning depends
// on the field: a string's length in characters, a collection's number of
// items, a number's value, a time's relation to now.
func boundMessage(tag, param string, kind reflect.Kind, typ reflect.Type) string {
	if typ != nil && typ.ConvertibleTo(timeType) && kind == reflect.Struct {
		if param != "" {
			return ""
		}
		return map[string]string{
			"gt": "must be in the future", "gte": "must not be in the past",
			"lt": "must be in the past", "lte": "must not be in the future",
		}[tag]
	}
	count := func(unit string) string {
		if param != "1" {
			unit += "s"
		}
		return param + " " + unit
	}
	switch kind {
	case reflect.String:
		n := count("character")
		switch tag {
		case "eq":
			return fmt.Sprintf("must be %q", param)
		case "ne":
			return fmt.Sprintf("must not be %q", param)
		case "min", "gte":
			return "must be at least " + n + " long"
		case "max", "lte":
			return "must be at most " + n + " long"
		case "len":
			return "must be exactly " + n + " long"
		case "gt":
			return "must be longer than " + n
		case "lt":
			return "must be shorter than " + n
		}
	case reflect.Slice, reflect.Array, reflect.Map:
		n := count("item")
		switch tag {
		case "min", "gte":
			return "must have at least " + n
		case "max", "lte":
			return "must have at most " + n
		case "len", "eq":
			return "must have exactly " + n
		case "ne":
			return "must not have exactly " + n
		case "gt":
			return "must have more than " + n
		case "lt":
			return "must have fewer than " + n
		}
	default:
		switch tag {
		case "min", "gte":
			return "must be at least " + param
		case "max", "lte":
			return "must be at most " + param
		case "len", "eq":
			return "must equal " + param
		case "ne":
			return "must not equal " + param
		case "gt":
			return "must be greater than " + param
		case "lt":
			return "must be less than " + param
		}
	}
	return ""
}

// oneofValues splits a oneof parameter as the validator does: by spaces,
// with 'single quotes' around values that contain them.
func oneofValues(param string) []string {
	var vals []string
	for s := strings.TrimSpace(param); s != ""; s = strings.TrimSpace(s) {
		if s[0] == '\'' {
			if end := strings.IndexByte(s[1:], '\''); end >= 0 {
				vals = append(vals, s[1:end+1])
				s = s[end+2:]
				continue
			}
		}
		end := strings.IndexByte(s, ' ')
		if end < 0 {
			end = len(s)
		}
		vals = append(vals, s[:end])
		s = s[end:]
	}
	return vals
}

// decodeFieldError describes a decoding error of data (of struct type
// rt) as a FieldError. encoding/json's errors do not locate the problem
// well (an UnmarshalTypeError's Field has no array indices or map keys;
// an unknown field or an UnmarshalJSON error carries no path at all), so
// the value is searched for the innermost member that fails to decode on
// its own; see locateDecodeError.
func decodeFieldError(err error, data []byte, rt reflect.Type, strict bool) FieldError {
	var syn *json.SyntaxError
	switch {
	case err == io.EOF:
		return FieldError{Rule: "required", Message: "the event has no data"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return FieldError{Rule: "syntax", Message: "the data is not JSON: it ends early"}
	case errors.As(err, &syn):
		return FieldError{Rule: "syntax", Message: fmt.Sprintf("the data is not JSON: %s (at byte %d)", strings.TrimPrefix(syn.Error(), "json: "), syn.Offset)}
	}
	path, leaf := locateDecodeError(data, rt, strict, "", err)
	if leaf == nil {
		path, leaf = "", err
	}
	fe := describeDecodeError(leaf)
	fe.Path = path
	if path == "" && fe.Rule == "type" {
		fe.Message = "the data " + fe.Message
	}
	return fe
}

// describeDecodeError gives Rule, Param and Message for an error of
// encoding/json found at one value.
func describeDecodeError(err error) FieldError {
	var te *json.UnmarshalTypeError
	var pe *time.ParseError
	switch {
	case errors.As(err, &te):
		want := jsonTypeOf(te.Type)
		return FieldError{Rule: "type", Param: want, Message: typeMessage(want, te)}
	case errors.As(err, &pe):
		return FieldError{Rule: "decode", Message: "must be an RFC 3339 time, such as 2006-01-02T15:04:05Z"}
	}
	if _, ok := unknownFieldKey(err); ok {
		return FieldError{Rule: "unknown", Message: "unknown field"}
	}
	return FieldError{Rule: "decode", Message: strings.TrimPrefix(err.Error(), "json: ")}
}

// jsonTypeOf names the JSON type encoding/json expects for t.
func jsonTypeOf(t reflect.Type) string {
	if t == nil {
		return ""
	}
	if reflect.PointerTo(t).Implements(reflect.TypeFor[encoding.TextUnmarshaler]()) &&
		!reflect.PointerTo(t).Implements(reflect.TypeFor[json.Unmarshaler]()) {
		return "string"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64:
		return "number"
	case reflect.String:
		return "string"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "string" // base64
		}
		return "array"
	case reflect.Array:
		return "array"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return ""
}

func article(s string) string {
	if s != "" && strings.ContainsRune("aeiou", rune(s[0])) {
		return "an " + s
	}
	return "a " + s
}

// typeMessage words an UnmarshalTypeError: the JSON type expected and the
// one found, or for a number that does not fit the field, its range.
func typeMessage(want string, te *json.UnmarshalTypeError) string {
	got, literal, isNumber := te.Value, "", false
	if rest, ok := strings.CutPrefix(got, "number "); ok {
		got, literal, isNumber = "number", rest, true
	} else if got == "bool" {
		got = "boolean"
	}
	if want == "" {
		return "cannot hold " + article(got)
	}
	if isNumber && want == "number" {
		integral := !strings.ContainsAny(literal, ".eE")
		switch k := te.Type.Kind(); {
		case k >= reflect.Int && k <= reflect.Int64:
			if !integral {
				return "must be an integer"
			}
			bits := te.Type.Bits()
			return fmt.Sprintf("must be an integer from %d to %d", int64(-1)<<(bits-1), int64(1)<<(bits-1)-1)
		case k >= reflect.Uint && k <= reflect.Uintptr:
			if !integral {
				return "must be an integer"
			}
			return fmt.Sprintf("must be an integer from 0 to %d", uint64(math.MaxUint64)>>(64-te.Type.Bits()))
		case k == reflect.Float32 || k == reflect.Float64:
			return fmt.Sprintf("must be a number within the range of a %d-bit float", te.Type.Bits())
		}
	}
	return "must be " + article(want) + ", got " + got
}

// unknownFieldKey returns the key of encoding/json's error for an object
// key that DisallowUnknownFields refused. The error has no type of its
// own; its text is stable ("json: unknown field \"coupon\"").
func unknownFieldKey(err error) (string, bool) {
	rest, ok := strings.CutPrefix(err.Error(), "json: unknown field ")
	if !ok {
		return "", false
	}
	key, uerr := strconv.Unquote(rest)
	return key, uerr == nil
}

// locateDecodeError finds the innermost value of data, of Go type t at
// JSON path path, that does not decode: it decodes each member of an
// object or array on its own, in document order (the order in which
// encoding/json finds the error it reports), and descends into the first
// that fails. It returns that value's path and its own error, or a nil
// error when data decodes. This costs a few decodings of the data, but
// only on the way to the poison queue.
func locateDecodeError(data []byte, t reflect.Type, strict bool, path string, topErr error) (string, error) {
	err := decodeAs(data, t, strict)
	if err == nil {
		return "", nil
	}
	dt := deref(t)
	pt := reflect.PointerTo(dt)
	if pt.Implements(reflect.TypeFor[json.Unmarshaler]()) || pt.Implements(reflect.TypeFor[encoding.TextUnmarshaler]()) {
		return path, err
	}
	var foundPath string
	var foundErr error
	switch dt.Kind() {
	case reflect.Struct:
		unknown, isUnknown := unknownFieldKey(topErr)
		eachMember(data, func(key string, val json.RawMessage) bool {
			f, byString, ok := jsonFieldByKey(dt, key)
			switch {
			case !ok:
				if strict && isUnknown && key == unknown {
					foundPath, foundErr = joinPath(path, key), topErr
					return false
				}
				return true
			case byString: // a `json:",string"` field does not decode on its own
				return true
			}
			foundPath, foundErr = locateDecodeError(val, f.Type, strict, joinPath(path, key), topErr)
			return foundErr == nil
		})
	case reflect.Map:
		eachMember(data, func(key string, val json.RawMessage) bool {
			foundPath, foundErr = locateDecodeError(val, dt.Elem(), strict, path+"["+key+"]", topErr)
			return foundErr == nil
		})
	case reflect.Slice, reflect.Array:
		eachElement(data, func(i int, val json.RawMessage) bool {
			foundPath, foundErr = locateDecodeError(val, dt.Elem(), strict, path+"["+strconv.Itoa(i)+"]", topErr)
			return foundErr == nil
		})
	}
	if foundErr != nil {
		return foundPath, foundErr
	}
	return path, err
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func decodeAs(data []byte, t reflect.Type, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	return dec.Decode(reflect.New(t).Interface())
}

// eachMember calls fn with the members of the JSON object data, in order,
// until fn returns false. It does nothing if data is not an object.
func eachMember(data []byte, fn func(key string, val json.RawMessage) bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return
	}
	for dec.More() {
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return
		}
		var val json.RawMessage
		if dec.Decode(&val) != nil || !fn(key, val) {
			return
		}
	}
}

// eachElement is eachMember for the elements of a JSON array.
func eachElement(data []byte, fn func(i int, val json.RawMessage) bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return
	}
	for i := 0; dec.More(); i++ {
		var val json.RawMessage
		if dec.Decode(&val) != nil || !fn(i, val) {
			return
		}
	}
}

// jsonFieldByKey returns the field of struct t that encoding/json decodes
// the object key key into: an exact name match before a case-insensitive
// one, a shallower field before one promoted from an embedded struct.
// byString reports a `json:",string"` field.
func jsonFieldByKey(t reflect.Type, key string) (f reflect.StructField, byString, ok bool) {
	type candidate struct {
		f        reflect.StructField
		depth    int
		byString bool
	}
	var exact, folded []candidate
	var collect func(t reflect.Type, depth int)
	collect = func(t reflect.Type, depth int) {
		if depth > 16 { // embedded pointer cycles
			return
		}
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			if !sf.IsExported() && !(sf.Anonymous && deref(sf.Type).Kind() == reflect.Struct) {
				continue
			}
			name, inJSON := jsonFieldName(sf)
			if !inJSON {
				continue
			}
			if name == "" {
				collect(deref(sf.Type), depth+1)
				continue
			}
			_, opts, _ := strings.Cut(sf.Tag.Get("json"), ",")
			c := candidate{sf, depth, strings.Contains(","+opts+",", ",string,")}
			if name == key {
				exact = append(exact, c)
			} else if strings.EqualFold(name, key) {
				folded = append(folded, c)
			}
		}
	}
	collect(t, 0)
	for _, cs := range [][]candidate{exact, folded} {
		best := -1
		for i, c := range cs {
			if best < 0 || c.depth < cs[best].depth {
				best = i
			}
		}
		if best >= 0 {
			return cs[best].f, cs[best].byString, true
		}
	}
	return reflect.StructField{}, false, false
}
