package main

// End-to-end tests of the Segment-compatible API (POST /v1/*) with real
// Segment libraries: analytics-go in this process and @segment/analytics-node
// in a node child process. Each library sends through a recording proxy in
// front of the relay, so the test knows exactly which request bodies the
// library produced; the relay delivers to a fake Segment (relay/segmenttest),
// and every message that arrives there is compared, field for field, with the
// message the library produced. The only differences allowed are the
// documented ones:
//
//   - "writeKey" is removed;
//   - a batch's top-level "context" and "integrations" are merged into each
//     of its messages, the message's own keys winning (shallow, by key);
//   - "messageId" and "timestamp" are filled in only when missing (a
//     missing timestamp is the caller's sentAt, or without one the time the
//     relay took the message), and a single call's "type" from its path;
//   - "sentAt" is the caller's (the message's own, else its batch's), moved
//     on by the time the message spent in the relay.
//
// The analytics-node test installs the package pinned in
// testdata/segmentapi/package-lock.json with `npm ci` into a cache directory
// (under os.UserCacheDir, keyed by the package files' hash), so that only the
// first run pays for the install. Node.js and npm must be on PATH; without
// them, or if the install fails, the test fails.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
)

const (
	segAPIToken    = "segapi-inbound-token"   // the relay's inbound token: the libraries' write key
	segAPIWriteKey = "segapi-relay-write-key" // the relay's own Segment write key
)

// --- the recording proxy ----------------------------------------------------

// segExchange is one request that passed through segProxy.
type segExchange struct {
	Path     string
	Header   http.Header
	Body     []byte    // the body as the client sent it, gunzipped if it came gzipped
	Received time.Time // the whole body had arrived at the proxy
	Done     time.Time // the relay's answer was read, or forwarding it failed
	Status   int       // the relay's status; 0: no answer (the client got a 502)
	Answer   []byte    // the relay's answer body, gunzipped if it came gzipped
	Err      string    // why there was no answer
}

// segProxy is an HTTP proxy on 127.0.0.1 that records every request and the
// relay's answer, and forwards both unchanged.
type segProxy struct {
	*httptest.Server
	target string
	client *http.Client

	mu       sync.Mutex
	done     []segExchange
	inflight int
	changed  chan struct{} // closed and replaced on every change
}

// newSegProxy starts a proxy that forwards to target (http://host:port). It
// is closed at the end of the test.
func newSegProxy(t testing.TB, target string) *segProxy {
	t.Helper()
	p := &segProxy{
		target:  target,
		changed: make(chan struct{}),
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:              nil,
				DialContext:        (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
				DisableCompression: true, // pass the client's Accept-Encoding through, not our own
				IdleConnTimeout:    30 * time.Second,
			},
			Timeout: 30 * time.Second,
		},
	}
	p.Server = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.Close)
	return p
}

// segHopHeaders are not forwarded (RFC 9110 7.6.1), nor is Content-Length,
// which the forwarded request sets itself.
var segHopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true, "Content-Length": true,
}

