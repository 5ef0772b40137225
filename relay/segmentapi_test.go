package relay

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// segmentBasic is the Authorization header a Segment library sends with the
// relay's token as its write key.
var segmentBasic = "Basic " + base64.StdEncoding.EncodeToString([]byte(ingestTestToken+":"))

// postSegment sends body to /v1/<call> as a Segment library does.
func (e *ingestEnv) postSegment(t *testing.T, call string, body []byte, hdr map[string]string) ingestReply {
	t.Helper()
	h := map[string]string{"Authorization": segmentBasic, "Content-Type": "application/json"}
	for k, v := range hdr {
		h[k] = v
	}
	return e.do(t, http.MethodPost, "/v1/"+call, body, h)
}

// wantSegmentOK checks Segment's 200 answer with the relay's counts.
func wantSegmentOK(t *testing.T, r ingestReply, accepted, duplicates int) []uint64 {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", r.status, r.body)
	}
	var got struct {
		Success    *bool    `json:"success"`
		Accepted   int      `json:"accepted"`
		Duplicates int      `json:"duplicates"`
		IDs        []uint64 `json:"ids"`
	}
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("answer: %v: %q", err, r.body)
	}
	if got.Success == nil || !*got.Success || got.Accepted != accepted || got.Duplicates != duplicates || len(got.IDs) != accepted+duplicates {
		t.Errorf("answer %s, want success, %d accepted, %d duplicates", r.body, accepted, duplicates)
	}
	return got.IDs
}

// segmentTrack is a valid track message.
func segmentTrack(id string) string {
	return `{"type":"track","event":"Level Up","userId":"u-1","messageId":"` + id + `","timestamp":"2024-06-10T11:59:00.000Z","properties":{"level":3}}`
}

func segmentBatch(msgs ...string) []byte {
	return []byte(`{"batch":[` + strings.Join(msgs, ",") + `],"sentAt":"2024-06-10T11:59:30.000Z"}`)
}

