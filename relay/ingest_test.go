package relay

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gwenrelay/gwenrelay/spool"
)

// ingestTestNow is the receive time the ingest tests give the handler: a week
// after the example events, so the 7-day bound is exercised at a known instant
// and stored receive times can be compared exactly.
var ingestTestNow = time.Date(2024, 6, 10, 12, 0, 0, 0, time.UTC)

const ingestTestToken = "tok-primary-7b1c0e"

// openIngestSpool opens a real spool in a temporary directory (or at path)
// and registers a cleanup that checks the file's consistency before closing it.
func openIngestSpool(tb testing.TB, path string, opt spool.Options) *spool.Spool {
	tb.Helper()
	if path == "" {
		path = filepath.Join(tb.TempDir(), "spool.db")
	}
	sp, err := spool.Open(path, opt)
	if err != nil {
		tb.Fatalf("spool.Open: %v", err)
	}
	tb.Cleanup(func() {
		if err := sp.Check(); err != nil {
			tb.Errorf("spool check: %v", err)
		}
		if err := sp.Close(); err != nil {
			tb.Errorf("spool close: %v", err)
		}
	})
	return sp
}

// ingestEnvConfig shapes one test environment; the zero value is a spool with
// a 24h dedup window, one bearer token and the default limits.
type ingestEnvConfig struct {
	spoolPath   string
	spoolOpt    spool.Options
	auth        *Auth
	maxBody     int64
	maxInFlight int
	maxBuffered int64
	store       func(*spool.Spool) Store // wraps the real spool, e.g. to make it fail
}

// ingestEnv is a real spool behind a real HTTP server running the relay's routes.
type ingestEnv struct {
	sp     *spool.Spool
	ingest *Ingest
	server *Server
	ts     *httptest.Server
}

func newIngestEnv(t *testing.T, cfg ingestEnvConfig) *ingestEnv {
	t.Helper()
	if cfg.spoolOpt.DedupWindow == 0 {
		cfg.spoolOpt.DedupWindow = 24 * time.Hour
	}
	sp := openIngestSpool(t, cfg.spoolPath, cfg.spoolOpt)
	if cfg.auth == nil {
		a, err := NewAuth([]string{ingestTestToken}, false, nil, "")
		if err != nil {
			t.Fatalf("NewAuth: %v", err)
		}
		cfg.auth = a
	}
	var store Store = sp
	if cfg.store != nil {
		store = cfg.store(sp)
	}
	ingest := NewIngest(IngestConfig{
		Store:       store,
		Auth:        cfg.auth,
		MaxBody:     cfg.maxBody,
		MaxInFlight: cfg.maxInFlight,
		MaxBuffered: cfg.maxBuffered,
		Now:         func() time.Time { return ingestTestNow },
		Logger:      slog.New(slog.DiscardHandler),
	})
	srv := NewServer(ingest)
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close) // runs before the spool's cleanup (LIFO)
	return &ingestEnv{sp: sp, ingest: ingest, server: srv, ts: ts}
}

// ingestReply is a complete HTTP answer.
type ingestReply struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request. Headers with an empty value are removed, so a test
// can drop a default (e.g. "Content-Type": "").
func (e *ingestEnv) do(t *testing.T, method, path string, body []byte, hdr map[string]string) ingestReply {
	t.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	if body == nil {
		req.Body = http.NoBody
		req.ContentLength = 0
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading answer: %v", method, path, err)
	}
	return ingestReply{status: resp.StatusCode, header: resp.Header, body: b}
}

// post sends body to /webhook with a valid bearer token and
// Content-Type: application/json unless hdr overrides them.
func (e *ingestEnv) post(t *testing.T, body []byte, hdr map[string]string) ingestReply {
	t.Helper()
	h := map[string]string{
		"Authorization": "Bearer " + ingestTestToken,
		"Content-Type":  "application/json",
	}
	for k, v := range hdr {
		h[k] = v
	}
	return e.do(t, http.MethodPost, "/webhook", body, h)
}

// wantError checks a failure answer: its status, a JSON body that is exactly
// {"error": msg}, and (for 503) the Retry-After header.
func wantError(t *testing.T, r ingestReply, status int, msg string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var got map[string]any
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("error body is not JSON: %v: %q", err, r.body)
	}
	if len(got) != 1 || got["error"] != msg {
		t.Errorf("body %s, want {\"error\": %q}", bytes.TrimSpace(r.body), msg)
	}
}

func wantRetryAfter(t *testing.T, r ingestReply, seconds string) {
	t.Helper()
	if got := r.header.Get("Retry-After"); got != seconds {
		t.Errorf("Retry-After %q, want %q", got, seconds)
	}
}

// wantAccepted checks a 2xx answer: status, exactly the keys accepted,
// duplicates and ids, and the counts. It returns the ids.
func wantAccepted(t *testing.T, r ingestReply, status, accepted, duplicates int) []uint64 {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &keys); err != nil {
		t.Fatalf("answer is not a JSON object: %v: %q", err, r.body)
	}
	var names []string
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	if !slices.Equal(names, []string{"accepted", "duplicates", "ids"}) {
		t.Errorf("answer keys %v, want [accepted duplicates ids]", names)
	}
	var got ingestResponse
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("answer: %v: %q", err, r.body)
	}
	if got.Accepted != accepted || got.Duplicates != duplicates {
		t.Errorf("accepted %d duplicates %d, want %d and %d; body %s", got.Accepted, got.Duplicates, accepted, duplicates, r.body)
	}
	if len(got.IDs) != accepted+duplicates {
		t.Errorf("%d ids for %d events: %s", len(got.IDs), accepted+duplicates, r.body)
	}
	return got.IDs
}

