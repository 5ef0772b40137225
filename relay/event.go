package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Event is one validated GWEN webhook event.
//
// The JSON-valued fields keep the exact bytes GWEN sent so that numbers keep
// their literal text (no float64 round trip) and nothing inside `state` or
// `updates` is reinterpreted: their shapes are not published.
type Event struct {
	Type      string                     // as given (non-empty)
	UserID    string                     // non-empty
	Timestamp time.Time                  // zero when absent (caller then uses the receive time)
	SegmentID json.RawMessage            // nil when absent; else a JSON string, number or null
	ProductID json.RawMessage            // same
	State     json.RawMessage            // nil when absent; else object or null
	Updates   json.RawMessage            // nil when absent; else array or null
	Extra     map[string]json.RawMessage // unknown top-level fields, carried through untouched
}

// FieldError says which field of an event is wrong and how. ParseEvent returns
// it as a *FieldError; match it with errors.As and a *FieldError target.
type FieldError struct {
	Field string // top-level JSON key; empty when the event as a whole is wrong
	Msg   string
}

// Error returns "<field>: <msg>", or just the message when no field is named.
func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// maxFutureSkew bounds how far ahead of the receive time an event may claim to
// be: anything later is a sender bug or a unit mix-up (e.g. micro- or
// nanoseconds), and Segment would file it under the wrong day.
const maxFutureSkew = 7 * 24 * time.Hour

// msThreshold is where a unix timestamp switches from seconds to
// milliseconds: 1e11 seconds is the year 5138, 1e11 ms is March 1973.
const msThreshold = "100000000000"

// errTimestampRange is the text of every out-of-range rejection, so the
// sender learns the window however the timestamp was spelled.
const errTimestampRange = "out of range (must be between 1970 and 7 days from now)"

// ParseEvent parses and validates one GWEN event object. now is the receive
// time; it bounds the timestamp (at most 7 days ahead). The caller has already
// checked that raw is valid UTF-8. Every rejection is a *FieldError naming the
// offending field. ParseEvent never panics and does not retain raw.
func ParseEvent(raw []byte, now time.Time) (Event, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return Event{}, &FieldError{Msg: "event must be a JSON object (got " + rawJSONKind(raw) + ")"}
		}
		return Event{}, &FieldError{Msg: "invalid JSON: " + err.Error()}
	}
	if fields == nil { // the literal null
		return Event{}, &FieldError{Msg: "event must be a JSON object (got null)"}
	}

	var ev Event
	var err error
	if ev.Type, err = parseRequiredString(fields, "type"); err != nil {
		return Event{}, err
	}
	if ev.UserID, err = parseRequiredString(fields, "userId"); err != nil {
		return Event{}, err
	}
	if v, ok := fields["timestamp"]; ok {
		if ev.Timestamp, err = parseTimestamp(v, now); err != nil {
			return Event{}, err
		}
	}
	if ev.SegmentID, err = parseOptionalRaw(fields, "segmentId", "a string, number or null", "string", "number", "null"); err != nil {
		return Event{}, err
	}
	if ev.ProductID, err = parseOptionalRaw(fields, "productId", "a string, number or null", "string", "number", "null"); err != nil {
		return Event{}, err
	}
	if ev.State, err = parseOptionalRaw(fields, "state", "an object or null", "object", "null"); err != nil {
		return Event{}, err
	}
	if ev.Updates, err = parseOptionalRaw(fields, "updates", "an array or null", "array", "null"); err != nil {
		return Event{}, err
	}

	for _, k := range []string{"type", "userId", "timestamp", "segmentId", "productId", "state", "updates"} {
		delete(fields, k)
	}
	if len(fields) > 0 {
		ev.Extra = fields
	}
	return ev, nil
}