func TestSegmentAPI_Rules(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})
	big := strings.Repeat("x", MaxSegmentMessageBytes)
	many := make([]string, MaxSegmentBatch+1)
	for i := range many {
		many[i] = `{"type":"track","event":"e","userId":"u"}`
	}
	huge := make([]string, 17)
	for i := range huge {
		huge[i] = `{"type":"track","event":"e","userId":"u","properties":{"pad":"` + strings.Repeat("y", 31000) + `"}}`
	}
	for _, tc := range []struct {
		name, call, body, msg string
	}{
		{"not JSON", "track", `{"type":`, "body is not valid JSON"},
		{"not an object", "track", `[1,2]`, "body: must be a JSON object (got array)"},
		{"key twice", "track", `{"event":"a","event":"b","userId":"u"}`, `body: key "event" appears twice`},
		{"track without event", "track", `{"userId":"u"}`, "event: track needs an event name (a non-empty string)"},
		{"track with an empty event", "track", `{"userId":"u","event":" "}`, "event: track needs an event name (a non-empty string)"},
		{"no user", "track", `{"event":"e"}`, "track needs a non-empty userId or anonymousId; Segment drops a message with neither"},
		{"empty user", "identify", `{"userId":"","anonymousId":""}`, "identify needs a non-empty userId or anonymousId; Segment drops a message with neither"},
		{"user not a string", "identify", `{"userId":{"id":1}}`, "userId: must be a string (got object)"},
		{"group without groupId", "group", `{"userId":"u"}`, "groupId: group needs a groupId (a non-empty string)"},
		{"alias without previousId", "alias", `{"userId":"u"}`, "previousId: alias needs a previousId (a non-empty string)"},
		{"type of another call", "track", `{"type":"identify","userId":"u","event":"e"}`, `type: is "identify", but this is /v1/track`},
		{"properties not an object", "track", `{"event":"e","userId":"u","properties":[1]}`, "properties: must be an object (got array)"},
		{"traits not an object", "identify", `{"userId":"u","traits":"vip"}`, "traits: must be an object (got string)"},
		{"context not an object", "page", `{"userId":"u","context":1}`, "context: must be an object (got number)"},
		{"timestamp not a date", "track", `{"event":"e","userId":"u","timestamp":"yesterday"}`, `timestamp: "yesterday" is not an ISO-8601 date-time (like 2026-12-04T10:00:00.000Z)`},
		{"timestamp a number", "track", `{"event":"e","userId":"u","timestamp":1717999999}`, "timestamp: must be an ISO-8601 date-time string (got number)"},
		{"empty messageId", "track", `{"event":"e","userId":"u","messageId":""}`, "messageId: must be a non-empty string"},
		{"messageId over 100", "track", `{"event":"e","userId":"u","messageId":"` + strings.Repeat("m", 101) + `"}`, "messageId: is 101 characters; Segment takes at most 100"},
		{"message over 32 KB", "track", `{"event":"e","userId":"u","properties":{"x":"` + big + `"}}`,
			fmt.Sprintf("message is %d bytes; Segment takes at most 32768 (32 KB) a message: trim its properties, traits or context", len(`{"event":"e","userId":"u","properties":{"x":"`+big+`"}}`))},
		{"batch missing", "batch", `{"messages":[]}`, `"batch" must be an array of messages`},
		{"batch empty", "batch", `{"batch":[]}`, `"batch" is empty: send at least one message`},
		{"batch over 2,500", "batch", `{"batch":[` + strings.Join(many, ",") + `]}`, "2501 messages in one batch; Segment takes at most 2500 and would drop the rest without saying so"},
		{"batch message without type", "batch", `{"batch":[{"event":"e","userId":"u"}]}`, "batch[0].type: is missing: each message of a batch names its call (track, identify, page, screen, group or alias)"},
		{"batch message of an unknown type", "batch", `{"batch":[{"type":"trak","event":"e","userId":"u"}]}`, `batch[0].type: "trak" is not a Segment call: use track, identify, page, screen, group or alias`},
		{"batch context not an object", "batch", `{"batch":[` + segmentTrack("m1") + `],"context":"x"}`, `"context" must be an object (got string)`},
		{"batch sentAt not a date", "batch", `{"batch":[` + segmentTrack("m1") + `],"sentAt":"now"}`, `"sentAt": "now" is not an ISO-8601 date-time (like 2026-12-04T10:00:00.000Z)`},
		{"one bad message rejects the batch", "batch", string(segmentBatch(segmentTrack("m1"), `{"type":"identify","traits":{}}`, segmentTrack("m3"))),
			"batch[1]: identify needs a non-empty userId or anonymousId; Segment drops a message with neither"},
		{"request over 500 KB", "batch", `{"batch":[` + strings.Join(huge, ",") + `]}`,
			fmt.Sprintf("body is %d bytes; Segment takes at most 512000 (500 KB) a request: send smaller batches", len(`{"batch":[`+strings.Join(huge, ",")+`]}`))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := spoolStats(t, e.sp)
			wantError(t, e.postSegment(t, tc.call, []byte(tc.body), nil), http.StatusBadRequest, tc.msg)
			wantNothingStored(t, e.sp, before)
		})
	}

	t.Run("a batch context too big to forward", func(t *testing.T) {
		ctx := `{"pad":"` + strings.Repeat("c", maxStoredSegmentMessage) + `"}`
		body := `{"batch":[` + segmentTrack("m1") + `],"context":` + ctx + `}`
		before := spoolStats(t, e.sp)
		r := e.postSegment(t, "batch", []byte(body), nil)
		if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "with the batch's context and integrations merged in, the message would be") {
			t.Errorf("status %d %.200s", r.status, r.body)
		}
		wantNothingStored(t, e.sp, before)
	})
	t.Run("the 32 KB are the caller's, not what the relay adds", func(t *testing.T) {
		// Just under the limit as sent; sentAt, type, timestamp and the
		// batch's context make the stored message bigger.
		msg := `{"type":"track","event":"e","userId":"u","messageId":"near-limit","properties":{"x":"PAD"}}`
		msg = strings.Replace(msg, "PAD", strings.Repeat("p", MaxSegmentMessageBytes-len(msg)+3), 1)
		body := `{"batch":[` + msg + `],"context":{"library":{"name":"analytics-go","version":"3.3.0"}},"sentAt":"2024-06-10T11:59:30.000Z"}`
		wantSegmentOK(t, e.postSegment(t, "batch", []byte(body), nil), 1, 0)
		recs := pendingRecords(t, e.sp)
		if n := len(recs[len(recs)-1].Event); n <= MaxSegmentMessageBytes {
			t.Errorf("stored message is %d bytes; the test wants one grown past the limit", n)
		}
	})
	t.Run("the same messages are taken once fixed", func(t *testing.T) {
		wantSegmentOK(t, e.postSegment(t, "batch", segmentBatch(segmentTrack("m1"), `{"type":"identify","userId":"u","traits":{}}`, segmentTrack("m3")), nil), 3, 0)
	})
	t.Run("405", func(t *testing.T) {
		r := e.do(t, http.MethodGet, "/v1/track", nil, nil)
		wantError(t, r, http.StatusMethodNotAllowed, "method GET not allowed: POST a Segment message as JSON")
	})
	t.Run("415", func(t *testing.T) {
		r := e.postSegment(t, "track", []byte(segmentTrack("m9")), map[string]string{"Content-Type": "application/xml"})
		wantError(t, r, http.StatusUnsupportedMediaType, `content type "application/xml" is not JSON: send application/json`)
		// Segment's browser library sends text/plain; /webhook does not take it.
		wantSegmentOK(t, e.postSegment(t, "track", []byte(segmentTrack("m9")), map[string]string{"Content-Type": "text/plain;charset=UTF-8"}), 1, 0)
		wantError(t, e.post(t, ingestEvent(1), map[string]string{"Content-Type": "text/plain"}), http.StatusUnsupportedMediaType, `content type "text/plain" is not JSON: send application/json`)
	})
}

