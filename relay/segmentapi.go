package relay

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gwenrelay/gwenrelay/spool"
)

// Limits of Segment's HTTP Tracking API, which /v1/* applies as Segment
// does, except that it says so with a 400 where Segment would answer 200
// and drop the message.
const (
	// MaxSegmentRequestBytes is Segment's 500 KB per request, measured on
	// the body after gzip.
	MaxSegmentRequestBytes = 500 << 10
	// MaxSegmentBatch is the most messages one /v1/batch may carry; Segment
	// drops the rest without a word.
	MaxSegmentBatch = 2500
	// maxMessageIDLen is the longest messageId Segment takes.
	maxMessageIDLen = 100
)

// SegmentCalls are the paths under /v1/ that Segment's API serves.
var SegmentCalls = []string{"track", "identify", "page", "screen", "group", "alias", "batch"}

// SegmentAPI returns the handler of POST /v1/<call> (call is one of
// SegmentCalls): Segment's HTTP Tracking API, so that any Segment library
// pointed at the relay sends through it. Each message is checked by
// Segment's rules, spooled with the same durability, idempotency and 503
// rules as /webhook, and forwarded as it came (see segmentEntry).
func (h *Ingest) SegmentAPI(call string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.serve(w, r, segmentEndpoint{h: h, call: call})
	})
}

type segmentEndpoint struct {
	h    *Ingest
	call string
}

func (segmentEndpoint) route() string    { return routeSegment }
func (segmentEndpoint) segmentAPI() bool { return true }

// segmentResponse is the body of a success: Segment's own answer plus what
// /webhook tells.
type segmentResponse struct {
	Success bool `json:"success"`
	*ingestResponse
}

// answer is 200 whether or not anything was new: Segment answers 200, and
// some of its libraries (analytics-python) take nothing else as success.
func (segmentEndpoint) answer(res *ingestResponse, _ bool) (int, any) {
	return http.StatusOK, segmentResponse{Success: true, ingestResponse: res}
}

func (e segmentEndpoint) parse(r *http.Request, body []byte, auth *Auth, authed bool, now time.Time) ([]spool.Entry, *apiError) {
	if len(body) > MaxSegmentRequestBytes {
		return nil, errorf(http.StatusBadRequest, "body is %d bytes; Segment takes at most %d (500 KB) a request: send smaller batches", len(body), MaxSegmentRequestBytes).as(rejectTooLarge)
	}
	if !utf8.Valid(body) {
		return nil, errorf(http.StatusBadRequest, "body is not valid UTF-8")
	}
	// Compacted once (which also checks it is JSON): every value taken
	// from it below is already in the form it is stored in.
	var compact bytes.Buffer
	if json.Compact(&compact, body) != nil {
		return nil, errorf(http.StatusBadRequest, "body is not valid JSON")
	}
	body = compact.Bytes()
	top, err := objectMembers(body)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "body: %v", err)
	}
	env := envelope{}
	var msgs []json.RawMessage
	where := func(int) string { return "" }
	if e.call == "batch" {
		batch, ok := top.get("batch")
		if !ok || rawJSONKind(batch) != "array" {
			return nil, errorf(http.StatusBadRequest, `"batch" must be an array of messages`)
		}
		msgs = arrayElements(batch)
		switch {
		case len(msgs) == 0:
			return nil, errorf(http.StatusBadRequest, `"batch" is empty: send at least one message`)
		case len(msgs) > MaxSegmentBatch:
			return nil, errorf(http.StatusBadRequest, "%d messages in one batch; Segment takes at most %d and would drop the rest without saying so", len(msgs), MaxSegmentBatch)
		}
		for _, name := range []string{"context", "integrations"} {
			if v, ok := top.get(name); ok {
				if k := rawJSONKind(v); k != "object" && k != "null" {
					return nil, errorf(http.StatusBadRequest, "%q must be an object (got %s)", name, k)
				}
				if rawJSONKind(v) == "object" {
					env.shared = append(env.shared, member{name, jsonString(name), v})
				}
			}
		}
		if v, ok := top.get("sentAt"); ok && rawJSONKind(v) != "null" {
			if _, err := isoTime(v); err != nil {
				return nil, errorf(http.StatusBadRequest, `"sentAt": %v`, err)
			}
			env.sentAt = v
		}
		where = func(i int) string { return fmt.Sprintf("batch[%d]", i) }
	} else {
		msgs = []json.RawMessage{body}
	}
	if !authed {
		if aerr := checkWriteKey(top, auth); aerr != nil {
			return nil, aerr
		}
	}
	idemKey := r.Header.Get("Idempotency-Key")
	entries := make([]spool.Entry, len(msgs))
	var stored int64
	for i, raw := range msgs {
		entry, err := segmentEntry(raw, e.call, env, idemKey, i, now)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%s", joinPath(where(i), err))
		}
		entries[i] = entry
		// One request stores at most --max-body: a batch's context is
		// copied into each of its messages, so 500 KB could otherwise
		// become a hundred times that in the spool and in memory.
		if stored += int64(len(entry.Event)); stored > e.h.maxBody {
			return nil, errorf(http.StatusRequestEntityTooLarge, "with the batch's context and integrations copied into each of its %d messages, it would store over %d bytes (--max-body): send smaller batches or a smaller batch context", len(msgs), e.h.maxBody)
		}
	}
	return entries, nil
}

