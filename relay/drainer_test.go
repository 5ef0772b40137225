package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/gwenrelay/gwenrelay/ratelimit"
	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
	"github.com/gwenrelay/gwenrelay/spool"
)

// The drainer tests run the real pieces end to end: a spool file, the
// drainer, analytics-go clients built by NewSegmentSenders, the rate limiter,
// and a fake Segment (segmenttest) on loopback. Timings are shrunk so that
// outages resolve in seconds; every wait is for a condition, with a deadline.

const drainTestWriteKey = "wk-drain-test-3c9f"

// drainTestVersion is the library version the drainer tests map with; it
// differs from the golden files' "test" on purpose.
const drainTestVersion = "v0.0.0-drain"

var drainQuietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// drainTestEvents returns n distinct GWEN events: the six examples in turn,
// each with a userId of its own.
func drainTestEvents(tb testing.TB, n int, userID func(i int) string) [][]byte {
	tb.Helper()
	examples := readIngestExamples(tb)
	out := make([][]byte, n)
	for i := range out {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(examples[i%len(examples)], &fields); err != nil {
			tb.Fatal(err)
		}
		id := fmt.Sprintf("user-%06d", i)
		if userID != nil {
			id = userID(i)
		}
		fields["userId"], _ = json.Marshal(id)
		b, err := json.Marshal(fields)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = b
	}
	return out
}

// drainAppend spools raw GWEN events exactly as ingest does (parse, canonical
// JSON, dedup key, messageId) and returns the stored records, in order.
func drainAppend(tb testing.TB, sp *spool.Spool, events [][]byte) []spool.Record {
	tb.Helper()
	now := time.Now().UTC()
	var ids []uint64
	for start := 0; start < len(events); start += 1000 {
		chunk := events[start:min(start+1000, len(events))]
		entries := make([]spool.Entry, len(chunk))
		for i, raw := range chunk {
			if _, err := ParseEvent(raw, now); err != nil {
				tb.Fatalf("ParseEvent(%s): %v", raw, err)
			}
			canon := mustCanonical(tb, raw)
			key := dedupKey("", 0, canon)
			entries[i] = spool.Entry{Kind: spool.KindGWEN, Key: key, MessageID: messageIDFor(key), ReceivedAt: now, Event: canon}
		}
		res, err := sp.Append(entries)
		if err != nil {
			tb.Fatalf("Append: %v", err)
		}
		if res.Duplicates != 0 {
			tb.Fatalf("Append: %d duplicates among events meant to be distinct", res.Duplicates)
		}
		ids = append(ids, res.IDs...)
	}
	return drainGet(tb, sp, ids)
}

// drainAppendRaw spools entries as they are, bypassing ingest's checks.
func drainAppendRaw(tb testing.TB, sp *spool.Spool, entries ...spool.Entry) []spool.Record {
	tb.Helper()
	res, err := sp.Append(entries)
	if err != nil {
		tb.Fatalf("Append: %v", err)
	}
	return drainGet(tb, sp, res.IDs)
}

// drainGet reads back the pending records with the given ids, which one
// test's appends made consecutive.
func drainGet(tb testing.TB, sp *spool.Spool, ids []uint64) []spool.Record {
	tb.Helper()
	if len(ids) == 0 {
		return nil
	}
	recs, err := sp.ReadPending(ids[0]-1, len(ids))
	if err != nil {
		tb.Fatalf("ReadPending: %v", err)
	}
	if len(recs) != len(ids) {
		tb.Fatalf("read back %d records for %d appended", len(recs), len(ids))
	}
	for i, r := range recs {
		if r.ID != ids[i] {
			tb.Fatalf("record %d read back as id %d", ids[i], r.ID)
		}
	}
	return recs
}

// drainExpected returns, per messageId, the exact JSON analytics-go sends for
// the record: what Map and MarshalMessage make of it.
func drainExpected(tb testing.TB, m *Mapping, recs []spool.Record) map[string][]byte {
	tb.Helper()
	out := make(map[string][]byte, len(recs))
	for _, r := range recs {
		ev, err := ParseEvent(r.Event, r.ReceivedAt)
		if err != nil {
			tb.Fatalf("record %d: ParseEvent: %v", r.ID, err)
		}
		msg, err := m.Map(ev, r.ReceivedAt, r.MessageID)
		if err != nil {
			tb.Fatalf("record %d: Map: %v", r.ID, err)
		}
		b, err := MarshalMessage(msg)
		if err != nil {
			tb.Fatalf("record %d: MarshalMessage: %v", r.ID, err)
		}
		out[r.MessageID] = b
	}
	return out
}

// wireLog is the transport under the limiter (SegmentConfig.Base): it sees
// each request after the limiter released it, and records when it started
// and ended, its headers, its answer and, if asked, its body.
type wireLog struct {
	base      http.RoundTripper
	keepBody  bool
	mu        sync.Mutex
	exchanges []wireExchange
}

type wireExchange struct {
	start, end time.Time
	status     int
	err        error
	header     http.Header
	body       []byte
}

func newWireLog(keepBody bool) *wireLog {
	return &wireLog{base: http.DefaultTransport.(*http.Transport).Clone(), keepBody: keepBody}
}

func (w *wireLog) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if w.keepBody && req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
		req.Body = io.NopCloser(bytes.NewReader(b))
	}
	start := time.Now()
	resp, err := w.base.RoundTrip(req)
	x := wireExchange{start: start, end: time.Now(), err: err, header: req.Header.Clone(), body: body}
	if resp != nil {
		x.status = resp.StatusCode
	}
	w.mu.Lock()
	w.exchanges = append(w.exchanges, x)
	w.mu.Unlock()
	return resp, err
}

func (w *wireLog) all() []wireExchange {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.exchanges)
}

// drainRig is one drainer delivering from a spool to a fake Segment.
type drainRig struct {
	t       *testing.T
	sp      *spool.Spool
	fake    *segmenttest.Server
	lim     *ratelimit.Limiter
	wire    *wireLog
	mapping *Mapping
	d       *Drainer

	mu       sync.Mutex
	observed []drainObservation // from SegmentConfig.Observe

	cancel       context.CancelFunc
	done         chan error
	drainTimeout time.Duration
	stopOnce     sync.Once
	stopErr      error
	stopTook     time.Duration
}

type drainObservation struct {
	at     time.Time
	events int
	status int
}

type drainRigConfig struct {
	fake           *segmenttest.Server // nil: a healthy fake of the rig's own
	rate           float64             // events/s (default 10,000)
	burst          int                 // default 250
	maxInFlight    int                 // default DefaultMaxInFlightRecords
	requestTimeout time.Duration       // default 2s
	retryBase      time.Duration       // analytics-go's retries (default 10ms)
	retryMax       time.Duration       // default 100ms
	drainTimeout   time.Duration       // default 2s
	keepBodies     bool
	// sender replaces the Segment senders (e.g. the dry-run sink).
	sender func(analytics.Callback) (Sender, error)
}

// openDrainSpool opens a spool with ingest's dedup window; the cleanup checks
// the file before closing it.
func openDrainSpool(t *testing.T, path string) *spool.Spool {
	t.Helper()
	return openIngestSpool(t, path, spool.Options{DedupWindow: 24 * time.Hour})
}