func TestSegmentAPI_Auth(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})
	n := 0
	msg := func(extra string) []byte {
		n++
		return []byte(fmt.Sprintf(`{"event":"e","userId":"u","messageId":"auth-%d"%s}`, n, extra))
	}
	wantSegmentOK(t, e.postSegment(t, "track", msg(""), nil), 1, 0)
	wantSegmentOK(t, e.postSegment(t, "track", msg(""), map[string]string{"Authorization": "Bearer " + ingestTestToken}), 1, 0)
	wantSegmentOK(t, e.postSegment(t, "track", msg(`,"writeKey":"`+ingestTestToken+`"`), map[string]string{"Authorization": ""}), 1, 0)
	wantSegmentOK(t, e.postSegment(t, "batch", []byte(`{"writeKey":"`+ingestTestToken+`","batch":[`+segmentTrack("auth-b")+`]}`), map[string]string{"Authorization": ""}), 1, 0)

	before := spoolStats(t, e.sp)
	wantError(t, e.postSegment(t, "track", msg(""), map[string]string{"Authorization": ""}), http.StatusUnauthorized,
		`missing credential: send the write key as the Basic user name (as Segment's libraries do), Bearer <token>, or "writeKey" in the body`)
	wantError(t, e.postSegment(t, "track", msg(`,"writeKey":"nope"`), map[string]string{"Authorization": ""}), http.StatusUnauthorized,
		"write key not accepted: use one of the tokens in --inbound-token / --inbound-token-file as the write key")
	// A header that is wrong decides, whatever the body says.
	wrong := "Basic " + base64.StdEncoding.EncodeToString([]byte("nope:"))
	wantError(t, e.postSegment(t, "track", msg(`,"writeKey":"`+ingestTestToken+`"`), map[string]string{"Authorization": wrong}), http.StatusUnauthorized,
		"credential not accepted: check the token the sender uses against --inbound-token / --inbound-token-file")
	wantNothingStored(t, e.sp, before)

	// The write key is the relay's own credential: it is never stored.
	for _, r := range pendingRecords(t, e.sp) {
		if bytes.Contains(r.Event, []byte(ingestTestToken)) || bytes.Contains(r.Event, []byte("writeKey")) {
			t.Errorf("record %d keeps the write key: %s", r.ID, r.Event)
		}
	}

	t.Run("insecure", func(t *testing.T) {
		a, err := NewAuth(nil, true, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		e := newIngestEnv(t, ingestEnvConfig{auth: a})
		wantSegmentOK(t, e.postSegment(t, "track", []byte(segmentTrack("i1")), map[string]string{"Authorization": ""}), 1, 0)
	})
	t.Run("a webhook signature is not asked of Segment's libraries", func(t *testing.T) {
		a, err := NewAuth([]string{ingestTestToken}, false, []byte("secret"), "")
		if err != nil {
			t.Fatal(err)
		}
		e := newIngestEnv(t, ingestEnvConfig{auth: a})
		wantSegmentOK(t, e.postSegment(t, "track", []byte(segmentTrack("s1")), nil), 1, 0)
		wantError(t, e.post(t, ingestEvent(1), nil), http.StatusUnauthorized, "signature: missing X-Signature-256 header (sha256=<hex HMAC-SHA256 of the body>)")
	})
}