// checkWriteKey authenticates a request without an Authorization header by
// the writeKey in its body, as Segment does.
func checkWriteKey(top members, auth *Auth) *apiError {
	v, ok := top.get("writeKey")
	var key string
	if !ok || json.Unmarshal(v, &key) != nil || key == "" {
		if auth.insecure && len(auth.tokens) == 0 {
			return nil
		}
		return errorf(http.StatusUnauthorized, "missing credential: send the write key as the Basic user name (as Segment's libraries do), Bearer <token>, or \"writeKey\" in the body")
	}
	if !auth.checkKey(key) {
		return errorf(http.StatusUnauthorized, "write key not accepted: use one of the tokens in --inbound-token / --inbound-token-file as the write key")
	}
	return nil
}

// envelope is what a /v1/batch body gives each of its messages.
type envelope struct {
	shared []member        // the batch's context and integrations objects
	sentAt json.RawMessage // the batch's sentAt, if any
}

// segmentEntry checks one message by Segment's rules and builds its spool
// entry. The stored message is the caller's, field for field and in order
// (values compacted), except that:
//   - "type" is set from the path for a single call;
//   - the batch's context and integrations are merged in, the message's own
//     keys winning, as Segment merges them;
//   - "writeKey" is dropped (it is the relay's inbound credential);
//   - "sentAt" is the message's own or else the batch's, so that each
//     message keeps the caller's clock for Segment's skew correction;
//   - a missing "messageId" is derived from the message (or from an
//     Idempotency-Key), so a retry of the same message gets the same one;
//   - a missing "timestamp" is the time the caller sent it (its sentAt),
//     or else the time the relay received it: Segment would otherwise date
//     the message by its arrival at Segment, after its time in the spool.
func segmentEntry(raw json.RawMessage, call string, env envelope, idemKey string, index int, now time.Time) (spool.Entry, error) {
	msg, err := objectMembers(raw)
	if err != nil {
		return spool.Entry{}, err
	}
	// Segment's 32 KB applies to the message as the caller sent it
	// (compacted), before anything below adds to it.
	if len(raw) > MaxSegmentMessageBytes {
		return spool.Entry{}, fmt.Errorf("message is %d bytes; Segment takes at most %d (32 KB) a message: trim its properties, traits or context", len(raw), MaxSegmentMessageBytes)
	}
	typ := call
	if v, ok := msg.get("type"); ok {
		var t string
		if json.Unmarshal(v, &t) != nil {
			return spool.Entry{}, &FieldError{Field: "type", Msg: "must be a string (got " + rawJSONKind(v) + ")"}
		}
		switch {
		case call == "batch":
			typ = t
		case t != call:
			return spool.Entry{}, &FieldError{Field: "type", Msg: fmt.Sprintf("is %q, but this is /v1/%s", t, call)}
		}
	} else if call == "batch" {
		return spool.Entry{}, &FieldError{Field: "type", Msg: "is missing: each message of a batch names its call (track, identify, page, screen, group or alias)"}
	}
	if !segmentCallTypes[typ] {
		return spool.Entry{}, &FieldError{Field: "type", Msg: fmt.Sprintf("%q is not a Segment call: use track, identify, page, screen, group or alias", typ)}
	}
	if err := checkSegmentFields(msg, typ); err != nil {
		return spool.Entry{}, err
	}

	msg.set("type", jsonString(typ))
	msg.del("writeKey")
	for _, sh := range env.shared {
		own, ok := msg.get(sh.key)
		if !ok || rawJSONKind(own) == "null" {
			msg.set(sh.key, sh.value)
			continue
		}
		merged, err := mergeObjects(sh.value, own)
		if err != nil {
			return spool.Entry{}, &FieldError{Field: sh.key, Msg: err.Error()}
		}
		msg.set(sh.key, merged)
	}
	sentAt, hasSentAt := msg.get("sentAt")
	if (!hasSentAt || rawJSONKind(sentAt) == "null") && env.sentAt != nil {
		sentAt, hasSentAt = env.sentAt, true
		msg.set("sentAt", sentAt)
	}
	if hasSentAt && rawJSONKind(sentAt) == "null" {
		msg.del("sentAt")
		hasSentAt = false
	}

	var key []byte
	msgID := ""
	if v, ok := msg.get("messageId"); ok && rawJSONKind(v) != "null" {
		if json.Unmarshal(v, &msgID) != nil || msgID == "" {
			return spool.Entry{}, &FieldError{Field: "messageId", Msg: "must be a non-empty string"}
		}
		if len(msgID) > maxMessageIDLen {
			return spool.Entry{}, &FieldError{Field: "messageId", Msg: fmt.Sprintf("is %d characters; Segment takes at most %d", len(msgID), maxMessageIDLen)}
		}
	} else {
		// Derived from what the caller sent, less what a retry changes
		// (sentAt), and from the message's place in its request, so that
		// two equal messages of one request stay two. Its own namespace:
		// an Idempotency-Key also used on /webhook names other events.
		h := sha256.New()
		h.Write([]byte("segment-message\x00"))
		if idemKey != "" {
			h.Write(dedupKey(idemKey, index, nil))
		} else {
			probe := msg.clone()
			probe.del("sentAt")
			probe.del("messageId")
			canon, err := canonicalJSON(probe.encode())
			if err != nil {
				return spool.Entry{}, err
			}
			h.Write(canon)
			h.Write([]byte("\x00" + strconv.Itoa(index)))
		}
		key = h.Sum(nil)
		msgID = messageIDFor(key)
		msg.set("messageId", jsonString(msgID))
	}
	// Segment dedups on messageId alone; so does the spool.
	h := sha256.New()
	h.Write([]byte("segment-message-id\x00"))
	h.Write([]byte(msgID))
	key = h.Sum(nil)

	if v, ok := msg.get("timestamp"); !ok || rawJSONKind(v) == "null" {
		ts := jsonString(now.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
		if hasSentAt {
			ts = sentAt
		}
		msg.set("timestamp", ts)
	}
	stored := msg.encode()
	if len(stored) > maxStoredSegmentMessage {
		return spool.Entry{}, fmt.Errorf("with the batch's context and integrations merged in, the message would be %d bytes, more than one upload to Segment can carry (%d): send a smaller batch context", len(stored), maxStoredSegmentMessage)
	}
	return spool.Entry{Kind: spool.KindSegment, Key: key, MessageID: msgID, ReceivedAt: now, Event: stored}, nil
}

// checkSegmentFields applies Segment's per-call rules.
func checkSegmentFields(msg members, typ string) error {
	nonEmptyID := func(name string) (bool, error) {
		v, ok := msg.get(name)
		if !ok || rawJSONKind(v) == "null" {
			return false, nil
		}
		switch rawJSONKind(v) {
		case "string":
			var s string
			_ = json.Unmarshal(v, &s)
			return strings.TrimSpace(s) != "", nil
		case "number":
			return true, nil
		}
		return false, &FieldError{Field: name, Msg: "must be a string (got " + rawJSONKind(v) + ")"}
	}
	user, err := nonEmptyID("userId")
	if err != nil {
		return err
	}
	anon, err := nonEmptyID("anonymousId")
	if err != nil {
		return err
	}
	if !user && !anon {
		return fmt.Errorf("%s needs a non-empty userId or anonymousId; Segment drops a message with neither", typ)
	}
	switch typ {
	case "track":
		v, ok := msg.get("event")
		var name string
		if !ok || json.Unmarshal(v, &name) != nil || strings.TrimSpace(name) == "" {
			return &FieldError{Field: "event", Msg: "track needs an event name (a non-empty string)"}
		}
	case "group":
		if ok, err := nonEmptyID("groupId"); err != nil || !ok {
			return &FieldError{Field: "groupId", Msg: "group needs a groupId (a non-empty string)"}
		}
	case "alias":
		if ok, err := nonEmptyID("previousId"); err != nil || !ok {
			return &FieldError{Field: "previousId", Msg: "alias needs a previousId (a non-empty string)"}
		}
	}
	for _, name := range []string{"properties", "traits", "context", "integrations"} {
		if v, ok := msg.get(name); ok {
			if k := rawJSONKind(v); k != "object" && k != "null" {
				return &FieldError{Field: name, Msg: "must be an object (got " + k + ")"}
			}
		}
	}
	for _, name := range []string{"timestamp", "originalTimestamp", "sentAt"} {
		if v, ok := msg.get(name); ok && rawJSONKind(v) != "null" {
			if _, err := isoTime(v); err != nil {
				return &FieldError{Field: name, Msg: err.Error()}
			}
		}
	}
	return nil
}

// isoTime reads a JSON string holding an ISO-8601 date-time.
func isoTime(v json.RawMessage) (time.Time, error) {
	var s string
	if json.Unmarshal(v, &s) != nil {
		return time.Time{}, fmt.Errorf("must be an ISO-8601 date-time string (got %s)", rawJSONKind(v))
	}
	return parseISOTime(s)
}

// mergeObjects returns base with over's members on top (over wins), the
// way Segment gives a batch's context to each of its messages.
func mergeObjects(base, over json.RawMessage) (json.RawMessage, error) {
	b, err := objectMembers(base)
	if err != nil {
		return nil, err
	}
	o, err := objectMembers(over)
	if err != nil {
		return nil, err
	}
	for _, m := range o {
		b.set(m.key, m.value)
	}
	return b.encode(), nil
}

// member is one member of a JSON object, its value as raw JSON.
type member struct {
	key    string
	quoted []byte // the key as a JSON string, as the caller spelled it
	value  json.RawMessage
}

// members is a JSON object that keeps its members' order and their values'
// text, so that what a caller sent is stored as sent.
type members []member

// objectMembers splits a valid JSON object into its members. A key that
// appears twice is refused: JSON parsers disagree on which one counts.
func objectMembers(obj []byte) (members, error) {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return nil, fmt.Errorf("must be a JSON object (got %s)", rawJSONKind(obj))
	}
	var out members
	seen := map[string]bool{}
	i = skipSpace(obj, i+1)
	if i < len(obj) && obj[i] == '}' {
		return out, nil
	}
	for {
		kStart := skipSpace(obj, i)
		kEnd := stringEnd(obj, kStart)
		if kStart >= len(obj) || obj[kStart] != '"' || kEnd < 0 {
			return nil, fmt.Errorf("not a valid JSON object")
		}
		key := string(obj[kStart+1 : kEnd-1])
		if bytes.IndexByte(obj[kStart:kEnd], '\\') >= 0 {
			if err := json.Unmarshal(obj[kStart:kEnd], &key); err != nil {
				return nil, fmt.Errorf("not a valid JSON object: %v", err)
			}
		}
		i = skipSpace(obj, kEnd)
		if i >= len(obj) || obj[i] != ':' {
			return nil, fmt.Errorf("not a valid JSON object")
		}
		vStart := skipSpace(obj, i+1)
		vEnd := valueEnd(obj, vStart)
		if vEnd < 0 {
			return nil, fmt.Errorf("not a valid JSON object")
		}
		if seen[key] {
			return nil, fmt.Errorf("key %q appears twice", key)
		}
		seen[key] = true
		out = append(out, member{key, obj[kStart:kEnd], json.RawMessage(obj[vStart:vEnd])})
		i = skipSpace(obj, vEnd)
		if i < len(obj) && obj[i] == '}' {
			return out, nil
		}
		if i >= len(obj) || obj[i] != ',' {
			return nil, fmt.Errorf("not a valid JSON object")
		}
		i++
	}
}

