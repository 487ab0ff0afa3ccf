package eventbus_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-playground/validator/v10"

	"github.com/paissive/go-eventbus/eventbus"
)

// assertFields checks that err is a *ValidationError with exactly want.
func assertFields(t *testing.T, label string, err error, want ...eventbus.FieldError) {
	t.Helper()
	var ve *eventbus.ValidationError
	if !errors.As(err, &ve) {
		t.Errorf("%s: error %v is not a *ValidationError", label, err)
		return
	}
	if !reflect.DeepEqual(ve.Fields, want) {
		t.Errorf("%s: Fields\n got %+v\nwant %+v", label, ve.Fields, want)
	}
}

type customerOrder struct {
	CustomerID string `json:"customer_id" validate:"required"`
	Email      string `json:"email" validate:"required,email"`
}

// The message is the JSON contract's terms, and a program gets the same
// field by field.
func TestValidationErrorNamesJSONFieldsAndRules(t *testing.T) {
	s := eventbus.MustSchema[customerOrder]("order.placed")
	_, err := s.NewEvent(customerOrder{Email: "ada-at-example"}, eventbus.WithSource("shop"))
	assertValidationError(t, "NewEvent", err)
	const want = "eventbus: data of order.placed is invalid: customer_id: required; email: must be an email address"
	if err == nil || err.Error() != want {
		t.Errorf("NewEvent error\n got %q\nwant %q", err, want)
	}
	fields := []eventbus.FieldError{
		{Path: "customer_id", Rule: "required", Message: "required"},
		{Path: "email", Rule: "email", Message: "must be an email address"},
	}
	assertFields(t, "NewEvent", err, fields...)

	// Parse reports the same for the same data on the wire.
	ev, _ := eventbus.NewEvent("order.placed", json.RawMessage(`{"email":"ada-at-example"}`), eventbus.WithSource("shop"))
	_, err = s.Parse(ev)
	if err == nil || err.Error() != want {
		t.Errorf("Parse error\n got %q\nwant %q", err, want)
	}
	assertFields(t, "Parse", err, fields...)
	if strings.Contains(err.Error(), "ada-at-example") {
		t.Errorf("error %q quotes the data", err)
	}
}

type lineItem struct {
	SKU string `json:"sku" validate:"required"`
	Qty int    `json:"qty" validate:"gte=1"`
}

type auditInfo struct {
	Ref string `json:"ref" validate:"required"`
}

type basket struct {
	auditInfo                       // flattened into the object by encoding/json
	Items     []lineItem            `json:"items" validate:"min=1,dive"`
	Prices    map[string]lineItem   `json:"prices" validate:"dive"`
	Shipping  *address              `json:"shipping" validate:"required"`
	Billing   address               `json:"billing_address"`
	Untagged  string                `validate:"required"`
	Renamed   string                `json:",omitempty" validate:"required"`
	Internal  string                `json:"-" validate:"max=2"`
	Tags      map[string][]lineItem `json:"tags" validate:"dive,dive"`
}

type address struct {
	Zip string `json:"zip" validate:"len=5"`
}

func TestValidationPathsAreJSONPaths(t *testing.T) {
	data := basket{
		Items:    []lineItem{{SKU: "a", Qty: 1}, {SKU: "", Qty: 0}},
		Prices:   map[string]lineItem{"EUR": {SKU: "e", Qty: 0}},
		Shipping: &address{Zip: "123"},
		Billing:  address{Zip: "1"},
		Internal: "too long",
		Tags:     map[string][]lineItem{"gift": {{SKU: "g", Qty: 1}, {SKU: "", Qty: 1}}},
	}
	want := []eventbus.FieldError{
		{Path: "ref", Rule: "required", Message: "required"},
		{Path: "items[1].sku", Rule: "required", Message: "required"},
		{Path: "items[1].qty", Rule: "gte", Param: "1", Message: "must be at least 1"},
		{Path: "prices[EUR].qty", Rule: "gte", Param: "1", Message: "must be at least 1"},
		{Path: "shipping.zip", Rule: "len", Param: "5", Message: "must be exactly 5 characters long"},
		{Path: "billing_address.zip", Rule: "len", Param: "5", Message: "must be exactly 5 characters long"},
		{Path: "Untagged", Rule: "required", Message: "required"},
		{Path: "Renamed", Rule: "required", Message: "required"},
		{Path: "Internal", Rule: "max", Param: "2", Message: "must be at most 2 characters long"},
		{Path: "tags[gift][1].sku", Rule: "required", Message: "required"},
	}
	custom := validator.New(validator.WithRequiredStructEnabled())
	theirs := validator.New(validator.WithRequiredStructEnabled())
	theirs.RegisterTagNameFunc(func(f reflect.StructField) string { return "x_" + f.Name })
	for label, opts := range map[string][]eventbus.SchemaOption{
		"default validator":              nil,
		"validator without tag names":    {eventbus.WithValidator(custom)},
		"validator with other tag names": {eventbus.WithValidator(theirs)},
	} {
		s := eventbus.MustSchema[basket]("basket.checked", opts...)
		_, err := s.NewEvent(data, eventbus.WithSource("shop"))
		assertValidationError(t, label, err)
		assertFields(t, label, err, want...)
	}
	// The program's own validator is used as it is: its tag-name function
	// still names the fields of its own errors.
	s := eventbus.MustSchema[basket]("basket.checked", eventbus.WithValidator(theirs))
	_, err := s.NewEvent(data, eventbus.WithSource("shop"))
	var verrs validator.ValidationErrors
	if !errors.As(err, &verrs) || verrs[0].Field() != "x_Ref" {
		t.Errorf("the validator's own errors were renamed: %v", err)
	}
}

