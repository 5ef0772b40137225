package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// The per-request costs of the hot paths, for the profile-driven work on
// them: go test -run '^$' -bench . -benchmem ./relay/
// (allocations are exact; times move with the machine's load).

// benchEvent1K is a GWEN example event padded to 1,024 bytes, as the load
// benchmark (go run ./bench) sends.
func benchEvent1K(b *testing.B, user string) []byte {
	ev := readIngestExamples(b)[0]
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(ev, &fields); err != nil {
		b.Fatal(err)
	}
	fields["userId"], _ = json.Marshal(user)
	fields["pad"] = json.RawMessage(`""`)
	out, _ := json.Marshal(fields)
	if pad := 1024 - len(out); pad > 0 {
		fields["pad"], _ = json.Marshal(strings.Repeat("x", pad))
		out, _ = json.Marshal(fields)
	}
	return out
}

// BenchmarkIngest_Webhook is one POST /webhook of a 1 KiB event through the
// handler, the store doing nothing: everything ingest does per request
// besides HTTP parsing and the commit.
func BenchmarkIngest_Webhook(b *testing.B) {
	auth, err := NewAuth([]string{ingestTestToken}, false, nil, "")
	if err != nil {
		b.Fatal(err)
	}
	h := NewIngest(IngestConfig{Store: &nopIngestStore{}, Auth: auth, Logger: slog.New(slog.DiscardHandler)})
	benchPost(b, h, "/webhook", benchEvent1K(b, "user-bench"), "Bearer "+ingestTestToken, http.StatusAccepted)
}

// benchPost measures POSTs of body to path through h, each answered want.
func benchPost(b *testing.B, h http.Handler, path string, body []byte, authorization string, want int) {
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Authorization", authorization)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != want {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

// BenchmarkIngest_SegmentBatch is one POST /v1/batch of ten ~1 KiB track
// messages, the store doing nothing.
func BenchmarkIngest_SegmentBatch(b *testing.B) {
	auth, err := NewAuth([]string{ingestTestToken}, false, nil, "")
	if err != nil {
		b.Fatal(err)
	}
	h := NewIngest(IngestConfig{Store: &nopIngestStore{}, Auth: auth, Logger: slog.New(slog.DiscardHandler)})
	srv := NewServer(h).Handler()
	msgs := make([]string, 10)
	for i := range msgs {
		msgs[i] = fmt.Sprintf(`{"type":"track","event":"Level Up","userId":"u-%d","messageId":"m-%d","timestamp":"2024-06-10T11:59:00.000Z","properties":{"pad":%q},"context":{"library":{"name":"analytics-node","version":"3.1.0"}}}`, i, i, strings.Repeat("x", 850))
	}
	benchPost(b, srv, "/v1/batch", segmentBatch(msgs...), segmentBasic, http.StatusOK)
}

// BenchmarkDrain_GWENRecord is what the drainer does per stored GWEN event
// before analytics-go: parse it, map it, and encode the message as
// analytics-go puts it in a batch.
func BenchmarkDrain_GWENRecord(b *testing.B) {
	now := time.Now()
	entry, err := GWENEntry(benchEvent1K(b, "user-drain"), "", 0, now)
	if err != nil {
		b.Fatal(err)
	}
	r := spool.Record{ID: 1, Kind: entry.Kind, ReceivedAt: now, MessageID: entry.MessageID, Key: entry.Key, Event: entry.Event}
	m := DefaultMapping("bench")
	b.ReportAllocs()
	for b.Loop() {
		msg, err := recordMessage(r, m)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := MarshalMessage(msg); err != nil {
			b.Fatal(err)
		}
	}
}