// parseRequiredString returns the non-blank string under key.
func parseRequiredString(fields map[string]json.RawMessage, key string) (string, error) {
	v, ok := fields[key]
	if !ok {
		return "", &FieldError{Field: key, Msg: "is required"}
	}
	if kind := rawJSONKind(v); kind != "string" {
		return "", &FieldError{Field: key, Msg: "must be a string (got " + kind + ")"}
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", &FieldError{Field: key, Msg: "must be a string"}
	}
	if s == "" {
		return "", &FieldError{Field: key, Msg: "must be a non-empty string"}
	}
	// A blank type normalises to nothing and a blank userId names nobody:
	// both would reach Segment as junk that cannot be attributed.
	if strings.TrimSpace(s) == "" {
		return "", &FieldError{Field: key, Msg: "must not be blank"}
	}
	return s, nil
}

// parseOptionalRaw returns the raw value under key (nil when absent) after checking
// that its JSON kind is one of kinds; want describes the kinds for the message.
func parseOptionalRaw(fields map[string]json.RawMessage, key, want string, kinds ...string) (json.RawMessage, error) {
	v, ok := fields[key]
	if !ok {
		return nil, nil
	}
	kind := rawJSONKind(v)
	for _, k := range kinds {
		if kind == k {
			return v, nil
		}
	}
	return nil, &FieldError{Field: key, Msg: "must be " + want + " (got " + kind + ")"}
}

// rawJSONKind names the kind of a syntactically valid JSON value by its first byte.
func rawJSONKind(v []byte) string {
	s := bytes.TrimLeft(v, " \t\r\n")
	if len(s) == 0 {
		return "nothing"
	}
	switch s[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// parseTimestamp accepts unix seconds or milliseconds as a JSON number or a
// numeric string, or an RFC 3339 string; null means absent (zero time).
func parseTimestamp(v json.RawMessage, now time.Time) (time.Time, error) {
	fail := func(msg string) (time.Time, error) {
		return time.Time{}, &FieldError{Field: "timestamp", Msg: msg}
	}
	var t time.Time
	switch kind := rawJSONKind(v); kind {
	case "null":
		return time.Time{}, nil
	case "number":
		var ok bool
		if t, ok = parseUnixDecimal(strings.TrimSpace(string(v))); !ok {
			return fail(errTimestampRange)
		}
	case "string":
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return fail("must be a string")
		}
		trimmed := strings.TrimSpace(s)
		if isDecimalString(trimmed) {
			var ok bool
			if t, ok = parseUnixDecimal(trimmed); !ok {
				return fail(errTimestampRange)
			}
			break
		}
		var err error
		if t, err = time.Parse(time.RFC3339Nano, trimmed); err != nil {
			return fail(quoteForError(s) + " is neither unix seconds or milliseconds nor an RFC 3339 date-time")
		}
	default:
		return fail("must be unix seconds or milliseconds (a number or numeric string) or an RFC 3339 string (got " + kind + ")")
	}
	t = t.UTC()
	if t.Before(time.Unix(0, 0)) || t.After(now.Add(maxFutureSkew)) {
		return fail(errTimestampRange)
	}
	return t, nil
}

// quoteForError quotes s for an error message, cut so that a hostile sender
// cannot make the error (and the log line carrying it) arbitrarily long.
func quoteForError(s string) string {
	const max = 64
	if len(s) > max {
		// Cut on a rune boundary so the quoted text stays valid UTF-8.
		cut := max
		for cut > 0 && s[cut]&0xC0 == 0x80 {
			cut--
		}
		return strconv.Quote(s[:cut]) + "…"
	}
	return strconv.Quote(s)
}

// isDecimalString reports whether s is a plain decimal number: an optional sign,
// digits with an optional fraction (".5" and "5." included), and an optional
// exponent. Hex, "NaN" and "Inf" are not decimals.
func isDecimalString(s string) bool {
	_, _, _, ok := splitDecimal(s)
	return ok
}

// splitDecimal splits a decimal literal into its sign, its significant digits
// with the point removed, and the power of ten they are scaled by:
// value = ±digits × 10^exp. It parses by hand instead of through float64 so
// that millisecond timestamps and fractions keep every digit, and so that a
// huge exponent costs nothing (big.Rat would materialise 10^exp).
func splitDecimal(s string) (neg bool, digits string, exp int64, ok bool) {
	i := 0
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		neg = s[i] == '-'
		i++
	}
	start := i
	for i < len(s) && isASCIIDigit(s[i]) {
		i++
	}
	intPart := s[start:i]
	var fracPart string
	if i < len(s) && s[i] == '.' {
		i++
		fs := i
		for i < len(s) && isASCIIDigit(s[i]) {
			i++
		}
		fracPart = s[fs:i]
	}
	if intPart == "" && fracPart == "" {
		return false, "", 0, false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		expNeg := false
		if i < len(s) && (s[i] == '-' || s[i] == '+') {
			expNeg = s[i] == '-'
			i++
		}
		es := i
		for i < len(s) && isASCIIDigit(s[i]) {
			// Saturate: beyond ±1e15 the value is certainly 0 or out of
			// range, and saturating keeps the arithmetic below from overflowing.
			if exp < 1e15 {
				exp = exp*10 + int64(s[i]-'0')
			}
			i++
		}
		if i == es {
			return false, "", 0, false
		}
		if expNeg {
			exp = -exp
		}
	}
	if i != len(s) {
		return false, "", 0, false
	}
	digits = strings.TrimLeft(intPart+fracPart, "0")
	exp -= int64(len(fracPart))
	// Trailing zeros carry no value; dropping them keeps the digit count
	// meaningful for the magnitude tests in parseUnixDecimal.
	trimmed := strings.TrimRight(digits, "0")
	exp += int64(len(digits) - len(trimmed))
	return neg, trimmed, exp, true
}