func spoolStats(t *testing.T, sp *spool.Spool) spool.Stats {
	t.Helper()
	st, err := sp.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	st.FileSize = 0 // bbolt grows its file in steps unrelated to the content
	return st
}

func pendingRecords(t *testing.T, sp *spool.Spool) []spool.Record {
	t.Helper()
	recs, err := sp.ReadPending(0, 100000)
	if err != nil {
		t.Fatalf("ReadPending: %v", err)
	}
	return recs
}

// wantNothingStored checks that a refused request left no trace in the spool.
func wantNothingStored(t *testing.T, sp *spool.Spool, before spool.Stats) {
	t.Helper()
	if after := spoolStats(t, sp); after != before {
		t.Errorf("spool changed by a refused request: before %+v, after %+v", before, after)
	}
}

func mustCanonical(t testing.TB, raw []byte) []byte {
	t.Helper()
	c, err := canonicalJSON(raw)
	if err != nil {
		t.Fatalf("canonicalJSON(%s): %v", raw, err)
	}
	return c
}

// wantRecord checks that rec holds the event sent as raw (without an
// Idempotency-Key) exactly as the relay promises to store it.
func wantRecord(t *testing.T, rec spool.Record, raw []byte) {
	t.Helper()
	canon := mustCanonical(t, raw)
	if !bytes.Equal(rec.Event, canon) {
		t.Errorf("record %d event\n%s\nwant\n%s", rec.ID, rec.Event, canon)
	}
	if rec.Kind != spool.KindGWEN {
		t.Errorf("record %d kind %d, want KindGWEN", rec.ID, rec.Kind)
	}
	if !rec.ReceivedAt.Equal(ingestTestNow) {
		t.Errorf("record %d received at %v, want %v", rec.ID, rec.ReceivedAt, ingestTestNow)
	}
	key := dedupKey("", 0, canon)
	if !bytes.Equal(rec.Key, key) {
		t.Errorf("record %d key %x, want %x", rec.ID, rec.Key, key)
	}
	if rec.MessageID != messageIDFor(key) {
		t.Errorf("record %d messageId %q, want %q", rec.ID, rec.MessageID, messageIDFor(key))
	}
}

func ingestGzip(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readIngestExamples returns the example GWEN bodies in file-name order.
func readIngestExamples(tb testing.TB) [][]byte {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "examples", "*.json"))
	if err != nil {
		tb.Fatal(err)
	}
	if len(paths) != 6 {
		tb.Fatalf("found %d example files, want 6", len(paths))
	}
	sort.Strings(paths)
	var out [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// jsonArray joins events into a JSON array body.
func ingestJSONArray(events ...[]byte) []byte {
	return append(append([]byte("["), bytes.Join(events, []byte(","))...), ']')
}

// simpleEvent is a small valid event; n makes it distinct.
func ingestEvent(n int) []byte {
	return fmt.Appendf(nil, `{"type":"wallet_update","userId":"user-%d","timestamp":1717416000}`, n)
}

const errTSRange = "timestamp: out of range (must be between 1970 and 7 days from now)"

func TestIngest_Accepts(t *testing.T) {
	examples := readIngestExamples(t)

	t.Run("single example object", func(t *testing.T) {
		for i, ex := range examples {
			e := newIngestEnv(t, ingestEnvConfig{})
			ids := wantAccepted(t, e.post(t, ex, nil), http.StatusAccepted, 1, 0)
			recs := pendingRecords(t, e.sp)
			if len(recs) != 1 || ids[0] != recs[0].ID {
				t.Fatalf("example %d: ids %v, records %d", i, ids, len(recs))
			}
			wantRecord(t, recs[0], ex)
		}
	})

	t.Run("array of all examples in order", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		ids := wantAccepted(t, e.post(t, ingestJSONArray(examples...), nil), http.StatusAccepted, len(examples), 0)
		recs := pendingRecords(t, e.sp)
		if len(recs) != len(examples) {
			t.Fatalf("%d records, want %d", len(recs), len(examples))
		}
		for i, rec := range recs {
			if rec.ID != ids[i] {
				t.Errorf("ids[%d] = %d, record id %d", i, ids[i], rec.ID)
			}
			wantRecord(t, rec, examples[i])
		}
		if st := spoolStats(t, e.sp); st.Pending != int64(len(examples)) || st.DedupKeys != int64(len(examples)) {
			t.Errorf("stats %+v", st)
		}
	})

	for _, tc := range []struct {
		name string
		body string
	}{
		{"no timestamp", `{"type":"mission_update","userId":"u"}`},
		{"null timestamp", `{"type":"mission_update","userId":"u","timestamp":null}`},
		{"millisecond timestamp", `{"type":"mission_update","userId":"u","timestamp":1717416000123}`},
		{"numeric string timestamp", `{"type":"mission_update","userId":"u","timestamp":"1717416000.5"}`},
		{"RFC 3339 timestamp", `{"type":"mission_update","userId":"u","timestamp":"2024-06-03T12:00:00+02:00"}`},
		{"timestamp 7 days ahead", fmt.Sprintf(`{"type":"mission_update","userId":"u","timestamp":%d}`, ingestTestNow.Add(7*24*time.Hour).Unix())},
		{"unknown type and extra fields kept", `{"type":"brand_new","userId":"u","extra":{"k":[1,2]},"segmentId":7,"productId":null,"state":null,"updates":null}`},
		{"surrounding whitespace", " \r\n\t{\"type\":\"wallet\",\"userId\":\"u\"}\n "},
		{"array with whitespace", " [ {\"type\":\"wallet\",\"userId\":\"u\"} ] "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{})
			wantAccepted(t, e.post(t, []byte(tc.body), nil), http.StatusAccepted, 1, 0)
			recs := pendingRecords(t, e.sp)
			if len(recs) != 1 {
				t.Fatalf("%d records, want 1", len(recs))
			}
			ev := tc.body
			if s := strings.TrimSpace(ev); strings.HasPrefix(s, "[") {
				ev = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
			}
			wantRecord(t, recs[0], []byte(ev))
		})
	}

	t.Run("1000 events", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		evs := make([][]byte, MaxEventsPerRequest)
		for i := range evs {
			evs[i] = ingestEvent(i)
		}
		wantAccepted(t, e.post(t, ingestJSONArray(evs...), nil), http.StatusAccepted, MaxEventsPerRequest, 0)
		if st := spoolStats(t, e.sp); st.Pending != MaxEventsPerRequest {
			t.Errorf("%d pending, want %d", st.Pending, MaxEventsPerRequest)
		}
	})
}

