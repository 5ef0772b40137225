package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/gwenrelay/gwenrelay/ratelimit"
	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
	"github.com/gwenrelay/gwenrelay/spool"
)

// The raw sender tests drive NewSegmentSenders' senders (or the raw sender
// itself) against the fake Segment on loopback, through the real HTTP stack.

// rawVerdicts is a callback that keeps every verdict by messageId and lets a
// test wait for a condition on them.
type rawVerdicts struct {
	mu      sync.Mutex
	ok      map[string]int
	failed  map[string][]error
	changed chan struct{}
}

func newRawVerdicts() *rawVerdicts {
	return &rawVerdicts{ok: map[string]int{}, failed: map[string][]error{}, changed: make(chan struct{})}
}

func (v *rawVerdicts) Success(m analytics.Message) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.ok[messageID(m)]++
	close(v.changed)
	v.changed = make(chan struct{})
}

func (v *rawVerdicts) Failure(m analytics.Message, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.failed[messageID(m)] = append(v.failed[messageID(m)], err)
	close(v.changed)
	v.changed = make(chan struct{})
}

// counts returns the number of successes and failures so far.
func (v *rawVerdicts) counts() (ok, failed int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, n := range v.ok {
		ok += n
	}
	for _, errs := range v.failed {
		failed += len(errs)
	}
	return ok, failed
}

// wait blocks until cond (called with the counts) holds or timeout passes.
func (v *rawVerdicts) wait(t *testing.T, timeout time.Duration, what string, cond func(ok, failed int) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		v.mu.Lock()
		ch := v.changed
		v.mu.Unlock()
		ok, failed := v.counts()
		if cond(ok, failed) {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s (%d successes, %d failures)", timeout, what, ok, failed)
		}
	}
}

type rawRigConfig struct {
	rate          float64       // default: no rate limit
	burst         int           // default 0
	flush         time.Duration // default 20ms
	retryBase     time.Duration // default 5ms
	retryMax      time.Duration // default 20ms
	isolation     bool          // use the isolation constructor
	requestTimout time.Duration // default 5s
}

// rawRig is one sender from NewSegmentSenders delivering to a fake.
type rawRig struct {
	fake     *segmenttest.Server
	wire     *wireLog
	lim      *ratelimit.Limiter
	cb       *rawVerdicts
	s        Sender
	observed atomic.Int64 // events Observe was told of
}

func newRawRig(t *testing.T, cfg rawRigConfig) *rawRig {
	t.Helper()
	if cfg.flush == 0 {
		cfg.flush = 20 * time.Millisecond
	}
	if cfg.retryBase == 0 {
		cfg.retryBase = 5 * time.Millisecond
	}
	if cfg.retryMax == 0 {
		cfg.retryMax = 20 * time.Millisecond
	}
	if cfg.requestTimout == 0 {
		cfg.requestTimout = 5 * time.Second
	}
	r := &rawRig{
		fake: segmenttest.New(drainTestWriteKey),
		wire: newWireLog(true),
		lim:  ratelimit.New(cfg.rate, cfg.burst),
		cb:   newRawVerdicts(),
	}
	t.Cleanup(r.fake.Close)
	normal, iso := NewSegmentSenders(SegmentConfig{
		WriteKey:       drainTestWriteKey,
		Endpoint:       r.fake.URL,
		Limiter:        r.lim,
		Base:           r.wire,
		FlushInterval:  cfg.flush,
		RequestTimeout: cfg.requestTimout,
		RetryBase:      cfg.retryBase,
		RetryMax:       cfg.retryMax,
		Observe: func(events, status int, err error, waited, took time.Duration) {
			r.observed.Add(int64(events))
		},
		Logger: drainQuietLog,
	})
	newSender := normal
	if cfg.isolation {
		newSender = iso
	}
	s, err := newSender(r.cb)
	if err != nil {
		t.Fatal(err)
	}
	r.s = s
	t.Cleanup(func() { _ = s.Close() })
	return r
}

func (r *rawRig) enqueue(t *testing.T, msgs ...*SegmentMessage) {
	t.Helper()
	for _, m := range msgs {
		if err := r.s.Enqueue(m); err != nil {
			t.Fatalf("Enqueue(%s): %v", m.ID, err)
		}
	}
}

// rawPast is a ReceivedAt an hour ago, without a monotonic clock reading,
// as a record read back from the spool has it.
func rawPast() time.Time { return time.Now().Add(-time.Hour).Round(0) }

// rawMessage returns a track message with id; extra, if not empty, is added
// as further top-level members (it starts with a comma).
func rawMessage(id, extra string, receivedAt time.Time) *SegmentMessage {
	raw := fmt.Sprintf(`{"type":"track","messageId":%q,"userId":"u-1","event":"Signed Up","timestamp":"2024-06-03T12:00:00.000Z"%s}`, id, extra)
	return &SegmentMessage{ID: id, Type: "track", Raw: []byte(raw), ReceivedAt: receivedAt}
}

// rawPadded returns a message of exactly size bytes, without a sentAt.
func rawPadded(t *testing.T, id string, size int) *SegmentMessage {
	t.Helper()
	m := rawMessage(id, `,"properties":{"pad":""}`, time.Now())
	pad := size - len(m.Raw)
	if pad < 0 {
		t.Fatalf("%d bytes is too small for a message", size)
	}
	m.Raw = []byte(strings.Replace(string(m.Raw), `"pad":""`, `"pad":"`+strings.Repeat("x", pad)+`"`, 1))
	if len(m.Raw) != size {
		t.Fatalf("padded to %d bytes, want %d", len(m.Raw), size)
	}
	return m
}

