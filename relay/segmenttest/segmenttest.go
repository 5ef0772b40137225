// Package segmenttest is a fake Segment HTTP Tracking API for tests and
// benchmarks: it checks what a client sends (Basic auth with the write key,
// the /v1/batch shape), records every message with its arrival time, and can
// be told to fail in scripted ways (status codes, Retry-After, reset
// connections, hangs, rejecting batches that carry a given message).
package segmenttest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Step is one scripted answer. A step applies to Times requests (default 1)
// before the next one takes over; with no step left, requests succeed.
type Step struct {
	Status     int    // answer with this status (0: 200)
	RetryAfter string // Retry-After header value, if any
	Reset      bool   // close the connection without answering
	// Hang waits this long before answering with Status. If the client gives
	// up first, nothing is answered and the request stays recorded with
	// Status 0. (A hang that ends just as the client gives up may count as
	// answered although the client never read it: keep Hang well away from
	// the client's timeout.)
	Hang  time.Duration
	Times int
}

// Message is one message as received.
type Message struct {
	At        time.Time       // arrival of its request
	Request   int             // index of the request that carried it
	SentAt    time.Time       // the sentAt of its batch
	MessageID string          // its messageId
	Type      string          // its type
	Raw       json.RawMessage // the message exactly as sent
}

// Request is one request as received.
type Request struct {
	At     time.Time
	Status int // what the fake answered (0: reset, or hung until the client gave up)
	Events int // messages in its batch
	Err    string
}

// Server is the fake. Create it with New and Close it when done.
type Server struct {
	*httptest.Server
	WriteKey string
	// Reject, when set, makes the fake answer 400 to any batch holding a
	// message for which it returns true (as Segment does for bad JSON).
	Reject func(msg map[string]any) bool

	mu       sync.Mutex
	script   []Step
	messages []Message
	requests []Request
	problems []string
	notify   chan struct{}
}

// New starts a fake on 127.0.0.1 that accepts writeKey.
func New(writeKey string) *Server {
	s := &Server{WriteKey: writeKey, notify: make(chan struct{})}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Script queues scripted answers after any already queued.
func (s *Server) Script(steps ...Step) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range steps {
		if st.Times <= 0 {
			st.Times = 1
		}
		s.script = append(s.script, st)
	}
}

// Messages returns every message received so far, in arrival order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Requests returns every request received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Problems lists protocol violations seen (bad auth, bad batch shape).
func (s *Server) Problems() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.problems...)
}

// Delivered returns the distinct messageIds answered with 200.
func (s *Server) Delivered() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	ok := map[int]bool{}
	for i, r := range s.requests {
		if r.Status == http.StatusOK {
			ok[i] = true
		}
	}
	out := map[string]int{}
	for _, m := range s.messages {
		if ok[m.Request] {
			out[m.MessageID]++
		}
	}
	return out
}