func (p *segProxy) serve(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(r.Body)
	ex := segExchange{Path: r.URL.Path, Header: r.Header.Clone(), Received: time.Now()}
	if err != nil {
		http.Error(w, "proxy: reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	ex.Body = raw
	if strings.EqualFold(r.Header.Get("Content-Encoding"), "gzip") {
		if b, err := segGunzip(raw); err == nil {
			ex.Body = b
		}
	}
	p.mu.Lock()
	p.inflight++
	p.notifyLocked()
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.inflight--
		p.done = append(p.done, ex)
		p.notifyLocked()
		p.mu.Unlock()
	}()

	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(raw))
	if err != nil {
		ex.Done, ex.Err = time.Now(), err.Error()
		http.Error(w, "proxy: "+err.Error(), http.StatusBadGateway)
		return
	}
	for k, vs := range r.Header {
		if !segHopHeaders[k] {
			req.Header[k] = vs
		}
	}
	resp, err := p.client.Do(req)
	if err != nil {
		ex.Done, ex.Err = time.Now(), err.Error()
		http.Error(w, "proxy: relay: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	ex.Done = time.Now()
	if err != nil {
		// The status line came but not the whole body: the client gets no
		// answer either.
		ex.Err = "reading the answer: " + err.Error()
		http.Error(w, "proxy: relay: "+ex.Err, http.StatusBadGateway)
		return
	}
	ex.Status, ex.Answer = resp.StatusCode, answer
	if strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip") {
		if b, err := segGunzip(answer); err == nil {
			ex.Answer = b
		}
	}
	for k, vs := range resp.Header {
		if !segHopHeaders[k] {
			w.Header()[k] = vs
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}

// Exchanges returns the requests that are over, in the order they ended.
func (p *segProxy) Exchanges() []segExchange {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]segExchange(nil), p.done...)
}

// WaitInflight waits until at least one request is being forwarded to the
// relay, and reports whether one was within timeout.
func (p *segProxy) WaitInflight(timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		n, ch := p.inflight, p.changed
		p.mu.Unlock()
		if n > 0 {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// inflightNow is the number of requests being forwarded at this moment.
func (p *segProxy) inflightNow() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inflight
}

// notifyLocked wakes WaitInflight, at the start and at the end of every
// forward; p.mu is held.
func (p *segProxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func segGunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	return io.ReadAll(zr)
}

// --- what the libraries produced --------------------------------------------

// segAttempt is one request that carried a message.
type segAttempt struct {
	SentAt   time.Time // the caller's sentAt for the message (zero: none)
	Received time.Time // at the proxy
	Done     time.Time // the relay answered, or forwarding failed
	Status   int
}

// segProduced is one message as a library produced it.
type segProduced struct {
	ID  string
	Msg map[string]any // the message, decoded with UseNumber
	// Call is the call of a single-call path (/v1/track: "track"), whose
	// message may leave its type out; empty for /v1/batch.
	Call string
	// The top-level context and integrations of its batch (nil: none).
	BatchContext, BatchIntegrations map[string]any
	Attempts                        []segAttempt
}

// segDecode decodes JSON keeping numbers as written (json.Number).
func segDecode(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, errors.New("data after the JSON value")
	}
	return v, nil
}

// segProducedMessages reads every message out of the proxied requests
// (/v1/batch bodies and single calls), keyed by messageId. A message sent in
// more than one request (a retry) must be the same message each time. A
// message without a messageId is keyed by what idOf returns for it (idOf nil:
// such a message is an error).
func segProducedMessages(t testing.TB, exs []segExchange, idOf func(map[string]any) string) map[string]*segProduced {
	t.Helper()
	out := map[string]*segProduced{}
	for i, ex := range exs {
		v, err := segDecode(ex.Body)
		if err != nil {
			t.Errorf("request %d to %s is not JSON (%v): %.300s", i, ex.Path, err, ex.Body)
			continue
		}
		top, ok := v.(map[string]any)
		if !ok {
			t.Errorf("request %d to %s is not a JSON object: %.300s", i, ex.Path, ex.Body)
			continue
		}
		var msgs []any
		var bctx, bint map[string]any
		var batchSent string
		call := ""
		if ex.Path == "/v1/batch" {
			msgs, _ = top["batch"].([]any)
			bctx, _ = top["context"].(map[string]any)
			bint, _ = top["integrations"].(map[string]any)
			batchSent, _ = top["sentAt"].(string)
		} else {
			msgs = []any{top}
			call = strings.TrimPrefix(ex.Path, "/v1/")
		}
		for j, mv := range msgs {
			m, ok := mv.(map[string]any)
			if !ok {
				t.Errorf("request %d: message %d is not an object", i, j)
				continue
			}
			id, _ := m["messageId"].(string)
			if id == "" && idOf != nil {
				id = idOf(m)
			}
			if id == "" {
				t.Errorf("request %d: message %d has no messageId (the test gives every message one, or the library does): %v", i, j, m)
				continue
			}
			sent := batchSent
			if own, ok := m["sentAt"].(string); ok {
				sent = own
			}
			a := segAttempt{Received: ex.Received, Done: ex.Done, Status: ex.Status}
			if sent != "" {
				if a.SentAt, err = time.Parse(time.RFC3339Nano, sent); err != nil {
					t.Errorf("request %d: message %s: sentAt %q: %v", i, id, sent, err)
				}
			}
			p := out[id]
			if p == nil {
				p = &segProduced{ID: id, Msg: m, Call: call, BatchContext: bctx, BatchIntegrations: bint}
				out[id] = p
			} else if !reflect.DeepEqual(segWithout(p.Msg, "sentAt"), segWithout(m, "sentAt")) ||
				!reflect.DeepEqual(p.BatchContext, bctx) || !reflect.DeepEqual(p.BatchIntegrations, bint) {
				t.Errorf("message %s was sent twice with different contents:\n%v\n%v", id, p.Msg, m)
			}
			p.Attempts = append(p.Attempts, a)
		}
	}
	return out
}

// segWithout is a shallow copy of m without the given keys.
func segWithout(m map[string]any, keys ...string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

// --- comparing what arrived with what was produced ---------------------------

// segSentAtSlack allows for the relay writing sentAt to the millisecond
// while a library may write nanoseconds: a sentAt on arrival may lie up to
// 1 ms before the caller's sentAt plus the relay's delay.
const segSentAtSlack = 2 * time.Millisecond

// segTiming is what segCompare measured of one message's sentAt.
type segTiming struct {
	Shift time.Duration // sentAt on arrival minus the caller's sentAt
	// Skew is the error that Segment's clock-skew correction makes with the
	// sentAt that arrived, beyond the error it would make had the caller
	// sent the same request to Segment directly (all times are on this
	// machine's clock, so the correction should come out as zero plus the
	// time on the wire): (arrival - sentAt) - (receipt at the proxy - the
	// caller's sentAt). Unshifted is the same had the relay left the
	// caller's sentAt as it was: the time from the proxy to Segment.
	Skew, Unshifted time.Duration
}

// segCompare checks one arrival at the fake Segment against the message the
// library produced, and returns every difference, each with its JSON path.
func segCompare(p *segProduced, got segmenttest.Message) ([]string, segTiming) {
	var tm segTiming
	gv, err := segDecode(got.Raw)
	if err != nil {
		return []string{fmt.Sprintf("arrived message is not JSON: %v", err)}, tm
	}
	g, ok := gv.(map[string]any)
	if !ok {
		return []string{"arrived message is not an object"}, tm
	}
	g = segWithout(g)
	want := segWithout(p.Msg, "writeKey", "sentAt")
	if _, ok := want["type"]; !ok && p.Call != "" {
		// A single call's path names its type, as in Segment's API.
		want["type"] = p.Call
	}
	for name, shared := range map[string]map[string]any{"context": p.BatchContext, "integrations": p.BatchIntegrations} {
		if shared == nil {
			continue
		}
		own, present := want[name]
		if !present || own == nil {
			want[name] = shared
			continue
		}
		if o, ok := own.(map[string]any); ok {
			merged := segWithout(o)
			for k, v := range shared {
				if _, has := merged[k]; !has {
					merged[k] = v
				}
			}
			want[name] = merged
		}
	}
	var diffs []string
	first := p.Attempts[0]
	for _, a := range p.Attempts {
		if a.Received.Before(first.Received) {
			first = a
		}
	}

	// sentAt: the caller's, moved on by the time spent in the relay. The
	// relay took the message after the proxy received it and before it
	// answered (or the forward failed) for one of the attempts, and sent it
	// before it arrived; the relay's batch sentAt says when it left.
	if s, ok := g["sentAt"].(string); ok {
		delete(g, "sentAt")
		out, err := time.Parse(time.RFC3339Nano, s)
		var why []string
		switch {
		case err != nil:
			diffs = append(diffs, fmt.Sprintf("sentAt: %q is not an RFC 3339 time", s))
		case first.SentAt.IsZero():
			// The caller sent no sentAt: whatever the relay put there must
			// at least lie between the caller's request and the arrival.
			if out.Before(first.Received.Add(-segSentAtSlack)) || out.After(got.At.Add(segSentAtSlack)) {
				diffs = append(diffs, fmt.Sprintf("sentAt: %s, but the caller sent none and the message was in the relay from %s to %s",
					s, first.Received.Format(time.RFC3339Nano), got.At.Format(time.RFC3339Nano)))
			}
		default:
			fits := false
			for _, a := range p.Attempts {
				shift := out.Sub(a.SentAt)
				lo := max(0, got.SentAt.Sub(a.Done)) - segSentAtSlack
				hi := got.At.Sub(a.Received) + segSentAtSlack
				if shift >= lo && shift <= hi {
					fits = true
					tm.Shift = shift
					tm.Skew = got.At.Sub(out) - a.Received.Sub(a.SentAt)
					tm.Unshifted = got.At.Sub(a.Received)
					break
				}
				why = append(why, fmt.Sprintf("caller's sentAt %s moved on by %v, want between %v (the relay's batch left %v after the relay answered) and %v (arrival minus the proxy's receipt)",
					a.SentAt.Format(time.RFC3339Nano), shift, lo, max(0, got.SentAt.Sub(a.Done)), hi))
			}
			if !fits {
				diffs = append(diffs, fmt.Sprintf("sentAt: %s: %s", s, strings.Join(why, "; or ")))
			}
		}
	} else if !first.SentAt.IsZero() {
		diffs = append(diffs, fmt.Sprintf("sentAt: missing, want the caller's %s moved on by the time in the relay", first.SentAt.Format(time.RFC3339Nano)))
	}

	// messageId and timestamp are filled in only when missing.
	if _, ok := want["messageId"]; !ok {
		if id, _ := g["messageId"].(string); id == "" {
			diffs = append(diffs, "messageId: missing; the relay fills it when the caller has none")
		}
		delete(g, "messageId")
	}
	// A missing timestamp is the moment the caller sent the message: its
	// sentAt, or without one the time the relay took it.
	if _, ok := want["timestamp"]; !ok {
		s, _ := g["timestamp"].(string)
		ts, err := time.Parse(time.RFC3339Nano, s)
		fits := false
		for _, a := range p.Attempts {
			if a.SentAt.IsZero() {
				fits = fits || (!ts.Before(a.Received.Add(-segSentAtSlack)) && !ts.After(a.Done.Add(segSentAtSlack)))
			} else {
				fits = fits || segAbs(ts.Sub(a.SentAt)) <= segSentAtSlack
			}
		}
		if err != nil || !fits {
			diffs = append(diffs, fmt.Sprintf("timestamp: %q, want the caller's sentAt (%s), or without one the time the relay took the message (from %s to %s)",
				s, first.SentAt.Format(time.RFC3339Nano), first.Received.Format(time.RFC3339Nano), first.Done.Format(time.RFC3339Nano)))
		}
		delete(g, "timestamp")
	}
	return append(diffs, segDiff("", want, g)...), tm
}

// segDiff lists where got differs from want. Numbers are equal when they
// denote the same value (1.0 and 1, 1e3 and 1000), whatever their spelling.
func segDiff(path string, want, got any) []string {
	at := path
	if at == "" {
		at = "(message)"
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: got %s, want %s", at, segShow(got), segShow(want))}
		}
		keys := make([]string, 0, len(w)+len(g))
		for k := range w {
			keys = append(keys, k)
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		var out []string
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			wv, inW := w[k]
			gv, inG := g[k]
			switch {
			case !inG:
				out = append(out, fmt.Sprintf("%s: missing, want %s", p, segShow(wv)))
			case !inW:
				out = append(out, fmt.Sprintf("%s: added %s (the library did not send it)", p, segShow(gv)))
			default:
				out = append(out, segDiff(p, wv, gv)...)
			}
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: got %s, want %s", at, segShow(got), segShow(want))}
		}
		var out []string
		for i := range w {
			out = append(out, segDiff(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return out
	case json.Number:
		g, ok := got.(json.Number)
		if ok {
			wr, ok1 := new(big.Rat).SetString(string(w))
			gr, ok2 := new(big.Rat).SetString(string(g))
			if ok1 && ok2 && wr.Cmp(gr) == 0 {
				return nil
			}
		}
		return []string{fmt.Sprintf("%s: got %s, want %s", at, segShow(got), segShow(want))}
	default:
		if !reflect.DeepEqual(want, got) {
			return []string{fmt.Sprintf("%s: got %s, want %s", at, segShow(got), segShow(want))}
		}
		return nil
	}
}

func segShow(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%v", v)
	}
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// segArrivals groups what the fake Segment received by messageId, counting
// only requests it answered 200.
func segArrivals(fake *segmenttest.Server) map[string][]segmenttest.Message {
	ok := map[int]bool{}
	for i, r := range fake.Requests() {
		ok[i] = r.Status == http.StatusOK
	}
	out := map[string][]segmenttest.Message{}
	for _, m := range fake.Messages() {
		if ok[m.Request] {
			out[m.MessageID] = append(out[m.MessageID], m)
		}
	}
	return out
}

// segReport is what segCheckDelivery found.
type segReport struct {
	Produced, Arrived, Repeats int
	MaxShift, MaxSkew          time.Duration
	MaxUnshifted               time.Duration
}

// segCheckDelivery compares every arrival with the message produced under
// its messageId: every produced message in want must have arrived (want nil:
// every produced message), nothing may arrive that was not produced, and
// with once set each must have arrived exactly once.
func segCheckDelivery(t testing.TB, produced map[string]*segProduced, arrivals map[string][]segmenttest.Message, want map[string]bool, once bool) segReport {
	t.Helper()
	r := segReport{Produced: len(produced)}
	ids := make([]string, 0, len(produced))
	for id := range produced {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	bad := 0
	for _, id := range ids {
		p := produced[id]
		got := arrivals[id]
		if len(got) == 0 {
			if want == nil || want[id] {
				t.Errorf("message %s (%v) never reached Segment", id, p.Msg["type"])
			}
			continue
		}
		r.Arrived++
		r.Repeats += len(got) - 1
		if once && len(got) != 1 {
			t.Errorf("message %s reached Segment %d times, want once", id, len(got))
		}
		for _, g := range got {
			diffs, tm := segCompare(p, g)
			if len(diffs) > 0 {
				bad++
				if bad <= 10 {
					t.Errorf("message %s (%v) arrived at Segment changed beyond the documented differences:\n\t%s\nproduced (batch context %s, integrations %s):\n\t%s\narrived:\n\t%s",
						id, p.Msg["type"], strings.Join(diffs, "\n\t"), segShow(p.BatchContext), segShow(p.BatchIntegrations), segShow(p.Msg), g.Raw)
				}
				continue
			}
			r.MaxShift = max(r.MaxShift, tm.Shift)
			r.MaxSkew = max(r.MaxSkew, segAbs(tm.Skew))
			r.MaxUnshifted = max(r.MaxUnshifted, segAbs(tm.Unshifted))
		}
	}
	if bad > 10 {
		t.Errorf("%d arrivals in all differed from what the library produced", bad)
	}
	for id, got := range arrivals {
		if produced[id] == nil {
			t.Errorf("Segment received message %s, which no library produced: %s", id, got[0].Raw)
		}
	}
	if want != nil {
		for id := range want {
			if produced[id] == nil {
				t.Errorf("the library reported message %s as sent, but no request through the proxy carried it", id)
			}
		}
	}
	return r
}

func segAbs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// segAnswer is the relay's 200 body.
type segAnswer struct {
	Success    bool     `json:"success"`
	Accepted   int      `json:"accepted"`
	Duplicates int      `json:"duplicates"`
	IDs        []uint64 `json:"ids"`
}

// segCheckAnswers checks the relay's answer to every proxied request that
// got one: 200 with success, and a count for each message; any other status
// than those in allowed is an error. It returns the count of each status
// (0: no answer) and the duplicates the relay reported.
func segCheckAnswers(t testing.TB, exs []segExchange, allowed ...int) (map[int]int, int) {
	t.Helper()
	statuses := map[int]int{}
	dups := 0
	for i, ex := range exs {
		statuses[ex.Status]++
		if ex.Status != http.StatusOK {
			ok := false
			for _, s := range allowed {
				ok = ok || s == ex.Status
			}
			if !ok {
				t.Errorf("request %d to %s: relay answered %d %q (%s), want 200", i, ex.Path, ex.Status, bytes.TrimSpace(ex.Answer), ex.Err)
			}
			continue
		}
		n := 1
		if ex.Path == "/v1/batch" {
			var b struct {
				Batch []json.RawMessage `json:"batch"`
			}
			if err := json.Unmarshal(ex.Body, &b); err != nil {
				t.Errorf("request %d: %v", i, err)
				continue
			}
			n = len(b.Batch)
		}
		var a segAnswer
		if err := json.Unmarshal(ex.Answer, &a); err != nil || !a.Success {
			t.Errorf("request %d to %s: 200 answer %q, want {\"success\":true,...} (%v)", i, ex.Path, ex.Answer, err)
			continue
		}
		if a.Accepted+a.Duplicates != n || len(a.IDs) != n {
			t.Errorf("request %d to %s with %d messages: answer %s, want accepted+duplicates = %d and one id for each", i, ex.Path, n, ex.Answer, n)
		}
		dups += a.Duplicates
	}
	return statuses, dups
}

// --- the relay ----------------------------------------------------------------

// segRelayArgs are the serve flags for a relay that takes the libraries'
// write key as its inbound token and delivers to fake.
func segRelayArgs(spool, listen string, fake *segmenttest.Server) []string {
	return []string{"serve", "--listen", listen, "--admin-listen", "127.0.0.1:0", "--admin-socket", "",
		"--log-format", "json", "--spool", spool, "--inbound-token", segAPIToken,
		"--write-key", segAPIWriteKey, "--segment-endpoint", fake.URL, "--rate", "0"}
}

// segWaitArrived waits until every id in want has reached the fake (answered
// 200), and fails the test after timeout.
func segWaitArrived(t testing.TB, fake *segmenttest.Server, want map[string]bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := fake.Delivered()
		var missing []string
		for id := range want {
			if got[id] == 0 {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			sort.Strings(missing)
			t.Fatalf("%d of %d messages did not reach Segment within %v, e.g. %v", len(missing), len(want), timeout, missing[:min(5, len(missing))])
		}
		fake.WaitDelivered(len(got)+1, time.Until(deadline))
	}
}

// segFinish stops the relay cleanly and checks that the spool is empty and
// the fake saw no protocol problem.
func segFinish(t testing.TB, p *e2eRelay, spoolPath string, fake *segmenttest.Server) {
	t.Helper()
	p.StopClean(20 * time.Second)
	if st := stoppedSpoolStats(t, spoolPath); st.Pending != 0 || st.Dead != 0 {
		t.Errorf("after delivering everything the spool holds %d pending and %d dead records, want none", st.Pending, st.Dead)
	}
	if pr := fake.Problems(); len(pr) > 0 {
		t.Errorf("the fake Segment saw protocol problems: %v", pr)
	}
}

// --- analytics-go -------------------------------------------------------------

// segCallback records analytics-go's verdict on each message by messageId.
type segCallback struct {
	mu      sync.Mutex
	ok      map[string]bool
	failed  map[string]error
	changed chan struct{}
}

func newSegCallback() *segCallback {
	return &segCallback{ok: map[string]bool{}, failed: map[string]error{}, changed: make(chan struct{})}
}

func segMessageID(m analytics.Message) string {
	switch v := m.(type) {
	case analytics.Track:
		return v.MessageId
	case analytics.Identify:
		return v.MessageId
	case analytics.Group:
		return v.MessageId
	case analytics.Page:
		return v.MessageId
	case analytics.Screen:
		return v.MessageId
	case analytics.Alias:
		return v.MessageId
	}
	return fmt.Sprintf("(%T)", m)
}

func (c *segCallback) Success(m analytics.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ok[segMessageID(m)] = true
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *segCallback) Failure(m analytics.Message, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed[segMessageID(m)] = err
	close(c.changed)
	c.changed = make(chan struct{})
}

// counts returns how many messages succeeded and failed so far.
func (c *segCallback) counts() (ok, failed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ok), len(c.failed)
}

// waitUntil waits until cond(ok, failed) holds, and reports whether it did
// within timeout.
func (c *segCallback) waitUntil(timeout time.Duration, cond func(ok, failed int) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ok, failed, ch := len(c.ok), len(c.failed), c.changed
		c.mu.Unlock()
		if cond(ok, failed) {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

func (c *segCallback) succeeded() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.ok))
	for id := range c.ok {
		out[id] = true
	}
	return out
}

// segLogger keeps analytics-go's log lines, to be shown if the test fails.
type segLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *segLogger) Logf(format string, args ...any) { l.add("INFO "+format, args...) }
func (l *segLogger) Errorf(format string, args ...any) {
	l.add("ERROR "+format, args...)
}

func (l *segLogger) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) < 1000 {
		l.lines = append(l.lines, fmt.Sprintf(format, args...))
	}
}