// wantBodies checks that every message the fake received is byte for byte
// what Body makes of the one enqueued at its batch's sentAt.
func wantBodies(t *testing.T, got []segmenttest.Message, sent map[string]*SegmentMessage) {
	t.Helper()
	for _, m := range got {
		sm, ok := sent[m.MessageID]
		if !ok {
			t.Errorf("the fake received messageId %q, which was not sent", m.MessageID)
			continue
		}
		if want := sm.Body(m.SentAt); !bytes.Equal(m.Raw, want) {
			t.Errorf("%s arrived as\n%s\nwant exactly\n%s", m.MessageID, m.Raw, want)
		}
	}
}

func TestRawSender_Delivery(t *testing.T) {
	t.Parallel()
	r := newRawRig(t, rawRigConfig{rate: 1000, burst: 50})
	past := rawPast()
	msgs := []*SegmentMessage{
		// Fields analytics-go's structs would drop or reshape.
		rawMessage("raw-custom", `,"context":{"custom":{"a":[1,{"b":"],\"[\u00e9"}]},"library":{"name":"analytics.js","version":"5.0.0"}},"_metadata":{"bundled":["Segment.io"],"unbundled":[]},"properties":{},"category":"c","integrations":{"All":false,"Mixpanel":true}`, past),
		rawMessage("raw-sentat", `,"sentAt":"2024-06-03T12:00:01.250Z","anonymousId":"a-1"`, past),
		{ID: "raw-identify", Type: "identify", Raw: []byte(`{"type":"identify","messageId":"raw-identify","userId":"u-2","traits":{"email":"x@example.com","n":1.50,"big":12345678901234567890},"timestamp":"2024-06-03T12:00:00Z"}`), ReceivedAt: past},
	}
	sent := map[string]*SegmentMessage{}
	for _, m := range msgs {
		sent[m.ID] = m
	}
	// The limiter holds the upload: its sentAt must say when it left, not
	// when it was built.
	const hold = 300 * time.Millisecond
	start := time.Now()
	r.lim.Pause(hold)
	r.enqueue(t, msgs...)
	r.cb.wait(t, 10*time.Second, "every message delivered", func(ok, failed int) bool { return ok+failed == len(msgs) })
	if ok, failed := r.cb.counts(); ok != len(msgs) || failed != 0 {
		t.Fatalf("%d successes, %d failures; want %d successes", ok, failed, len(msgs))
	}

	got := r.fake.Messages()
	if len(got) != len(msgs) || len(r.fake.Requests()) != 1 {
		t.Fatalf("the fake received %d messages in %d requests, want %d in one", len(got), len(r.fake.Requests()), len(msgs))
	}
	wantBodies(t, got, sent)
	if !bytes.Equal(got[2].Raw, msgs[2].Raw) || !bytes.Equal(got[0].Raw, msgs[0].Raw) {
		t.Errorf("a message without sentAt was changed on its way")
	}
	wire := r.wire.all()
	if len(wire) != 1 {
		t.Fatalf("%d attempts on the wire, want 1", len(wire))
	}
	x := wire[0]
	sentAt := got[0].SentAt
	if sentAt.Before(start.Add(hold)) {
		t.Errorf("sentAt %s is before the limiter released the upload (%s): it was stamped when built", sentAt.Format(time.RFC3339Nano), start.Add(hold).Format(time.RFC3339Nano))
	}
	if lag := x.start.Sub(sentAt); lag < 0 || lag > 250*time.Millisecond {
		t.Errorf("the upload left %v after its sentAt, want it stamped as it left", lag)
	}
	wantPrefix := `{"sentAt":"` + sentAt.UTC().Format(time.RFC3339Nano) + `","batch":[`
	if !bytes.HasPrefix(x.body, []byte(wantPrefix)) || !bytes.HasSuffix(x.body, []byte("]}")) {
		t.Errorf("body %s\nwant it to start %s", x.body, wantPrefix)
	}
	for k, want := range map[string]string{"User-Agent": "gwenrelay", "Content-Type": "application/json"} {
		if got := x.header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if user, pass, ok := (&http.Request{Header: x.header}).BasicAuth(); !ok || user != drainTestWriteKey || pass != "" {
		t.Errorf("Basic auth %q:%q (%v), want the write key and no password", user, pass, ok)
	}
	if n := r.observed.Load(); n != int64(len(msgs)) {
		t.Errorf("Observe counted %d events, want %d", n, len(msgs))
	}
	wantNoProblems(t, r.fake)
}

// The caller's sentAt, on the caller's clock, moves on by the time the
// message spent in the relay, so that Segment's skew correction
// (receivedAt - (sentAt - timestamp)) dates it as the caller did.
func TestRawSender_SentAtMovedOn(t *testing.T) {
	t.Parallel()
	r := newRawRig(t, rawRigConfig{})
	received := time.Now().Add(-90 * time.Minute).Round(0)
	const callerSentAt = "2024-06-03T12:00:01.250+02:00"
	m := rawMessage("moved", `,"sentAt":"`+callerSentAt+`"`, received)
	r.enqueue(t, m)
	r.cb.wait(t, 10*time.Second, "delivery", func(ok, failed int) bool { return ok+failed == 1 })
	got := r.fake.Messages()
	if len(got) != 1 {
		t.Fatalf("%d messages arrived, want 1", len(got))
	}
	var fields struct {
		SentAt    string `json:"sentAt"`
		Timestamp string `json:"timestamp"`
	}
	if err := json.Unmarshal(got[0].Raw, &fields); err != nil {
		t.Fatal(err)
	}
	orig, _ := time.Parse(time.RFC3339Nano, callerSentAt)
	moved, err := time.Parse(time.RFC3339Nano, fields.SentAt)
	if err != nil {
		t.Fatalf("sentAt %q: %v", fields.SentAt, err)
	}
	// Moved on by the time from ReceivedAt to the batch's sentAt (to the
	// millisecond Body writes).
	want := orig.Add(got[0].SentAt.Sub(received))
	if d := moved.Sub(want); d < -time.Millisecond || d > time.Millisecond {
		t.Errorf("sentAt %s, want %s (the caller's %s moved on by %v)", fields.SentAt, want.UTC().Format(time.RFC3339Nano), callerSentAt, got[0].SentAt.Sub(received))
	}
	if moved.Sub(orig) < 90*time.Minute {
		t.Errorf("sentAt moved on by %v, want at least the 90 minutes spent in the relay", moved.Sub(orig))
	}
	if fields.Timestamp != "2024-06-03T12:00:00.000Z" {
		t.Errorf("timestamp %q was changed", fields.Timestamp)
	}
	wantBodies(t, got, map[string]*SegmentMessage{m.ID: m})
}

func TestRawSender_Batches(t *testing.T) {
	t.Run("by count", func(t *testing.T) {
		t.Parallel()
		// The batch size is the limiter's burst (7); the flush interval is
		// too long to matter, so the full batches leave on their own and
		// Close sends the rest.
		r := newRawRig(t, rawRigConfig{rate: 100000, burst: 7, flush: time.Hour})
		sent := map[string]*SegmentMessage{}
		for i := range 20 {
			m := rawMessage(fmt.Sprintf("count-%02d", i), "", time.Now())
			sent[m.ID] = m
			r.enqueue(t, m)
		}
		r.cb.wait(t, 10*time.Second, "the two full batches", func(ok, failed int) bool { return ok+failed >= 14 })
		if ok, failed := r.cb.counts(); ok != 14 || failed != 0 {
			t.Fatalf("before Close: %d successes, %d failures; want the 14 of the full batches", ok, failed)
		}
		if err := r.s.Close(); err != nil {
			t.Fatal(err)
		}
		if ok, failed := r.cb.counts(); ok != 20 || failed != 0 {
			t.Errorf("after Close: %d successes, %d failures; want 20 successes", ok, failed)
		}
		var sizes []int
		for _, q := range r.fake.Requests() {
			sizes = append(sizes, q.Events)
		}
		if !slices.Equal(sizes, []int{7, 7, 6}) {
			t.Errorf("batches of %v, want [7 7 6]", sizes)
		}
		wantBodies(t, r.fake.Messages(), sent)
		wantNoProblems(t, r.fake)
	})

	t.Run("by bytes", func(t *testing.T) {
		t.Parallel()
		// 31,000-byte messages: 16 make a body under 500,000 bytes, 17 would
		// not.
		r := newRawRig(t, rawRigConfig{flush: time.Hour})
		const size, n = 31000, 40
		sent := map[string]*SegmentMessage{}
		for i := range n {
			m := rawPadded(t, fmt.Sprintf("bytes-%02d", i), size)
			sent[m.ID] = m
			r.enqueue(t, m)
		}
		r.cb.wait(t, 10*time.Second, "the two full batches", func(ok, failed int) bool { return ok+failed >= 32 })
		if err := r.s.Close(); err != nil {
			t.Fatal(err)
		}
		if ok, failed := r.cb.counts(); ok != n || failed != 0 {
			t.Errorf("%d successes, %d failures; want %d successes", ok, failed, n)
		}
		var sizes []int
		for _, x := range r.wire.all() {
			if len(x.body) > maxBatchBodyBytes {
				t.Errorf("a body of %d bytes; Segment takes at most %d", len(x.body), maxBatchBodyBytes)
			}
			sizes = append(sizes, countBatch(x.body))
			if c := countBatch(x.body); c == 16 && len(x.body)+1+size <= maxBatchBodyBytes {
				t.Errorf("a batch of %d bytes left with room for another message", len(x.body))
			}
		}
		if !slices.Equal(sizes, []int{16, 16, 8}) {
			t.Errorf("batches of %v messages, want [16 16 8]", sizes)
		}
		wantBodies(t, r.fake.Messages(), sent)
		wantNoProblems(t, r.fake)
	})

	t.Run("by time", func(t *testing.T) {
		t.Parallel()
		r := newRawRig(t, rawRigConfig{flush: 50 * time.Millisecond})
		start := time.Now()
		r.enqueue(t, rawMessage("timed-1", "", time.Now()), rawMessage("timed-2", "", time.Now()))
		r.cb.wait(t, 10*time.Second, "the partial batch sent by its timer", func(ok, failed int) bool { return ok == 2 })
		if q := r.fake.Requests(); len(q) != 1 || q[0].Events != 2 || q[0].At.Sub(start) < 50*time.Millisecond {
			t.Errorf("requests %+v, want one of 2 events, no sooner than the flush interval", q)
		}
	})

	t.Run("isolation sends each message alone", func(t *testing.T) {
		t.Parallel()
		r := newRawRig(t, rawRigConfig{rate: 1000, burst: 50, flush: time.Hour, isolation: true})
		for i := range 5 {
			r.enqueue(t, rawMessage(fmt.Sprintf("iso-%d", i), "", time.Now()))
		}
		r.cb.wait(t, 10*time.Second, "5 deliveries", func(ok, failed int) bool { return ok == 5 })
		for _, q := range r.fake.Requests() {
			if q.Events != 1 {
				t.Errorf("the isolation sender put %d messages in one request", q.Events)
			}
		}
	})
}

// Both kinds go through one sender: analytics-go's messages as before, the
// SegmentMessages through the raw sender, each batched by the same rule.
func TestSegmentSenders_Routing(t *testing.T) {
	t.Parallel()
	r := newRawRig(t, rawRigConfig{rate: 100000, burst: 5, flush: time.Hour})
	for i := range 12 {
		r.enqueue(t, rawMessage(fmt.Sprintf("route-raw-%02d", i), "", time.Now()))
		if err := r.s.Enqueue(analytics.Track{MessageId: fmt.Sprintf("route-sdk-%02d", i), UserId: "u", Event: "E"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.s.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, failed := r.cb.counts(); ok != 24 || failed != 0 {
		t.Fatalf("%d successes, %d failures; want 24 successes", ok, failed)
	}
	kinds := map[string][]int{}
	for _, x := range r.wire.all() {
		ua := x.header.Get("User-Agent")
		var b struct{ Batch []struct{ MessageID string } }
		if err := json.Unmarshal(x.body, &b); err != nil {
			t.Fatal(err)
		}
		for _, m := range b.Batch {
			if raw := strings.HasPrefix(m.MessageID, "route-raw-"); raw != (ua == "gwenrelay") {
				t.Errorf("%s went out with User-Agent %q", m.MessageID, ua)
			}
		}
		kinds[ua] = append(kinds[ua], len(b.Batch))
	}
	if got := kinds["gwenrelay"]; !slices.Equal(slices.Sorted(slices.Values(got)), []int{2, 5, 5}) {
		t.Errorf("raw batches of %v, want two of 5 and one of 2", got)
	}
	if len(kinds) != 2 {
		t.Errorf("User-Agents %v, want gwenrelay's and analytics-go's", kinds)
	}
	wantNoProblems(t, r.fake)
}

func TestRawSender_Answers(t *testing.T) {
	for _, c := range []struct {
		name string
		step segmenttest.Step
	}{
		{"500", segmenttest.Step{Status: http.StatusInternalServerError, Times: 2}},
		{"503", segmenttest.Step{Status: http.StatusServiceUnavailable, Times: 3}},
		{"401 (not about the records)", segmenttest.Step{Status: http.StatusUnauthorized, Times: 2}},
		{"connection reset", segmenttest.Step{Reset: true, Times: 2}},
	} {
		t.Run("retried: "+c.name, func(t *testing.T) {
			t.Parallel()
			r := newRawRig(t, rawRigConfig{})
			r.fake.Script(c.step)
			r.enqueue(t, rawMessage("retry-1", "", time.Now()), rawMessage("retry-2", "", time.Now()))
			r.cb.wait(t, 10*time.Second, "the batch delivered", func(ok, failed int) bool { return ok+failed == 2 })
			if ok, failed := r.cb.counts(); ok != 2 || failed != 0 {
				t.Errorf("%d successes, %d failures; want 2 successes", ok, failed)
			}
			if n := len(r.fake.Requests()); n != c.step.Times+1 {
				t.Errorf("%d requests, want %d failed and the one that succeeded", n, c.step.Times)
			}
		})
	}

	for _, status := range []int{http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity} {
		t.Run(fmt.Sprintf("%d fails at once", status), func(t *testing.T) {
			t.Parallel()
			r := newRawRig(t, rawRigConfig{})
			r.fake.Script(segmenttest.Step{Status: status, Times: 5})
			r.enqueue(t, rawMessage("refused-1", "", time.Now()), rawMessage("refused-2", "", time.Now()))
			r.cb.wait(t, 10*time.Second, "the batch failed", func(ok, failed int) bool { return ok+failed == 2 })
			if err := r.s.Close(); err != nil { // every upload has ended: the counts below are final
				t.Fatal(err)
			}
			if n := len(r.fake.Requests()); n != 1 {
				t.Errorf("%d requests, want 1: Segment refused the content, sending it again cannot help", n)
			}
			r.cb.mu.Lock()
			defer r.cb.mu.Unlock()
			for _, id := range []string{"refused-1", "refused-2"} {
				errs := r.cb.failed[id]
				if len(errs) != 1 || r.cb.ok[id] != 0 {
					t.Errorf("%s: failures %v, %d successes; want one failure", id, errs, r.cb.ok[id])
					continue
				}
				want := fmt.Sprintf("%d %d %s", status, status, http.StatusText(status))
				if errs[0].Error() != want || classify(errs[0]) != failRejected {
					t.Errorf("%s: error %q (class %d), want %q, a rejection", id, errs[0], classify(errs[0]), want)
				}
			}
		})
	}

	t.Run("ten attempts, then the last error", func(t *testing.T) {
		t.Parallel()
		r := newRawRig(t, rawRigConfig{retryBase: time.Millisecond, retryMax: 2 * time.Millisecond})
		r.fake.Script(segmenttest.Step{Status: http.StatusBadGateway, Times: 9}, segmenttest.Step{Status: http.StatusServiceUnavailable, Times: 5})
		r.enqueue(t, rawMessage("doomed", "", time.Now()))
		r.cb.wait(t, 20*time.Second, "the batch given up", func(ok, failed int) bool { return ok+failed == 1 })
		if err := r.s.Close(); err != nil {
			t.Fatal(err)
		}
		if n := len(r.fake.Requests()); n != rawAttempts {
			t.Errorf("%d requests, want %d", n, rawAttempts)
		}
		r.cb.mu.Lock()
		defer r.cb.mu.Unlock()
		if errs := r.cb.failed["doomed"]; len(errs) != 1 || errs[0].Error() != "503 503 Service Unavailable" || classify(errs[0]) != failTransient {
			t.Errorf("failures %v, want the last answer, 503, once", errs)
		}
	})

	t.Run("a retry is stamped when it leaves", func(t *testing.T) {
		t.Parallel()
		r := newRawRig(t, rawRigConfig{retryBase: 400 * time.Millisecond, retryMax: 400 * time.Millisecond})
		r.fake.Script(segmenttest.Step{Status: http.StatusInternalServerError})
		m := rawMessage("again", `,"sentAt":"2024-06-03T12:00:01.000Z"`, rawPast())
		r.enqueue(t, m)
		r.cb.wait(t, 10*time.Second, "delivery", func(ok, failed int) bool { return ok == 1 })
		got := r.fake.Messages()
		if len(got) != 2 {
			t.Fatalf("%d copies arrived, want the failed attempt and the retry", len(got))
		}
		// The backoff is at least half of 400ms.
		if d := got[1].SentAt.Sub(got[0].SentAt); d < 200*time.Millisecond {
			t.Errorf("the retry's sentAt is %v after the first attempt's, want at least the 200ms backoff", d)
		}
		if bytes.Equal(got[0].Raw, got[1].Raw) {
			t.Errorf("the retry carried the caller's sentAt as the first attempt did: %s", got[1].Raw)
		}
		wantBodies(t, got, map[string]*SegmentMessage{m.ID: m})
		wire := r.wire.all()
		if len(wire) != 2 || bytes.Equal(wire[0].body, wire[1].body) {
			t.Errorf("the retry's body was not built anew")
		}
	})
}

func TestRawSender_Close(t *testing.T) {
	t.Run("sends the partial batch", func(t *testing.T) {
		t.Parallel()
		r := newRawRig(t, rawRigConfig{flush: time.Hour})
		r.enqueue(t, rawMessage("partial-1", "", time.Now()), rawMessage("partial-2", "", time.Now()))
		if n := len(r.fake.Requests()); n != 0 {
			t.Fatalf("%d requests before Close; the batch should still be open", n)
		}
		if err := r.s.Close(); err != nil {
			t.Fatal(err)
		}
		if ok, failed := r.cb.counts(); ok != 2 || failed != 0 {
			t.Errorf("after Close: %d successes, %d failures; want 2 successes", ok, failed)
		}
		if q := r.fake.Requests(); len(q) != 1 || q[0].Events != 2 {
			t.Errorf("requests %+v, want one of 2 events", q)
		}
	})

	t.Run("gives up a batch waiting to retry", func(t *testing.T) {
		t.Parallel()
		r := newRawRig(t, rawRigConfig{retryBase: time.Minute, retryMax: time.Minute})
		r.fake.Script(segmenttest.Step{Status: http.StatusServiceUnavailable, Times: 100})
		r.enqueue(t, rawMessage("backoff-1", "", time.Now()), rawMessage("backoff-2", "", time.Now()))
		waitFor(t, 10*time.Second, "the first attempt answered", func() bool {
			q := r.fake.Requests()
			return len(q) == 1 && q[0].Status == http.StatusServiceUnavailable
		})
		start := time.Now()
		if err := r.s.Close(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("Close took %v; a batch in backoff should be given up at once", took)
		}
		if n := len(r.fake.Requests()); n != 1 {
			t.Errorf("%d requests, want only the first attempt", n)
		}
		r.cb.mu.Lock()
		defer r.cb.mu.Unlock()
		for _, id := range []string{"backoff-1", "backoff-2"} {
			if errs := r.cb.failed[id]; len(errs) != 1 || errs[0].Error() != "503 503 Service Unavailable" {
				t.Errorf("%s: failures %v, want the 503 once", id, errs)
			}
		}
	})

	t.Run("then Enqueue is refused; Close again is harmless", func(t *testing.T) {
		t.Parallel()
		r := newRawRig(t, rawRigConfig{})
		if err := r.s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.s.Enqueue(rawMessage("late", "", time.Now())); !errors.Is(err, analytics.ErrClosed) {
			t.Errorf("Enqueue after Close: %v, want ErrClosed", err)
		}
		raw := newRawSender(SegmentConfig{WriteKey: drainTestWriteKey, Endpoint: r.fake.URL, Limiter: r.lim, Logger: drainQuietLog}, http.DefaultTransport, 10, r.cb)
		for i := range 2 {
			if err := raw.Close(); err != nil {
				t.Errorf("Close #%d: %v", i+1, err)
			}
		}
		if err := raw.Enqueue(rawMessage("late", "", time.Now())); !errors.Is(err, analytics.ErrClosed) {
			t.Errorf("Enqueue after Close: %v, want ErrClosed", err)
		}
		if ok, failed := r.cb.counts(); ok+failed != 0 || len(r.fake.Requests()) != 0 {
			t.Errorf("a refused message was reported (%d, %d) or sent", ok, failed)
		}
	})

	t.Run("beside concurrent Enqueues", func(t *testing.T) {
		t.Parallel()
		r := newRawRig(t, rawRigConfig{rate: 1e6, burst: 5, flush: time.Millisecond})
		newSender, _ := NewSegmentSenders(SegmentConfig{
			WriteKey: drainTestWriteKey, Endpoint: r.fake.URL, Limiter: r.lim, Base: r.wire,
			FlushInterval: time.Millisecond, Logger: drainQuietLog,
		})
		// Rounds of eight goroutines enqueueing until the sender is closed
		// under them, at a different point each round.
		for round := range 20 {
			cb := newRawVerdicts()
			s, err := newSender(cb)
			if err != nil {
				t.Fatal(err)
			}
			var accepted atomic.Int64
			closeAt := int64(50 + 23*round)
			ready := make(chan struct{})
			var once sync.Once
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						err := s.Enqueue(rawMessage(fmt.Sprintf("race-%d-%d-%d", round, g, i), "", time.Now()))
						switch {
						case err == nil:
							if accepted.Add(1) == closeAt {
								once.Do(func() { close(ready) })
							}
						case errors.Is(err, analytics.ErrClosed):
							return
						default:
							t.Errorf("Enqueue: %v", err)
							return
						}
					}
				}()
			}
			select {
			case <-ready:
			case <-time.After(10 * time.Second):
				t.Fatal("the senders did not get going")
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			// Every message taken was settled by the time Close returned.
			ok, failed := cb.counts()
			if int64(ok+failed) != accepted.Load() || failed != 0 {
				t.Fatalf("round %d: %d messages accepted, %d delivered and %d failed; want each accepted one delivered", round, accepted.Load(), ok, failed)
			}
		}
	})
}

func TestRawSender_Refusals(t *testing.T) {
	t.Parallel()
	r := newRawRig(t, rawRigConfig{flush: time.Hour})
	big := rawPadded(t, "too-big", maxStoredSegmentMessage+1)
	if err := r.s.Enqueue(big); err != nil {
		t.Errorf("Enqueue of an oversize message: %v, want nil and a Failure", err)
	}
	atLimit := rawPadded(t, "at-limit", maxStoredSegmentMessage)
	r.enqueue(t, atLimit)
	for _, bad := range []*SegmentMessage{
		{ID: "no-raw", Type: "track"},
		{ID: "", Type: "track", Raw: []byte(`{"type":"track"}`)},
		{ID: "odd-type", Type: "bogus", Raw: []byte(`{"type":"bogus","messageId":"odd-type"}`)},
	} {
		if err := r.s.Enqueue(bad); err == nil {
			t.Errorf("Enqueue(%+v) accepted an invalid message", bad)
		}
	}
	raw := newRawSender(SegmentConfig{WriteKey: drainTestWriteKey, Endpoint: r.fake.URL, Limiter: r.lim, Logger: drainQuietLog}, http.DefaultTransport, 10, r.cb)
	defer raw.Close()
	if err := raw.Enqueue(analytics.Track{MessageId: "sdk", UserId: "u", Event: "E"}); err == nil {
		t.Error("the raw sender accepted an analytics.Track")
	}
	if err := r.s.Close(); err != nil {
		t.Fatal(err)
	}
	r.cb.mu.Lock()
	defer r.cb.mu.Unlock()
	if errs := r.cb.failed["too-big"]; len(errs) != 1 || !errors.Is(errs[0], analytics.ErrMessageTooBig) || classify(errs[0]) != failTooBig {
		t.Errorf("oversize message: failures %v, want ErrMessageTooBig once", errs)
	}
	if r.cb.ok["at-limit"] != 1 || len(r.cb.failed) != 1 {
		t.Errorf("verdicts ok %v, failed %v; want the message at the limit delivered, only the oversize one failed", r.cb.ok, r.cb.failed)
	}
	if d := r.fake.Delivered(); len(d) != 1 || d["at-limit"] != 1 {
		t.Errorf("the fake got %v, want only the message at the limit", d)
	}
}

// spoolSegmentEntry is a KindSegment entry as ingest stores it.
func spoolSegmentEntry(m *SegmentMessage) spool.Entry {
	return spool.Entry{Kind: spool.KindSegment, Key: []byte("segment:" + m.ID), MessageID: m.ID, ReceivedAt: m.ReceivedAt, Event: m.Raw}
}

// segmentRecordMessages builds the messages of KindSegment records read back
// from the spool, by messageId.
func segmentRecordMessages(t *testing.T, recs []spool.Record) map[string]*SegmentMessage {
	t.Helper()
	out := map[string]*SegmentMessage{}
	for _, r := range recs {
		msg, err := recordMessage(r, nil)
		if err != nil {
			t.Fatalf("record %d: %v", r.ID, err)
		}
		sm, ok := msg.(*SegmentMessage)
		if !ok {
			t.Fatalf("record %d became a %T", r.ID, msg)
		}
		out[sm.ID] = sm
	}
	return out
}

func TestDrainer_SegmentRecords(t *testing.T) {
	t.Run("delivered as stored; a rejected batch costs only its culprit", func(t *testing.T) {
		t.Parallel()
		const n, culpritAt = 60, 23
		sp := openDrainSpool(t, "")
		past := rawPast()
		var entries []spool.Entry
		for i := range n {
			extra := fmt.Sprintf(`,"context":{"custom":{"i":%d}},"properties":{}`, i)
			if i%2 == 0 {
				extra += `,"sentAt":"2024-06-03T12:00:01.000Z"`
			}
			entries = append(entries, spoolSegmentEntry(rawMessage(fmt.Sprintf("seg-%03d", i), extra, past)))
		}
		recs := drainAppendRaw(t, sp, entries...)
		culprit := recs[culpritAt]
		fake := segmenttest.New(drainTestWriteKey)
		t.Cleanup(fake.Close)
		fake.Reject = func(m map[string]any) bool { return m["messageId"] == culprit.MessageID }
		rig := startDrain(t, sp, drainRigConfig{fake: fake, burst: 250})
		want := segmentRecordMessages(t, recs)

		waitFor(t, 20*time.Second, "the culprit in the dead letters and the rest delivered", func() bool {
			st := rig.stats()
			return st.Pending == 0 && st.Dead == 1
		})
		rig.stop()

		dead := deadRecords(t, sp)
		if len(dead) != 1 || dead[0].ID != culprit.ID {
			t.Fatalf("dead letters %v, want only the culprit (id %d)", recordIDs(dead), culprit.ID)
		}
		if !strings.Contains(dead[0].LastError, "400") || !strings.Contains(dead[0].LastError, "invalid message") || !bytes.Equal(dead[0].Event, culprit.Event) || dead[0].Kind != spool.KindSegment {
			t.Errorf("dead letter %+v: want the 400 with Segment's answer, the event and its kind kept", dead[0])
		}
		delivered := fake.Delivered()
		for i, r := range recs {
			if i != culpritAt && delivered[r.MessageID] != 1 {
				t.Errorf("record %d delivered %d times, want once", r.ID, delivered[r.MessageID])
			}
		}
		if _, ok := delivered[culprit.MessageID]; ok {
			t.Error("the culprit was answered 200")
		}
		wantBodies(t, fake.Messages(), want)
		if got := pendingRecords(t, sp); len(got) != 0 {
			t.Errorf("%d records still pending", len(got))
		}
		if ds := rig.d.Stats(); ds.Delivered != n-1 || ds.DeadLettered != 1 {
			t.Errorf("drainer stats %+v; want %d delivered, 1 dead", ds, n-1)
		}
		// Isolation: the rejected batch, then its records one a batch; a
		// refused batch is not sent again, so the culprit went out twice.
		rejectedEvents, singles := 0, 0
		for _, q := range fake.Requests() {
			if q.Status == http.StatusBadRequest && q.Events > 1 {
				rejectedEvents += q.Events
			}
			if q.Events == 1 {
				singles++
			}
		}
		if rejectedEvents == 0 || singles < rejectedEvents {
			t.Errorf("%d single-message requests; want each of the %d records of the rejected batch sent alone", singles, rejectedEvents)
		}
		copies := 0
		for _, m := range fake.Messages() {
			if m.MessageID == culprit.MessageID {
				copies++
			}
		}
		if copies != 2 {
			t.Errorf("the culprit was sent %d times, want twice: in its batch and alone", copies)
		}
		wantNoProblems(t, fake)
	})

	t.Run("a mixed spool drains completely", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		var gwen, seg []spool.Record
		for round := range 4 {
			gwen = append(gwen, drainAppend(t, sp, drainTestEvents(t, 15, func(i int) string { return fmt.Sprintf("user-%d-%d", round, i) }))...)
			var entries []spool.Entry
			for i := range 15 {
				entries = append(entries, spoolSegmentEntry(rawMessage(fmt.Sprintf("mixed-%d-%02d", round, i), `,"sentAt":"2024-06-03T12:00:01.000Z"`, rawPast())))
			}
			seg = append(seg, drainAppendRaw(t, sp, entries...)...)
		}
		rig := startDrain(t, sp, drainRigConfig{burst: 20})
		rig.waitDrained(20 * time.Second)
		rig.stop()

		gwenWant := drainExpected(t, rig.mapping, gwen)
		segWant := segmentRecordMessages(t, seg)
		var gwenGot, segGot []segmenttest.Message
		for _, m := range rig.fake.Messages() {
			if _, ok := segWant[m.MessageID]; ok {
				segGot = append(segGot, m)
			} else {
				gwenGot = append(gwenGot, m)
			}
		}
		wantExactRepeats(t, gwenGot, gwenWant)
		wantBodies(t, segGot, segWant)
		delivered := rig.fake.Delivered()
		for _, r := range append(slices.Clone(gwen), seg...) {
			if delivered[r.MessageID] != 1 {
				t.Errorf("record %d (kind %d) delivered %d times, want once", r.ID, r.Kind, delivered[r.MessageID])
			}
		}
		if st := rig.stats(); st.Pending != 0 || st.Dead != 0 {
			t.Errorf("spool after the drain: %+v; want empty", st)
		}
		for _, q := range rig.fake.Requests() {
			if q.Events > 20 {
				t.Errorf("a request of %d events; the burst is 20", q.Events)
			}
		}
		wantNoProblems(t, rig.fake)
	})

	t.Run("a record of an unknown call is a dead letter", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		good := rawMessage("known-call", "", time.Now())
		bad := &SegmentMessage{ID: "unknown-call", Raw: []byte(`{"type":"bogus","messageId":"unknown-call","timestamp":"2024-06-03T12:00:00Z"}`), ReceivedAt: time.Now()}
		recs := drainAppendRaw(t, sp, spoolSegmentEntry(good), spoolSegmentEntry(bad))
		rig := startDrain(t, sp, drainRigConfig{})
		waitFor(t, 10*time.Second, "the spool drained", func() bool {
			st := rig.stats()
			return st.Pending == 0 && st.Dead == 1
		})
		rig.stop()
		dead := deadRecords(t, sp)
		if len(dead) != 1 || dead[0].ID != recs[1].ID || !strings.Contains(dead[0].LastError, `"bogus"`) {
			t.Errorf("dead letters %+v, want the bogus call with its type named", dead)
		}
		if d := rig.fake.Delivered(); len(d) != 1 || d[good.ID] != 1 {
			t.Errorf("delivered %v, want the known call", d)
		}
	})
}