type ruleCase struct {
	Req      string            `json:"req" validate:"required"`
	Email    string            `json:"email" validate:"email"`
	URL      string            `json:"url" validate:"url"`
	UUID     string            `json:"uuid" validate:"uuid"`
	MinS     string            `json:"min_s" validate:"min=3"`
	MaxS     string            `json:"max_s" validate:"max=1"`
	GtS      string            `json:"gt_s" validate:"gt=2"`
	MinN     int               `json:"min_n" validate:"min=1"`
	MaxN     int               `json:"max_n" validate:"max=10"`
	Gt       int               `json:"gt" validate:"gt=0"`
	Gte      float64           `json:"gte" validate:"gte=0.5"`
	Lt       int               `json:"lt" validate:"lt=5"`
	Lte      int               `json:"lte" validate:"lte=5"`
	MinL     []int             `json:"min_l" validate:"min=1"`
	MaxL     map[string]int    `json:"max_l" validate:"max=1"`
	LenL     []string          `json:"len_l" validate:"len=2"`
	OneOf    string            `json:"one_of" validate:"oneof=red green 'light blue'"`
	Eq       string            `json:"eq" validate:"eq=yes"`
	After    time.Time         `json:"after" validate:"gt"`
	Confirm  string            `json:"confirm" validate:"eqfield=Email"`
	Prefix   string            `json:"prefix" validate:"startswith=ab"`
	ISBN     string            `json:"isbn" validate:"isbn"`
	NoRune   string            `json:"no_rune" validate:"excludesrune=x"`
	Currency string            `json:"currency" validate:"iso4217"`
	Unique   []string          `json:"unique" validate:"unique"`
	Nested   map[string]string `json:"nested" validate:"dive,keys,alpha,endkeys,required"`
}