func TestIngest_ContentHeaders(t *testing.T) {
	body := ingestEvent(1)

	for _, tc := range []struct {
		name string
		hdr  map[string]string
	}{
		{"missing Content-Type taken as JSON", map[string]string{"Content-Type": ""}},
		{"application/json; charset=utf-8", map[string]string{"Content-Type": "application/json; charset=utf-8"}},
		{"+json suffix", map[string]string{"Content-Type": "application/vnd.gwen+json"}},
		{"identity encoding", map[string]string{"Content-Encoding": "identity"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{})
			wantAccepted(t, e.post(t, body, tc.hdr), http.StatusAccepted, 1, 0)
			wantRecord(t, pendingRecords(t, e.sp)[0], body)
		})
	}

	for _, enc := range []string{"gzip", "x-gzip", "GZIP"} {
		t.Run("Content-Encoding "+enc, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{})
			wantAccepted(t, e.post(t, ingestGzip(t, body), map[string]string{"Content-Encoding": enc}), http.StatusAccepted, 1, 0)
			wantRecord(t, pendingRecords(t, e.sp)[0], body)
		})
	}

	for _, tc := range []struct {
		name string
		hdr  map[string]string
		msg  string
	}{
		{"text/plain", map[string]string{"Content-Type": "text/plain"}, `content type "text/plain" is not JSON: send application/json`},
		{"form", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, `content type "application/x-www-form-urlencoded" is not JSON: send application/json`},
		{"unparsable content type", map[string]string{"Content-Type": "application/json; ;;"}, `content type "application/json; ;;" is not JSON: send application/json`},
		{"br encoding", map[string]string{"Content-Encoding": "br"}, `content encoding "br" is not supported: send gzip or no encoding`},
		{"deflate encoding", map[string]string{"Content-Encoding": "deflate"}, `content encoding "deflate" is not supported: send gzip or no encoding`},
	} {
		t.Run("415 "+tc.name, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{})
			before := spoolStats(t, e.sp)
			wantError(t, e.post(t, body, tc.hdr), http.StatusUnsupportedMediaType, tc.msg)
			wantNothingStored(t, e.sp, before)
		})
	}

	for _, tc := range []struct {
		name string
		body []byte
		msg  string
	}{
		{"not gzip", []byte("this is not gzip"), "body is not valid gzip: gzip: invalid header"},
		{"empty", nil, "body is not valid gzip: EOF"},
		{"truncated", ingestGzip(t, body)[:20], "body is not valid gzip: unexpected EOF"},
		{"garbage after the stream", append(ingestGzip(t, body), "junk after the gzip stream"...), "body is not valid gzip: gzip: invalid header"},
	} {
		t.Run("400 invalid gzip "+tc.name, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{})
			before := spoolStats(t, e.sp)
			wantError(t, e.post(t, tc.body, map[string]string{"Content-Encoding": "gzip"}), http.StatusBadRequest, tc.msg)
			wantNothingStored(t, e.sp, before)
		})
	}

	t.Run("gzip body that is not JSON", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		wantError(t, e.post(t, ingestGzip(t, []byte("nope")), map[string]string{"Content-Encoding": "gzip"}), http.StatusBadRequest, "body is not valid JSON")
	})
}