// WaitDelivered waits until at least n distinct messageIds were answered
// with 200, or the timeout passes; it reports whether they were.
func (s *Server) WaitDelivered(n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		ch := s.notify
		s.mu.Unlock()
		if len(s.Delivered()) >= n {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		t := time.NewTimer(left)
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

func (s *Server) problem(format string, args ...any) {
	s.problems = append(s.problems, fmt.Sprintf(format, args...))
}

func (s *Server) record(r Request, msgs []Message) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	idx := len(s.requests)
	s.requests = append(s.requests, r)
	for i := range msgs {
		msgs[i].Request = idx
	}
	s.messages = append(s.messages, msgs...)
	close(s.notify)
	s.notify = make(chan struct{})
	return idx
}

// answered records the status finally given to request idx.
func (s *Server) answered(idx, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[idx].Status = status
	close(s.notify)
	s.notify = make(chan struct{})
}

func (s *Server) nextStep() (Step, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.script) == 0 {
		return Step{}, false
	}
	st := s.script[0]
	s.script[0].Times--
	if s.script[0].Times <= 0 {
		s.script = s.script[1:]
	}
	return st, true
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		s.record(Request{At: at, Err: "read body: " + err.Error()}, nil)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/v1/batch" {
		s.mu.Lock()
		s.problem("%s %s: only POST /v1/batch is expected", r.Method, r.URL.Path)
		s.mu.Unlock()
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if !s.authorized(r) {
		s.mu.Lock()
		s.problem("request without Basic auth for the write key (Authorization: %q)", r.Header.Get("Authorization"))
		s.mu.Unlock()
		s.record(Request{At: at, Status: http.StatusUnauthorized, Err: "auth"}, nil)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	msgs, decoded, err := parseBatch(body)
	if err != nil {
		s.mu.Lock()
		s.problem("malformed batch: %v", err)
		s.mu.Unlock()
		s.record(Request{At: at, Status: http.StatusBadRequest, Err: err.Error()}, nil)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for i := range msgs {
		msgs[i].At = at
	}
	step, scripted := s.nextStep()
	if scripted && step.Reset {
		s.record(Request{At: at, Events: len(msgs), Err: "reset"}, msgs)
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // RST, not FIN
				}
				conn.Close()
			}
		}
		return
	}
	// A hang is recorded on arrival (with Status 0), then answered late as
	// the step says; returning without writing would answer an implicit
	// 200 that the record did not show as delivered.
	hung := -1
	if scripted && step.Hang > 0 {
		hung = s.record(Request{At: at, Events: len(msgs), Err: "hang"}, msgs)
		t := time.NewTimer(step.Hang)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return // the client gave up: no answer
		}
	}
	status, answer := http.StatusOK, `{"success":true}`
	if scripted && step.Status != 0 && step.Status != http.StatusOK {
		status, answer = step.Status, http.StatusText(step.Status)
		if step.RetryAfter != "" {
			w.Header().Set("Retry-After", step.RetryAfter)
		}
	} else if s.Reject != nil {
		for _, m := range decoded {
			if s.Reject(m) {
				status, answer = http.StatusBadRequest, `{"error":"invalid message"}`
				break
			}
		}
	}
	if hung >= 0 {
		s.answered(hung, status)
	} else {
		s.record(Request{At: at, Status: status, Events: len(msgs)}, msgs)
	}
	if status == http.StatusOK {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, answer)
		return
	}
	http.Error(w, answer, status)
}

func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	enc, ok := strings.CutPrefix(h, "Basic ")
	if !ok {
		return false
	}
	dec, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return false
	}
	user, _, _ := strings.Cut(string(dec), ":")
	return user == s.WriteKey
}

// parseBatch checks the shape analytics-go sends: {"batch":[...],"sentAt":…}
// with a type, a messageId and a timestamp on every message.
func parseBatch(body []byte) ([]Message, []map[string]any, error) {
	var b struct {
		Batch  []json.RawMessage `json:"batch"`
		SentAt *time.Time        `json:"sentAt"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, nil, fmt.Errorf("not JSON: %v", err)
	}
	if b.SentAt == nil {
		return nil, nil, fmt.Errorf("no sentAt")
	}
	if len(b.Batch) == 0 {
		return nil, nil, fmt.Errorf("empty batch")
	}
	msgs := make([]Message, len(b.Batch))
	decoded := make([]map[string]any, len(b.Batch))
	for i, raw := range b.Batch {
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, nil, fmt.Errorf("batch[%d]: %v", i, err)
		}
		id, _ := m["messageId"].(string)
		typ, _ := m["type"].(string)
		if id == "" || typ == "" {
			return nil, nil, fmt.Errorf("batch[%d]: messageId and type are required", i)
		}
		if _, ok := m["timestamp"].(string); !ok {
			return nil, nil, fmt.Errorf("batch[%d]: no timestamp", i)
		}
		msgs[i] = Message{MessageID: id, Type: typ, Raw: raw, SentAt: *b.SentAt}
		decoded[i] = m
	}
	return msgs, decoded, nil
}