func TestValidationMessages(t *testing.T) {
	s := eventbus.MustSchema[ruleCase]("rules.checked")
	_, err := s.NewEvent(ruleCase{
		Email: "x", URL: "not a url", UUID: "123", MinS: "ab", MaxS: "ab", GtS: "ab", MinN: 0, MaxN: 11, Gt: 0, Gte: 0.25,
		Lt: 5, Lte: 6, MinL: nil, MaxL: map[string]int{"a": 1, "b": 2}, LenL: []string{"a"}, OneOf: "blue", Eq: "no",
		After: time.Now().Add(-time.Hour), Confirm: "y", Prefix: "xa", ISBN: "1", NoRune: "xx", Currency: "EURO",
		Unique: []string{"a", "a"}, Nested: map[string]string{"a1": "v", "b": ""},
	}, eventbus.WithSource("s"))
	assertValidationError(t, "rules", err)
	var ve *eventbus.ValidationError
	if !errors.As(err, &ve) {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range ve.Fields {
		got[f.Path] = f.Message
	}
	want := map[string]string{
		"req":        "required",
		"email":      "must be an email address",
		"url":        "must be a URL",
		"uuid":       "must be a UUID",
		"min_s":      "must be at least 3 characters long",
		"max_s":      "must be at most 1 character long",
		"gt_s":       "must be longer than 2 characters",
		"min_n":      "must be at least 1",
		"max_n":      "must be at most 10",
		"gt":         "must be greater than 0",
		"gte":        "must be at least 0.5",
		"lt":         "must be less than 5",
		"lte":        "must be at most 5",
		"min_l":      "must have at least 1 item",
		"max_l":      "must have at most 1 item",
		"len_l":      "must have exactly 2 items",
		"one_of":     "must be one of red, green, light blue",
		"eq":         `must be "yes"`,
		"after":      "must be in the future",
		"confirm":    "must equal email",
		"prefix":     `must start with "ab"`,
		"isbn":       `fails the "isbn" rule`,
		"no_rune":    `fails the "excludesrune=x" rule`,
		"currency":   "must be an ISO 4217 currency code",
		"unique":     "must not contain duplicates",
		"nested[a1]": "must contain only letters",
		"nested[b]":  "required",
	}
	for path, msg := range want {
		if got[path] != msg {
			t.Errorf("%s: message %q, want %q", path, got[path], msg)
		}
	}
	if len(ve.Fields) != len(want) {
		t.Errorf("%d fields, want %d: %+v", len(ve.Fields), len(want), ve.Fields)
	}
	for _, f := range ve.Fields {
		if f.Path == "one_of" && (f.Rule != "oneof" || f.Param != "red green 'light blue'") {
			t.Errorf("one_of: Rule %q Param %q, want the tag and its parameter as written", f.Rule, f.Param)
		}
	}
}

// A message lists the first ten broken rules; Fields has them all.
func TestValidationErrorMessageIsBounded(t *testing.T) {
	type many struct {
		Items []lineItem `json:"items" validate:"dive"`
	}
	items := make([]lineItem, 12)
	for i := range items {
		items[i] = lineItem{SKU: "s", Qty: 0}
	}
	_, err := eventbus.MustSchema[many]("many.items").NewEvent(many{Items: items}, eventbus.WithSource("s"))
	var ve *eventbus.ValidationError
	if !errors.As(err, &ve) || len(ve.Fields) != 12 || ve.Fields[11].Path != "items[11].qty" {
		t.Fatalf("error %v: want 12 fields", err)
	}
	if msg := err.Error(); !strings.HasSuffix(msg, "items[9].qty: must be at least 1; and 2 more") || strings.Contains(msg, "items[10]") {
		t.Errorf("message %q: want ten fields and a count of the rest", msg)
	}
}

type cents int

func (c *cents) UnmarshalJSON(b []byte) error {
	if string(b) == `"free"` {
		return errors.New("cents cannot be free")
	}
	return json.Unmarshal(b, (*int)(c))
}

type paymentLine struct {
	SKU   string `json:"sku"`
	Qty   int    `json:"qty"`
	Price cents  `json:"price"`
}

type paymentRef struct {
	Ref string `json:"ref"`
}

type payment struct {
	paymentRef
	Amount int                    `json:"amount"`
	Small  uint8                  `json:"small"`
	Delta  int8                   `json:"delta"`
	Ratio  float32                `json:"ratio"`
	Paid   bool                   `json:"paid"`
	At     time.Time              `json:"at"`
	Lines  []paymentLine          `json:"lines"`
	Prices map[string]paymentLine `json:"prices"`
	Meta   json.RawMessage        `json:"meta"`
	Any    any                    `json:"any"`
}

// Data that does not decode is described in the same shape as data that
// breaks a rule, at the JSON path where it goes wrong.
func TestDecodeErrorsNameTheirPath(t *testing.T) {
	tolerant := eventbus.MustSchema[payment]("payment.made")
	strict := eventbus.MustSchema[payment]("payment.made", eventbus.Strict())
	cases := []struct {
		data   string
		strict bool
		want   eventbus.FieldError
	}{
		{`{"amount":"12"}`, false, eventbus.FieldError{Path: "amount", Rule: "type", Param: "number", Message: "must be a number, got string"}},
		{`{"amount":1.5}`, false, eventbus.FieldError{Path: "amount", Rule: "type", Param: "number", Message: "must be an integer"}},
		{`{"small":300}`, false, eventbus.FieldError{Path: "small", Rule: "type", Param: "number", Message: "must be an integer from 0 to 255"}},
		{`{"small":-1}`, false, eventbus.FieldError{Path: "small", Rule: "type", Param: "number", Message: "must be an integer from 0 to 255"}},
		{`{"delta":200}`, false, eventbus.FieldError{Path: "delta", Rule: "type", Param: "number", Message: "must be an integer from -128 to 127"}},
		{`{"ratio":1e40}`, false, eventbus.FieldError{Path: "ratio", Rule: "type", Param: "number", Message: "must be a number within the range of a 32-bit float"}},
		{`{"paid":"yes"}`, false, eventbus.FieldError{Path: "paid", Rule: "type", Param: "boolean", Message: "must be a boolean, got string"}},
		{`{"amount":true}`, false, eventbus.FieldError{Path: "amount", Rule: "type", Param: "number", Message: "must be a number, got boolean"}},
		{`{"lines":[{"sku":"a"},{"sku":"b","qty":"2"}]}`, false, eventbus.FieldError{Path: "lines[1].qty", Rule: "type", Param: "number", Message: "must be a number, got string"}},
		{`{"lines":[{"sku":"a","price":1},{"sku":"b","price":"free"}]}`, false, eventbus.FieldError{Path: "lines[1].price", Rule: "decode", Message: "cents cannot be free"}},
		{`{"prices":{"EUR":{"sku":"e"},"USD":{"qty":{}}}}`, false, eventbus.FieldError{Path: "prices[USD].qty", Rule: "type", Param: "number", Message: "must be a number, got object"}},
		{`{"lines":{}}`, false, eventbus.FieldError{Path: "lines", Rule: "type", Param: "array", Message: "must be an array, got object"}},
		{`{"prices":[]}`, false, eventbus.FieldError{Path: "prices", Rule: "type", Param: "object", Message: "must be an object, got array"}},
		{`{"at":"yesterday"}`, false, eventbus.FieldError{Path: "at", Rule: "decode", Message: "must be an RFC 3339 time, such as 2006-01-02T15:04:05Z"}},
		{`{"ref":5}`, false, eventbus.FieldError{Path: "ref", Rule: "type", Param: "string", Message: "must be a string, got number"}},
		{`{"AMOUNT":"x"}`, false, eventbus.FieldError{Path: "AMOUNT", Rule: "type", Param: "number", Message: "must be a number, got string"}},
		{` [1]`, false, eventbus.FieldError{Rule: "type", Param: "object", Message: "the data must be an object, got array"}},
		{`"text"`, false, eventbus.FieldError{Rule: "type", Param: "object", Message: "the data must be an object, got string"}},
		// The first problem in the document is the one reported.
		{`{"amount":"x","lines":[{"qty":"y"}]}`, false, eventbus.FieldError{Path: "amount", Rule: "type", Param: "number", Message: "must be a number, got string"}},
		{`{"lines":[{"qty":"y"}],"amount":"x"}`, false, eventbus.FieldError{Path: "lines[0].qty", Rule: "type", Param: "number", Message: "must be a number, got string"}},
		// Unknown fields are an error only with Strict, at their path.
		{`{"coupon":"x"}`, true, eventbus.FieldError{Path: "coupon", Rule: "unknown", Message: "unknown field"}},
		{`{"lines":[{"sku":"a"},{"sku":"b","coupon":1}]}`, true, eventbus.FieldError{Path: "lines[1].coupon", Rule: "unknown", Message: "unknown field"}},
		{`{"lines":[{"qty":1}],"qty":2}`, true, eventbus.FieldError{Path: "qty", Rule: "unknown", Message: "unknown field"}},
		{`{"prices":{"EUR":{"coupon":1}}}`, true, eventbus.FieldError{Path: "prices[EUR].coupon", Rule: "unknown", Message: "unknown field"}},
		{`{"amount":"x","coupon":1}`, true, eventbus.FieldError{Path: "amount", Rule: "type", Param: "number", Message: "must be a number, got string"}},
	}
	for _, c := range cases {
		s := tolerant
		if c.strict {
			s = strict
		}
		_, err := s.Parse(eventbus.Event{ID: "e1", Name: "payment.made", Data: json.RawMessage(c.data)})
		assertValidationError(t, c.data, err)
		assertFields(t, c.data, err, c.want)
	}

	var ve *eventbus.ValidationError
	_, err := tolerant.Parse(eventbus.Event{ID: "e1", Name: "payment.made", Data: json.RawMessage(`{"amount":"12"}`)})
	if want := "eventbus: data of payment.made is invalid: amount: must be a number, got string"; err == nil || err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	var typeErr *json.UnmarshalTypeError
	if !errors.As(err, &ve) || !errors.As(err, &typeErr) {
		t.Errorf("error %v does not wrap encoding/json's", err)
	}

	// Unknown fields, also where a JSON value of any shape is allowed, are
	// fine for the tolerant reader.
	if _, err := tolerant.Parse(eventbus.Event{ID: "e1", Name: "payment.made", Data: json.RawMessage(`{"coupon":1,"meta":{"a":[1]},"any":[{}],"lines":[{"x":1}]}`)}); err != nil {
		t.Errorf("tolerant reader: %v", err)
	}
	if _, err := strict.Parse(eventbus.Event{ID: "e1", Name: "payment.made", Data: json.RawMessage(`{"meta":{"a":[1]},"any":[{}]}`)}); err != nil {
		t.Errorf("strict reader, free-form fields: %v", err)
	}

	for data, want := range map[string]eventbus.FieldError{
		"":              {Rule: "required", Message: "the event has no data"},
		`{"amount":`:    {Rule: "syntax", Message: "the data is not JSON: it ends early"},
		`{"amount" 1}`:  {Rule: "syntax", Message: "the data is not JSON: invalid character '1' after object key (at byte 11)"},
		`{"amount":1}x`: {Rule: "syntax", Message: "the data has more after its JSON value"},
	} {
		_, err := tolerant.Parse(eventbus.Event{ID: "e1", Name: "payment.made", Data: json.RawMessage(data)})
		assertValidationError(t, data, err)
		assertFields(t, data, err, want)
	}
}