// TestSegmentAPI_Stored checks what is spooled, byte for byte: the caller's
// members in their order, with only the documented changes.
func TestSegmentAPI_Stored(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})
	body := `{
	  "batch": [
	    {"type": "track", "event": "Order Done", "userId": "u-1", "messageId": "node-next-1",
	     "timestamp": "2024-06-10T11:58:00.123Z", "properties": {"total": 1.50, "items": [1, 2]},
	     "context": {"ip": "10.0.0.1", "custom": {"a": "<b>"}}, "_metadata": {"jsRuntime": "node"}, "integrations": {}},
	    {"type": "page", "anonymousId": "a-2", "name": "Home", "category": "Docs", "messageId": "node-next-2",
	     "sentAt": "2024-06-10T11:59:10.000Z", "integrations": {"All": false}},
	    {"type": "alias", "userId": "u-3", "previousId": "a-3", "messageId": "m-3", "writeKey": "x", "context": null}
	  ],
	  "context": {"library": {"name": "analytics-node", "version": "3.1.0"}, "ip": "10.9.9.9"},
	  "integrations": {"Amplitude": true},
	  "writeKey": "` + ingestTestToken + `",
	  "sentAt": "2024-06-10T11:59:30.000Z"
	}`
	ids := wantSegmentOK(t, e.postSegment(t, "batch", []byte(body), nil), 3, 0)
	want := []string{
		`{"type":"track","event":"Order Done","userId":"u-1","messageId":"node-next-1","timestamp":"2024-06-10T11:58:00.123Z","properties":{"total":1.50,"items":[1,2]},` +
			`"context":{"library":{"name":"analytics-node","version":"3.1.0"},"ip":"10.0.0.1","custom":{"a":"<b>"}},"_metadata":{"jsRuntime":"node"},"integrations":{"Amplitude":true},"sentAt":"2024-06-10T11:59:30.000Z"}`,
		`{"type":"page","anonymousId":"a-2","name":"Home","category":"Docs","messageId":"node-next-2","sentAt":"2024-06-10T11:59:10.000Z","integrations":{"Amplitude":true,"All":false},` +
			`"context":{"library":{"name":"analytics-node","version":"3.1.0"},"ip":"10.9.9.9"},"timestamp":"2024-06-10T11:59:10.000Z"}`,
		`{"type":"alias","userId":"u-3","previousId":"a-3","messageId":"m-3","context":{"library":{"name":"analytics-node","version":"3.1.0"},"ip":"10.9.9.9"},` +
			`"integrations":{"Amplitude":true},"sentAt":"2024-06-10T11:59:30.000Z","timestamp":"2024-06-10T11:59:30.000Z"}`,
	}
	recs := pendingRecords(t, e.sp)
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	for i, r := range recs {
		if r.ID != ids[i] || r.Kind != spool.KindSegment || !r.ReceivedAt.Equal(ingestTestNow) {
			t.Errorf("record %d: id %d kind %d received %v", i, r.ID, r.Kind, r.ReceivedAt)
		}
		if string(r.Event) != want[i] {
			t.Errorf("record %d stored\n %s\nwant\n %s", i, r.Event, want[i])
		}
		var m struct {
			MessageID string `json:"messageId"`
		}
		if err := json.Unmarshal(r.Event, &m); err != nil || m.MessageID != r.MessageID {
			t.Errorf("record %d: messageId %q, event says %q (%v)", i, r.MessageID, m.MessageID, err)
		}
	}

	t.Run("single calls", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		// No type (the path gives it), no messageId, no timestamp, no sentAt.
		wantSegmentOK(t, e.postSegment(t, "identify", []byte(`{"userId":"u-9","traits":{"plan":"pro"}}`), nil), 1, 0)
		r := pendingRecords(t, e.sp)[0]
		want := `{"userId":"u-9","traits":{"plan":"pro"},"type":"identify","messageId":"` + r.MessageID + `","timestamp":"2024-06-10T12:00:00.000Z"}`
		if string(r.Event) != want {
			t.Errorf("stored %s, want %s", r.Event, want)
		}
		if !strings.HasPrefix(r.MessageID, "gwenrelay-") || len(r.MessageID) >= 100 {
			t.Errorf("derived messageId %q", r.MessageID)
		}
		for _, call := range []string{"track", "page", "screen", "group", "alias"} {
			body := `{"userId":"u","event":"e","groupId":"g","previousId":"p","messageId":"single-` + call + `"}`
			wantSegmentOK(t, e.postSegment(t, call, []byte(body), nil), 1, 0)
		}
		var types []string
		for _, r := range pendingRecords(t, e.sp) {
			types = append(types, NewRecordView(r, false).Type)
		}
		if !slices.Equal(types, []string{"identify", "track", "page", "screen", "group", "alias"}) {
			t.Errorf("types %v", types)
		}
	})
}