func isASCIIDigit(c byte) bool { return '0' <= c && c <= '9' }

// parseUnixDecimal turns a decimal unix time into a time: seconds, or
// milliseconds when the value is above 1e11. ok is false when s is not a
// decimal or the value cannot be a time between 1970 and year 2262 (the
// int64-nanosecond horizon, far beyond the 7-day window anyway). Sub-nanosecond
// digits are truncated.
func parseUnixDecimal(s string) (t time.Time, ok bool) {
	neg, digits, exp, ok := splitDecimal(s)
	if !ok {
		return time.Time{}, false
	}
	if digits == "" { // zero, however spelled ("-0", "0.0e5")
		return time.Unix(0, 0), true
	}
	if neg {
		return time.Time{}, false
	}
	// Number of digits before the point: value is in [10^(n-1), 10^n).
	intDigits := int64(len(digits)) + exp
	scale := int64(9) // seconds → nanoseconds
	if intDigits > int64(len(msThreshold)) || (intDigits == int64(len(msThreshold)) && digits != "1") {
		scale = 6 // milliseconds → nanoseconds
	}
	exp += scale
	// int64 nanoseconds hold at most 19 digits; more is certainly out of range.
	if int64(len(digits))+exp > 19 {
		return time.Time{}, false
	}
	var nsText string
	switch {
	case exp >= 0:
		nsText = digits + strings.Repeat("0", int(exp))
	case -exp >= int64(len(digits)):
		nsText = "0"
	default:
		nsText = digits[:int64(len(digits))+exp]
	}
	ns, err := strconv.ParseInt(nsText, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}

// NormalizeType maps the spellings of a GWEN event type onto one key: lower
// case, '-' and spaces become '_', surrounding space is trimmed, and an
// optional "_update" suffix is dropped. camelCase words are split as well
// ("shopItemUpdate" → "shop_item"), because GWEN's exact type strings are not
// published and its JavaScript side may well send them in that style. So
// "Achievement Update", "achievement-update", "achievementUpdate",
// "achievement_update" and "ACHIEVEMENT" all become "achievement".
func NormalizeType(t string) string {
	t = strings.TrimSpace(t)
	var b strings.Builder
	b.Grow(len(t) + 4)
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c == '-' || c == ' ':
			b.WriteByte('_')
		case 'A' <= c && c <= 'Z':
			// A capital after a lower-case letter or digit starts a camelCase word.
			if i > 0 && (('a' <= t[i-1] && t[i-1] <= 'z') || isASCIIDigit(t[i-1])) {
				b.WriteByte('_')
			}
			b.WriteByte(c + ('a' - 'A'))
		default:
			b.WriteByte(c)
		}
	}
	// ToLower catches the non-ASCII capitals the byte loop leaves alone.
	return strings.TrimSuffix(strings.ToLower(b.String()), "_update")
}