func TestIngest_Rejects400(t *testing.T) {
	good := string(ingestEvent(0))
	fiveWithBadFourth := ingestJSONArray(ingestEvent(0), ingestEvent(1), ingestEvent(2),
		[]byte(`{"type":"wallet_update","userId":true}`), ingestEvent(4))
	tooMany := make([][]byte, MaxEventsPerRequest+1)
	for i := range tooMany {
		tooMany[i] = ingestEvent(i)
	}
	ahead := ingestTestNow.Add(7*24*time.Hour + time.Second)

	for _, tc := range []struct {
		name string
		body []byte
		msg  string
	}{
		{"not JSON", []byte(`{"type":`), "body is not valid JSON"},
		{"empty body", nil, "body is not valid JSON"},
		{"whitespace body", []byte(" \n "), "body is not valid JSON"},
		{"invalid UTF-8 in a string", []byte("{\"type\":\"wallet\",\"userId\":\"u\xff\"}"), "body is not valid UTF-8"},
		{"invalid UTF-8 outside strings", []byte("\xff" + good), "body is not valid UTF-8"},
		{"trailing garbage", []byte(good + " x"), "body is not valid JSON"},
		{"two objects", []byte(good + good), "body is not valid JSON"},
		{"garbage after array", append(ingestJSONArray([]byte(good)), ']'), "body is not valid JSON"},
		{"scalar number", []byte(`42`), "event must be a JSON object (got number)"},
		{"scalar string", []byte(`"hello"`), "event must be a JSON object (got string)"},
		{"scalar boolean", []byte(`true`), "event must be a JSON object (got boolean)"},
		{"null", []byte(`null`), "event must be a JSON object (got null)"},
		{"empty array", []byte(`[]`), "empty array: send at least one event"},
		{"empty array with whitespace", []byte(" [ \n ] "), "empty array: send at least one event"},
		{"1001 events", ingestJSONArray(tooMany...), "1001 events in one request; at most 1000 are allowed"},
		{"wrong type userId", []byte(`{"type":"wallet_update","userId":42}`), "userId: must be a string (got number)"},
		{"wrong type userId in array", fiveWithBadFourth, "events[3].userId: must be a string (got boolean)"},
		{"wrong type type", []byte(`{"type":["a"],"userId":"u"}`), "type: must be a string (got array)"},
		{"wrong type state", []byte(`{"type":"t","userId":"u","state":[1]}`), "state: must be an object or null (got array)"},
		{"wrong type updates", []byte(`{"type":"t","userId":"u","updates":{}}`), "updates: must be an array or null (got object)"},
		{"wrong type segmentId", []byte(`{"type":"t","userId":"u","segmentId":{}}`), "segmentId: must be a string, number or null (got object)"},
		{"wrong type productId in array", ingestJSONArray([]byte(good), []byte(`{"type":"t","userId":"u","productId":false}`)), "events[1].productId: must be a string, number or null (got boolean)"},
		{"array element not an object", ingestJSONArray([]byte(good), []byte(`7`)), "events[1]: event must be a JSON object (got number)"},
		{"array element null", ingestJSONArray([]byte(`null`)), "events[0]: event must be a JSON object (got null)"},
		{"missing type", []byte(`{"userId":"u"}`), "type: is required"},
		{"empty type", []byte(`{"type":"","userId":"u"}`), "type: must be a non-empty string"},
		{"blank type", []byte(`{"type":"  ","userId":"u"}`), "type: must not be blank"},
		{"missing userId", []byte(`{"type":"t"}`), "userId: is required"},
		{"empty userId", []byte(`{"type":"t","userId":""}`), "userId: must be a non-empty string"},
		{"missing userId in array", ingestJSONArray([]byte(good), []byte(good), []byte(`{"type":"t"}`)), "events[2].userId: is required"},
		{"negative timestamp", []byte(`{"type":"t","userId":"u","timestamp":-1}`), errTSRange},
		{"timestamp beyond 7 days", fmt.Appendf(nil, `{"type":"t","userId":"u","timestamp":%d}`, ahead.Unix()), errTSRange},
		{"millisecond timestamp beyond 7 days", fmt.Appendf(nil, `{"type":"t","userId":"u","timestamp":%d}`, ahead.UnixMilli()), errTSRange},
		{"RFC 3339 timestamp before 1970", []byte(`{"type":"t","userId":"u","timestamp":"1969-12-31T23:59:59Z"}`), errTSRange},
		{"microsecond timestamp", []byte(`{"type":"t","userId":"u","timestamp":1717416000000000}`), errTSRange},
		{"timestamp out of range in array", ingestJSONArray([]byte(good), []byte(`{"type":"t","userId":"u","timestamp":"-5"}`)), "events[1]." + errTSRange},
		{"timestamp not a date", []byte(`{"type":"t","userId":"u","timestamp":"yesterday"}`), `timestamp: "yesterday" is neither unix seconds or milliseconds nor an RFC 3339 date-time`},
		{"timestamp wrong type", []byte(`{"type":"t","userId":"u","timestamp":true}`), "timestamp: must be unix seconds or milliseconds (a number or numeric string) or an RFC 3339 string (got boolean)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{})
			before := spoolStats(t, e.sp)
			wantError(t, e.post(t, tc.body, nil), http.StatusBadRequest, tc.msg)
			wantNothingStored(t, e.sp, before)
			if recs := pendingRecords(t, e.sp); len(recs) != 0 {
				t.Errorf("%d records stored", len(recs))
			}
		})
	}
}

// messageSize is the size of the Segment message the relay would make of raw
// (one event, no Idempotency-Key), as the drainer will send it.
func ingestMessageSize(t *testing.T, raw []byte) int {
	t.Helper()
	ev, err := ParseEvent(raw, ingestTestNow)
	if err != nil {
		t.Fatalf("ParseEvent: %v", err)
	}
	msg, err := DefaultMapping("").Map(ev, ingestTestNow, messageIDFor(dedupKey("", 0, mustCanonical(t, raw))))
	if err != nil {
		t.Fatalf("Map: %v", err)
	}
	enc, err := MarshalMessage(msg)
	if err != nil {
		t.Fatalf("MarshalMessage: %v", err)
	}
	return len(enc)
}

