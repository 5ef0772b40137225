package main

// The fake Segment the delivery measurements drain into. It runs in the bench
// process, on the same cores as the relay, so it is kept cheap: one Basic
// auth check per request, the messages of a /v1/batch body counted with a
// byte search (no JSON decode) except in the latency run, where a full decode
// is affordable at 100 events/s.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// drainWriteKey is the write key every relay under test is started with; the
// fake refuses any other.
const drainWriteKey = "bench"

var (
	batchNeedle = []byte(`"batch":[`)
	idNeedle    = []byte(`"messageId":"`)
	idPrefix    = []byte("gwenrelay-")
	bodyPool    = sync.Pool{New: func() any { return new(bytes.Buffer) }}
)

// fakeSegment answers POST /v1/batch with 200 and counts what arrives.
type fakeSegment struct {
	decode bool  // also decode each body and note every userId's first arrival
	target int64 // close done when this many distinct messages arrived (0: never)
	// onFirst and onDone run once, in the handler of the request that made
	// them true (before it is answered).
	onFirst, onDone func(time.Time)

	ln    net.Listener
	srv   *http.Server
	URL   string
	conns atomic.Int64 // TCP connections accepted

	mu        sync.Mutex
	requests  int64
	badAuth   int64
	badBody   int64
	messages  int64 // every message, repeats included
	unknownID int64 // messages whose messageId is not the relay's
	seen      map[uint64]struct{}
	dups      int64 // messages whose messageId had arrived before
	maxBatch  int
	first     time.Time
	last      time.Time
	maxGap    time.Duration // longest time between two requests after the first
	maxGapAt  time.Duration // when that gap ended, from the first arrival
	hist      []int64       // messages per second since the first arrival
	doneAt    time.Time
	done      chan struct{}
	arrivals  map[string]time.Time // decode: userId -> first arrival
}

func newFakeSegment(decode bool, target int64) (*fakeSegment, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fake Segment: listen: %w", err)
	}
	f := &fakeSegment{decode: decode, target: target, ln: ln, URL: "http://" + ln.Addr().String(),
		seen: make(map[uint64]struct{}, target), done: make(chan struct{})}
	if decode {
		f.arrivals = map[string]time.Time{}
	}
	f.srv = &http.Server{
		Handler:           f,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				f.conns.Add(1)
			}
		},
	}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

func (f *fakeSegment) close() { _ = f.srv.Close() }

func (f *fakeSegment) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/batch" {
		http.NotFound(w, r)
		return
	}
	if user, _, ok := r.BasicAuth(); !ok || user != drainWriteKey {
		f.mu.Lock()
		f.badAuth++
		f.mu.Unlock()
		http.Error(w, `{"error":"bad write key"}`, http.StatusUnauthorized)
		return
	}
	buf := bodyPool.Get().(*bytes.Buffer)
	defer bodyPool.Put(buf)
	buf.Reset()
	if _, err := buf.ReadFrom(r.Body); err != nil {
		return // the relay went away mid-request; it will retry
	}
	now := time.Now()
	body := buf.Bytes()

	var users []string
	if f.decode {
		var b struct {
			Batch []struct {
				UserID string `json:"userId"`
			} `json:"batch"`
		}
		if err := json.Unmarshal(body, &b); err != nil {
			f.mu.Lock()
			f.badBody++
			f.mu.Unlock()
			http.Error(w, `{"error":"bad JSON"}`, http.StatusBadRequest)
			return
		}
		for _, m := range b.Batch {
			users = append(users, m.UserID)
		}
	}

	var first, done bool
	f.mu.Lock()
	n := f.scan(body)
	f.requests++
	f.maxBatch = max(f.maxBatch, n)
	if f.first.IsZero() {
		f.first, first = now, true
	} else if gap := now.Sub(f.last); gap > f.maxGap {
		f.maxGap, f.maxGapAt = gap, now.Sub(f.first)
	}
	if now.After(f.last) {
		f.last = now
	}
	sec := int(now.Sub(f.first) / time.Second)
	for len(f.hist) <= sec {
		f.hist = append(f.hist, 0)
	}
	f.hist[sec] += int64(n)
	for _, u := range users {
		if _, ok := f.arrivals[u]; !ok {
			f.arrivals[u] = now
		}
	}
	if f.target > 0 && f.doneAt.IsZero() && int64(len(f.seen)) >= f.target {
		f.doneAt, done = now, true
	}
	f.mu.Unlock()
	if first && f.onFirst != nil {
		f.onFirst(now)
	}
	if done {
		if f.onDone != nil {
			f.onDone(now)
		}
		close(f.done)
	}
	w.WriteHeader(http.StatusOK)
}

// scan counts the messages of a batch body by their messageId keys and notes
// each id (its first 64 bits, as hex, which for the relay's sha256-derived
// ids are as good as unique). It returns the messages counted. Called with
// f.mu held.
func (f *fakeSegment) scan(body []byte) int {
	i := bytes.Index(body, batchNeedle)
	if i < 0 {
		f.badBody++
		return 0
	}
	rest := body[i+len(batchNeedle):]
	n := 0
	for {
		j := bytes.Index(rest, idNeedle)
		if j < 0 {
			break
		}
		rest = rest[j+len(idNeedle):]
		n++
		f.messages++
		id, ok := parseRelayID(rest)
		if !ok {
			f.unknownID++
			continue
		}
		if _, dup := f.seen[id]; dup {
			f.dups++
			continue
		}
		f.seen[id] = struct{}{}
	}
	return n
}

// parseRelayID reads "gwenrelay-" and 16 hex digits at the start of b.
func parseRelayID(b []byte) (uint64, bool) {
	if !bytes.HasPrefix(b, idPrefix) || len(b) < len(idPrefix)+16 {
		return 0, false
	}
	var v uint64
	for _, c := range b[len(idPrefix) : len(idPrefix)+16] {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v, true
}

// fakeCounts is a snapshot of the fake's counters.
type fakeCounts struct {
	Requests, BadAuth, BadBody, Messages, UnknownID, Distinct, Dups int64
	MaxBatch                                                        int
	First, Last, DoneAt                                             time.Time
	MaxGap, MaxGapAt                                                time.Duration
	Conns                                                           int64
}

func (f *fakeSegment) counts() fakeCounts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeCounts{
		Requests: f.requests, BadAuth: f.badAuth, BadBody: f.badBody, Messages: f.messages, UnknownID: f.unknownID,
		Distinct: int64(len(f.seen)), Dups: f.dups, MaxBatch: f.maxBatch,
		First: f.first, Last: f.last, DoneAt: f.doneAt, MaxGap: f.maxGap, MaxGapAt: f.maxGapAt, Conns: f.conns.Load(),
	}
}

// histogram returns a copy of the per-second arrivals.
func (f *fakeSegment) histogram() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.hist...)
}

// arrival returns when a userId first arrived (decode mode).
func (f *fakeSegment) arrival(user string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.arrivals[user]
	return t, ok
}

func (f *fakeSegment) arrived() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.arrivals)
}