func TestSegmentAPI_Dedup(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})
	first := `{"batch":[` + segmentTrack("dup-1") + `],"sentAt":"2024-06-10T11:59:30.000Z"}`
	// A library's retry: the same messageIds under a new sentAt.
	retry := `{"batch":[` + segmentTrack("dup-1") + `,` + segmentTrack("dup-2") + `],"sentAt":"2024-06-10T11:59:40.000Z"}`
	ids := wantSegmentOK(t, e.postSegment(t, "batch", []byte(first), nil), 1, 0)
	ids2 := wantSegmentOK(t, e.postSegment(t, "batch", []byte(retry), nil), 1, 1)
	if ids2[0] != ids[0] {
		t.Errorf("the duplicate answers id %d, the original is %d", ids2[0], ids[0])
	}
	// Without a messageId, a retry (new sentAt) gets the same derived one.
	noID := func(sentAt string) []byte {
		return []byte(`{"event":"e","userId":"u","properties":{"b":1,"a":2},"sentAt":"` + sentAt + `"}`)
	}
	wantSegmentOK(t, e.postSegment(t, "track", noID("2024-06-10T11:59:00Z"), nil), 1, 0)
	wantSegmentOK(t, e.postSegment(t, "track", noID("2024-06-10T11:59:05Z"), nil), 0, 1)
	wantSegmentOK(t, e.postSegment(t, "track", []byte(`{"event":"e","userId":"u","properties":{"b":1,"a":3}}`), nil), 1, 0)
	// With an Idempotency-Key, the key decides.
	wantSegmentOK(t, e.postSegment(t, "track", []byte(`{"event":"k","userId":"u"}`), map[string]string{"Idempotency-Key": "k-1"}), 1, 0)
	wantSegmentOK(t, e.postSegment(t, "track", []byte(`{"event":"k2","userId":"u"}`), map[string]string{"Idempotency-Key": "k-1"}), 0, 1)
	if st := spoolStats(t, e.sp); st.Pending != 5 {
		t.Errorf("%d pending, want 5", st.Pending)
	}
	// A GWEN event and a Segment message never collide, in the dedup index
	// nor in the messageId Segment dedups on.
	wantAccepted(t, e.post(t, ingestEvent(1), map[string]string{"Idempotency-Key": "k-1"}), http.StatusAccepted, 1, 0)
	seen := map[string]bool{}
	for _, r := range pendingRecords(t, e.sp) {
		if seen[r.MessageID] {
			t.Errorf("two records carry messageId %s", r.MessageID)
		}
		seen[r.MessageID] = true
	}
	// Two equal messages without a messageId in one request are two.
	twin := `{"type":"track","event":"Tap","userId":"u-twin"}`
	wantSegmentOK(t, e.postSegment(t, "batch", []byte(`{"batch":[`+twin+`,`+twin+`]}`), nil), 2, 0)
	// ... and the same request again is its retry.
	wantSegmentOK(t, e.postSegment(t, "batch", []byte(`{"batch":[`+twin+`,`+twin+`]}`), nil), 0, 2)
}

func TestSegmentAPI_StoredCap(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{maxBody: 64 << 10})
	ctx := `{"pad":"` + strings.Repeat("c", 1000) + `"}`
	msgs := make([]string, 100)
	for i := range msgs {
		msgs[i] = fmt.Sprintf(`{"type":"track","event":"e","userId":"u","messageId":"cap-%d"}`, i)
	}
	body := []byte(`{"batch":[` + strings.Join(msgs, ",") + `],"context":` + ctx + `}`)
	before := spoolStats(t, e.sp)
	wantError(t, e.postSegment(t, "batch", body, nil), http.StatusRequestEntityTooLarge,
		"with the batch's context and integrations copied into each of its 100 messages, it would store over 65536 bytes (--max-body): send smaller batches or a smaller batch context")
	wantNothingStored(t, e.sp, before)
	wantSegmentOK(t, e.postSegment(t, "batch", []byte(`{"batch":[`+strings.Join(msgs[:40], ",")+`],"context":`+ctx+`}`), nil), 40, 0)
}