func TestIngest_Rejects413(t *testing.T) {
	const maxBody = 4096
	// padded returns a valid event of exactly n bytes (JSON whitespace at the end).
	padded := func(t *testing.T, n int) []byte {
		b := ingestEvent(1)
		if len(b) > n {
			t.Fatalf("event is %d bytes, more than %d", len(b), n)
		}
		return append(b, bytes.Repeat([]byte(" "), n-len(b))...)
	}

	t.Run("body of exactly MaxBody accepted", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{maxBody: maxBody})
		wantAccepted(t, e.post(t, padded(t, maxBody), nil), http.StatusAccepted, 1, 0)
	})
	t.Run("body over MaxBody", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{maxBody: maxBody})
		before := spoolStats(t, e.sp)
		wantError(t, e.post(t, padded(t, maxBody+1), nil), http.StatusRequestEntityTooLarge, "body is over the 4096-byte limit")
		wantNothingStored(t, e.sp, before)
	})
	t.Run("body far over MaxBody", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{maxBody: maxBody})
		wantError(t, e.post(t, padded(t, 64*maxBody), nil), http.StatusRequestEntityTooLarge, "body is over the 4096-byte limit")
	})
	t.Run("gzip decompressing to exactly MaxBody accepted", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{maxBody: maxBody})
		wantAccepted(t, e.post(t, ingestGzip(t, padded(t, maxBody)), map[string]string{"Content-Encoding": "gzip"}), http.StatusAccepted, 1, 0)
	})
	t.Run("gzip decompressing over MaxBody", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{maxBody: maxBody})
		before := spoolStats(t, e.sp)
		for _, n := range []int{maxBody + 1, 1 << 20} {
			wire := ingestGzip(t, padded(t, n))
			if len(wire) >= maxBody {
				t.Fatalf("compressed body is %d bytes, not under the limit", len(wire))
			}
			wantError(t, e.post(t, wire, map[string]string{"Content-Encoding": "gzip"}), http.StatusRequestEntityTooLarge, "decompressed body is over the 4096-byte limit")
		}
		wantNothingStored(t, e.sp, before)
	})
	t.Run("gzip compressed body over MaxBody", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{maxBody: maxBody})
		// Digits of a counter compress poorly enough to stay over the limit.
		var sb strings.Builder
		for i := 0; sb.Len() < 8*maxBody; i++ {
			sb.WriteString(strconv.Itoa(i * 7919))
		}
		ev := fmt.Appendf(nil, `{"type":"t","userId":"u","pad":"%s"}`, sb.String())
		wire := ingestGzip(t, ev)
		if len(wire) <= maxBody {
			t.Fatalf("compressed body is only %d bytes", len(wire))
		}
		wantError(t, e.post(t, wire, map[string]string{"Content-Encoding": "gzip"}), http.StatusRequestEntityTooLarge, "body is over the 4096-byte limit")
	})

	// An event whose Segment message is exactly 32,000 bytes passes; one byte
	// more is refused, alone or inside an array, and nothing is stored.
	withPad := func(n int) []byte {
		return fmt.Appendf(nil, `{"type":"wallet_update","userId":"u1","timestamp":1717416000,"state":{"pad":"%s"}}`, strings.Repeat("x", n))
	}
	base := ingestMessageSize(t, withPad(0))
	fits := MaxMessageBytes - base
	if got := ingestMessageSize(t, withPad(fits)); got != MaxMessageBytes {
		t.Fatalf("message with %d bytes of padding is %d bytes, want %d", fits, got, MaxMessageBytes)
	}
	t.Run("message of exactly 32000 bytes accepted", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		wantAccepted(t, e.post(t, withPad(fits), nil), http.StatusAccepted, 1, 0)
		wantRecord(t, pendingRecords(t, e.sp)[0], withPad(fits))
	})
	t.Run("message of 32001 bytes", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		before := spoolStats(t, e.sp)
		wantError(t, e.post(t, withPad(fits+1), nil), http.StatusRequestEntityTooLarge,
			"the Segment message would be 32001 bytes; Segment accepts at most 32000")
		wantNothingStored(t, e.sp, before)
	})
	t.Run("oversized message inside an array", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		before := spoolStats(t, e.sp)
		wantError(t, e.post(t, ingestJSONArray(ingestEvent(1), withPad(fits+1), ingestEvent(2)), nil), http.StatusRequestEntityTooLarge,
			"events[1]: the Segment message would be 32001 bytes; Segment accepts at most 32000")
		wantNothingStored(t, e.sp, before)
	})
	t.Run("pretty-printed body measured as sent to Segment", func(t *testing.T) {
		// Whitespace in the body does not count: Segment gets compact JSON.
		e := newIngestEnv(t, ingestEnvConfig{})
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, withPad(fits), "", "        "); err != nil {
			t.Fatal(err)
		}
		wantAccepted(t, e.post(t, pretty.Bytes(), nil), http.StatusAccepted, 1, 0)
	})
}