func TestRecordMessage_Segment(t *testing.T) {
	received := time.Now().Round(0)
	raw := []byte(`{"messageId":"m-1","timestamp":"2024-06-03T12:00:00Z","properties":{"type":"not this one"},"type":"page"}`)
	msg, err := recordMessage(spool.Record{Kind: spool.KindSegment, MessageID: "m-1", ReceivedAt: received, Event: raw}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sm, ok := msg.(*SegmentMessage)
	if !ok || sm.ID != "m-1" || sm.Type != "page" || !bytes.Equal(sm.Raw, raw) || !sm.ReceivedAt.Equal(received) {
		t.Fatalf("recordMessage = %#v", msg)
	}
	if messageID(sm) != "m-1" {
		t.Errorf("messageID = %q", messageID(sm))
	}
	for _, bad := range []string{`{"messageId":"m-1"}`, `{"type":7,"messageId":"m-1"}`, `{"type":"bogus"}`, `not json`} {
		if _, err := recordMessage(spool.Record{Kind: spool.KindSegment, MessageID: "m-1", Event: []byte(bad)}, nil); err == nil {
			t.Errorf("recordMessage accepted %s", bad)
		}
	}
	if _, err := recordMessage(spool.Record{Kind: 7, MessageID: "m-1", Event: raw}, nil); err == nil || !strings.Contains(err.Error(), "kind 7") {
		t.Errorf("an unknown kind: %v", err)
	}
}

func TestPrepareBody(t *testing.T) {
	body := []byte(`{"messageId":"b","sentAt":"2020-01-01T00:00:00Z","batch":[{"a":1}]}`)
	req, _ := http.NewRequest(http.MethodPost, "http://x/v1/batch", nil)
	if got := prepareBody(req, body); bytes.Equal(got, body) || !bytes.Contains(got, []byte(`"batch":[{"a":1}]`)) {
		t.Errorf("without a builder: %s, want the body restamped", got)
	}
	var at time.Time
	built := prepareBody(req.WithContext(withBodyBuilder(context.Background(), func(now time.Time) []byte { at = now; return []byte("built") })), body)
	if string(built) != "built" || time.Since(at) > time.Minute {
		t.Errorf("with a builder: %q built at %v", built, at)
	}
}

// TestRawSender_EnqueueDuringPause: while a Retry-After pause holds every
// upload, Enqueue still returns at once however many batches are waiting
// (the drainer's loop must keep going round or the watchdog takes it for
// stuck); the batches go out when the pause ends, also those still waiting
// for an upload slot when Close is called.
func TestRawSender_EnqueueDuringPause(t *testing.T) {
	t.Parallel()
	r := newRawRig(t, rawRigConfig{isolation: true})
	r.lim.Pause(time.Second)
	n := 3 * rawMaxUploads
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			_ = r.s.Enqueue(rawMessage(fmt.Sprintf("paused-%d", i), "", time.Now()))
		}
	}()
	select {
	case <-done:
	case <-time.After(500 * time.Millisecond): // well inside the pause
		t.Fatalf("Enqueue of %d one-message batches blocked during the pause", n)
	}
	if !r.fake.WaitDelivered(n, 10*time.Second) {
		t.Fatalf("%d of %d delivered after the pause", len(r.fake.Delivered()), n)
	}

	// Closing while batches wait for a slot: Close sends them all.
	r2 := newRawRig(t, rawRigConfig{isolation: true})
	r2.lim.Pause(500 * time.Millisecond)
	for i := range n {
		r2.enqueue(t, rawMessage(fmt.Sprintf("closing-%d", i), "", time.Now()))
	}
	if err := r2.s.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, failed := r2.cb.counts(); ok != n || failed != 0 {
		t.Errorf("after Close: %d delivered, %d failed of %d; want all delivered", ok, failed, n)
	}
}