// startDrain builds the senders and the drainer and runs it; the cleanup
// stops it (before the spool's cleanup, which was registered earlier, runs).
func startDrain(t *testing.T, sp *spool.Spool, cfg drainRigConfig) *drainRig {
	t.Helper()
	if cfg.rate == 0 {
		cfg.rate = 10000
	}
	if cfg.burst == 0 {
		cfg.burst = 250
	}
	if cfg.requestTimeout == 0 {
		cfg.requestTimeout = 2 * time.Second
	}
	if cfg.retryBase == 0 {
		cfg.retryBase = 10 * time.Millisecond
	}
	if cfg.retryMax == 0 {
		cfg.retryMax = 100 * time.Millisecond
	}
	if cfg.drainTimeout == 0 {
		cfg.drainTimeout = 2 * time.Second
	}
	r := &drainRig{
		t: t, sp: sp, fake: cfg.fake,
		lim:          ratelimit.New(cfg.rate, cfg.burst),
		wire:         newWireLog(cfg.keepBodies),
		mapping:      DefaultMapping(drainTestVersion),
		drainTimeout: cfg.drainTimeout,
	}
	if r.fake == nil {
		r.fake = segmenttest.New(drainTestWriteKey)
		t.Cleanup(r.fake.Close)
	}
	rejections := NewRejectionLog()
	normal, iso := NewSegmentSenders(SegmentConfig{
		Rejections:     rejections,
		WriteKey:       drainTestWriteKey,
		Endpoint:       r.fake.URL,
		Limiter:        r.lim,
		Base:           r.wire,
		FlushInterval:  50 * time.Millisecond,
		RequestTimeout: cfg.requestTimeout,
		RetryBase:      cfg.retryBase,
		RetryMax:       cfg.retryMax,
		Observe: func(events, status int, err error, waited, took time.Duration) {
			r.mu.Lock()
			r.observed = append(r.observed, drainObservation{at: time.Now(), events: events, status: status})
			r.mu.Unlock()
		},
		Logger: drainQuietLog,
	})
	if cfg.sender != nil {
		normal, iso = cfg.sender, nil
	}
	d, err := NewDrainer(DrainerConfig{
		Store:              sp,
		NewSender:          normal,
		NewIsolationSender: iso,
		Mapping:            func() *Mapping { return r.mapping },
		MaxInFlight:        cfg.maxInFlight,
		Rejections:         rejections,
		BackoffBase:        20 * time.Millisecond,
		BackoffMax:         200 * time.Millisecond,
		PollInterval:       100 * time.Millisecond,
		Logger:             drainQuietLog,
	})
	if err != nil {
		t.Fatalf("NewDrainer: %v", err)
	}
	r.d = d
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan error, 1)
	go func() { r.done <- d.Run(ctx, cfg.drainTimeout) }()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop cancels Run and waits for it to return (at most drainTimeout plus a
// margin); it returns how long that took.
func (r *drainRig) stop() time.Duration {
	r.stopOnce.Do(func() {
		start := time.Now()
		r.cancel()
		select {
		case r.stopErr = <-r.done:
		case <-time.After(r.drainTimeout + 5*time.Second):
			r.t.Errorf("Drainer.Run did not return %v after its context ended (drain timeout %v)", r.drainTimeout+5*time.Second, r.drainTimeout)
		}
		r.stopTook = time.Since(start)
		if r.stopErr != nil {
			r.t.Errorf("Drainer.Run: %v", r.stopErr)
		}
	})
	return r.stopTook
}

func (r *drainRig) stats() spool.Stats {
	r.t.Helper()
	return spoolStats(r.t, r.sp)
}

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitDrained waits until the spool has no pending record left.
func (r *drainRig) waitDrained(timeout time.Duration) {
	r.t.Helper()
	var last spool.Stats
	waitFor(r.t, timeout, "an empty spool", func() bool {
		last = r.stats()
		return last.Pending == 0
	})
}

// wantNoProblems fails on any protocol violation the fake saw.
func wantNoProblems(t *testing.T, fake *segmenttest.Server) {
	t.Helper()
	if p := fake.Problems(); len(p) > 0 {
		t.Errorf("the fake Segment saw protocol problems: %q", p)
	}
}

// wantExactRepeats checks that every message the fake received is the exact
// JSON the drainer owes for its record: a message sent twice is sent as the
// same bytes under the same messageId, so Segment collapses the repeat.
func wantExactRepeats(t *testing.T, msgs []segmenttest.Message, want map[string][]byte) {
	t.Helper()
	bad := 0
	for _, m := range msgs {
		exp, ok := want[m.MessageID]
		if !ok {
			t.Errorf("the fake received messageId %q, which no spooled record carries", m.MessageID)
			bad++
		} else if !bytes.Equal(m.Raw, exp) {
			t.Errorf("messageId %q arrived as\n%s\nwant exactly\n%s", m.MessageID, m.Raw, exp)
			bad++
		}
		if bad > 5 {
			t.Fatalf("too many bad messages")
		}
	}
}

func deadRecords(t *testing.T, sp *spool.Spool) []spool.Record {
	t.Helper()
	recs, err := sp.ReadDead(0, 100000)
	if err != nil {
		t.Fatalf("ReadDead: %v", err)
	}
	return recs
}

// heapInUse returns HeapInuse after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func TestDrainer(t *testing.T) {
	t.Run("Normal", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		examples := loadExamples(t)
		names := make([]string, 0, len(examples))
		for name := range examples {
			names = append(names, name)
		}
		sort.Strings(names)
		var events [][]byte
		for _, name := range names {
			events = append(events, examples[name])
		}
		recs := drainAppend(t, sp, events)
		nameOf := map[string]string{}
		for i, r := range recs {
			nameOf[r.MessageID] = names[i]
		}
		before := spoolStats(t, sp)

		rig := startDrain(t, sp, drainRigConfig{burst: 20})
		want := drainExpected(t, rig.mapping, recs)
		if !rig.fake.WaitDelivered(len(recs), 10*time.Second) {
			t.Fatalf("delivered %d of %d", len(rig.fake.Delivered()), len(recs))
		}
		rig.waitDrained(5 * time.Second)
		// Stop first so that every count below is final.
		rig.stop()

		msgs := rig.fake.Messages()
		if len(msgs) != len(recs) {
			t.Errorf("the fake received %d messages for %d records; want each exactly once", len(msgs), len(recs))
		}
		seen := map[string]int{}
		for _, m := range msgs {
			seen[m.MessageID]++
		}
		for _, r := range recs {
			if seen[r.MessageID] != 1 {
				t.Errorf("%s (%s) arrived %d times, want once", nameOf[r.MessageID], r.MessageID, seen[r.MessageID])
			}
		}
		wantExactRepeats(t, msgs, want)
		for _, m := range msgs {
			name := nameOf[m.MessageID]
			golden, err := os.ReadFile(filepath.Join("testdata", "golden", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			got, exp := drainNormalise(t, m.Raw), drainNormalise(t, golden)
			if !bytes.Equal(got, exp) {
				t.Errorf("%s: the message Segment received differs from testdata/golden/%s.json (messageId, timestamp and context.library.version aside)\ngot:  %s\nwant: %s", name, name, got, exp)
			}
			var fields struct {
				Context struct {
					Library struct{ Name, Version string }
				}
			}
			if err := json.Unmarshal(m.Raw, &fields); err != nil {
				t.Fatal(err)
			}
			if fields.Context.Library.Name != "gwenrelay" || fields.Context.Library.Version != drainTestVersion {
				t.Errorf("%s: context.library = %+v, want gwenrelay %s", name, fields.Context.Library, drainTestVersion)
			}
		}
		for _, req := range rig.fake.Requests() {
			if req.Status != http.StatusOK || req.Events > 20 {
				t.Errorf("request %+v: want 200 with at most burst (20) events", req)
			}
		}
		wantNoProblems(t, rig.fake)

		after := spoolStats(t, sp)
		if after.Pending != 0 || after.PendingBytes != 0 || after.Dead != 0 || after.DeadBytes != 0 || after.Bytes != 0 || !after.OldestPending.IsZero() {
			t.Errorf("spool after delivery: %+v; want empty", after)
		}
		if after.DedupKeys != before.DedupKeys {
			t.Errorf("dedup keys %d → %d: delivery must not forget them (the window outlives the record)", before.DedupKeys, after.DedupKeys)
		}
		if got := pendingRecords(t, sp); len(got) != 0 {
			t.Errorf("%d records still pending", len(got))
		}
		ds := rig.d.Stats()
		if ds.Delivered != int64(len(recs)) || ds.Failed != 0 || ds.DeadLettered != 0 || ds.InFlight != 0 || ds.MaxInFlight < 1 || ds.MaxInFlight > len(recs) {
			t.Errorf("drainer stats %+v; want %d delivered, none failed or dead, none in flight", ds, len(recs))
		}
	})

	t.Run("Outage", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		recs := drainAppend(t, sp, drainTestEvents(t, 300, nil))
		fake := segmenttest.New(drainTestWriteKey)
		t.Cleanup(fake.Close)
		// analytics-go retries a batch ten times before it reports a
		// failure, so each phase is long enough to exhaust some batches and
		// make the drainer record the failure and back off.
		fake.Script(
			segmenttest.Step{Status: http.StatusServiceUnavailable, Times: 30},
			segmenttest.Step{Reset: true, Times: 20},
			segmenttest.Step{Hang: 3 * time.Second, Times: 3},
			segmenttest.Step{Status: http.StatusTooManyRequests, RetryAfter: "1"},
		)
		stopProbe := latenessProbe()
		rig := startDrain(t, sp, drainRigConfig{fake: fake, rate: 5000, burst: 100, requestTimeout: 300 * time.Millisecond})
		want := drainExpected(t, rig.mapping, recs)

		// While Segment is down, the failures are recorded on the records.
		var failing spool.Record
		waitFor(t, 30*time.Second, "a pending record with a failed attempt recorded", func() bool {
			for _, r := range pendingRecords(t, sp) {
				if r.Attempts > 0 {
					failing = r
					return true
				}
			}
			return false
		})
		if failing.LastError == "" || failing.LastAttempt.IsZero() {
			t.Errorf("record %d: attempts %d but last error %q, last attempt %v", failing.ID, failing.Attempts, failing.LastError, failing.LastAttempt)
		}

		if !fake.WaitDelivered(len(recs), 30*time.Second) {
			t.Fatalf("delivered %d of %d; requests: %+v", len(fake.Delivered()), len(recs), fake.Requests())
		}
		rig.waitDrained(5 * time.Second)
		rig.stop()

		if st := spoolStats(t, sp); st.Pending != 0 || st.Dead != 0 {
			t.Errorf("spool after the outage: %+v; want empty, nothing dead", st)
		}
		ds := rig.d.Stats()
		if ds.Failed == 0 || ds.DeadLettered != 0 || ds.Delivered != int64(len(recs)) {
			t.Errorf("drainer stats %+v; want failures counted, %d delivered, none dead", ds, len(recs))
		}
		wantExactRepeats(t, fake.Messages(), want)
		wantNoProblems(t, fake)

		// Every failure mode of the script was met.
		reqs := fake.Requests()
		var n503, nReset, nHang, n429 int
		var at429 time.Time
		for _, q := range reqs {
			switch {
			case q.Status == http.StatusServiceUnavailable:
				n503++
			case q.Err == "reset":
				nReset++
			case strings.HasPrefix(q.Err, "hang"):
				nHang++
			case q.Status == http.StatusTooManyRequests:
				n429++
				at429 = q.At
			}
		}
		if n503 != 30 || nReset != 20 || nHang != 3 || n429 != 1 {
			t.Fatalf("script not played out: %d×503, %d resets, %d hangs, %d×429", n503, nReset, nHang, n429)
		}

		// The 429's Retry-After: 1 held every new request back for a second.
		// The pause is imposed after the 429 came back (end429) and before
		// Observe is told of it (paused); requests the limiter released
		// before then may still arrive.
		var end429, paused time.Time
		for _, x := range rig.wire.all() {
			if x.status == http.StatusTooManyRequests {
				end429 = x.end
			}
		}
		rig.mu.Lock()
		for _, o := range rig.observed {
			if o.status == http.StatusTooManyRequests {
				paused = o.at
			}
		}
		rig.mu.Unlock()
		if end429.IsZero() || paused.IsZero() {
			t.Fatal("the client never saw the 429")
		}
		// A request the limiter let go just before the pause was imposed
		// reaches the wire a moment later: allow the machine's measured
		// scheduling lateness (plus a millisecond) for that check-then-send.
		grace := 2*stopProbe() + time.Millisecond
		var started []time.Time
		for _, x := range rig.wire.all() {
			if x.start.After(paused.Add(grace)) && x.start.Before(end429.Add(time.Second)) {
				started = append(started, x.start)
			}
		}
		if len(started) > 0 {
			t.Errorf("%d requests started inside the Retry-After pause (from %v + %v to %v): %v", len(started), paused.Format(time.StampMicro), grace, end429.Add(time.Second).Format(time.StampMicro), started)
		}
		// On the fake's clock: whatever arrived within a second of the 429
		// had been started before the pause was imposed.
		inFlight := 0
		for _, x := range rig.wire.all() {
			if x.start.Before(paused) && x.end.After(at429) && x.status != http.StatusTooManyRequests {
				inFlight++
			}
		}
		arrived := 0
		for _, q := range reqs {
			if q.At.After(at429) && q.At.Before(at429.Add(time.Second)) {
				arrived++
			}
		}
		if arrived > inFlight {
			t.Errorf("%d requests reached the fake within 1s of the 429, but only %d were in flight when the pause began", arrived, inFlight)
		}
		t.Logf("outage: %d requests, %d drainer-recorded failures; after the 429, %d requests arrived within the second (%d in flight)", len(reqs), ds.Failed, arrived, inFlight)
	})

	t.Run("Rate", func(t *testing.T) {
		// Not parallel: it measures arrival times, which other tests'
		// load on this small machine would jitter.
		const rate, burst, n = 200, 20, 1000
		sp := openDrainSpool(t, "")
		recs := drainAppend(t, sp, drainTestEvents(t, n, nil))
		// A token granted on time but acted on late bunches releases into a
		// window the bucket never put them in (see ratelimit's own tests).
		stopProbe := latenessProbe()
		rig := startDrain(t, sp, drainRigConfig{rate: rate, burst: burst, keepBodies: true})
		if !rig.fake.WaitDelivered(len(recs), 20*time.Second) {
			t.Fatalf("delivered %d of %d", len(rig.fake.Delivered()), len(recs))
		}
		late := stopProbe()
		rig.waitDrained(5 * time.Second)
		rig.stop()
		wantNoProblems(t, rig.fake)

		reqs := rig.fake.Requests()
		sort.Slice(reqs, func(i, j int) bool { return reqs[i].At.Before(reqs[j].At) })
		// busiest returns the most events in any one-second window of the
		// given (sorted) times, and where that window starts.
		busiest := func(at []time.Time, events []int) (int, time.Time) {
			worst, worstAt := 0, time.Time{}
			for i := range at {
				in := 0
				for j := i; j < len(at) && at[j].Sub(at[i]) < time.Second; j++ {
					in += events[j]
				}
				if in > worst {
					worst, worstAt = in, at[i]
				}
			}
			return worst, worstAt
		}
		total := 0
		var arrivals []time.Time
		var arrivalEvents []int
		for _, q := range reqs {
			if q.Status != http.StatusOK {
				t.Errorf("request %+v: want 200", q)
			}
			if q.Events > burst {
				t.Errorf("a request carried %d events, more than the burst (%d)", q.Events, burst)
			}
			total += q.Events
			arrivals, arrivalEvents = append(arrivals, q.At), append(arrivalEvents, q.Events)
		}
		// The limiter's promise is about when requests leave: check it
		// exactly there (the wire log's start is the moment after the
		// limiter released the request).
		wire := rig.wire.all()
		sort.Slice(wire, func(i, j int) bool { return wire[i].start.Before(wire[j].start) })
		var releases []time.Time
		var releaseEvents []int
		for _, x := range wire {
			releases, releaseEvents = append(releases, x.start), append(releaseEvents, countBatch(x.body))
		}
		releaseSlack := int(math.Ceil(rate * (2*late + time.Millisecond).Seconds()))
		if worst, at := busiest(releases, releaseEvents); worst > rate+burst+releaseSlack {
			t.Errorf("%d events were released in the second from %v; the limit is rate+burst = %d (+%d for %v of scheduling lateness)", worst, at.Format(time.StampMilli), rate+burst, releaseSlack, late)
		}
		// At the fake, a request can arrive later than it left (scheduling
		// on a loaded machine): allow what that measured lag lets through.
		var lag time.Duration
		for i := range min(len(releases), len(arrivals)) {
			lag = max(lag, arrivals[i].Sub(releases[i]))
		}
		slack := releaseSlack + int(math.Ceil(float64(rate)*lag.Seconds()))
		worst, worstAt := busiest(arrivals, arrivalEvents)
		if total != n {
			t.Errorf("the fake received %d events, want %d", total, n)
			for _, x := range rig.wire.all() {
				if x.err != nil || x.status != http.StatusOK {
					t.Logf("exchange %v..%v: status %d, error %v", x.start.Format(time.StampMicro), x.end.Format(time.StampMicro), x.status, x.err)
				}
			}
			rig.mu.Lock()
			for _, o := range rig.observed {
				if o.status != http.StatusOK {
					t.Logf("observed %+v", o)
				}
			}
			rig.mu.Unlock()
			t.Logf("drainer stats %+v", rig.d.Stats())
		}
		if worst > rate+burst+slack {
			t.Errorf("%d events arrived in the second from %v; the limit is rate+burst = %d (+%d for the %v the slowest request took to arrive)", worst, worstAt.Format(time.StampMilli), rate+burst, slack, lag)
		}
		span := reqs[len(reqs)-1].At.Sub(reqs[0].At)
		got := float64(total) / span.Seconds()
		if got < 0.9*rate || got > 1.1*rate {
			t.Errorf("long-run rate %.1f events/s (%d events over %v), want within 10%% of %d", got, total, span, rate)
		}
		t.Logf("%d events in %d requests over %v: %.1f events/s, busiest second %d events at the fake (longest release-to-arrival lag %v)", total, len(reqs), span.Round(time.Millisecond), got, worst, lag)
	})

	t.Run("Poison", func(t *testing.T) {
		t.Parallel()
		const n, poisonAt = 250, 137
		sp := openDrainSpool(t, "")
		poisonUser := "poison-3b5d"
		recs := drainAppend(t, sp, drainTestEvents(t, n, func(i int) string {
			if i == poisonAt {
				return poisonUser
			}
			return fmt.Sprintf("user-%06d", i)
		}))
		poison := recs[poisonAt]
		fake := segmenttest.New(drainTestWriteKey)
		t.Cleanup(fake.Close)
		fake.Reject = func(m map[string]any) bool { return m["userId"] == poisonUser }
		rig := startDrain(t, sp, drainRigConfig{fake: fake, rate: 5000, burst: 250})
		want := drainExpected(t, rig.mapping, recs)

		waitFor(t, 20*time.Second, "the poison in the dead letters and the rest delivered", func() bool {
			st := rig.stats()
			return st.Pending == 0 && st.Dead == 1
		})
		rig.stop()

		dead := deadRecords(t, sp)
		if len(dead) != 1 || dead[0].ID != poison.ID {
			t.Fatalf("dead letters %v, want only the poison (id %d)", recordIDs(dead), poison.ID)
		}
		if !strings.Contains(dead[0].LastError, "400") || !strings.Contains(dead[0].LastError, "invalid message") || dead[0].Attempts < 1 || !bytes.Equal(dead[0].Event, poison.Event) || dead[0].MessageID != poison.MessageID {
			t.Errorf("poison dead letter: attempts %d, last error %q; want the 400 with Segment's answer recorded and the event kept", dead[0].Attempts, dead[0].LastError)
		}
		delivered := fake.Delivered()
		if _, ok := delivered[poison.MessageID]; ok {
			t.Errorf("the poison was answered 200")
		}
		for i, r := range recs {
			if i != poisonAt && delivered[r.MessageID] != 1 {
				t.Errorf("record %d delivered %d times, want once", r.ID, delivered[r.MessageID])
			}
		}
		ds := rig.d.Stats()
		if ds.Delivered != n-1 || ds.DeadLettered != 1 {
			t.Errorf("drainer stats %+v; want %d delivered, 1 dead", ds, n-1)
		}
		wantExactRepeats(t, fake.Messages(), want)
		wantNoProblems(t, fake)
		// The culprit was found by sending records one a batch.
		singles, rejected := 0, 0
		for _, q := range fake.Requests() {
			switch {
			case q.Events == 1:
				singles++
			case q.Status == http.StatusBadRequest:
				rejected = max(rejected, q.Events)
			}
		}
		if rejected == 0 || singles < rejected {
			t.Errorf("%d single-event requests; the isolation should send each of the %d records of the rejected batch alone", singles, rejected)
		}
	})

	t.Run("MessageTooBig", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		recs := drainAppend(t, sp, drainTestEvents(t, 10, nil))
		big := fmt.Appendf(nil, `{"type":"wallet_update","userId":"big-user","timestamp":1717416181,"state":{"blob":%q}}`, strings.Repeat("x", 40000))
		canon := mustCanonical(t, big)
		key := dedupKey("", 0, canon)
		bigRec := drainAppendRaw(t, sp, spool.Entry{Kind: spool.KindGWEN, Key: key, MessageID: messageIDFor(key), ReceivedAt: time.Now(), Event: canon})[0]
		recs = append(recs, drainAppend(t, sp, drainTestEvents(t, 20, func(i int) string { return fmt.Sprintf("after-big-%d", i) }))...)
		rig := startDrain(t, sp, drainRigConfig{})
		if enc := drainExpected(t, rig.mapping, []spool.Record{bigRec})[bigRec.MessageID]; len(enc) <= MaxMessageBytes {
			t.Fatalf("the big message is only %d bytes", len(enc))
		}
		waitFor(t, 10*time.Second, "the big record dead and the rest delivered", func() bool {
			st := rig.stats()
			return st.Pending == 0 && st.Dead == 1
		})
		rig.stop()
		dead := deadRecords(t, sp)
		if len(dead) != 1 || dead[0].ID != bigRec.ID {
			t.Fatalf("dead letters %v, want only the big record %d", recordIDs(dead), bigRec.ID)
		}
		if !strings.Contains(dead[0].LastError, "32,000") {
			t.Errorf("dead letter error %q does not name the 32,000-byte limit", dead[0].LastError)
		}
		delivered := rig.fake.Delivered()
		for _, r := range recs {
			if delivered[r.MessageID] != 1 {
				t.Errorf("record %d delivered %d times, want once", r.ID, delivered[r.MessageID])
			}
		}
		for _, m := range rig.fake.Messages() {
			if m.MessageID == bigRec.MessageID {
				t.Errorf("the oversize message reached Segment")
			}
		}
		wantNoProblems(t, rig.fake)
	})

	t.Run("Unmappable", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		good1 := drainAppend(t, sp, drainTestEvents(t, 5, nil))
		bad := drainAppendRaw(t, sp,
			spool.Entry{Kind: spool.KindGWEN, MessageID: "gwenrelay-no-user", ReceivedAt: time.Now(), Event: []byte(`{"type":"wallet_update"}`)},
			spool.Entry{Kind: spool.KindGWEN, MessageID: "gwenrelay-not-json", ReceivedAt: time.Now(), Event: []byte(`{"type":`)},
			spool.Entry{Kind: spool.Kind(9), MessageID: "gwenrelay-kind-9", ReceivedAt: time.Now(), Event: []byte(`{}`)},
		)
		good2 := drainAppend(t, sp, drainTestEvents(t, 5, func(i int) string { return fmt.Sprintf("later-%d", i) }))
		rig := startDrain(t, sp, drainRigConfig{})
		waitFor(t, 10*time.Second, "the unmappable records dead and the rest delivered", func() bool {
			st := rig.stats()
			return st.Pending == 0 && st.Dead == int64(len(bad))
		})
		rig.stop()
		dead := deadRecords(t, sp)
		wantReasons := []string{"userId: is required", "invalid JSON", "record kind 9"}
		if len(dead) != len(bad) {
			t.Fatalf("dead letters %v, want %v", recordIDs(dead), recordIDs(bad))
		}
		for i, r := range dead {
			if r.ID != bad[i].ID || !strings.Contains(r.LastError, wantReasons[i]) || r.Attempts != 1 {
				t.Errorf("dead letter %d: attempts %d, error %q; want record %d with a reason mentioning %q", r.ID, r.Attempts, r.LastError, bad[i].ID, wantReasons[i])
			}
		}
		delivered := rig.fake.Delivered()
		for _, r := range append(good1, good2...) {
			if delivered[r.MessageID] != 1 {
				t.Errorf("record %d delivered %d times, want once", r.ID, delivered[r.MessageID])
			}
		}
		if ds := rig.d.Stats(); ds.DeadLettered != int64(len(bad)) || ds.Delivered != 10 {
			t.Errorf("drainer stats %+v", ds)
		}
		wantNoProblems(t, rig.fake)
	})

	t.Run("MisconfigurationIsNotPoison", func(t *testing.T) {
		// A 404 (wrong endpoint path), 401/403 (a proxy, a key refused) or
		// 407 says nothing about the records: they wait for the operator's
		// fix, they are not dead letters.
		t.Parallel()
		sp := openDrainSpool(t, "")
		recs := drainAppend(t, sp, drainTestEvents(t, 5, nil))
		fake := segmenttest.New(drainTestWriteKey)
		t.Cleanup(fake.Close)
		// Longer than analytics-go's ten tries of the batch and then of
		// each record sent on its own (10 + 5×10).
		fake.Script(
			segmenttest.Step{Status: http.StatusNotFound, Times: 25},
			segmenttest.Step{Status: http.StatusForbidden, Times: 25},
			segmenttest.Step{Status: http.StatusUnauthorized, Times: 25},
		)
		rig := startDrain(t, sp, drainRigConfig{fake: fake, retryBase: time.Millisecond, retryMax: 5 * time.Millisecond})
		waitFor(t, 20*time.Second, "delivery (or a dead letter)", func() bool {
			st := rig.stats()
			return st.Dead > 0 || (st.Pending == 0 && len(fake.Delivered()) == len(recs))
		})
		rig.stop()
		if st := spoolStats(t, sp); st.Dead != 0 {
			t.Errorf("%d records dead-lettered for a misconfiguration: %+v", st.Dead, deadRecords(t, sp)[0])
		}
		if ds := rig.d.Stats(); ds.Failed == 0 || ds.DeadLettered != 0 {
			t.Errorf("drainer stats %+v; want failures recorded, nothing dead", ds)
		}
	})

	t.Run("BoundedMemory", func(t *testing.T) {
		// Not parallel: it measures the process heap.
		const n, maxInFlight = 20000, 500
		sp := openDrainSpool(t, "")
		recs := drainAppend(t, sp, drainTestEvents(t, n, nil))
		fake := segmenttest.New(drainTestWriteKey)
		t.Cleanup(fake.Close)
		// Segment answers 503 for as long as the feeder keeps the script
		// topped up (the script has no "until further notice").
		scripted := 0
		topUp := func() {
			if scripted-len(fake.Requests()) < 20 {
				fake.Script(segmenttest.Step{Status: http.StatusServiceUnavailable, Times: 20})
				scripted += 20
			}
		}
		topUp()
		stopFeed, fed := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(fed)
			for {
				select {
				case <-stopFeed:
					return
				case <-time.After(5 * time.Millisecond):
					topUp()
				}
			}
		}()
		t.Cleanup(func() {
			select {
			case <-stopFeed:
			default:
				close(stopFeed)
			}
			<-fed
		})
		base := heapInUse()

		rig := startDrain(t, sp, drainRigConfig{fake: fake, maxInFlight: maxInFlight, rate: 4000, burst: 250})
		// Hold the outage until the drainer has given up on whole rounds of
		// records a few times (and so gone back for the oldest).
		start := time.Now()
		waitFor(t, 20*time.Second, "two rounds of failed deliveries", func() bool {
			return rig.d.Stats().Failed >= 2*maxInFlight && time.Since(start) >= 3*time.Second
		})
		peak := heapInUse()
		ds := rig.d.Stats()
		msgs := fake.Messages()
		close(stopFeed)
		<-fed

		distinct := map[string]bool{}
		fakeBytes := 0
		for _, m := range msgs {
			distinct[m.MessageID] = true
			// What the fake itself keeps per message (it lives in this
			// process too): the raw JSON, the strings and the slice slot,
			// counted generously.
			fakeBytes += len(m.Raw)*9/8 + len(m.MessageID) + 256
		}
		if len(distinct) > maxInFlight {
			t.Errorf("the fake saw %d distinct messageIds during the outage; at most MaxInFlight = %d records may be out at once, and retries must start again from the oldest", len(distinct), maxInFlight)
		}
		if ds.MaxInFlight > maxInFlight {
			t.Errorf("drainer MaxInFlight %d > %d", ds.MaxInFlight, maxInFlight)
		}
		oldest := map[string]bool{}
		for _, r := range recs[:maxInFlight] {
			oldest[r.MessageID] = true
		}
		for id := range distinct {
			if !oldest[id] {
				t.Errorf("during the outage the fake saw %s, which is not among the %d oldest records", id, maxInFlight)
				break
			}
		}
		grown := int64(peak) - int64(base) - int64(fakeBytes)
		// Holding the whole backlog in flight would cost at least the
		// ~1.5 KB of JSON analytics-go keeps per message: 30 MB here.
		const bound = 20 << 20
		if grown > bound {
			t.Errorf("heap grew by %d MB beyond the fake's %d MB during the outage (bound %d MB)", grown>>20, fakeBytes>>20, bound>>20)
		}
		t.Logf("outage for %v: %d messages at the fake (%d distinct), drainer stats %+v; heap %d → %d MB, fake ≈ %d MB, rest %+d KB",
			time.Since(start).Round(time.Millisecond), len(msgs), len(distinct), ds, base>>20, peak>>20, fakeBytes>>20, grown>>10)

		// Segment recovers: everything arrives.
		rig.lim.SetRate(100000, 250)
		recovered := time.Now()
		rig.waitDrained(30 * time.Second)
		t.Logf("recovered: %d records delivered in %v", n, time.Since(recovered).Round(time.Millisecond))
		rig.stop()
		delivered := fake.Delivered()
		missing := 0
		for _, r := range recs {
			if delivered[r.MessageID] < 1 {
				missing++
			}
		}
		if missing > 0 || len(delivered) != n {
			t.Errorf("%d of %d records never delivered (%d distinct delivered)", missing, n, len(delivered))
		}
		if st := spoolStats(t, sp); st.Pending != 0 || st.Dead != 0 {
			t.Errorf("spool after recovery: %+v", st)
		}
		wantNoProblems(t, fake)
	})

	t.Run("Restart", func(t *testing.T) {
		t.Parallel()
		const n = 120
		path := filepath.Join(t.TempDir(), "spool.db")
		sp := openDrainSpool(t, path)
		recs := drainAppend(t, sp, drainTestEvents(t, n, nil))

		hung := segmenttest.New(drainTestWriteKey)
		t.Cleanup(hung.Close)
		hung.Script(segmenttest.Step{Hang: 2 * time.Second, Times: 1000})
		const drainTimeout = 500 * time.Millisecond
		first := startDrain(t, sp, drainRigConfig{fake: hung, burst: 50, requestTimeout: time.Second, drainTimeout: drainTimeout})
		waitFor(t, 10*time.Second, "records in flight to a hung Segment", func() bool {
			return len(hung.Messages()) >= n && first.d.Stats().InFlight == n
		})
		took := first.stop()
		if took > drainTimeout+time.Second {
			t.Errorf("Run took %v to return after cancel with a %v drain timeout", took, drainTimeout)
		}
		st := spoolStats(t, sp)
		if st.Pending != n || st.Dead != 0 {
			t.Fatalf("after a stop with records in flight: %+v; want all %d still pending, none dead", st, n)
		}
		if ds := first.d.Stats(); ds.Delivered != 0 || ds.DeadLettered != 0 {
			t.Errorf("first drainer stats %+v; nothing may be delivered or dead", ds)
		}
		sentBefore := map[string]json.RawMessage{}
		for _, m := range hung.Messages() {
			sentBefore[m.MessageID] = m.Raw
		}

		// The next start (same spool, Segment healthy again) sends them all,
		// under the messageIds they were sent with before.
		second := startDrain(t, sp, drainRigConfig{burst: 50})
		if !second.fake.WaitDelivered(n, 10*time.Second) {
			t.Fatalf("delivered %d of %d after the restart", len(second.fake.Delivered()), n)
		}
		second.waitDrained(5 * time.Second)
		second.stop()
		delivered := second.fake.Delivered()
		for _, r := range recs {
			if delivered[r.MessageID] != 1 {
				t.Errorf("record %d delivered %d times after the restart, want once", r.ID, delivered[r.MessageID])
			}
		}
		for _, m := range second.fake.Messages() {
			if raw, ok := sentBefore[m.MessageID]; ok && !bytes.Equal(raw, m.Raw) {
				t.Errorf("messageId %s was sent as\n%s\nbefore the restart and as\n%s\nafter", m.MessageID, raw, m.Raw)
			}
			delete(sentBefore, m.MessageID)
		}
		if len(sentBefore) > 0 {
			t.Errorf("%d messageIds sent before the restart never came again after it", len(sentBefore))
		}
		want := drainExpected(t, second.mapping, recs)
		wantExactRepeats(t, hung.Messages(), want)
		wantExactRepeats(t, second.fake.Messages(), want)
		wantNoProblems(t, hung)
		wantNoProblems(t, second.fake)
	})
}

