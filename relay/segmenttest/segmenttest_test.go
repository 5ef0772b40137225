package segmenttest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const testKey = "wk-segmenttest"

// batchBody builds a /v1/batch body the way analytics-go does.
func batchBody(ids ...string) []byte {
	msgs := make([]string, len(ids))
	for i, id := range ids {
		msgs[i] = fmt.Sprintf(`{"type":"track","messageId":%q,"userId":"u-%d","event":"E","timestamp":"2024-06-03T12:00:00Z","properties":{"s":"a,b]}[{\"c"}}`, id, i)
	}
	return []byte(`{"messageId":"batch-1","sentAt":"2024-06-03T12:00:01Z","batch":[` + strings.Join(msgs, ",") + `],"context":null}`)
}

type reply struct {
	status     int
	retryAfter string
	body       string
	err        error
	took       time.Duration
}

func post(t *testing.T, s *Server, path, auth string, body []byte, timeout time.Duration) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	c := &http.Client{Timeout: timeout}
	start := time.Now()
	resp, err := c.Do(req)
	r := reply{err: err}
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		r.status, r.retryAfter, r.body = resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
	}
	r.took = time.Since(start)
	return r
}

func basic(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

func newServer(t *testing.T) *Server {
	t.Helper()
	s := New(testKey)
	t.Cleanup(s.Close)
	return s
}

func TestAuth(t *testing.T) {
	s := newServer(t)
	for _, c := range []struct{ name, auth string }{
		{"none", ""},
		{"wrong key", basic("wk-other")},
		{"bearer", "Bearer " + testKey},
		{"not base64", "Basic !!!"},
	} {
		r := post(t, s, "/v1/batch", c.auth, batchBody("m-"+c.name), 5*time.Second)
		if r.err != nil || r.status != http.StatusUnauthorized {
			t.Errorf("%s: %d %v, want 401", c.name, r.status, r.err)
		}
	}
	if p := s.Problems(); len(p) != 4 || !strings.Contains(p[0], "Basic auth") {
		t.Errorf("problems %q, want one per refused request", p)
	}
	if len(s.Messages()) != 0 || len(s.Delivered()) != 0 {
		t.Errorf("refused requests left messages: %+v", s.Messages())
	}
	// The password is ignored, as Segment does.
	r := post(t, s, "/v1/batch", "Basic "+base64.StdEncoding.EncodeToString([]byte(testKey+":whatever")), batchBody("m-ok"), 5*time.Second)
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("right key: %d %v", r.status, r.err)
	}
	if d := s.Delivered(); d["m-ok"] != 1 || len(d) != 1 {
		t.Errorf("delivered %v", d)
	}
}

func TestMalformed(t *testing.T) {
	s := newServer(t)
	auth := basic(testKey)
	for _, c := range []struct {
		name, path string
		body       string
		status     int
		problem    string
	}{
		{"not JSON", "/v1/batch", `{"batch":[`, 400, "not JSON"},
		{"no sentAt", "/v1/batch", `{"batch":[{"type":"track","messageId":"a","timestamp":"2024-06-03T12:00:00Z"}]}`, 400, "no sentAt"},
		{"empty batch", "/v1/batch", `{"sentAt":"2024-06-03T12:00:01Z","batch":[]}`, 400, "empty batch"},
		{"no messageId", "/v1/batch", `{"sentAt":"2024-06-03T12:00:01Z","batch":[{"type":"track","timestamp":"2024-06-03T12:00:00Z"}]}`, 400, "messageId and type"},
		{"no type", "/v1/batch", `{"sentAt":"2024-06-03T12:00:01Z","batch":[{"messageId":"a","timestamp":"2024-06-03T12:00:00Z"}]}`, 400, "messageId and type"},
		{"no timestamp", "/v1/batch", `{"sentAt":"2024-06-03T12:00:01Z","batch":[{"type":"track","messageId":"a"}]}`, 400, "no timestamp"},
		{"message not an object", "/v1/batch", `{"sentAt":"2024-06-03T12:00:01Z","batch":[1]}`, 400, "batch[0]"},
		{"wrong path", "/v1/track", string(batchBody("a")), 404, "only POST /v1/batch"},
	} {
		before := len(s.Problems())
		r := post(t, s, c.path, auth, []byte(c.body), 5*time.Second)
		if r.err != nil || r.status != c.status {
			t.Errorf("%s: %d %v, want %d", c.name, r.status, r.err, c.status)
		}
		p := s.Problems()
		if len(p) != before+1 || !strings.Contains(p[len(p)-1], c.problem) {
			t.Errorf("%s: problems %q, want a new one mentioning %q", c.name, p[before:], c.problem)
		}
	}
	if len(s.Messages()) != 0 {
		t.Errorf("malformed requests left messages: %+v", s.Messages())
	}
}