func TestSegmentAPI_Gzip(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	_, _ = zw.Write(segmentBatch(segmentTrack("gz-1"), segmentTrack("gz-2")))
	_ = zw.Close()
	wantSegmentOK(t, e.postSegment(t, "batch", zb.Bytes(), map[string]string{"Content-Encoding": "gzip"}), 2, 0)
	wantError(t, e.postSegment(t, "batch", []byte("this body is not gzip at all"), map[string]string{"Content-Encoding": "gzip"}), http.StatusBadRequest,
		"body is not valid gzip: gzip: invalid header")
}

func TestSegmentAPI_Unavailable(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{store: func(sp *spool.Spool) Store { return failingIngestStore{sp, spool.ErrClosed} }})
	r := e.postSegment(t, "track", []byte(segmentTrack("u-1")), nil)
	wantError(t, r, http.StatusServiceUnavailable, "gwenrelay is shutting down; retry shortly")
	wantRetryAfter(t, r, "5")
	if st := spoolStats(t, e.sp); st.Pending != 0 {
		t.Errorf("%d pending", st.Pending)
	}
}

func TestSegmentMessage_Body(t *testing.T) {
	received := time.Date(2024, 6, 10, 12, 0, 0, 0, time.UTC)
	m := &SegmentMessage{ID: "m", Type: "track", ReceivedAt: received,
		Raw: []byte(`{"type":"track","properties":{"sentAt":"x"},"s\u0065ntAt":"2024-06-10T13:00:00.250+01:00","event":"e"}`)}
	got := string(m.Body(received.Add(90 * time.Minute)))
	want := `{"type":"track","properties":{"sentAt":"x"},"s\u0065ntAt":"2024-06-10T13:30:00.250Z","event":"e"}`
	if got != want {
		t.Errorf("Body:\n %s\nwant\n %s", got, want)
	}
	// Sent before it was received (clocks): never moved back.
	if got := string(m.Body(received.Add(-time.Minute))); !strings.Contains(got, `"2024-06-10T12:00:00.250Z"`) {
		t.Errorf("Body before ReceivedAt: %s", got)
	}
	for _, raw := range []string{`{"type":"track","event":"e"}`, `{"sentAt":null}`, `{"sentAt":"soon"}`, `{"a":{"sentAt":"2024-06-10T13:00:00Z"}}`} {
		m := &SegmentMessage{ID: "m", Type: "track", ReceivedAt: received, Raw: []byte(raw)}
		if got := string(m.Body(received.Add(time.Hour))); got != raw {
			t.Errorf("Body(%s) = %s, want it unchanged", raw, got)
		}
	}
}

func TestTopLevelField(t *testing.T) {
	obj := []byte(` { "a" : [1,{"sentAt":2}], "b\"c":"}", "sentAt" : "v" , "z":true}`)
	for key, want := range map[string]string{"a": `[1,{"sentAt":2}]`, `b"c`: `"}"`, "sentAt": `"v"`, "z": "true"} {
		s, e, ok := topLevelField(obj, key)
		if !ok || string(obj[s:e]) != want {
			t.Errorf("%s: %q %v, want %q", key, obj[s:e], ok, want)
		}
	}
	if _, _, ok := topLevelField(obj, "missing"); ok {
		t.Error("found a key that is not there")
	}
	if _, _, ok := topLevelField([]byte(`[{"sentAt":1}]`), "sentAt"); ok {
		t.Error("found a key in an array")
	}
}

// TestSegmentAPI_NumericIDsListed: Segment takes a number as userId; the
// spool listing shows it like a string one.
func TestSegmentAPI_NumericIDsListed(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})
	wantSegmentOK(t, e.postSegment(t, "identify", []byte(`{"userId":12345,"messageId":"num-1"}`), nil), 1, 0)
	wantSegmentOK(t, e.postSegment(t, "track", []byte(`{"anonymousId":7.5,"event":"e","messageId":"num-2"}`), nil), 1, 0)
	var got []string
	for _, r := range pendingRecords(t, e.sp) {
		v := NewRecordView(r, false)
		got = append(got, v.Type+" "+v.UserID)
	}
	if !slices.Equal(got, []string{"identify 12345", "track 7.5"}) {
		t.Errorf("listed as %q", got)
	}
}