// drainNormalise removes the fields that depend on the inputs (messageId,
// timestamp, context.library.version) and re-encodes the rest canonically.
func drainNormalise(t *testing.T, raw []byte) []byte {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	delete(m, "messageId")
	delete(m, "timestamp")
	if c, ok := m["context"].(map[string]any); ok {
		if l, ok := c["library"].(map[string]any); ok {
			delete(l, "version")
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func recordIDs(recs []spool.Record) []uint64 {
	ids := make([]uint64, len(recs))
	for i, r := range recs {
		ids[i] = r.ID
	}
	return ids
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want failClass
	}{
		{analytics.ErrMessageTooBig, failTooBig},
		{fmt.Errorf("wrapped: %w", analytics.ErrMessageTooBig), failTooBig},
		{analytics.ErrClosed, failClosed},
		{analytics.ErrTooManyRequests, failTransient},
		{errors.New("400 400 Bad Request"), failRejected},
		{errors.New("413 413 Request Entity Too Large"), failRejected},
		{errors.New("422 422 Unprocessable Entity"), failRejected},
		{errors.New("401 401 Unauthorized"), failTransient},
		{errors.New("403 403 Forbidden"), failTransient},
		{errors.New("404 404 Not Found"), failTransient},
		{errors.New("407 407 Proxy Authentication Required"), failTransient},
		{errors.New("408 408 Request Timeout"), failTransient},
		{errors.New("429 429 Too Many Requests"), failTransient},
		{errors.New("500 500 Internal Server Error"), failTransient},
		{errors.New("503 503 Service Unavailable"), failTransient},
		{errors.New(`Post "http://127.0.0.1:1/v1/batch": dial tcp 127.0.0.1:1: connect: connection refused`), failTransient},
		{context.DeadlineExceeded, failTransient},
	} {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%q) = %d, want %d", c.err, got, c.want)
		}
	}
}