func (l *segLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// segGoMessages are one call of each kind with rich fields: nested
// properties and traits, a context with nested values and keys of its own
// ("custom"), integrations, explicit and implicit timestamps, explicit and
// implicit messageIds, and calls with only an anonymousId.
func segGoMessages(run string) []analytics.Message {
	ist := time.FixedZone("IST", 5*3600+1800)
	custom := map[string]any{
		"nested": map[string]any{"deep": []any{1, 2.5, map[string]any{"x": nil, "y": true, "z": "ünïcödé 🎮"}}, "empty": map[string]any{}},
		"list":   []any{},
		"big":    int64(9007199254740993), // 2^53+1: not a float64
	}
	rich := &analytics.Context{
		IP:        net.ParseIP("203.0.113.7"),
		Locale:    "fr-CA",
		Page:      analytics.PageInfo{Path: "/shop/checkout", Referrer: "https://example.com/?q=a&b=c", Title: "Caisse – ☃"},
		Device:    analytics.DeviceInfo{Id: "dev-1", Manufacturer: "Acme", Model: "A1"},
		Location:  analytics.LocationInfo{City: "Lyon", Latitude: 45.764, Longitude: 4.8357},
		Traits:    analytics.NewTraits().SetEmail("ada@example.com").Set("seats", 12),
		UserAgent: "Mozilla/5.0 (X11; Linux x86_64)",
		Extra:     map[string]any{"custom": custom, "tenant": "t-42"},
	}
	integrations := analytics.NewIntegrations().DisableAll().Enable("Mixpanel").Set("Amplitude", map[string]any{"session_id": 1717171717})
	user, anon := run+"-user", run+"-anon-0f8c"
	return []analytics.Message{
		analytics.Track{
			MessageId: run + "-track-explicit",
			UserId:    user,
			Event:     "Item Purchased",
			Timestamp: time.Date(2026, 3, 30, 1, 59, 59, 123456789, ist),
			Context:   rich,
			Properties: analytics.NewProperties().SetRevenue(39.95).SetCurrency("EUR").
				Set("items", []any{map[string]any{"sku": "A-1", "qty": 2, "tags": []string{"x", "y"}}, map[string]any{"sku": "B-2", "qty": 1, "tags": []string{}}}).
				Set("coupon", nil).Set("firstPurchase", true).Set("ratio", -0.5).Set("huge", 1e21).
				Set("note", "line1\nline2 \"quoted\" </script> \u2028 \x01"),
			Integrations: integrations,
		},
		analytics.Track{ // anonymous, implicit messageId, timestamp and context
			AnonymousId: anon,
			Event:       "Level Started",
			Properties:  analytics.NewProperties().Set("level", 3),
		},
		analytics.Identify{
			MessageId:   run + "-identify-explicit",
			UserId:      user,
			AnonymousId: anon,
			Traits: analytics.NewTraits().SetName("Ada Lovelace").SetEmail("ada@example.com").
				Set("address", map[string]any{"city": "Paris", "zip": "75001"}).Set("createdAt", "2024-02-29T12:00:00.000Z"),
			// Its own app replaces the default context's app, whole.
			Context:      &analytics.Context{App: analytics.AppInfo{Name: "msg-app"}, Extra: map[string]any{"custom": map[string]any{"only": "mine"}}},
			Integrations: integrations,
		},
		analytics.Identify{ // anonymous only
			AnonymousId: anon,
			Traits:      analytics.NewTraits().Set("favoriteColor", "teal").Set("visits", 0),
			Timestamp:   time.Date(2025, 6, 1, 8, 30, 0, 123000000, time.FixedZone("", 2*3600)),
		},
		analytics.Group{
			UserId:       user,
			GroupId:      run + "-org-42",
			Traits:       analytics.NewTraits().SetName("Acme Inc").Set("employees", 250).Set("address", map[string]any{"country": "DE"}),
			Context:      &analytics.Context{Extra: map[string]any{"custom": map[string]any{"source": "backoffice"}}},
			Integrations: analytics.NewIntegrations().Set("Salesforce", map[string]any{"accountId": "001x"}),
		},
		analytics.Page{ // anonymous, its own library
			AnonymousId: anon,
			Name:        "Getting Started",
			Properties:  analytics.NewProperties().SetURL("https://example.com/docs/start").SetCategory("Docs").Set("readingTime", 4.5),
			Context:     &analytics.Context{Library: analytics.LibraryInfo{Name: "my-wrapper", Version: "0.1.0"}, Extra: map[string]any{"custom": custom}},
		},
		analytics.Screen{
			UserId:       user,
			Name:         "Inventory",
			Properties:   analytics.NewProperties().Set("slots", 24).Set("filter", map[string]any{"rarity": []string{"epic", "legendary"}}),
			Timestamp:    time.Now().Add(-5 * time.Second).UTC(),
			Integrations: analytics.NewIntegrations().Set("Google Analytics", map[string]any{"clientId": "ga-123"}),
		},
		analytics.Alias{
			MessageId:  run + "-alias-explicit",
			PreviousId: anon,
			UserId:     user,
			Context:    &analytics.Context{Extra: map[string]any{"custom": map[string]any{"reason": "signup"}}},
		},
	}
}

// TestSegmentAPI_AnalyticsGo sends one call of each kind with analytics-go
// (its Endpoint at the proxy, the inbound token as its write key, a default
// context carried on each batch) and checks that analytics-go reported
// success for each, that the relay answered 200 with a count for each
// message, and that each message reached Segment exactly once, field for
// field as analytics-go produced it but for the documented differences, its
// sentAt moved on by its time in the relay.
func TestSegmentAPI_AnalyticsGo(t *testing.T) {
	e2eBinary(t)
	fake := segmenttest.New(segAPIWriteKey)
	defer fake.Close()
	spoolPath := filepath.Join(t.TempDir(), "spool.db")
	p := e2eStartRaw(t, segRelayArgs(spoolPath, "127.0.0.1:0", fake)...)
	proxy := newSegProxy(t, p.URL)

	cb := newSegCallback()
	logs := &segLogger{}
	client, err := analytics.NewWithConfig(segAPIToken, analytics.Config{
		Endpoint:  proxy.URL,
		Interval:  50 * time.Millisecond,
		BatchSize: 3, // several batches
		Callback:  cb,
		Logger:    logs,
		Transport: &http.Transport{Proxy: nil},
		DefaultContext: &analytics.Context{
			App:    analytics.AppInfo{Name: "default-app", Version: "2.0.1", Build: "77"},
			OS:     analytics.OSInfo{Name: "linux", Version: "6.1"},
			Extra:  map[string]any{"custom": map[string]any{"from": "default"}, "region": "eu-west"},
			Direct: true,
		},
		RetryAfter: func(int) time.Duration { return 100 * time.Millisecond },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() }) // a second Close only answers ErrClosed
	msgs := segGoMessages("go")
	for _, m := range msgs {
		if err := client.Enqueue(m); err != nil {
			t.Fatalf("Enqueue(%T): %v", m, err)
		}
	}
	if !cb.waitUntil(30*time.Second, func(ok, failed int) bool { return ok+failed >= len(msgs) }) {
		ok, failed := cb.counts()
		t.Errorf("analytics-go reported on %d of %d messages within 30 s", ok+failed, len(msgs))
	}
	if err := client.Close(); err != nil {
		t.Errorf("analytics-go Close: %v", err)
	}
	ok, failed := cb.counts()
	if ok != len(msgs) || failed != 0 {
		t.Fatalf("analytics-go reported %d successes and %d failures (%v) for %d messages, want all successes; its log:\n%s", ok, failed, cb.failed, len(msgs), logs)
	}

	acked := cb.succeeded()
	segWaitArrived(t, fake, acked, 30*time.Second)
	exs := proxy.Exchanges()
	statuses, dups := segCheckAnswers(t, exs)
	produced := segProducedMessages(t, exs, nil)
	if len(produced) != len(msgs) {
		t.Errorf("the proxy saw %d distinct messages, want the %d analytics-go sent", len(produced), len(msgs))
	}
	for _, pm := range produced {
		if pm.BatchContext == nil {
			t.Errorf("analytics-go sent message %s in a batch without a top-level context: the merge is not exercised", pm.ID)
		}
	}
	r := segCheckDelivery(t, produced, segArrivals(fake), acked, true)
	segFinish(t, p, spoolPath, fake)
	t.Logf("analytics-go: %d messages in %d requests (relay statuses %v, %d duplicates); %d arrived at Segment, %d repeats; "+
		"sentAt moved on by up to %v; Segment's skew correction off by at most %v (without the move: %v)",
		len(msgs), len(exs), statuses, dups, r.Arrived, r.Repeats, r.MaxShift, r.MaxSkew, r.MaxUnshifted)
}

// --- @segment/analytics-node --------------------------------------------------

// segNodeModules installs testdata/segmentapi's locked dependencies with
// npm ci, once per version of package.json and package-lock.json, into a
// directory under the user's cache, and returns its node_modules. It fails
// the test, with npm's output, if node or npm is missing or the install
// fails.
func segNodeModules(t testing.TB) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not on PATH (%v): the analytics-node test needs Node.js 20 or later and npm (scripts/test.sh installs them)", err)
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatalf("npm is not on PATH (%v): the analytics-node test installs @segment/analytics-node with npm ci (scripts/test.sh installs npm)", err)
	}
	out, err := exec.Command(node, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", node, err, out)
	}
	nodeVersion := strings.TrimSpace(string(out))

	src := filepath.Join("testdata", "segmentapi")
	h := sha256.New()
	files := map[string][]byte{}
	for _, name := range []string{"package.json", "package-lock.json"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	root, err := os.UserCacheDir()
	if err != nil {
		root = os.TempDir()
	}
	parent := filepath.Join(root, "gwenrelay-test", "segmentapi-node")
	dir := filepath.Join(parent, key)
	const marker = ".gwenrelay-npm-ci-done"
	if _, err := os.Stat(filepath.Join(dir, marker)); err == nil {
		t.Logf("analytics-node: using %s (installed earlier; node %s)", dir, nodeVersion)
		return filepath.Join(dir, "node_modules")
	}

	// Install into a fresh directory beside it and rename it into place, so
	// that an install cut short is never taken for a finished one and two
	// test processes installing at once do not trip over each other.
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	stage, err := os.MkdirTemp(parent, key+".install-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(stage)
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(stage, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=warn")
	cmd.Dir = stage
	start := time.Now()
	npmOut, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm ci of testdata/segmentapi (@segment/analytics-node) failed in %s after %v: %v\n--- npm output ---\n%s",
			stage, time.Since(start).Round(time.Millisecond), err, npmOut)
	}
	if _, err := os.Stat(filepath.Join(stage, "node_modules", "@segment", "analytics-node", "package.json")); err != nil {
		t.Fatalf("npm ci succeeded but did not install @segment/analytics-node: %v\n--- npm output ---\n%s", err, npmOut)
	}
	if err := os.WriteFile(filepath.Join(stage, marker), []byte(nodeVersion+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(stage, dir); err != nil {
		// Another process finished first: use its install.
		if _, serr := os.Stat(filepath.Join(dir, marker)); serr != nil {
			t.Fatalf("moving the npm install into %s: %v", dir, err)
		}
	}
	t.Logf("analytics-node: npm ci into %s took %v (node %s)", dir, time.Since(start).Round(time.Millisecond), nodeVersion)
	return filepath.Join(dir, "node_modules")
}

// segNodeResult is the RESULT line of testdata/segmentapi/send.cjs.
type segNodeResult struct {
	Delivered []struct {
		Type      string `json:"type"`
		MessageID string `json:"messageId"`
	} `json:"delivered"`
	Errors []string `json:"errors"`
}

// TestSegmentAPI_AnalyticsNode installs @segment/analytics-node from npm
// (pinned by testdata/segmentapi/package-lock.json) and runs
// testdata/segmentapi/send.cjs, which sends one call of each kind with rich
// fields to the proxy (host = the proxy, write key = the inbound token,
// small batches) and exits non-zero if any call's callback reported an
// error. It then checks, as for analytics-go, that the relay answered 200
// with a count for each message and that each message reached Segment
// exactly once, field for field as the library produced it but for the
// documented differences (writeKey dropped, sentAt moved on).
func TestSegmentAPI_AnalyticsNode(t *testing.T) {
	e2eBinary(t)
	modules := segNodeModules(t)
	script, err := filepath.Abs(filepath.Join("testdata", "segmentapi", "send.cjs"))
	if err != nil {
		t.Fatal(err)
	}
	fake := segmenttest.New(segAPIWriteKey)
	defer fake.Close()
	spoolPath := filepath.Join(t.TempDir(), "spool.db")
	p := e2eStartRaw(t, segRelayArgs(spoolPath, "127.0.0.1:0", fake)...)
	proxy := newSegProxy(t, p.URL)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules, "SEGMENTAPI_HOST="+proxy.URL, "SEGMENTAPI_WRITE_KEY="+segAPIToken, "SEGMENTAPI_RUN=node")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := cmd.Run()
	took := time.Since(start)
	if runErr != nil {
		t.Fatalf("node send.cjs: %v after %v\n--- stdout ---\n%s\n--- stderr ---\n%s", runErr, took.Round(time.Millisecond), stdout.String(), stderr.String())
	}
	var res segNodeResult
	found := false
	for _, line := range strings.Split(stdout.String(), "\n") {
		if s, ok := strings.CutPrefix(line, "RESULT "); ok {
			if err := json.Unmarshal([]byte(s), &res); err != nil {
				t.Fatalf("send.cjs RESULT line: %v: %s", err, s)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("send.cjs printed no RESULT line\n--- stdout ---\n%s\n--- stderr ---\n%s", stdout.String(), stderr.String())
	}
	const calls = 8
	if len(res.Errors) > 0 || len(res.Delivered) != calls {
		t.Fatalf("analytics-node reported %d successes of %d calls and errors %q", len(res.Delivered), calls, res.Errors)
	}
	acked := map[string]bool{}
	types := map[string]int{}
	for _, d := range res.Delivered {
		acked[d.MessageID] = true
		types[d.Type]++
	}
	for _, typ := range []string{"track", "identify", "group", "page", "screen", "alias"} {
		if types[typ] == 0 {
			t.Errorf("analytics-node sent no %s call", typ)
		}
	}

	segWaitArrived(t, fake, acked, 30*time.Second)
	exs := proxy.Exchanges()
	statuses, dups := segCheckAnswers(t, exs)
	for i, ex := range exs {
		if ex.Path != "/v1/batch" || !strings.HasPrefix(ex.Header.Get("Authorization"), "Basic ") {
			t.Errorf("request %d: analytics-node sent %s with Authorization %q; expected /v1/batch with Basic auth", i, ex.Path, ex.Header.Get("Authorization"))
		}
		var top struct {
			WriteKey string `json:"writeKey"`
		}
		if json.Unmarshal(ex.Body, &top) == nil && top.WriteKey != segAPIToken {
			t.Errorf("request %d: the batch's writeKey is %q, want the token", i, top.WriteKey)
		}
	}
	produced := segProducedMessages(t, exs, nil)
	if len(produced) != calls {
		t.Errorf("the proxy saw %d distinct messages, want the %d analytics-node sent", len(produced), calls)
	}
	r := segCheckDelivery(t, produced, segArrivals(fake), acked, true)
	segFinish(t, p, spoolPath, fake)
	t.Logf("analytics-node: %d messages in %d requests (relay statuses %v, %d duplicates), node ran %v; %d arrived at Segment, %d repeats; "+
		"sentAt moved on by up to %v; Segment's skew correction off by at most %v (without the move: %v)",
		calls, len(exs), statuses, dups, took.Round(time.Millisecond), r.Arrived, r.Repeats, r.MaxShift, r.MaxSkew, r.MaxUnshifted)
}

// --- the documented differences, with hand-made requests ---------------------

// TestSegmentAPI_Envelope sends requests of shapes some Segment libraries
// send and analytics-go and analytics-node do not, and checks each message
// arrives with exactly the documented differences: a gzipped /v1/batch with
// the write key in the body instead of a header, a context and integrations
// at its top level, a message with its own sentAt and a message without
// messageId and timestamp; a single /v1/track call carrying its own writeKey
// (removed on the way) and no type (its path gives it); and a single
// /v1/identify with Bearer auth and neither messageId, timestamp nor sentAt.
// The same messages sent again, those without a messageId too, are answered
// as duplicates and arrive only once.
func TestSegmentAPI_Envelope(t *testing.T) {
	e2eBinary(t)
	fake := segmenttest.New(segAPIWriteKey)
	defer fake.Close()
	spoolPath := filepath.Join(t.TempDir(), "spool.db")
	p := e2eStartRaw(t, segRelayArgs(spoolPath, "127.0.0.1:0", fake)...)
	proxy := newSegProxy(t, p.URL)

	now := time.Now().UTC()
	ms := "2006-01-02T15:04:05.000Z07:00"
	own := map[string]any{
		"type": "track", "event": "Own Everything", "userId": "env-user-1", "messageId": "env-1",
		"timestamp": now.Add(-time.Hour).Format(ms), "sentAt": now.Add(-2 * time.Second).Format(ms),
		"context":      map[string]any{"app": map[string]any{"name": "own-app"}, "ip": "198.51.100.1"},
		"integrations": map[string]any{"Webhooks": false, "Mixpanel": map[string]any{"x": 1}},
		"properties":   map[string]any{"n": 1.5e3, "s": "x"},
	}
	bare := map[string]any{"type": "identify", "userId": "env-user-2", "traits": map[string]any{"a": 1}}
	emptyCtx := map[string]any{
		"type": "page", "anonymousId": "env-anon-3", "name": "Home", "messageId": "env-3",
		"timestamp": now.Add(-time.Minute).Format(ms), "context": map[string]any{},
	}
	batch := func(msgs ...map[string]any) []byte {
		b, err := json.Marshal(map[string]any{
			"writeKey": segAPIToken,
			// The caller's clock is 3 s behind: what the relay derives from
			// the batch's sentAt is told apart from its own clock.
			"sentAt": time.Now().Add(-3 * time.Second).UTC().Format(ms),
			"context": map[string]any{
				"library": map[string]any{"name": "hand-made", "version": "1.2.3"},
				"app":     map[string]any{"name": "batch-app", "build": "7"},
				"custom":  map[string]any{"tier": "batch"},
			},
			"integrations": map[string]any{"All": false, "Webhooks": true},
			"batch":        msgs,
		})
		if err != nil {
			t.Fatal(err)
		}
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		_, _ = zw.Write(b)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		return z.Bytes()
	}
	single := func() []byte {
		b, err := json.Marshal(map[string]any{
			"writeKey": segAPIToken, "userId": "env-user-4", "event": "Single Call", "messageId": "env-4",
			"sentAt": time.Now().UTC().Format(ms), "properties": map[string]any{"k": []any{1, "two", nil}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Neither messageId nor timestamp nor sentAt: the relay's clock dates it.
	noTimes := []byte(`{"userId":"env-user-5","traits":{"plan":"free"},"context":{"custom":{"via":"curl"}}}`)
	post := func(path string, b []byte, gzipped bool) segAnswer {
		req, err := http.NewRequest(http.MethodPost, proxy.URL+path, bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if gzipped {
			req.Header.Set("Content-Encoding", "gzip")
		}
		if path == "/v1/identify" {
			req.Header.Set("Authorization", "Bearer "+segAPIToken)
		}
		resp, err := e2eClient().Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		ans, _ := io.ReadAll(resp.Body)
		var a segAnswer
		if resp.StatusCode != http.StatusOK || json.Unmarshal(ans, &a) != nil {
			t.Fatalf("POST %s (write key in the body, gzip %v): %d %s, want 200", path, gzipped, resp.StatusCode, ans)
		}
		return a
	}
	if a := post("/v1/batch", batch(own, bare, emptyCtx), true); a.Accepted != 3 || a.Duplicates != 0 {
		t.Errorf("first batch: answer %+v, want 3 accepted", a)
	}
	if a := post("/v1/track", single(), false); a.Accepted != 1 || a.Duplicates != 0 {
		t.Errorf("single track: answer %+v, want 1 accepted", a)
	}
	if a := post("/v1/identify", noTimes, false); a.Accepted != 1 || a.Duplicates != 0 {
		t.Errorf("single identify: answer %+v, want 1 accepted", a)
	}
	if a := post("/v1/batch", batch(own, bare, emptyCtx), true); a.Accepted != 0 || a.Duplicates != 3 {
		t.Errorf("the same messages again (a new batch sentAt): answer %+v, want 3 duplicates and nothing accepted", a)
	}
	if a := post("/v1/track", single(), false); a.Accepted != 0 || a.Duplicates != 1 {
		t.Errorf("the same single track again: answer %+v, want 1 duplicate", a)
	}
	if a := post("/v1/identify", noTimes, false); a.Accepted != 0 || a.Duplicates != 1 {
		t.Errorf("the same single identify again: answer %+v, want 1 duplicate", a)
	}

	if !fake.WaitDelivered(5, 30*time.Second) {
		t.Fatalf("%d messages reached Segment within 30 s, want 5", len(fake.Delivered()))
	}
	arrivals := segArrivals(fake)
	exs := proxy.Exchanges()
	segCheckAnswers(t, exs)
	// The messages sent without a messageId got one from the relay: each is
	// the one that arrived with its userId.
	idOf := func(m map[string]any) string {
		for id, got := range arrivals {
			var gm struct {
				UserID string `json:"userId"`
			}
			if json.Unmarshal(got[0].Raw, &gm) == nil && gm.UserID == m["userId"] {
				return id
			}
		}
		return ""
	}
	produced := segProducedMessages(t, exs, idOf)
	if len(produced) != 5 {
		t.Errorf("%d distinct messages sent, want 5", len(produced))
	}
	r := segCheckDelivery(t, produced, arrivals, nil, true)
	segFinish(t, p, spoolPath, fake)
	t.Logf("hand-made requests: %d messages arrived, %d repeats; sentAt moved on by up to %v", r.Arrived, r.Repeats, r.MaxShift)
}

// --- kill -9 while a client streams batches ----------------------------------

// TestSegmentAPI_KillDashNine streams messages with analytics-go (batches of
// 25, several in flight at once) through the proxy to a relay that is killed
// with SIGKILL five times while the proxy is forwarding a batch to it, and
// restarted each time on the same spool and the same address (the listening
// socket belongs to the test and is handed to each relay as systemd's socket
// activation does, so the address never changes and connections made while
// the relay is down wait instead of being refused). analytics-go retries
// what failed. At the end every message analytics-go reported as a success
// must have reached Segment, field for field as produced, and the spool must
// be empty.
func TestSegmentAPI_KillDashNine(t *testing.T) {
	e2eBinary(t)
	const (
		total     = 3000
		batchSize = 25
		window    = 8 * batchSize // messages enqueued but not yet reported on
		kills     = 5
	)
	fake := segmenttest.New(segAPIWriteKey)
	defer fake.Close()
	spoolPath := filepath.Join(t.TempDir(), "spool.db")
	l, lf := e2eHeldListener(t)
	start := func() *e2eRelay {
		p, err := e2eStartOpts(t, e2eStartOptions{Raw: true, Listeners: []*os.File{lf}}, "", segRelayArgs(spoolPath, "127.0.0.1:1", fake)...)
		if err != nil {
			t.Fatal(err)
		}
		if p.Addr != l.Addr().String() {
			t.Fatalf("relay listens on %s, want the inherited %s", p.Addr, l.Addr())
		}
		return p
	}
	began := time.Now()
	p := start()
	proxy := newSegProxy(t, "http://"+l.Addr().String())

	cb := newSegCallback()
	logs := &segLogger{}
	client, err := analytics.NewWithConfig(segAPIToken, analytics.Config{
		Endpoint:  proxy.URL,
		Interval:  50 * time.Millisecond,
		BatchSize: batchSize,
		Callback:  cb,
		Logger:    logs,
		Transport: &http.Transport{Proxy: nil},
		// Ten attempts over about 5 s: enough to outlast a restart.
		RetryAfter: func(i int) time.Duration { return time.Duration(min(i+1, 10)) * 100 * time.Millisecond },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })

	// The producer keeps about window messages outstanding, so that batches
	// are in flight all the time, whatever the relay's state.
	produceErr := make(chan error, 1)
	go func() {
		for i := 0; i < total; i++ {
			if !cb.waitUntil(60*time.Second, func(ok, failed int) bool { return i-ok-failed < window }) {
				produceErr <- fmt.Errorf("no progress for 60 s with %d messages outstanding", window)
				return
			}
			var m analytics.Message
			id := fmt.Sprintf("kill-%05d", i)
			user := fmt.Sprintf("kill-user-%03d", i%97)
			props := analytics.NewProperties().Set("i", i).Set("pad", strings.Repeat("p", 200))
			switch i % 6 {
			case 0, 1:
				m = analytics.Track{MessageId: id, UserId: user, Event: "Stream Event", Properties: props}
			case 2:
				m = analytics.Identify{MessageId: id, UserId: user, Traits: analytics.NewTraits().Set("i", i)}
			case 3:
				m = analytics.Page{MessageId: id, AnonymousId: "anon-" + user, Name: "Page", Properties: props}
			case 4:
				m = analytics.Screen{MessageId: id, UserId: user, Name: "Screen", Properties: props}
			case 5:
				m = analytics.Group{MessageId: id, UserId: user, GroupId: "g", Traits: analytics.NewTraits().Set("i", i)}
			}
			if err := client.Enqueue(m); err != nil {
				produceErr <- fmt.Errorf("Enqueue %s: %v", id, err)
				return
			}
		}
		produceErr <- nil
	}()

	type killNote struct {
		acked, inflight int
	}
	var notes []killNote
	for k := 1; k <= kills; k++ {
		threshold := k * total / (kills + 1)
		if !cb.waitUntil(60*time.Second, func(ok, failed int) bool { return ok >= threshold }) {
			ok, failed := cb.counts()
			t.Fatalf("kill %d: only %d successes (%d failures) within 60 s, waiting for %d; analytics-go log:\n%s", k, ok, failed, threshold, logs)
		}
		if !proxy.WaitInflight(10 * time.Second) {
			t.Fatalf("kill %d: no request in flight to the relay within 10 s", k)
		}
		inflight := proxy.inflightNow()
		p.Kill()
		ok, _ := cb.counts()
		notes = append(notes, killNote{acked: ok, inflight: inflight})
		p = start()
	}
	if err := <-produceErr; err != nil {
		t.Fatalf("producer: %v; analytics-go log:\n%s", err, logs)
	}
	if !cb.waitUntil(90*time.Second, func(ok, failed int) bool { return ok+failed >= total }) {
		ok, failed := cb.counts()
		t.Fatalf("analytics-go reported on %d of %d messages within 90 s (%d failures); log:\n%s", ok+failed, total, failed, logs)
	}
	if err := client.Close(); err != nil {
		t.Errorf("analytics-go Close: %v", err)
	}
	acked := cb.succeeded()
	okN, failedN := cb.counts()

	segWaitArrived(t, fake, acked, 60*time.Second)
	exs := proxy.Exchanges()
	statuses, dups := segCheckAnswers(t, exs, 0) // 0: cut by the kill
	produced := segProducedMessages(t, exs, nil)
	arrivals := segArrivals(fake)
	r := segCheckDelivery(t, produced, arrivals, acked, false)
	segFinish(t, p, spoolPath, fake)

	cut := statuses[0]
	if cut == 0 {
		t.Errorf("no request was cut by the %d kills: the kills did not land during a batch", kills)
	}
	failedDelivered := 0
	cb.mu.Lock()
	for id := range cb.failed {
		if len(arrivals[id]) > 0 {
			failedDelivered++
		}
	}
	cb.mu.Unlock()
	for i, n := range notes {
		t.Logf("kill -9 #%d with %d requests in flight through the proxy; %d successes reported by then", i+1, n.inflight, n.acked)
	}
	t.Logf("%d messages produced; analytics-go reported %d successes and %d failures; %d proxied requests (relay statuses %v: %d cut by the kills), relay reported %d duplicates",
		total, okN, failedN, len(exs), statuses, cut, dups)
	t.Logf("at Segment: %d distinct messages (%d of the %d acknowledged, %d of the failed ones), %d repeat deliveries under the same messageId; "+
		"sentAt moved on by up to %v, Segment's skew correction off by at most %v (without the move: %v); took %v",
		r.Arrived, segCountIn(acked, arrivals), len(acked), failedDelivered, r.Repeats, r.MaxShift, r.MaxSkew, r.MaxUnshifted, time.Since(began).Round(time.Millisecond))
	if okN == 0 {
		t.Errorf("analytics-go reported no success: the test proves nothing")
	}
}

func segCountIn(ids map[string]bool, arrivals map[string][]segmenttest.Message) int {
	n := 0
	for id := range ids {
		if len(arrivals[id]) > 0 {
			n++
		}
	}
	return n
}
