package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/gwenrelay/gwenrelay/ratelimit"
	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
	"github.com/gwenrelay/gwenrelay/spool"
)

// scrape is one /metrics answer, parsed with Prometheus' own text parser.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics GETs url (an admin listener's /metrics) and parses it.
func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: status %d: %s", url, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("GET %s: Content-Type %q, want the Prometheus text format", url, ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// labelKey renders a metric's labels as "name=value,..." in name order.
func labelKey(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// series returns every series of a counter or gauge family by labelKey; it
// fails if the family is missing or of another type.
func (s scrape) series(t *testing.T, name string, typ dto.MetricType) map[string]float64 {
	t.Helper()
	f, ok := s[name]
	if !ok {
		t.Fatalf("/metrics has no %s", name)
	}
	if f.GetType() != typ {
		t.Fatalf("%s is a %v, want a %v", name, f.GetType(), typ)
	}
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		switch typ {
		case dto.MetricType_COUNTER:
			out[labelKey(m)] = m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			out[labelKey(m)] = m.GetGauge().GetValue()
		}
	}
	return out
}

func (s scrape) counter(t *testing.T, name, labels string) float64 {
	t.Helper()
	v, ok := s.series(t, name, dto.MetricType_COUNTER)[labels]
	if !ok {
		t.Fatalf("%s has no series {%s}", name, labels)
	}
	return v
}

func (s scrape) gauge(t *testing.T, name string) float64 {
	t.Helper()
	v, ok := s.series(t, name, dto.MetricType_GAUGE)[""]
	if !ok {
		t.Fatalf("%s has no unlabelled series", name)
	}
	return v
}

// histogram returns a histogram series, or nil when it has none with those
// labels.
func (s scrape) histogram(t *testing.T, name, labels string) *dto.Histogram {
	t.Helper()
	f, ok := s[name]
	if !ok {
		t.Fatalf("/metrics has no %s", name)
	}
	if f.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("%s is a %v, want a histogram", name, f.GetType())
	}
	for _, m := range f.GetMetric() {
		if labelKey(m) == labels {
			return m.GetHistogram()
		}
	}
	return nil
}

// wantCounters checks a counter family series by series: exactly want, no
// other series with a non-zero value.
func (s scrape) wantCounters(t *testing.T, name string, want map[string]float64) {
	t.Helper()
	got := s.series(t, name, dto.MetricType_COUNTER)
	for k, v := range got {
		if v != want[k] {
			t.Errorf("%s{%s} = %v, want %v", name, k, v, want[k])
		}
	}
	for k, v := range want {
		if _, ok := got[k]; !ok {
			t.Errorf("%s{%s} is missing, want %v", name, k, v)
		}
	}
}

// wantSpoolGauges checks the spool gauges against the spool's own Stats,
// read after the scrape (nothing changes the spool meanwhile).
func (s scrape) wantSpoolGauges(t *testing.T, sp *spool.Spool, pending, dead int64, age time.Duration) {
	t.Helper()
	st, err := sp.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if st.Pending != pending || st.Dead != dead {
		t.Fatalf("the spool holds %d pending and %d dead, the test expects %d and %d", st.Pending, st.Dead, pending, dead)
	}
	for _, g := range []struct {
		name string
		want int64
	}{
		{"gwenrelay_spool_pending_records", st.Pending},
		{"gwenrelay_spool_dead_records", st.Dead},
		{"gwenrelay_spool_stored_bytes", st.Bytes},
		{"gwenrelay_spool_file_bytes", st.FileSize},
	} {
		if got := s.gauge(t, g.name); got != float64(g.want) {
			t.Errorf("%s = %v, want %d (spool.Stats)", g.name, got, g.want)
		}
	}
	if st.Bytes <= 0 || st.FileSize <= 0 {
		t.Errorf("spool.Stats: %d stored bytes, a %d-byte file: the comparison proves nothing", st.Bytes, st.FileSize)
	}
	got := s.gauge(t, "gwenrelay_spool_oldest_pending_age_seconds")
	if got < age.Seconds() || got > age.Seconds()+30 {
		t.Errorf("gwenrelay_spool_oldest_pending_age_seconds = %v, want %v (or up to 30s more)", got, age.Seconds())
	}
}