func (ms members) get(key string) (json.RawMessage, bool) {
	for _, m := range ms {
		if m.key == key {
			return m.value, true
		}
	}
	return nil, false
}

// set replaces key's value in place, or adds it at the end.
func (ms *members) set(key string, v json.RawMessage) {
	for i := range *ms {
		if (*ms)[i].key == key {
			(*ms)[i].value = v
			return
		}
	}
	*ms = append(*ms, member{key, jsonString(key), v})
}

func (ms *members) del(key string) {
	for i := range *ms {
		if (*ms)[i].key == key {
			*ms = append((*ms)[:i], (*ms)[i+1:]...)
			return
		}
	}
}

func (ms members) clone() members { return append(members(nil), ms...) }

// encode writes the object, members in order. Its values come from a
// compacted body (or are written compactly here), so it is compact.
func (ms members) encode() []byte {
	n := 2
	for _, m := range ms {
		n += len(m.quoted) + len(m.value) + 2
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, m.quoted...)
		b = append(b, ':')
		b = append(b, m.value...)
	}
	return append(b, '}')
}

// arrayElements splits the JSON array at the start of arr into its
// elements, without decoding them; what follows the array is ignored, and
// an array cut short gives the elements that are complete.
func arrayElements(arr []byte) []json.RawMessage {
	var out []json.RawMessage
	i := skipSpace(arr, 1)
	for i < len(arr) && arr[i] != ']' {
		end := valueEnd(arr, i)
		if end < 0 {
			break
		}
		out = append(out, json.RawMessage(arr[i:end]))
		i = skipSpace(arr, end)
		if i < len(arr) && arr[i] == ',' {
			i = skipSpace(arr, i+1)
		}
	}
	return out
}

// jsonString encodes s as a JSON string, without escaping HTML characters.
func jsonString(s string) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