func TestIngest_AllOrNothing(t *testing.T) {
	t.Run("one bad event stores nothing", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		wantAccepted(t, e.post(t, ingestEvent(0), nil), http.StatusAccepted, 1, 0)
		before := spoolStats(t, e.sp)
		body := ingestJSONArray(ingestEvent(1), ingestEvent(2), []byte(`{"userId":"u"}`), ingestEvent(3))
		wantError(t, e.post(t, body, nil), http.StatusBadRequest, "events[2].type: is required")
		wantNothingStored(t, e.sp, before)
		// The good events of the refused request are not remembered as seen.
		wantAccepted(t, e.post(t, ingestJSONArray(ingestEvent(1), ingestEvent(2), ingestEvent(3)), nil), http.StatusAccepted, 3, 0)
	})

	t.Run("quota", func(t *testing.T) {
		evA := ingestEvent(1)
		// Measure what evA takes in a scratch spool, then give the real spool
		// exactly that quota: evA fills it.
		scratch := newIngestEnv(t, ingestEnvConfig{})
		wantAccepted(t, scratch.post(t, evA, nil), http.StatusAccepted, 1, 0)
		quota := spoolStats(t, scratch.sp).Bytes

		e := newIngestEnv(t, ingestEnvConfig{spoolOpt: spool.Options{MaxBytes: quota}})
		if r := e.do(t, http.MethodGet, "/readyz", nil, nil); r.status != http.StatusOK {
			t.Fatalf("/readyz %d before the quota is reached: %s", r.status, r.body)
		}
		// A request that does not fit is refused whole.
		before := spoolStats(t, e.sp)
		r := e.post(t, ingestJSONArray(evA, ingestEvent(2)), nil)
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503: %s", r.status, r.body)
		}
		wantRetryAfter(t, r, "30")
		wantNothingStored(t, e.sp, before)

		wantAccepted(t, e.post(t, evA, nil), http.StatusAccepted, 1, 0)
		if !e.sp.OverQuota() {
			t.Fatalf("spool not over quota at %d of %d bytes", spoolStats(t, e.sp).Bytes, quota)
		}
		r = e.do(t, http.MethodGet, "/readyz", nil, nil)
		if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), `"status":"spool over quota"`) {
			t.Errorf("/readyz over quota: %d %s", r.status, r.body)
		}
		before = spoolStats(t, e.sp)
		r = e.post(t, ingestEvent(3), nil)
		wantError(t, r, http.StatusServiceUnavailable, fmt.Sprintf("%v (%d of %d bytes used); retry later", spool.ErrOverQuota, quota, quota))
		wantRetryAfter(t, r, "30")
		wantNothingStored(t, e.sp, before)
		// A retry of what is already spooled needs no room: still 200.
		wantAccepted(t, e.post(t, evA, nil), http.StatusOK, 0, 1)
	})
}

// failingIngestStore is the real spool whose Append fails with err.
type failingIngestStore struct {
	*spool.Spool
	err error
}

func (f failingIngestStore) Append([]spool.Entry) (spool.AppendResult, error) {
	return spool.AppendResult{}, f.err
}