// wantHistogram checks a histogram's count and, when sum >= 0, its sum.
func (s scrape) wantHistogram(t *testing.T, name, labels string, count uint64, sum float64) *dto.Histogram {
	t.Helper()
	h := s.histogram(t, name, labels)
	if h == nil {
		if count != 0 {
			t.Errorf("%s{%s} is missing, want %d observations", name, labels, count)
		}
		return nil
	}
	if h.GetSampleCount() != count {
		t.Errorf("%s{%s} counts %d observations, want %d", name, labels, h.GetSampleCount(), count)
	}
	if sum >= 0 && h.GetSampleSum() != sum {
		t.Errorf("%s{%s} sums to %v, want %v", name, labels, h.GetSampleSum(), sum)
	}
	return h
}

// failFirst answers 503, without passing it on, to the first n requests
// whose body contains match: one batch of one record that fails all of
// analytics-go's attempts once, a transient failure, then goes through.
type failFirst struct {
	base  http.RoundTripper
	match []byte
	mu    sync.Mutex
	left  int
	made  int
}

func (f *failFirst) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	fail := f.left > 0 && bytes.Contains(body, f.match)
	if fail {
		f.left--
		f.made++
	}
	f.mu.Unlock()
	if fail {
		return &http.Response{
			StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable",
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, Body: io.NopCloser(strings.NewReader("busy")), Request: req,
		}, nil
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	return f.base.RoundTrip(req)
}

func (f *failFirst) failed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.made
}

// analyticsAttempts is how many times analytics-go v3.3.0 sends a batch
// before it reports the failure.
const analyticsAttempts = 10

