package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// SegmentMessage is a message that came in through Segment's own API
// (POST /v1/*): it is forwarded as the stored JSON object, field for field,
// not rebuilt from analytics-go's structs (which carry only their fixed
// fields and would drop context.custom values, _metadata, category, an
// empty properties object and the like), and its Enqueue refuses any type
// but its own six, so these go through a raw /v1/batch sender of their own
// (see NewSegmentSenders). It implements analytics.Message so that the
// drainer and the callbacks handle both kinds alike.
type SegmentMessage struct {
	ID   string // its messageId
	Type string // track, identify, page, screen, group or alias
	// Raw is the message as stored: one compact JSON object.
	Raw []byte
	// ReceivedAt is when the relay took it; the caller's sentAt, when the
	// message carries one, is moved on by the time since (see Body).
	ReceivedAt time.Time
}

// MaxSegmentMessageBytes is Segment's limit on one message of its API
// (32 KB), as the caller sends it: ingest refuses a bigger one.
const MaxSegmentMessageBytes = 32 << 10

// maxStoredSegmentMessage is the most a stored message may hold: one that
// fits alone in a /v1/batch request. It is above MaxSegmentMessageBytes
// because the relay adds to what the caller sent (a batch's context and
// integrations, sentAt, type, messageId, timestamp), as Segment itself does
// on its side; whether Segment takes the result is Segment's to say.
const maxStoredSegmentMessage = maxBatchBodyBytes - batchEnvelopeBytes - bodyGrowth

// Validate implements analytics.Message: the checks ingest made, repeated
// for a record that reached the drainer another way (spool import).
func (m *SegmentMessage) Validate() error {
	if m == nil || len(m.Raw) == 0 {
		return errors.New("empty Segment message")
	}
	if m.ID == "" {
		return errors.New("Segment message without a messageId")
	}
	if !segmentCallTypes[m.Type] {
		return fmt.Errorf("Segment message of unknown type %q", m.Type)
	}
	return nil
}

// Body returns the message as it leaves at now. The caller's sentAt says
// when the message left the caller, on the caller's clock; Segment corrects
// that clock's skew as timestamp = receivedAt - (sentAt - timestamp), so a
// sentAt left as it was would date every spooled message later by its time
// in the spool. Moved on by that time, it says when the message leaves the
// relay on the caller's clock, and the correction comes out as if the caller
// had sent it to Segment directly. A message without sentAt is returned as
// stored.
func (m *SegmentMessage) Body(now time.Time) []byte {
	start, end, ok := topLevelField(m.Raw, "sentAt")
	if !ok || m.ReceivedAt.IsZero() {
		return m.Raw
	}
	var s string
	if json.Unmarshal(m.Raw[start:end], &s) != nil {
		return m.Raw
	}
	sent, err := parseISOTime(s)
	if err != nil {
		return m.Raw
	}
	shifted := sent.Add(max(0, now.Sub(m.ReceivedAt)))
	ts := strconv.AppendQuote(nil, shifted.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	out := make([]byte, 0, len(m.Raw)+len(ts))
	out = append(out, m.Raw[:start]...)
	out = append(out, ts...)
	return append(out, m.Raw[end:]...)
}

// segmentCallTypes are the calls of Segment's API.
var segmentCallTypes = map[string]bool{
	"track": true, "identify": true, "page": true, "screen": true, "group": true, "alias": true,
}

// parseISOTime reads the ISO-8601 date-times Segment's libraries write:
// RFC 3339 with or without fractional seconds, a numeric offset with or
// without its colon, or no zone at all (taken as UTC, as Segment does).
func parseISOTime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999Z0700", "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not an ISO-8601 date-time (like 2026-12-04T10:00:00.000Z)", s)
}

// topLevelField finds the value of key among the top-level members of the
// JSON object obj, without decoding the rest: start and end delimit the
// value's bytes. obj must be valid JSON; the first member of that name wins.
func topLevelField(obj []byte, key string) (start, end int, ok bool) {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return 0, 0, false
	}
	i++
	for {
		i = skipSpace(obj, i)
		if i >= len(obj) || obj[i] != '"' {
			return 0, 0, false
		}
		kEnd := stringEnd(obj, i)
		if kEnd < 0 {
			return 0, 0, false
		}
		name := obj[i:kEnd]
		i = skipSpace(obj, kEnd)
		if i >= len(obj) || obj[i] != ':' {
			return 0, 0, false
		}
		vStart := skipSpace(obj, i+1)
		vEnd := valueEnd(obj, vStart)
		if vEnd < 0 {
			return 0, 0, false
		}
		if keyEquals(name, key) {
			return vStart, vEnd, true
		}
		i = skipSpace(obj, vEnd)
		if i >= len(obj) || obj[i] != ',' {
			return 0, 0, false
		}
		i++
	}
}

// keyEquals compares a quoted JSON string with a plain key, decoding the
// string only when it holds an escape.
func keyEquals(quoted []byte, key string) bool {
	inner := quoted[1 : len(quoted)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner) == key
	}
	var s string
	return json.Unmarshal(quoted, &s) == nil && s == key
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// stringEnd returns the index just past the string that starts at b[i].
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// valueEnd returns the index just past the JSON value that starts at b[i].
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				e := stringEnd(b, j)
				if e < 0 {
					return -1
				}
				j = e - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\r' && b[j] != '\n' {
		j++
	}
	return j
}