// manualSender keeps what it is given; the test reports the verdicts.
type manualSender struct {
	cb     analytics.Callback
	mu     sync.Mutex
	msgs   []analytics.Message
	closed bool
}

func (s *manualSender) Enqueue(m analytics.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return analytics.ErrClosed
	}
	s.msgs = append(s.msgs, m)
	return nil
}

func (s *manualSender) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return nil
}

func (s *manualSender) enqueued() []analytics.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// hookStore lets a test act between the drainer's read of pending records
// and its use of them, and before it records failures.
type hookStore struct {
	*spool.Spool
	afterRead  func(after uint64, recs []spool.Record)
	beforeFail func(ids []uint64)
}

func (h hookStore) Fail(ids []uint64, reason string) error {
	if h.beforeFail != nil {
		h.beforeFail(ids)
	}
	return h.Spool.Fail(ids, reason)
}

func (h hookStore) ReadPending(after uint64, limit int) ([]spool.Record, error) {
	recs, err := h.Spool.ReadPending(after, limit)
	if err == nil && h.afterRead != nil {
		h.afterRead(after, recs)
	}
	return recs, err
}

// TestDrainer_StaleReadDoesNotResend: the drainer goes back to the oldest
// pending record while records are in flight (a poll, a rewind after a
// failure). If those records are delivered and deleted between that read and
// the drainer's look at them, they must not be sent again.
func TestDrainer_StaleReadDoesNotResend(t *testing.T) {
	sp := openDrainSpool(t, "")
	recs := drainAppend(t, sp, drainTestEvents(t, 3, nil))
	var (
		mu                sync.Mutex
		fullReads, reads  int
		stale, proceed    = make(chan struct{}), make(chan struct{})
		readAfterProceed  = make(chan struct{})
		sawReadAfterStale bool
	)
	store := hookStore{Spool: sp, afterRead: func(after uint64, got []spool.Record) {
		mu.Lock()
		reads++
		if len(got) == len(recs) {
			fullReads++
		}
		n, holdThisOne := fullReads, len(got) == len(recs) && fullReads == 2
		afterStale := n >= 2 && !holdThisOne && !sawReadAfterStale
		if afterStale {
			sawReadAfterStale = true
		}
		mu.Unlock()
		if holdThisOne {
			close(stale)
			<-proceed
		}
		if afterStale {
			close(readAfterProceed)
		}
	}}
	sender := &manualSender{}
	d, err := NewDrainer(DrainerConfig{
		Store: store,
		NewSender: func(cb analytics.Callback) (Sender, error) {
			sender.cb = cb
			return sender, nil
		},
		Mapping:      func() *Mapping { return DefaultMapping(drainTestVersion) },
		PollInterval: 20 * time.Millisecond,
		AckDelay:     5 * time.Millisecond,
		Logger:       drainQuietLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, time.Second) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	select {
	case <-stale:
	case <-time.After(10 * time.Second):
		t.Fatal("the drainer never read the in-flight records again")
	}
	// The drainer holds a snapshot with all three, still in flight. Now
	// Segment confirms them and the drainer deletes them.
	msgs := sender.enqueued()
	if len(msgs) != len(recs) {
		t.Fatalf("%d messages enqueued before the second read, want %d", len(msgs), len(recs))
	}
	for _, m := range msgs {
		sender.cb.Success(m)
	}
	waitFor(t, 10*time.Second, "the acks committed and released", func() bool {
		return spoolStats(t, sp).Pending == 0 && d.Stats().InFlight == 0
	})
	close(proceed)
	select {
	case <-readAfterProceed:
	case <-time.After(10 * time.Second):
		t.Fatal("the drainer did not read again after the stale snapshot")
	}
	if got := sender.enqueued(); len(got) != len(recs) {
		t.Errorf("%d messages enqueued for %d records: delivered records were sent again from a stale read", len(got), len(recs))
	}
	if ds := d.Stats(); ds.Delivered != int64(len(recs)) {
		t.Errorf("drainer stats %+v; want %d delivered", ds, len(recs))
	}
}

// TestDrainer_FailedRecordsFirst: records whose delivery failed stay
// pending and are sent again before any newer record, even when the drainer
// moved on while the failure was being recorded.
func TestDrainer_FailedRecordsFirst(t *testing.T) {
	sp := openDrainSpool(t, "")
	recs := drainAppend(t, sp, drainTestEvents(t, 5, nil))
	failing, letFail := make(chan struct{}), make(chan struct{})
	var once sync.Once
	store := hookStore{Spool: sp, beforeFail: func([]uint64) {
		once.Do(func() {
			close(failing)
			<-letFail
		})
	}}
	sender := &manualSender{}
	d, err := NewDrainer(DrainerConfig{
		Store: store,
		NewSender: func(cb analytics.Callback) (Sender, error) {
			sender.cb = cb
			return sender, nil
		},
		Mapping:     func() *Mapping { return DefaultMapping(drainTestVersion) },
		MaxInFlight: 3,
		Backoff:     func(int, time.Duration, time.Duration) time.Duration { return time.Millisecond },
		AckBatch:    2,
		AckDelay:    time.Hour, // settle when two verdicts are in
		Logger:      drainQuietLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, time.Second) }()
	defer func() {
		select {
		case <-failing:
		default:
			close(failing)
		}
		select {
		case <-letFail:
		default:
			close(letFail)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	ids := func() []string {
		var out []string
		for _, m := range sender.enqueued() {
			out = append(out, messageID(m))
		}
		return out
	}
	waitFor(t, 10*time.Second, "three records in flight", func() bool { return len(sender.enqueued()) == 3 })
	msgs := sender.enqueued()
	// The first fails (Segment down), the second is delivered: its slot
	// frees while the failure of the first is still being written.
	sender.cb.Failure(msgs[0], errors.New("503 503 Service Unavailable"))
	sender.cb.Success(msgs[1])
	select {
	case <-failing:
	case <-time.After(10 * time.Second):
		t.Fatal("the failure was never recorded")
	}
	waitFor(t, 10*time.Second, "the freed slot taken", func() bool { return len(sender.enqueued()) == 4 })
	if got := ids()[3]; got != recs[3].MessageID {
		t.Fatalf("4th message %s, want record 4 (%s)", got, recs[3].MessageID)
	}
	close(letFail)
	waitFor(t, 10*time.Second, "the failed record's slot taken", func() bool { return len(sender.enqueued()) == 5 })
	if got := ids()[4]; got != recs[0].MessageID {
		t.Errorf("after the failure was recorded the drainer sent %s; want the failed, older record 1 (%s) before the newer record 5 (%s)", got, recs[0].MessageID, recs[4].MessageID)
	}
}

// unreadableStore reports one record as the spool does when its stored
// bytes cannot be decoded.
type unreadableStore struct {
	*spool.Spool
	bad uint64
}

func (u unreadableStore) ReadPending(after uint64, limit int) ([]spool.Record, error) {
	recs, err := u.Spool.ReadPending(after, limit)
	for i := range recs {
		if recs[i].ID == u.bad {
			recs[i] = spool.Record{ID: u.bad, Unreadable: "record 2 has format version 9"}
		}
	}
	return recs, err
}

// TestDrainer_UnreadableRecord: a record the spool cannot decode goes to
// the dead letters with the reason, and does not stop the records behind it.
func TestDrainer_UnreadableRecord(t *testing.T) {
	sp := openDrainSpool(t, "")
	recs := drainAppend(t, sp, drainTestEvents(t, 5, nil))
	bad := recs[1].ID
	d, fake := quickDrainer(t, DrainerConfig{Store: unreadableStore{sp, bad}, PollInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, 2*time.Second) }()
	if !fake.WaitDelivered(4, 10*time.Second) {
		t.Fatalf("the 4 readable records were not delivered: %d", len(fake.Delivered()))
	}
	waitFor(t, 10*time.Second, "0 pending and 1 dead record", func() bool {
		st := spoolStats(t, sp)
		return st.Pending == 0 && st.Dead == 1
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	dead, err := sp.ReadDead(0, 10)
	if err != nil || len(dead) != 1 || dead[0].ID != bad {
		t.Fatalf("dead letters %v, %v; want record %d", dead, err, bad)
	}
	if !strings.Contains(dead[0].LastError, "unreadable") || !strings.Contains(dead[0].LastError, "format version 9") {
		t.Errorf("dead letter's error %q does not say the record was unreadable and why", dead[0].LastError)
	}
}

// TestDrainer_SharedMessageID: two pending records under one messageId (an
// event re-admitted after the dedup window) are delivered one after the
// other, so neither's verdict can settle the other; both leave the spool.
func TestDrainer_SharedMessageID(t *testing.T) {
	sp := openDrainSpool(t, "")
	evs := drainTestEvents(t, 2, nil)
	var entries []spool.Entry
	for _, raw := range evs {
		e, err := GWENEntry(raw, "", 0, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		e.Key = nil // no dedup: both are stored
		e.MessageID = "gwenrelay-shared"
		entries = append(entries, e)
	}
	drainAppendRaw(t, sp, entries...)
	r := startDrain(t, sp, drainRigConfig{})
	waitFor(t, 10*time.Second, "two sends of the shared messageId and an empty spool", func() bool {
		n := 0
		for _, m := range r.fake.Messages() {
			if m.MessageID == "gwenrelay-shared" {
				n++
			}
		}
		return n >= 2 && spoolStats(t, sp).Pending == 0
	})
	bodies := map[string]bool{}
	requests := map[int]bool{}
	for _, m := range r.fake.Messages() {
		bodies[string(m.Raw)] = true
		requests[m.Request] = true
	}
	if len(bodies) != 2 {
		t.Errorf("Segment received %d distinct bodies under the shared messageId, want both records' (2)", len(bodies))
	}
	if len(requests) < 2 {
		t.Errorf("both records went out in one request: the second must wait until the first is settled")
	}
}

// latenessProbe measures how late this machine wakes a goroutine whose
// timer is due, until the returned function is called; it returns the worst
// lateness seen. Timing assertions on a loaded machine allow for it.
func latenessProbe() (stop func() time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan time.Duration, 1)
	go func() {
		var late time.Duration
		tk := time.NewTicker(2 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- late
				return
			case due := <-tk.C:
				late = max(late, time.Since(due))
			}
		}
	}()
	return func() time.Duration {
		cancel()
		return <-done
	}
}

// TestDrainer_YieldsToIngest: while ingest reports itself busy, the drainer
// holds to YieldRate; otherwise it goes at the full rate.
func TestDrainer_YieldsToIngest(t *testing.T) {
	const n, yieldRate = 1500, 1000.0
	run := func(busy bool) time.Duration {
		d, fake := yieldDrainer(t, n, DrainerConfig{IngestBusy: func() bool { return busy }, YieldRate: yieldRate})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- d.Run(ctx, 2*time.Second) }()
		if !fake.WaitDelivered(n, 30*time.Second) {
			t.Fatalf("busy=%v: delivered %d of %d", busy, len(fake.Delivered()), n)
		}
		took := time.Since(start)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return took
	}
	busy := run(true)
	// The first 500 go at once (the yield's burst); the other 1,000 at
	// 1,000/s take at least a second.
	if min := time.Duration(float64(n-500)/yieldRate*float64(time.Second)) - 50*time.Millisecond; busy < min {
		t.Errorf("with ingest busy, %d records were delivered in %v; at %v/s after a burst of 500 that takes at least %v", n, busy, yieldRate, min)
	}
	idle := run(false)
	t.Logf("%d records: %v while ingest was busy, %v while it was idle", n, busy.Round(time.Millisecond), idle.Round(time.Millisecond))
}

// TestDrainer_YieldKeepsUpWithIngest: while yielding, the drainer still goes
// a quarter faster than ingest takes events in, so the backlog cannot grow
// because of the yield.
func TestDrainer_YieldKeepsUpWithIngest(t *testing.T) {
	const n, yieldRate, ingestRate = 3000, 250.0, 4000.0
	start := time.Now()
	d, fake := yieldDrainer(t, n, DrainerConfig{
		IngestBusy:  func() bool { return true },
		IngestCount: func() int64 { return int64(time.Since(start).Seconds() * ingestRate) },
		YieldRate:   yieldRate})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, 2*time.Second) }()
	if !fake.WaitDelivered(n, 30*time.Second) {
		t.Fatalf("delivered %d of %d", len(fake.Delivered()), n)
	}
	took := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// At YieldRate alone the 2,500 records after the burst take 10 s; keeping
	// up with 4,000/s of ingest (5,000/s) they take well under 2 s.
	if slow := time.Duration(float64(n-500)/yieldRate*float64(time.Second)) * 3 / 4; took >= slow {
		t.Errorf("%d records took %v while ingest took in %v/s: the drainer did not keep up with ingest (at the yield rate alone it takes %v)", n, took, ingestRate, time.Duration(float64(n-500)/yieldRate*float64(time.Second)))
	}
	t.Logf("%d records in %v", n, took.Round(time.Millisecond))
}

// yieldDrainer builds a drainer with cfg's yield settings over a spool of n
// records, as quickDrainer does.
func yieldDrainer(t *testing.T, n int, cfg DrainerConfig) (*Drainer, *segmenttest.Server) {
	t.Helper()
	sp := openDrainSpool(t, "")
	drainAppend(t, sp, drainTestEvents(t, n, nil))
	cfg.Store = sp
	return quickDrainer(t, cfg)
}

// quickDrainer builds a drainer from cfg (its Store and tuning) delivering
// without a rate limit, flushing every 20 ms, to a fake Segment of its own.
func quickDrainer(t *testing.T, cfg DrainerConfig) (*Drainer, *segmenttest.Server) {
	t.Helper()
	fake := segmenttest.New(drainTestWriteKey)
	t.Cleanup(fake.Close)
	cfg.NewSender, cfg.NewIsolationSender = NewSegmentSenders(SegmentConfig{WriteKey: drainTestWriteKey, Endpoint: fake.URL,
		Limiter: ratelimit.New(0, 1), FlushInterval: 20 * time.Millisecond, Logger: drainQuietLog})
	cfg.Mapping = func() *Mapping { return DefaultMapping(drainTestVersion) }
	cfg.Logger = drainQuietLog
	d, err := NewDrainer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d, fake
}

// deadFailsStore reports one record unreadable and fails every Dead, as a
// spool on a full disk does; it counts the attempts.
type deadFailsStore struct {
	unreadableStore
	deads atomic.Int64
}

func (s *deadFailsStore) Dead(uint64, string) error {
	s.deads.Add(1)
	return fmt.Errorf("commit spool: %w", syscall.ENOSPC)
}

// TestDrainer_FailingSpoolBacksOff: when the spool cannot take a verdict
// (here: moving an unreadable record to the dead letters on a full disk),
// the drainer backs off instead of trying again in a tight loop.
func TestDrainer_FailingSpoolBacksOff(t *testing.T) {
	sp := openDrainSpool(t, "")
	recs := drainAppend(t, sp, drainTestEvents(t, 3, nil))
	store := &deadFailsStore{unreadableStore: unreadableStore{sp, recs[0].ID}}
	d, fake := quickDrainer(t, DrainerConfig{Store: store,
		BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second, PollInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, 2*time.Second) }()
	if !fake.WaitDelivered(2, 10*time.Second) {
		t.Fatalf("the two readable records were not delivered")
	}
	window := time.NewTimer(1500 * time.Millisecond) // the observation window, not a wait for a condition
	<-window.C
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Backing off from 100 ms, doubling, allows a handful of attempts in
	// 1.5 s; a tight loop makes tens of thousands.
	if n := store.deads.Load(); n < 1 || n > 20 {
		t.Errorf("%d attempts to dead-letter the record in ~1.5 s; want a few (backing off), not a tight loop", n)
	}
}