// TestMetrics drives the real pieces (public server, ingest, a spool file,
// the drainer and analytics-go delivering to a fake Segment) through a known
// script, then scrapes the admin listener's /metrics over HTTP and checks
// every counter against what the script did.
func TestMetrics(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)

	sp := openDrainSpool(t, "")
	var commits, commitOps, commitEntries atomic.Int64
	sp.SetCommitHook(func(ops, entries int, d time.Duration) {
		commits.Add(1)
		commitOps.Add(int64(ops))
		commitEntries.Add(int64(entries))
		m.ObserveCommit(ops, entries, d)
	})
	m.WatchSpool(sp.Stats)
	lim := ratelimit.New(20, 1) // batches of one event, 20 a second
	m.WatchLimiter(lim)

	// Events are stamped as received 90s ago: the age gauge must say so.
	const age = 90 * time.Second
	receivedAt := time.Now().Add(-age).Truncate(time.Second)
	auth, err := NewAuth([]string{ingestTestToken}, false, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ingest := NewIngest(IngestConfig{
		Store: sp, Auth: auth, MaxBody: 16 << 10, Logger: quiet, Observer: m,
		Now: func() time.Time { return receivedAt },
	})
	pub := httptest.NewServer(NewServer(ingest).Handler())
	t.Cleanup(pub.Close)
	admin := httptest.NewServer(AdminHTTPHandler(MetricsHandler(reg, quiet), ingest.Ready))
	t.Cleanup(admin.Close)
	env := &ingestEnv{sp: sp, ingest: ingest, ts: pub}

	wantStatus := func(what string, r ingestReply, status int) {
		t.Helper()
		if r.status != status {
			t.Fatalf("%s: status %d, want %d; body %s", what, r.status, status, r.body)
		}
	}
	ex := readIngestExamples(t) // achievement, mission, progression, shop_item, wallet, webhook_verification
	wallet := func(user string) []byte {
		return fmt.Appendf(nil, `{"type":"wallet_update","userId":%q,"timestamp":1717416000}`, user)
	}
	mystery := []byte(`{"type":"Mystery-Box Update","userId":"user-m","timestamp":1717416000}`)

	// The webhook traffic.
	wantAccepted(t, env.post(t, ingestJSONArray(ex...), nil), http.StatusAccepted, 6, 0)
	wantAccepted(t, env.post(t, ingestJSONArray(mystery, wallet("user-1"), wallet("reject-me"), wallet("transient-me")), nil), http.StatusAccepted, 4, 0)
	wantAccepted(t, env.post(t, ex[0], nil), http.StatusOK, 0, 1)
	wantAccepted(t, env.post(t, ingestJSONArray(ex[1], wallet("user-2")), nil), http.StatusAccepted, 1, 1)
	wantStatus("broken JSON", env.post(t, []byte(`{"type":`), nil), http.StatusBadRequest)
	wantStatus("no userId", env.post(t, []byte(`{"type":"wallet_update","timestamp":1717416000}`), nil), http.StatusBadRequest)
	wantStatus("no credential", env.post(t, wallet("user-3"), map[string]string{"Authorization": ""}), http.StatusUnauthorized)
	wantStatus("wrong token", env.post(t, wallet("user-3"), map[string]string{"Authorization": "Bearer nope"}), http.StatusUnauthorized)
	wantStatus("oversize", env.post(t, append(bytes.Repeat([]byte(" "), 20<<10), wallet("user-3")...), nil), http.StatusRequestEntityTooLarge)
	wantStatus("text/plain", env.post(t, wallet("user-3"), map[string]string{"Content-Type": "text/plain"}), http.StatusUnsupportedMediaType)
	wantStatus("GET /webhook", env.do(t, http.MethodGet, "/webhook", nil, nil), http.StatusMethodNotAllowed)
	wantStatus("/healthz", env.do(t, http.MethodGet, "/healthz", nil, nil), http.StatusOK)
	wantStatus("/readyz", env.do(t, http.MethodGet, "/readyz", nil, nil), http.StatusOK)
	wantStatus("/nope", env.do(t, http.MethodGet, "/nope", nil, nil), http.StatusNotFound)
	const spooled = 11 // 6 + 4 + 0 + 1

	requests := map[string]float64{
		"code=202,route=/webhook": 3,
		"code=200,route=/webhook": 1,
		"code=400,route=/webhook": 2,
		"code=401,route=/webhook": 2,
		"code=413,route=/webhook": 1,
		"code=415,route=/webhook": 1,
		"code=405,route=/webhook": 1,
		"code=200,route=/healthz": 1,
		"code=200,route=/readyz":  1,
		"code=404,route=other":    1,
	}
	rejected := map[string]float64{
		"reason=auth": 2, "reason=invalid": 2, "reason=too_large": 1, "reason=unsupported_media_type": 1,
		"reason=method_not_allowed": 1, "reason=overloaded": 0, "reason=over_quota": 0, "reason=disk_full": 0,
		"reason=commit_failed": 0, "reason=stopping": 0, "reason=other": 0,
	}

	t.Run("after ingest", func(t *testing.T) {
		s := scrapeMetrics(t, admin.URL+"/metrics")
		s.wantCounters(t, "gwenrelay_http_requests_total", requests)
		s.wantCounters(t, "gwenrelay_events_received_total", map[string]float64{
			"type=achievement": 2, "type=mission": 2, "type=progression": 1, "type=shop_item": 1,
			"type=wallet": 5, "type=webhook_verification": 1, "type=other": 1,
		})
		s.wantCounters(t, "gwenrelay_events_rejected_total", rejected)
		s.wantCounters(t, "gwenrelay_events_duplicate_total", map[string]float64{"": 2})
		s.wantCounters(t, "gwenrelay_events_spooled_total", map[string]float64{"": spooled})
		s.wantCounters(t, "gwenrelay_delivered_total", map[string]float64{"": 0})
		s.wantCounters(t, "gwenrelay_delivery_failures_total", map[string]float64{"class=transient": 0, "class=rejected": 0, "class=dead_lettered": 0})
		s.wantCounters(t, "gwenrelay_ratelimit_pauses_total", map[string]float64{"": 0})
		s.wantSpoolGauges(t, sp, spooled, 0, age)
		// Four appends, one at a time, of 6, 4, 1 and 2 entries.
		s.wantHistogram(t, "gwenrelay_spool_commit_duration_seconds", "", 4, -1)
		s.wantHistogram(t, "gwenrelay_spool_commit_group_entries", "", 4, 13)
		s.wantHistogram(t, "gwenrelay_spool_commit_group_ops", "", 4, 4)
		s.wantHistogram(t, "gwenrelay_ratelimit_wait_seconds", "", 0, 0)
		for _, class := range statusClasses {
			s.wantHistogram(t, "gwenrelay_segment_request_duration_seconds", "status_class="+class, 0, 0)
		}
	})

	// Delivery: the first upload is answered 429 with Retry-After: 1 (a pause
	// of all uploads), reject-me's is refused as invalid (400) until it is
	// dead-lettered, transient-me's fails all of analytics-go's attempts once.
	fake := segmenttest.New(drainTestWriteKey)
	t.Cleanup(fake.Close)
	fake.Reject = func(msg map[string]any) bool { return msg["userId"] == "reject-me" }
	fake.Script(segmenttest.Step{Status: http.StatusTooManyRequests, RetryAfter: "1"})
	flaky := &failFirst{base: http.DefaultTransport.(*http.Transport).Clone(), match: []byte(`"userId":"transient-me"`), left: analyticsAttempts}
	rejections := NewRejectionLog()
	normal, iso := NewSegmentSenders(SegmentConfig{
		Rejections: rejections, WriteKey: drainTestWriteKey, Endpoint: fake.URL, Limiter: lim, Base: flaky,
		FlushInterval: 50 * time.Millisecond, RequestTimeout: 5 * time.Second,
		RetryBase: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Observe: m.ObserveUpload, Logger: quiet,
	})
	d, err := NewDrainer(DrainerConfig{
		Store: sp, NewSender: normal, NewIsolationSender: iso, Mapping: ingest.Mapping, Rejections: rejections,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, PollInterval: 100 * time.Millisecond,
		Observer: m, Logger: quiet,
	})
	if err != nil {
		t.Fatalf("NewDrainer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, 2*time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Drainer.Run: %v", err)
		}
	})
	waitFor(t, 60*time.Second, "10 records delivered, 1 dead-lettered, nothing in flight", func() bool {
		st := d.Stats()
		return st.Delivered == spooled-1 && st.DeadLettered == 1 && st.InFlight == 0
	})
	wantNoProblems(t, fake)
	if p := lim.Pauses(); p != 1 {
		t.Fatalf("the limiter imposed %d pauses, the script one", p)
	}
	if n := flaky.failed(); n != analyticsAttempts {
		t.Fatalf("%d uploads failed with 503, want %d", n, analyticsAttempts)
	}
	// What the fake answered, by status class.
	answered := map[string]uint64{}
	var answers uint64
	for _, r := range fake.Requests() {
		answered[fmt.Sprintf("%dxx", r.Status/100)]++
		answers++
	}
	if answered["2xx"] != spooled-1 {
		t.Fatalf("the fake answered 200 %d times, want once for each of the %d delivered records", answered["2xx"], spooled-1)
	}
	// reject-me: analyticsAttempts times in its batch, as many alone; one of
	// them may have been the 429.
	if n := answered["4xx"]; n != 2*analyticsAttempts && n != 2*analyticsAttempts+1 {
		t.Fatalf("the fake answered 4xx %d times, want %d or %d", n, 2*analyticsAttempts, 2*analyticsAttempts+1)
	}
	if len(answered) != 2 {
		t.Fatalf("the fake answered %v, want only 2xx and 4xx", answered)
	}

	t.Run("after delivery", func(t *testing.T) {
		s := scrapeMetrics(t, admin.URL+"/metrics")
		s.wantCounters(t, "gwenrelay_delivered_total", map[string]float64{"": spooled - 1})
		s.wantCounters(t, "gwenrelay_delivery_failures_total", map[string]float64{
			"class=transient": 1, "class=rejected": 1, "class=dead_lettered": 1,
		})
		s.wantCounters(t, "gwenrelay_ratelimit_pauses_total", map[string]float64{"": 1})
		s.wantSpoolGauges(t, sp, 0, 1, 0)
		s.wantHistogram(t, "gwenrelay_segment_request_duration_seconds", "status_class=2xx", answered["2xx"], -1)
		s.wantHistogram(t, "gwenrelay_segment_request_duration_seconds", "status_class=4xx", answered["4xx"], -1)
		s.wantHistogram(t, "gwenrelay_segment_request_duration_seconds", "status_class=5xx", analyticsAttempts, -1)
		for _, class := range []string{"error", "other", "3xx"} {
			s.wantHistogram(t, "gwenrelay_segment_request_duration_seconds", "status_class="+class, 0, 0)
		}
		// Every attempt waited for the limiter; at 20 events/s, eleven
		// uploads released at once and a one-second pause, some waited long.
		attempts := answers + analyticsAttempts
		if h := s.wantHistogram(t, "gwenrelay_ratelimit_wait_seconds", "", attempts, -1); h != nil {
			for _, b := range h.GetBucket() {
				if b.GetUpperBound() == 0.25 && b.GetCumulativeCount() >= attempts {
					t.Errorf("every one of the %d uploads waited at most 0.25s for the limiter (%d in that bucket)", attempts, b.GetCumulativeCount())
				}
			}
		}
		// Commits: the four appends (13 entries), then 10 acks, 1 failed
		// attempt and 1 dead letter, in groups the test does not control.
		s.wantHistogram(t, "gwenrelay_spool_commit_duration_seconds", "", uint64(commits.Load()), -1)
		s.wantHistogram(t, "gwenrelay_spool_commit_group_entries", "", uint64(commits.Load()), 13+spooled-1+1+1)
		s.wantHistogram(t, "gwenrelay_spool_commit_group_ops", "", uint64(commits.Load()), float64(commitOps.Load()))
		if commitEntries.Load() != 13+spooled-1+1+1 {
			t.Errorf("the spool committed %d entries, want %d", commitEntries.Load(), 13+spooled-1+1+1)
		}
		// Nothing on the ingest side moved.
		s.wantCounters(t, "gwenrelay_http_requests_total", requests)
		s.wantCounters(t, "gwenrelay_events_spooled_total", map[string]float64{"": spooled})
	})

	t.Run("stopping", func(t *testing.T) {
		ingest.Stop()
		wantStatus("POST while stopping", env.post(t, wallet("user-4"), nil), http.StatusServiceUnavailable)
		wantStatus("public /readyz while stopping", env.do(t, http.MethodGet, "/readyz", nil, nil), http.StatusServiceUnavailable)
		for path, status := range map[string]int{"/readyz": http.StatusServiceUnavailable, "/healthz": http.StatusOK, "/nope": http.StatusNotFound} {
			resp, err := http.Get(admin.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != status {
				t.Errorf("admin %s: status %d, want %d: %s", path, resp.StatusCode, status, b)
			}
			if path == "/readyz" && !bytes.Contains(b, []byte(`"stopping"`)) {
				t.Errorf("admin /readyz: %s, want the status stopping", b)
			}
		}
		s := scrapeMetrics(t, admin.URL+"/metrics")
		want := maps.Clone(requests)
		want["code=503,route=/webhook"] = 1
		want["code=503,route=/readyz"] = 1
		s.wantCounters(t, "gwenrelay_http_requests_total", want) // the admin listener's requests are not counted
		wantRejected := maps.Clone(rejected)
		wantRejected["reason=stopping"] = 1
		s.wantCounters(t, "gwenrelay_events_rejected_total", wantRejected)
	})
}

