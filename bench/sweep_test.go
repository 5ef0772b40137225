package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestKeptUp(t *testing.T) {
	ms := time.Millisecond
	for _, c := range []struct {
		offered, achieved float64
		unanswered        int
		errs              int64
		pickup            time.Duration
		want              bool
	}{
		{1000, 1000, 0, 0, ms / 10, true},
		{1000, 971, 0, 0, ms / 10, true},
		{1000, 969, 0, 0, ms / 10, false},
		{1000, 1000, 1, 0, ms / 10, false},
		{1000, 1000, 0, 1, ms / 10, false},
		{1000, 1000, 0, 0, 10 * ms, true},
		{12000, 11657, 0, 0, 127 * ms, false}, // every connection busy: the queue grows
	} {
		if got := keptUp(c.offered, c.achieved, c.unanswered, c.errs, c.pickup); got != c.want {
			t.Errorf("keptUp(%+v) = %v", c, got)
		}
	}
}

func TestLatencyPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 1000; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	p50, p99, p999 := latencyPercentiles(d)
	if p50 != 500*time.Microsecond || p99 != 990*time.Microsecond || p999 != 999*time.Microsecond {
		t.Fatalf("1..1000 µs: p50 %v p99 %v p99.9 %v, want 500µs 990µs 999µs", p50, p99, p999)
	}
	// With fewer than 1,000 samples p99.9 is the largest.
	if _, _, p999 := latencyPercentiles([]time.Duration{3, 1, 2}); p999 != 3 {
		t.Fatalf("p99.9 of 3 samples = %v, want the largest", p999)
	}
}

func TestSweepKeptUp(t *testing.T) {
	pt := func(rate float64, ok bool, err string) sweepPoint {
		p := sweepPoint{Err: err}
		p.Spec.Rate = rate
		if err == "" {
			p.Open = &openStats{Offered: rate, KeptUp: ok}
		}
		return p
	}
	for _, c := range []struct {
		pts  []sweepPoint
		want string
	}{
		{nil, "–"},
		{[]sweepPoint{pt(250, true, ""), pt(500, true, "")}, "500 ev/s (every rate offered)"},
		{[]sweepPoint{pt(250, true, ""), pt(8000, false, "")}, "250 ev/s (not 8,000)"},
		{[]sweepPoint{pt(250, true, ""), pt(500, false, "boom")}, "250 ev/s (not 500)"},
		{[]sweepPoint{pt(250, false, "")}, "none (not even 250 ev/s)"},
	} {
		if got := sweepKeptUp(c.pts); got != c.want {
			t.Errorf("sweepKeptUp = %q, want %q", got, c.want)
		}
	}
}

// acceptor is a stand-in for the relay: it answers 202 after delay, and
// stalls once for stall when the request numbered stallAt arrives.
type acceptor struct {
	n       atomic.Int64
	delay   time.Duration
	stallAt int64
	stall   time.Duration
}

func (a *acceptor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if n := a.n.Add(1); a.stall > 0 && n == a.stallAt {
		time.Sleep(a.stall)
	}
	time.Sleep(a.delay)
	w.WriteHeader(http.StatusAccepted)
}

func openRun(t *testing.T, a *acceptor, spec runSpec) (runResult, loadOutcome) {
	t.Helper()
	srv := httptest.NewServer(a)
	defer srv.Close()
	body, err := newEventBody(eventSize, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var res runResult
	// The "server" whose CPU is read is this process: procCPU needs a pid.
	out := driveOpenLoad(os.Getpid(), strings.TrimPrefix(srv.URL, "http://"), spec, body, func() {}, &res)
	if res.Open == nil {
		t.Fatal("no open-loop figures")
	}
	return res, out
}

// TestOpenLoadCountsStalls checks that the open-loop generator measures from
// each request's scheduled time: one 150 ms stall behind a single
// connection delays every request scheduled during it, so the p99 shows the
// stall (a closed-loop client would record it once, as one slow request in
// hundreds).
func TestOpenLoadCountsStalls(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ~2 s of load")
	}
	a := &acceptor{stallAt: 400, stall: 150 * time.Millisecond}
	res, out := openRun(t, a, runSpec{Clients: 1, Rate: 500, Warmup: 200 * time.Millisecond, Duration: time.Second, Grace: 2 * time.Second, Nonce: 1})
	o := res.Open
	if out.errs != 0 || out.cpuErr != nil {
		t.Fatalf("errors: %d (%s), cpu %v", out.errs, out.errMsg, out.cpuErr)
	}
	if o.Scheduled < 490 || o.Scheduled > 510 {
		t.Errorf("%d requests scheduled in a 1 s window at 500/s", o.Scheduled)
	}
	// ~75 requests are scheduled during the stall, 7% of the window's: the
	// p99 must be most of the stall, the p50 must not.
	if res.P99 < 100*time.Millisecond || o.Max < 140*time.Millisecond {
		t.Errorf("p99 %v, max %v: the stall was not counted for the requests queued behind it", res.P99, o.Max)
	}
	if res.P50 > 20*time.Millisecond {
		t.Errorf("p50 %v: more than the stall's share of requests delayed", res.P50)
	}
	if !o.KeptUp || o.Unanswered != 0 || o.PeakInFlight != 1 {
		t.Errorf("kept up %v, unanswered %d, peak in flight %d; want true, 0, 1", o.KeptUp, o.Unanswered, o.PeakInFlight)
	}
}

// TestOpenLoadOverload offers ten times what one connection to a 10 ms
// server can carry: the point does not keep up, and the requests still
// queued at the cutoff are counted unanswered.
func TestOpenLoadOverload(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ~1 s of load")
	}
	a := &acceptor{delay: 10 * time.Millisecond}
	res, out := openRun(t, a, runSpec{Clients: 1, Rate: 1000, Warmup: 0, Duration: 500 * time.Millisecond, Grace: 100 * time.Millisecond, Nonce: 2})
	o := res.Open
	if out.errs != 0 {
		t.Fatalf("%d errors: %s", out.errs, out.errMsg)
	}
	if o.KeptUp {
		t.Fatalf("kept up at %v ev/s achieved of %v offered", res.EvPerSec, o.Offered)
	}
	if res.EvPerSec > 150 || o.Unanswered < 300 {
		t.Errorf("achieved %v ev/s (want ≤ ~100), %d unanswered (want most of 500)", res.EvPerSec, o.Unanswered)
	}
	if res.Acked != a.n.Load() {
		t.Errorf("%d answered 202, the server saw %d requests: dropped requests must never have been sent", res.Acked, a.n.Load())
	}
	if res.P50 < 200*time.Millisecond {
		t.Errorf("p50 %v: queued requests must count their wait", res.P50)
	}
}