func TestIngest_StoreFailures(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		retry string
		msg   string
	}{
		{"disk full", fmt.Errorf("commit spool /x: write /x: %w", &os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}), "30", "spool disk is full; nothing was stored, retry later"},
		{"quota exceeded on disk", fmt.Errorf("commit spool /x: %w", syscall.EDQUOT), "30", "spool disk is full; nothing was stored, retry later"},
		{"closed", fmt.Errorf("wrapped: %w", spool.ErrClosed), "5", "gwenrelay is shutting down; retry shortly"},
		{"any other commit failure", errors.New("commit spool /x: input/output error"), "5", "spool could not commit; nothing was stored, retry later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newIngestEnv(t, ingestEnvConfig{store: func(sp *spool.Spool) Store { return failingIngestStore{sp, tc.err} }})
			r := e.post(t, ingestEvent(1), nil)
			wantError(t, r, http.StatusServiceUnavailable, tc.msg)
			wantRetryAfter(t, r, tc.retry)
			if st := spoolStats(t, e.sp); st.Pending != 0 {
				t.Errorf("%d pending", st.Pending)
			}
		})
	}

	t.Run("real closed spool", func(t *testing.T) {
		sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{DedupWindow: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := sp.Check(); err != nil {
			t.Fatalf("check: %v", err)
		}
		if err := sp.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		auth, err := NewAuth(nil, true, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(NewServer(NewIngest(IngestConfig{Store: sp, Auth: auth, Logger: slog.New(slog.DiscardHandler)})).Handler())
		defer ts.Close()
		resp, err := ts.Client().Post(ts.URL+"/webhook", "application/json", bytes.NewReader(ingestEvent(1)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r := ingestReply{status: resp.StatusCode, header: resp.Header, body: b}
		wantError(t, r, http.StatusServiceUnavailable, "gwenrelay is shutting down; retry shortly")
		wantRetryAfter(t, r, "5")
	})

	t.Run("after Stop", func(t *testing.T) {
		e := newIngestEnv(t, ingestEnvConfig{})
		e.ingest.Stop()
		r := e.post(t, ingestEvent(1), nil)
		wantError(t, r, http.StatusServiceUnavailable, "gwenrelay is shutting down; retry shortly")
		wantRetryAfter(t, r, "5")
		if st := spoolStats(t, e.sp); st.Pending != 0 {
			t.Errorf("%d pending after Stop", st.Pending)
		}
	})
}

// blockingIngestStore is the real spool whose Append waits for release; entered
// receives once per Append that started.
type blockingIngestStore struct {
	*spool.Spool
	entered chan struct{}
	release chan struct{}
}

func (b *blockingIngestStore) Append(e []spool.Entry) (spool.AppendResult, error) {
	b.entered <- struct{}{}
	<-b.release
	return b.Spool.Append(e)
}

func TestIngest_Overload(t *testing.T) {
	bs := &blockingIngestStore{entered: make(chan struct{}, 1), release: make(chan struct{})}
	e := newIngestEnv(t, ingestEnvConfig{maxInFlight: 1, store: func(sp *spool.Spool) Store {
		bs.Spool = sp
		return bs
	}})

	first := make(chan ingestReply, 1)
	go func() {
		// t.Fatal must not run off the test goroutine: send the raw answer.
		req, _ := http.NewRequest(http.MethodPost, e.ts.URL+"/webhook", bytes.NewReader(ingestEvent(1)))
		req.Header.Set("Authorization", "Bearer "+ingestTestToken)
		resp, err := e.ts.Client().Do(req)
		if err != nil {
			first <- ingestReply{status: -1, body: []byte(err.Error())}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		first <- ingestReply{status: resp.StatusCode, header: resp.Header, body: b}
	}()
	// The first request holds the only slot once it is inside Append.
	<-bs.entered

	r := e.post(t, ingestEvent(2), nil)
	wantError(t, r, http.StatusServiceUnavailable, "too many requests in progress; retry shortly")
	wantRetryAfter(t, r, "1")

	close(bs.release)
	wantAccepted(t, <-first, http.StatusAccepted, 1, 0)
	recs := pendingRecords(t, e.sp)
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	wantRecord(t, recs[0], ingestEvent(1))

	// The slot is free again.
	wantAccepted(t, e.post(t, ingestEvent(2), nil), http.StatusAccepted, 1, 0)
}

func TestIngest_ConcurrentSameEvent(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})
	const n = 16
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, e.ts.URL+"/webhook", bytes.NewReader(ingestEvent(1)))
			req.Header.Set("Authorization", "Bearer "+ingestTestToken)
			resp, err := e.ts.Client().Do(req)
			if err != nil {
				statuses <- -1
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	if count[http.StatusAccepted] != 1 || count[http.StatusOK] != n-1 {
		t.Errorf("statuses %v, want one 202 and %d 200", count, n-1)
	}
	if recs := pendingRecords(t, e.sp); len(recs) != 1 {
		t.Errorf("%d records, want 1", len(recs))
	}
}

// nopIngestStore accepts everything without storing it.
type nopIngestStore struct {
	mu   sync.Mutex
	next uint64
}

func (s *nopIngestStore) Append(entries []spool.Entry) (spool.AppendResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res := spool.AppendResult{IDs: make([]uint64, len(entries)), Duplicate: make([]bool, len(entries))}
	for i := range entries {
		s.next++
		res.IDs[i] = s.next
	}
	return res, nil
}

func (s *nopIngestStore) OverQuota() bool { return false }

func FuzzIngestParse(f *testing.F) {
	examples := readIngestExamples(f)
	for _, ex := range examples {
		f.Add(ex, "")
	}
	f.Add(ingestJSONArray(examples...), "")
	f.Add(ingestJSONArray(examples...), "key-1")
	for _, s := range []string{
		``, ` `, `{`, `[`, `[]`, `[ ]`, `null`, `42`, `"x"`, `true`, `{}`, `[{}]`, `[1,2]`, `[[]]`,
		`{"type":"a","userId":"u"}`,
		`{"type":"a","userId":"u"} x`,
		`{"type":"a","userId":"u"}{"type":"a","userId":"u"}`,
		"{\"type\":\"a\xff\",\"userId\":\"u\"}",
		"\xef\xbb\xbf{\"type\":\"a\",\"userId\":\"u\"}",
		`{"type":"a","userId":"u","timestamp":"2024-06-01T00:00:00Z"}`,
		`{"type":"a","userId":"u","timestamp":1717416000123}`,
		`{"type":"a","userId":"u","timestamp":-1}`,
		`{"type":"a","userId":"u","timestamp":1e999999999}`,
		`{"type":"a","userId":"u","state":{"n":1.50,"big":12345678901234567890,"e":-0e-0}}`,
		`{"type":"a","userId":"u","type":"b","x":{"y":1,"y":2}}`,
		`{"type":"a\u2028<>&","userId":"\ud800","\u0000":"\/"}`,
		`[{"type":"a","userId":"u"},{"type":"a","userId":"u"}]`,
		`[{"type":"a","userId":"u"},{"type":"a"}]`,
		`{"type":"a","userId":"u","state":{"pad":"` + strings.Repeat("\\u003c", 6000) + `"}}`,
		strings.Repeat("[", 200) + strings.Repeat("]", 200),
	} {
		f.Add([]byte(s), "")
	}

	ingest := NewIngest(IngestConfig{
		Store:  &nopIngestStore{},
		Auth:   &Auth{insecure: true},
		Now:    func() time.Time { return ingestTestNow },
		Logger: slog.New(slog.DiscardHandler),
	})
	mapping := DefaultMapping("")

	f.Fuzz(func(t *testing.T, body []byte, idemKey string) {
		entries, aerr := ingest.parse(body, idemKey, ingestTestNow)

		// The full handler must agree with the parser, and never panic.
		req := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if idemKey != "" {
			req.Header["Idempotency-Key"] = []string{idemKey}
		}
		rec := httptest.NewRecorder()
		ingest.ServeHTTP(rec, req)

		if aerr != nil {
			if entries != nil {
				t.Fatalf("entries returned with error %v", aerr)
			}
			if aerr.status != http.StatusBadRequest && aerr.status != http.StatusRequestEntityTooLarge {
				t.Fatalf("parse refused with status %d: %s", aerr.status, aerr.msg)
			}
			if aerr.msg == "" || !utf8.ValidString(aerr.msg) || len(aerr.msg) > 1024 {
				t.Fatalf("bad error message %q", aerr.msg)
			}
			if rec.Code != aerr.status {
				t.Fatalf("handler answered %d, parser %d (%s)", rec.Code, aerr.status, aerr.msg)
			}
			return
		}
		if rec.Code != http.StatusAccepted {
			t.Fatalf("parser accepted, handler answered %d: %s", rec.Code, rec.Body)
		}
		if len(entries) == 0 || len(entries) > MaxEventsPerRequest {
			t.Fatalf("accepted %d entries", len(entries))
		}
		for i, e := range entries {
			if len(e.Key) == 0 {
				t.Fatalf("entry %d: empty key", i)
			}
			if want := dedupKey(idemKey, i, e.Event); !bytes.Equal(e.Key, want) {
				t.Fatalf("entry %d: key %x, want %x", i, e.Key, want)
			}
			if e.MessageID != messageIDFor(e.Key) || len(e.MessageID) >= 100 {
				t.Fatalf("entry %d: messageId %q", i, e.MessageID)
			}
			if e.Kind != spool.KindGWEN || !e.ReceivedAt.Equal(ingestTestNow) {
				t.Fatalf("entry %d: kind %d received %v", i, e.Kind, e.ReceivedAt)
			}
			if !json.Valid(e.Event) || len(e.Event) == 0 || e.Event[0] != '{' {
				t.Fatalf("entry %d: stored event is not a JSON object: %q", i, e.Event)
			}
			if again, err := canonicalJSON(e.Event); err != nil || !bytes.Equal(again, e.Event) {
				t.Fatalf("entry %d: stored event is not canonical: %q -> %q, %v", i, e.Event, again, err)
			}
			ev, err := ParseEvent(e.Event, ingestTestNow)
			if err != nil {
				t.Fatalf("entry %d: stored event does not re-parse: %v: %s", i, err, e.Event)
			}
			msg, err := mapping.Map(ev, e.ReceivedAt, e.MessageID)
			if err != nil {
				t.Fatalf("entry %d: stored event does not map: %v", i, err)
			}
			enc, err := MarshalMessage(msg)
			if err != nil {
				t.Fatalf("entry %d: MarshalMessage: %v", i, err)
			}
			if len(enc) > MaxMessageBytes {
				t.Fatalf("entry %d: accepted an event whose message is %d bytes", i, len(enc))
			}
		}
	})
}

// flakyIngestStore is the real spool whose Append fails while failing is set.
type flakyIngestStore struct {
	*spool.Spool
	failing atomic.Bool
}

func (f *flakyIngestStore) Append(e []spool.Entry) (spool.AppendResult, error) {
	if f.failing.Load() {
		return spool.AppendResult{}, fmt.Errorf("commit spool /x: %w", syscall.ENOSPC)
	}
	return f.Spool.Append(e)
}

func TestIngest_ReadyzFollowsCommitFailures(t *testing.T) {
	var store *flakyIngestStore
	e := newIngestEnv(t, ingestEnvConfig{store: func(sp *spool.Spool) Store {
		store = &flakyIngestStore{Spool: sp}
		return store
	}})
	ready := func() int {
		t.Helper()
		return e.do(t, http.MethodGet, "/readyz", nil, nil).status
	}
	if got := ready(); got != http.StatusOK {
		t.Fatalf("readyz before any failure: %d, want 200", got)
	}
	store.failing.Store(true)
	wantError(t, e.post(t, ingestEvent(1), nil), http.StatusServiceUnavailable, "spool disk is full; nothing was stored, retry later")
	if got := ready(); got != http.StatusServiceUnavailable {
		t.Errorf("readyz while commits fail: %d, want 503", got)
	}
	store.failing.Store(false)
	wantAccepted(t, e.post(t, ingestEvent(2), nil), http.StatusAccepted, 1, 0)
	if got := ready(); got != http.StatusOK {
		t.Errorf("readyz after a commit succeeded again: %d, want 200", got)
	}
}

// TestIngest_BufferedBytes: bodies in progress may not take more memory than
// MaxBuffered; a request that would go over it gets 503, a lone one always
// goes through.
func TestIngest_BufferedBytes(t *testing.T) {
	bs := &blockingIngestStore{entered: make(chan struct{}, 1), release: make(chan struct{})}
	body := ingestEvent(1)
	e := newIngestEnv(t, ingestEnvConfig{maxBuffered: int64(4 * len(body)), store: func(sp *spool.Spool) Store {
		bs.Spool = sp
		return bs
	}})
	first := make(chan ingestReply, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, e.ts.URL+"/webhook", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+ingestTestToken)
		resp, err := e.ts.Client().Do(req)
		if err != nil {
			first <- ingestReply{status: -1, body: []byte(err.Error())}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		first <- ingestReply{status: resp.StatusCode, header: resp.Header, body: b}
	}()
	<-bs.entered // the first body (3x its size reserved) is in progress

	r := e.post(t, ingestEvent(2), nil)
	wantError(t, r, http.StatusServiceUnavailable, "too much request data in progress; retry shortly")
	wantRetryAfter(t, r, "1")

	close(bs.release)
	wantAccepted(t, <-first, http.StatusAccepted, 1, 0)
	// Released: the same request now fits.
	wantAccepted(t, e.post(t, ingestEvent(2), nil), http.StatusAccepted, 1, 0)
}

// TestIngest_Busy: Busy is false before any webhook and true while one is in
// progress (the drainer yields to ingest on it).
func TestIngest_Busy(t *testing.T) {
	bs := &blockingIngestStore{entered: make(chan struct{}, 1), release: make(chan struct{})}
	e := newIngestEnv(t, ingestEnvConfig{store: func(sp *spool.Spool) Store {
		bs.Spool = sp
		return bs
	}})
	if e.ingest.Busy() {
		t.Fatal("Busy before any request")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequest(http.MethodPost, e.ts.URL+"/webhook", bytes.NewReader(ingestEvent(1)))
		req.Header.Set("Authorization", "Bearer "+ingestTestToken)
		if resp, err := e.ts.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-bs.entered
	if !e.ingest.Busy() {
		t.Error("not Busy while a webhook is in progress")
	}
	close(bs.release)
	<-done
	if got := e.ingest.Spooled(); got != 1 {
		t.Errorf("Spooled() = %d after one event, want 1", got)
	}
}