func TestScript(t *testing.T) {
	s := newServer(t)
	auth := basic(testKey)
	s.Script(
		Step{Status: 503, Times: 2},
		Step{Status: 429, RetryAfter: "7"},
		Step{Reset: true},
		Step{Hang: 2 * time.Second}, // longer than the client waits
		Step{Hang: 150 * time.Millisecond},
	)
	s.Script(Step{Status: 500}) // queued after the others
	want := []struct {
		status     int
		retryAfter string
		err        bool
		delivered  bool
	}{
		{status: 503}, {status: 503},
		{status: 429, retryAfter: "7"},
		{err: true},                    // reset
		{err: true},                    // hang the client gave up on
		{status: 200, delivered: true}, // hang, then the step's answer (200)
		{status: 500},
		{status: 200, delivered: true}, // script exhausted
		{status: 200, delivered: true},
	}
	for i, w := range want {
		id := fmt.Sprintf("m-%d", i)
		r := post(t, s, "/v1/batch", auth, batchBody(id, id+"-b"), 500*time.Millisecond)
		if w.err {
			if r.err == nil {
				t.Errorf("request %d: answered %d, want no answer", i, r.status)
			}
		} else if r.err != nil || r.status != w.status || r.retryAfter != w.retryAfter {
			t.Errorf("request %d: %d (Retry-After %q) %v, want %d (Retry-After %q)", i, r.status, r.retryAfter, r.err, w.status, w.retryAfter)
		}
		if i == 5 && r.took < 150*time.Millisecond {
			t.Errorf("request %d: answered after %v, before its 150ms hang", i, r.took)
		}
		d := s.Delivered()
		if got := d[id] == 1 && d[id+"-b"] == 1; got != w.delivered {
			t.Errorf("request %d: Delivered() = %v; want delivered %v", i, d, w.delivered)
		}
	}
	// Every request and message is on record, in order, with what was
	// answered.
	reqs := s.Requests()
	if len(reqs) != len(want) {
		t.Fatalf("%d requests recorded, want %d", len(reqs), len(want))
	}
	wantStatus := []int{503, 503, 429, 0, 0, 200, 500, 200, 200}
	wantErr := []string{"", "", "", "reset", "hang", "hang", "", "", ""}
	for i, q := range reqs {
		if q.Status != wantStatus[i] || !strings.HasPrefix(q.Err, wantErr[i]) || q.Events != 2 {
			t.Errorf("request %d recorded as %+v, want status %d, error %q, 2 events", i, q, wantStatus[i], wantErr[i])
		}
		if i > 0 && q.At.Before(reqs[i-1].At) {
			t.Errorf("request %d arrived before request %d", i, i-1)
		}
	}
	msgs := s.Messages()
	if len(msgs) != 2*len(want) {
		t.Fatalf("%d messages, want %d", len(msgs), 2*len(want))
	}
	for i, m := range msgs {
		id := fmt.Sprintf("m-%d", i/2)
		if i%2 == 1 {
			id += "-b"
		}
		if m.MessageID != id || m.Request != i/2 || m.Type != "track" || !m.At.Equal(reqs[i/2].At) {
			t.Errorf("message %d: %+v; want %s from request %d", i, m, id, i/2)
		}
		var v map[string]any
		if err := json.Unmarshal(m.Raw, &v); err != nil || v["messageId"] != id {
			t.Errorf("message %d raw %s", i, m.Raw)
		}
		if p, _ := v["properties"].(map[string]any); p["s"] != `a,b]}[{"c` {
			t.Errorf("message %d: raw JSON not kept exactly: %s", i, m.Raw)
		}
	}
	if p := s.Problems(); len(p) != 0 {
		t.Errorf("problems %q", p)
	}
}

func TestReject(t *testing.T) {
	s := newServer(t)
	s.Reject = func(m map[string]any) bool { return m["messageId"] == "poison" }
	auth := basic(testKey)
	if r := post(t, s, "/v1/batch", auth, batchBody("a", "poison", "b"), 5*time.Second); r.err != nil || r.status != 400 {
		t.Fatalf("batch with the poison: %d %v, want 400", r.status, r.err)
	}
	if r := post(t, s, "/v1/batch", auth, batchBody("a", "b"), 5*time.Second); r.err != nil || r.status != 200 {
		t.Fatalf("batch without: %d %v, want 200", r.status, r.err)
	}
	// A scripted status wins over Reject.
	s.Script(Step{Status: 503})
	if r := post(t, s, "/v1/batch", auth, batchBody("poison"), 5*time.Second); r.err != nil || r.status != 503 {
		t.Fatalf("scripted: %d %v, want 503", r.status, r.err)
	}
	if d := s.Delivered(); len(d) != 2 || d["a"] != 1 || d["b"] != 1 {
		t.Errorf("delivered %v, want a and b once", d)
	}
	if n := len(s.Messages()); n != 6 {
		t.Errorf("%d messages recorded, want 6 (rejected ones too)", n)
	}
	if p := s.Problems(); len(p) != 0 {
		t.Errorf("a rejection is not a protocol problem: %q", p)
	}
}

func TestWaitDelivered(t *testing.T) {
	s := newServer(t)
	start := time.Now()
	if s.WaitDelivered(1, 100*time.Millisecond) {
		t.Fatal("WaitDelivered reported a delivery that never happened")
	}
	if took := time.Since(start); took < 100*time.Millisecond || took > 2*time.Second {
		t.Errorf("WaitDelivered gave up after %v, want about 100ms", took)
	}
	done := make(chan bool)
	go func() { done <- s.WaitDelivered(3, 10*time.Second) }()
	auth := basic(testKey)
	post(t, s, "/v1/batch", auth, batchBody("x", "y"), 5*time.Second)
	post(t, s, "/v1/batch", auth, batchBody("x"), 5*time.Second) // a repeat is not a new delivery
	select {
	case <-done:
		t.Fatal("WaitDelivered returned with 2 distinct messages delivered")
	case <-time.After(50 * time.Millisecond):
	}
	post(t, s, "/v1/batch", auth, batchBody("z"), 5*time.Second)
	select {
	case ok := <-done:
		if !ok {
			t.Error("WaitDelivered reported false after 3 deliveries")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitDelivered did not return")
	}
	if d := s.Delivered(); d["x"] != 2 || d["y"] != 1 || d["z"] != 1 {
		t.Errorf("delivered %v", d)
	}
}