// TestMetrics_RefusalReasons checks the 503 reasons the end-to-end test
// cannot provoke cheaply: a full spool, a full disk, a failing commit, too
// much in progress.
func TestMetrics_RefusalReasons(t *testing.T) {
	for _, tc := range []struct {
		err    error
		reason string
	}{
		{fmt.Errorf("append: %w", spool.ErrOverQuota), rejectOverQuota},
		{fmt.Errorf("commit: %w", syscall.ENOSPC), rejectDiskFull},
		{errors.New("commit: input/output error"), rejectCommitFailed},
		{spool.ErrClosed, rejectStopping},
	} {
		if got := rejectReason(storeError(tc.err)); got != tc.reason {
			t.Errorf("storeError(%v) counts as %q, want %q", tc.err, got, tc.reason)
		}
	}
	// Overload: one request in progress at a time, and one is blocked in
	// the store.
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	store := &blockingIngestStore{Spool: openIngestSpool(t, "", spool.Options{}), release: make(chan struct{}), entered: make(chan struct{}, 1)}
	auth, err := NewAuth([]string{ingestTestToken}, false, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ingest := NewIngest(IngestConfig{Store: store, Auth: auth, MaxInFlight: 1, Logger: slog.New(slog.DiscardHandler), Observer: m})
	ts := httptest.NewServer(NewServer(ingest).Handler())
	defer ts.Close()
	env := &ingestEnv{ingest: ingest, ts: ts}
	first := make(chan int, 1)
	go func() {
		// t.Fatal must not run off the test goroutine: send the status.
		req, _ := http.NewRequest(http.MethodPost, ts.URL+"/webhook", bytes.NewReader(ingestEvent(1)))
		req.Header.Set("Authorization", "Bearer "+ingestTestToken)
		resp, err := ts.Client().Do(req)
		if err != nil {
			first <- -1
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-store.entered
	if r := env.post(t, ingestEvent(2), nil); r.status != http.StatusServiceUnavailable {
		t.Errorf("second request: status %d, want 503", r.status)
	}
	close(store.release)
	if status := <-first; status != http.StatusAccepted {
		t.Fatalf("first request: status %d, want 202", status)
	}
	admin := httptest.NewServer(AdminHTTPHandler(MetricsHandler(reg, nil), ingest.Ready))
	defer admin.Close()
	s := scrapeMetrics(t, admin.URL+"/metrics")
	s.wantCounters(t, "gwenrelay_http_requests_total", map[string]float64{"code=202,route=/webhook": 1, "code=503,route=/webhook": 1})
	if got := s.counter(t, "gwenrelay_events_rejected_total", "reason=overloaded"); got != 1 {
		t.Errorf("rejected{reason=overloaded} = %v, want 1", got)
	}
}

// TestMetrics_SpoolUnreadable: a spool whose stats cannot be read leaves
// its gauges out of the scrape, and the other metrics are still served.
func TestMetrics_SpoolUnreadable(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.WatchSpool(func() (spool.Stats, error) { return spool.Stats{}, errors.New("disk on fire") })
	var logged bytes.Buffer
	admin := httptest.NewServer(AdminHTTPHandler(MetricsHandler(reg, slog.New(slog.NewTextHandler(&logged, nil))), func() (bool, string) { return true, "ready" }))
	defer admin.Close()
	m.EventsSpooled(3, 0)
	s := scrapeMetrics(t, admin.URL+"/metrics")
	if got := s.counter(t, "gwenrelay_events_spooled_total", ""); got != 3 {
		t.Errorf("spooled = %v, want 3", got)
	}
	if _, ok := s["gwenrelay_spool_pending_records"]; ok {
		t.Errorf("a pending gauge was served although the spool's stats could not be read")
	}
	if !strings.Contains(logged.String(), "disk on fire") {
		t.Errorf("the failure was not logged: %q", logged.String())
	}
}

func TestMetrics_TypeLabel(t *testing.T) {
	for in, want := range map[string]string{
		"achievement_update": "achievement", "AchievementUpdate": "achievement", "Progression Update": "progression",
		"mission": "mission", "shop_item_update": "shop_item", "shopItem": "shop_item", "SHOP": "shop_item",
		"shopitem": "shop_item", "wallet-update": "wallet", "verification": "webhook_verification",
		"webhook_verification": "webhook_verification", "mystery_update": "other", "": "other", "wallet_updates": "other",
	} {
		if got := typeLabel(in); got != want {
			t.Errorf("typeLabel(%q) = %q, want %q", in, got, want)
		}
	}
	if want := []string{"achievement", "mission", "other", "progression", "shop_item", "wallet", "webhook_verification"}; !slices.Equal(slices.Sorted(slices.Values(receivedTypes)), want) {
		t.Errorf("type labels %v, want %v", slices.Sorted(slices.Values(receivedTypes)), want)
	}
}

// TestMetrics_Nil: the hooks of a nil *Metrics do nothing, so the daemon may
// pass one when metrics are off.
func TestMetrics_Nil(t *testing.T) {
	var m *Metrics
	m.ObserveRequest(routeWebhook, 202)
	m.EventsReceived([]string{"wallet"})
	m.RequestRejected(rejectAuth)
	m.EventsSpooled(1, 1)
	m.Delivered(1)
	m.DeliveryFailed(failureTransient, 1)
	m.ObserveUpload(1, 200, nil, time.Millisecond, time.Millisecond)
	m.ObserveCommit(1, 1, time.Millisecond)
	m.WatchSpool(nil)
	m.WatchLimiter(nil)
}

// TestMetrics_SegmentAPI: Segment's API is counted under its own route, its
// refusals by reason, and what it spools with the rest.
func TestMetrics_SegmentAPI(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	sp := openIngestSpool(t, "", spool.Options{DedupWindow: time.Hour})
	auth, err := NewAuth([]string{ingestTestToken}, false, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ingest := NewIngest(IngestConfig{Store: sp, Auth: auth, Logger: slog.New(slog.DiscardHandler), Observer: m})
	ts := httptest.NewServer(NewServer(ingest).Handler())
	defer ts.Close()
	env := &ingestEnv{sp: sp, ingest: ingest, ts: ts}
	wantSegmentOK(t, env.postSegment(t, "batch", segmentBatch(segmentTrack("m-1"), segmentTrack("m-2")), nil), 2, 0)
	wantSegmentOK(t, env.postSegment(t, "track", []byte(segmentTrack("m-1")), nil), 0, 1)
	if r := env.postSegment(t, "track", []byte(`{"userId":"u"}`), nil); r.status != http.StatusBadRequest {
		t.Fatalf("track without event: %d %s", r.status, r.body)
	}
	if r := env.postSegment(t, "identify", []byte(`{"userId":"u"}`), map[string]string{"Authorization": ""}); r.status != http.StatusUnauthorized {
		t.Fatalf("no credential: %d %s", r.status, r.body)
	}
	admin := httptest.NewServer(AdminHTTPHandler(MetricsHandler(reg, nil), ingest.Ready))
	defer admin.Close()
	s := scrapeMetrics(t, admin.URL+"/metrics")
	s.wantCounters(t, "gwenrelay_http_requests_total", map[string]float64{"code=200,route=/v1": 2, "code=400,route=/v1": 1, "code=401,route=/v1": 1})
	s.wantCounters(t, "gwenrelay_events_spooled_total", map[string]float64{"": 2})
	s.wantCounters(t, "gwenrelay_events_duplicate_total", map[string]float64{"": 1})
	if got := s.counter(t, "gwenrelay_events_rejected_total", "reason=invalid"); got != 1 {
		t.Errorf("rejected{reason=invalid} = %v, want 1", got)
	}
	if got := s.counter(t, "gwenrelay_events_rejected_total", "reason=auth"); got != 1 {
		t.Errorf("rejected{reason=auth} = %v, want 1", got)
	}
}
