package relay

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// eventTestNow is the receive time of the ParseEvent tests: a week after the
// example events, so that the 7-day bound is exercised at a known instant.
var eventTestNow = time.Date(2024, 6, 10, 12, 0, 0, 0, time.UTC)

func TestParseEvent_Timestamp(t *testing.T) {
	sec := time.Date(2024, 6, 3, 12, 0, 0, 0, time.UTC) // 1717416000
	tests := []struct {
		name string
		ts   string // JSON value of "timestamp"; "" means absent
		want time.Time
	}{
		{"absent", "", time.Time{}},
		{"null", `null`, time.Time{}},
		{"seconds int", `1717416000`, sec},
		{"seconds float", `1717416000.5`, sec.Add(500 * time.Millisecond)},
		{"seconds float keeps every digit", `1717416000.123456789`, sec.Add(123456789 * time.Nanosecond)},
		{"seconds below a nanosecond truncated", `1717416000.9999999999`, sec.Add(999999999 * time.Nanosecond)},
		{"seconds exponent", `1.717416e9`, sec},
		{"seconds trailing zeros", `1717416000.000`, sec},
		{"milliseconds int", `1717416000123`, sec.Add(123 * time.Millisecond)},
		{"milliseconds float", `1717416000123.5`, sec.Add(123*time.Millisecond + 500*time.Microsecond)},
		{"milliseconds exponent", `1.717416000123E12`, sec.Add(123 * time.Millisecond)},
		{"just above 1e11 is milliseconds", `100000000001`, time.Unix(100000000, 1000000).UTC()},
		{"numeric string seconds", `"1717416000"`, sec},
		{"numeric string milliseconds", `"1717416000123"`, sec.Add(123 * time.Millisecond)},
		{"numeric string float", `"1717416000.25"`, sec.Add(250 * time.Millisecond)},
		{"numeric string with spaces", `" 1717416000 "`, sec},
		{"numeric string with plus", `"+1717416000"`, sec},
		{"RFC 3339 UTC", `"2024-06-03T12:00:00Z"`, sec},
		{"RFC 3339 fraction", `"2024-06-03T12:00:00.123Z"`, sec.Add(123 * time.Millisecond)},
		{"RFC 3339 offset becomes UTC", `"2024-06-03T14:00:00+02:00"`, sec},
		{"zero is 1970", `0`, time.Unix(0, 0).UTC()},
		{"negative zero is 1970", `-0`, time.Unix(0, 0).UTC()},
		{"RFC 3339 epoch", `"1970-01-01T00:00:00Z"`, time.Unix(0, 0).UTC()},
		{"exactly 7 days ahead", `1718625600`, eventTestNow.Add(7 * 24 * time.Hour)},
		{"tiny exponent rounds to 1970", `1e-999999999999999999999`, time.Unix(0, 0).UTC()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"type":"wallet_update","userId":"u1"}`
			if tt.ts != "" {
				body = `{"type":"wallet_update","userId":"u1","timestamp":` + tt.ts + `}`
			}
			ev, err := ParseEvent([]byte(body), eventTestNow)
			if err != nil {
				t.Fatalf("ParseEvent(%s): %v", body, err)
			}
			if !ev.Timestamp.Equal(tt.want) || ev.Timestamp.IsZero() != tt.want.IsZero() {
				t.Errorf("timestamp %s = %v, want %v", tt.ts, ev.Timestamp, tt.want)
			}
			if !ev.Timestamp.IsZero() && ev.Timestamp.Location() != time.UTC {
				t.Errorf("timestamp location = %v, want UTC", ev.Timestamp.Location())
			}
		})
	}
}

func TestParseEvent_Rejects(t *testing.T) {
	const rangeErr = "timestamp: out of range (must be between 1970 and 7 days from now)"
	tests := []struct {
		name  string
		body  string
		field string
		want  string
	}{
		{"array", `[{"type":"a","userId":"u"}]`, "", "event must be a JSON object (got array)"},
		{"string", `"hello"`, "", "event must be a JSON object (got string)"},
		{"number", `42`, "", "event must be a JSON object (got number)"},
		{"null", `null`, "", "event must be a JSON object (got null)"},
		{"not JSON", `{"type":`, "", "invalid JSON: unexpected end of JSON input"},
		{"trailing garbage", `{"type":"a","userId":"u"} x`, "", "invalid JSON: invalid character 'x' after top-level value"},
		{"empty body", ``, "", "invalid JSON: unexpected end of JSON input"},

		{"type missing", `{"userId":"u"}`, "type", "type: is required"},
		{"type null", `{"type":null,"userId":"u"}`, "type", "type: must be a string (got null)"},
		{"type number", `{"type":7,"userId":"u"}`, "type", "type: must be a string (got number)"},
		{"type object", `{"type":{},"userId":"u"}`, "type", "type: must be a string (got object)"},
		{"type empty", `{"type":"","userId":"u"}`, "type", "type: must be a non-empty string"},
		{"type blank", `{"type":"  ","userId":"u"}`, "type", "type: must not be blank"},

		{"userId missing", `{"type":"a"}`, "userId", "userId: is required"},
		{"userId number", `{"type":"a","userId":12345}`, "userId", "userId: must be a string (got number)"},
		{"userId boolean", `{"type":"a","userId":true}`, "userId", "userId: must be a string (got boolean)"},
		{"userId array", `{"type":"a","userId":["u"]}`, "userId", "userId: must be a string (got array)"},
		{"userId null", `{"type":"a","userId":null}`, "userId", "userId: must be a string (got null)"},
		{"userId empty", `{"type":"a","userId":""}`, "userId", "userId: must be a non-empty string"},
		{"userId blank", `{"type":"a","userId":"\t"}`, "userId", "userId: must not be blank"},
		{"key case matters", `{"type":"a","userid":"u"}`, "userId", "userId: is required"},

		{"timestamp negative", `{"type":"a","userId":"u","timestamp":-1}`, "timestamp", rangeErr},
		{"timestamp negative fraction", `{"type":"a","userId":"u","timestamp":-0.5}`, "timestamp", rangeErr},
		{"timestamp before 1970 RFC 3339", `{"type":"a","userId":"u","timestamp":"1969-12-31T23:59:59Z"}`, "timestamp", rangeErr},
		{"timestamp 7 days and a second ahead", `{"type":"a","userId":"u","timestamp":1718625601}`, "timestamp", rangeErr},
		{"timestamp far future ms", `{"type":"a","userId":"u","timestamp":99999999999999}`, "timestamp", rangeErr},
		{"timestamp exactly 1e11 seconds", `{"type":"a","userId":"u","timestamp":1e11}`, "timestamp", rangeErr},
		{"timestamp microseconds", `{"type":"a","userId":"u","timestamp":1717416000000000}`, "timestamp", rangeErr},
		{"timestamp overflows int64", `{"type":"a","userId":"u","timestamp":99999999999999999999999}`, "timestamp", rangeErr},
		{"timestamp overflows float64", `{"type":"a","userId":"u","timestamp":1e400}`, "timestamp", rangeErr},
		{"timestamp huge exponent", `{"type":"a","userId":"u","timestamp":1e99999999999999999999}`, "timestamp", rangeErr},
		{"timestamp numeric string out of range", `{"type":"a","userId":"u","timestamp":"-5"}`, "timestamp", rangeErr},
		{"timestamp RFC 3339 future", `{"type":"a","userId":"u","timestamp":"2030-01-01T00:00:00Z"}`, "timestamp", rangeErr},
		{"timestamp NaN string", `{"type":"a","userId":"u","timestamp":"NaN"}`, "timestamp",
			`timestamp: "NaN" is neither unix seconds or milliseconds nor an RFC 3339 date-time`},
		{"timestamp Inf string", `{"type":"a","userId":"u","timestamp":"Infinity"}`, "timestamp",
			`timestamp: "Infinity" is neither unix seconds or milliseconds nor an RFC 3339 date-time`},
		{"timestamp hex string", `{"type":"a","userId":"u","timestamp":"0x66"}`, "timestamp",
			`timestamp: "0x66" is neither unix seconds or milliseconds nor an RFC 3339 date-time`},
		{"timestamp empty string", `{"type":"a","userId":"u","timestamp":""}`, "timestamp",
			`timestamp: "" is neither unix seconds or milliseconds nor an RFC 3339 date-time`},
		{"timestamp date only", `{"type":"a","userId":"u","timestamp":"2024-06-03"}`, "timestamp",
			`timestamp: "2024-06-03" is neither unix seconds or milliseconds nor an RFC 3339 date-time`},
		{"timestamp long string cut", `{"type":"a","userId":"u","timestamp":"` + strings.Repeat("x", 100) + `"}`, "timestamp",
			`timestamp: "` + strings.Repeat("x", 64) + `"… is neither unix seconds or milliseconds nor an RFC 3339 date-time`},
		{"timestamp boolean", `{"type":"a","userId":"u","timestamp":true}`, "timestamp",
			"timestamp: must be unix seconds or milliseconds (a number or numeric string) or an RFC 3339 string (got boolean)"},
		{"timestamp object", `{"type":"a","userId":"u","timestamp":{"s":1}}`, "timestamp",
			"timestamp: must be unix seconds or milliseconds (a number or numeric string) or an RFC 3339 string (got object)"},

		{"segmentId object", `{"type":"a","userId":"u","segmentId":{}}`, "segmentId", "segmentId: must be a string, number or null (got object)"},
		{"segmentId boolean", `{"type":"a","userId":"u","segmentId":false}`, "segmentId", "segmentId: must be a string, number or null (got boolean)"},
		{"productId array", `{"type":"a","userId":"u","productId":[1]}`, "productId", "productId: must be a string, number or null (got array)"},
		{"state array", `{"type":"a","userId":"u","state":[]}`, "state", "state: must be an object or null (got array)"},
		{"state string", `{"type":"a","userId":"u","state":"{}"}`, "state", "state: must be an object or null (got string)"},
		{"updates object", `{"type":"a","userId":"u","updates":{}}`, "updates", "updates: must be an array or null (got object)"},
		{"updates number", `{"type":"a","userId":"u","updates":0}`, "updates", "updates: must be an array or null (got number)"},

		{"first error wins", `{"type":1,"userId":2}`, "type", "type: must be a string (got number)"},
		{"duplicate key: last wins", `{"type":"a","userId":"u","userId":""}`, "userId", "userId: must be a non-empty string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := ParseEvent([]byte(tt.body), eventTestNow)
			if err == nil {
				t.Fatalf("ParseEvent(%s) = %+v, want error %q", tt.body, ev, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("error = %q\nwant    %q", err.Error(), tt.want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a *FieldError", err)
			}
			if fe.Field != tt.field {
				t.Errorf("Field = %q, want %q", fe.Field, tt.field)
			}
		})
	}
}

func TestParseEvent_Accepts(t *testing.T) {
	tests := []struct {
		name                                 string
		body                                 string
		typ, userID                          string
		segmentID, productID, state, updates string // "" means absent (nil)
		extra                                map[string]string
	}{
		{
			name: "minimal",
			body: `{"type":"achievement_update","userId":"u1"}`,
			typ:  "achievement_update", userID: "u1",
		},
		{
			name: "nulls kept as null",
			body: `{"type":"x","userId":"u","segmentId":null,"productId":null,"state":null,"updates":null,"timestamp":null}`,
			typ:  "x", userID: "u",
			segmentID: "null", productID: "null", state: "null", updates: "null",
		},
		{
			name: "numbers keep their text",
			body: `{"type":"x","userId":"u","segmentId":12345678901234567890,"productId":1.50,"state":{"big":1e400,"n":0.1000},"updates":[9007199254740993]}`,
			typ:  "x", userID: "u",
			segmentID: "12345678901234567890", productID: "1.50",
			state: `{"big":1e400,"n":0.1000}`, updates: `[9007199254740993]`,
		},
		{
			name: "strings and empty containers",
			body: `{"type":"Wallet Update","userId":"  padded  ","segmentId":"","productId":"p","state":{},"updates":[]}`,
			typ:  "Wallet Update", userID: "  padded  ",
			segmentID: `""`, productID: `"p"`, state: `{}`, updates: `[]`,
		},
		{
			name: "unknown fields kept untouched",
			body: `{"type":"x","userId":"u","Type":"other","nested":{"a":[1,2.0,"3"]},"n":1.0e2,"nil":null,"s":"\u00e9<>&"}`,
			typ:  "x", userID: "u",
			extra: map[string]string{
				"Type":   `"other"`,
				"nested": `{"a":[1,2.0,"3"]}`,
				"n":      `1.0e2`,
				"nil":    `null`,
				"s":      `"\u00e9<>&"`,
			},
		},
		{
			name: "whitespace around the object",
			body: " \n\t{\"type\":\"x\",\"userId\":\"u\"}\r\n ",
			typ:  "x", userID: "u",
		},
		{
			name: "duplicate key: last wins",
			body: `{"type":"first","type":"second","userId":"u"}`,
			typ:  "second", userID: "u",
		},
		{
			name: "type and userId as given, unicode included",
			body: `{"type":"Achievement-Update","userId":"ユーザー"}`,
			typ:  "Achievement-Update", userID: "ユーザー",
		},
	}
	rawText := func(r json.RawMessage) string {
		if r == nil {
			return ""
		}
		return string(r)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := ParseEvent([]byte(tt.body), eventTestNow)
			if err != nil {
				t.Fatalf("ParseEvent: %v", err)
			}
			if ev.Type != tt.typ || ev.UserID != tt.userID {
				t.Errorf("type, userId = %q, %q; want %q, %q", ev.Type, ev.UserID, tt.typ, tt.userID)
			}
			for _, f := range []struct{ name, got, want string }{
				{"segmentId", rawText(ev.SegmentID), tt.segmentID},
				{"productId", rawText(ev.ProductID), tt.productID},
				{"state", rawText(ev.State), tt.state},
				{"updates", rawText(ev.Updates), tt.updates},
			} {
				if f.got != f.want {
					t.Errorf("%s = %q, want %q", f.name, f.got, f.want)
				}
			}
			if len(ev.Extra) != len(tt.extra) {
				t.Errorf("Extra has %d fields %v, want %d", len(ev.Extra), ev.Extra, len(tt.extra))
			}
			for k, want := range tt.extra {
				if got := string(ev.Extra[k]); got != want {
					t.Errorf("Extra[%q] = %q, want %q", k, got, want)
				}
			}
		})
	}
}

func TestParseEvent_DoesNotRetainInput(t *testing.T) {
	// The ingest handler reuses request buffers; an Event that aliased them
	// would change under the drainer's feet.
	raw := []byte(`{"type":"x","userId":"u","state":{"a":1},"extra":[1]}`)
	ev, err := ParseEvent(raw, eventTestNow)
	if err != nil {
		t.Fatal(err)
	}
	for i := range raw {
		raw[i] = ' '
	}
	if string(ev.State) != `{"a":1}` || string(ev.Extra["extra"]) != `[1]` {
		t.Errorf("event changed with its input: state %q, extra %q", ev.State, ev.Extra["extra"])
	}
}

func TestParseEvent_Examples(t *testing.T) {
	for name, raw := range loadExamples(t) {
		t.Run(name, func(t *testing.T) {
			ev, err := ParseEvent(raw, eventTestNow)
			if err != nil {
				t.Fatalf("ParseEvent: %v", err)
			}
			if ev.Timestamp.IsZero() || ev.State == nil || ev.Updates == nil || ev.ProductID == nil || ev.SegmentID == nil {
				t.Errorf("a documented field went missing: %+v", ev)
			}
			if len(ev.Extra) != 0 {
				t.Errorf("Extra = %v, want none", ev.Extra)
			}
		})
	}
}

func TestNormalizeType(t *testing.T) {
	tests := []struct{ in, want string }{
		{"achievement_update", "achievement"},
		{"Achievement Update", "achievement"},
		{"achievement-update", "achievement"},
		{"ACHIEVEMENT", "achievement"},
		{"ACHIEVEMENT_UPDATE", "achievement"},
		{"achievementUpdate", "achievement"},
		{"  achievement update  ", "achievement"},
		{"shop_item_update", "shop_item"},
		{"Shop Item Update", "shop_item"},
		{"shopItemUpdate", "shop_item"},
		{"ShopItem", "shop_item"},
		{"shopitem", "shopitem"},
		{"Webhook verification", "webhook_verification"},
		{"webhookVerification", "webhook_verification"},
		{"level2Update", "level2"},
		{"update", "update"},
		{"wallet_update_update", "wallet_update"},
		{"Über-Update", "über"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := NormalizeType(tt.in); got != tt.want {
				t.Errorf("NormalizeType(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// loadExamples reads the example GWEN bodies, keyed by file name without ".json".
func loadExamples(tb testing.TB) map[string][]byte {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "examples", "*.json"))
	if err != nil {
		tb.Fatal(err)
	}
	if len(paths) != 6 {
		tb.Fatalf("found %d example files in testdata/examples, want 6", len(paths))
	}
	out := make(map[string][]byte, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(p), ".json")] = b
	}
	return out
}

func FuzzParseEvent(f *testing.F) {
	for _, raw := range loadExamples(f) {
		f.Add(raw)
	}
	for _, s := range []string{
		`{"type":"a","userId":"u"}`,
		`{"type":"a","userId":"u","timestamp":"1717416000.5"}`,
		`{"type":"a","userId":"u","timestamp":1.7e12}`,
		`{"type":"a","userId":"u","timestamp":"2024-06-03T12:00:00.123456789+02:00"}`,
		`{"type":"a","userId":"u","timestamp":1e99999999999999}`,
		`{"type":"a","userId":"u","timestamp":-0}`,
		`{"type":"Custom Thing","userId":"u","segmentId":12345678901234567890,"productId":null,"state":null,"updates":null,"x":{"y":[1e400]}}`,
		`{"type":"a","userId":"u","type":"b"}`,
		`{"type":"","userId":"u"}`,
		`[]`, `null`, `"x"`, `{`, ``,
		`{"type":"a\u0000","userId":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	mapping := DefaultMapping("fuzz")
	receivedAt := time.Date(2024, 6, 3, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := ParseEvent(raw, eventTestNow)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a *FieldError: %v", err, err)
			}
			return
		}
		if ev.Type == "" || ev.UserID == "" {
			t.Fatalf("accepted an event without type or userId: %+v", ev)
		}
		if !ev.Timestamp.IsZero() && (ev.Timestamp.Before(time.Unix(0, 0)) || ev.Timestamp.After(eventTestNow.Add(7*24*time.Hour))) {
			t.Fatalf("accepted timestamp %v out of range", ev.Timestamp)
		}
		msg, err := mapping.Map(ev, receivedAt, "gwenrelay-fuzz")
		if err != nil {
			t.Fatalf("Map rejected an accepted event: %v", err)
		}
		if err := msg.Validate(); err != nil {
			t.Fatalf("mapped message does not validate: %v", err)
		}
		enc, err := MarshalMessage(msg)
		if err != nil {
			t.Fatalf("MarshalMessage: %v", err)
		}
		if !json.Valid(enc) {
			t.Fatalf("MarshalMessage produced invalid JSON: %s", enc)
		}
	})
}
