package relay

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/gwenrelay/gwenrelay/spool"
)

// canonicalJSON re-encodes one JSON value with object keys sorted and no
// insignificant whitespace, keeping every number's literal text. Two bodies
// that differ only in key order or spacing give the same bytes, and so the
// same dedup key. raw must be valid JSON (the ingest path checks the body
// first); only its first value is read.
//
// The bytes are those of decoding into interface values (with UseNumber)
// and encoding back without HTML escaping — the stored events and the dedup
// keys of earlier versions depend on them. appendCanonical produces them
// directly from the raw text, without building the values, for the common
// case; a string that encoding/json would spell differently (one with an
// escape, a control character, U+2028/U+2029 or invalid UTF-8) falls back
// to the round trip.
func canonicalJSON(raw []byte) ([]byte, error) {
	if out, ok := appendCanonical(make([]byte, 0, len(raw)), raw, skipSpace(raw, 0), 0); ok {
		return out, nil
	}
	return canonicalJSONRoundTrip(raw)
}

// canonicalJSONRoundTrip is canonicalJSON by decoding and encoding.
func canonicalJSONRoundTrip(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// maxCanonicalDepth is the deepest nesting appendCanonical handles; deeper
// values take the round trip. Each level finds its members' ends by scanning
// them, so the work grows with depth times size: bounded, it stays linear
// (a 5,000-deep document around a 4 MiB string took seconds unbounded).
const maxCanonicalDepth = 16

// appendCanonical appends the canonical form of the value at raw[i:], at
// nesting depth, to dst. ok is false when the value needs
// canonicalJSONRoundTrip (see canonicalJSON and maxCanonicalDepth) or is
// not valid JSON.
func appendCanonical(dst, raw []byte, i, depth int) (out []byte, ok bool) {
	if i >= len(raw) {
		return dst, false
	}
	if (raw[i] == '{' || raw[i] == '[') && depth >= maxCanonicalDepth {
		return dst, false
	}
	switch raw[i] {
	case '{':
		type kv struct {
			key        []byte // quoted, as in raw
			start, end int    // the value
		}
		var members []kv
		j := skipSpace(raw, i+1)
		if j < len(raw) && raw[j] == '}' {
			return append(dst, "{}"...), true
		}
		for {
			if j >= len(raw) || raw[j] != '"' {
				return dst, false
			}
			kStart, kEnd := j, stringEnd(raw, j)
			if kEnd < 0 || !plainString(raw[kStart:kEnd]) {
				return dst, false
			}
			j = skipSpace(raw, kEnd)
			if j >= len(raw) || raw[j] != ':' {
				return dst, false
			}
			vStart := skipSpace(raw, j+1)
			vEnd := valueEnd(raw, vStart)
			if vEnd < 0 {
				return dst, false
			}
			members = append(members, kv{raw[kStart:kEnd], vStart, vEnd})
			j = skipSpace(raw, vEnd)
			if j < len(raw) && raw[j] == '}' {
				break
			}
			if j >= len(raw) || raw[j] != ',' {
				return dst, false
			}
			j = skipSpace(raw, j+1)
		}
		// Sorted by key as encoding/json sorts a map's; of a key given
		// twice, the last value counts (the map keeps the last).
		slices.SortStableFunc(members, func(a, b kv) int { return bytes.Compare(a.key[1:len(a.key)-1], b.key[1:len(b.key)-1]) })
		dst = append(dst, '{')
		first := true
		for n, m := range members {
			if n+1 < len(members) && bytes.Equal(members[n+1].key, m.key) {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, m.key...)
			dst = append(dst, ':')
			if dst, ok = appendCanonical(dst, raw, m.start, depth+1); !ok {
				return dst, false
			}
		}
		return append(dst, '}'), true
	case '[':
		dst = append(dst, '[')
		j := skipSpace(raw, i+1)
		if j < len(raw) && raw[j] == ']' {
			return append(dst, ']'), true
		}
		for {
			if dst, ok = appendCanonical(dst, raw, j, depth+1); !ok {
				return dst, false
			}
			j = skipSpace(raw, valueEnd(raw, j))
			if j < len(raw) && raw[j] == ']' {
				return append(dst, ']'), true
			}
			if j >= len(raw) || raw[j] != ',' {
				return dst, false
			}
			dst = append(dst, ',')
			j = skipSpace(raw, j+1)
		}
	case '"':
		end := stringEnd(raw, i)
		if end < 0 || !plainString(raw[i:end]) {
			return dst, false
		}
		return append(dst, raw[i:end]...), true
	}
	// A number or a literal: its text as it is.
	end := valueEnd(raw, i)
	if end <= i {
		return dst, false
	}
	return append(dst, raw[i:end]...), true
}

// plainString reports whether the quoted JSON string q is spelled exactly as
// encoding/json would write its value (without HTML escaping): no escape, no
// control character, valid UTF-8 without U+2028 or U+2029.
func plainString(q []byte) bool {
	inner := q[1 : len(q)-1]
	for _, c := range inner {
		if c == '\\' || c < 0x20 {
			return false
		}
	}
	return utf8.Valid(inner) && !bytes.Contains(inner, []byte("\u2028")) && !bytes.Contains(inner, []byte("\u2029"))
}

// dedupKey is what the spool remembers an event by. An Idempotency-Key
// header wins over the body (the same body sent under two keys is two
// events); each element of an array gets its own key through its index.
// Without a header the key is the SHA-256 of the event's canonical JSON.
func dedupKey(idempotencyKey string, index int, canonical []byte) []byte {
	h := sha256.New()
	if idempotencyKey != "" {
		h.Write([]byte("idempotency-key\x00"))
		h.Write([]byte(idempotencyKey))
		h.Write([]byte{0})
		h.Write([]byte(strconv.Itoa(index)))
	} else {
		h.Write([]byte("gwen-event\x00"))
		h.Write(canonical)
	}
	return h.Sum(nil)
}

// messageIDFor derives the Segment messageId from the dedup key, so a
// redelivery that slips past the spool's window is still collapsed by
// Segment's own messageId dedup. 74 characters: under Segment's 100.
func messageIDFor(key []byte) string {
	return "gwenrelay-" + hex.EncodeToString(key)
}

// GWENEntry is the spool entry for one raw GWEN event, exactly as ingest
// stores it: the canonical JSON, the dedup key and the messageId derived
// from it. index is the event's position in its request (it matters only
// with an Idempotency-Key). The event is not validated here.
func GWENEntry(raw []byte, idempotencyKey string, index int, receivedAt time.Time) (spool.Entry, error) {
	canon, err := canonicalJSON(raw)
	if err != nil {
		return spool.Entry{}, err
	}
	key := dedupKey(idempotencyKey, index, canon)
	return spool.Entry{Kind: spool.KindGWEN, Key: key, MessageID: messageIDFor(key), ReceivedAt: receivedAt, Event: canon}, nil
}
