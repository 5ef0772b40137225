package relay

import (
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gwenrelay/gwenrelay/ratelimit"
	"github.com/gwenrelay/gwenrelay/spool"
)

// The metrics are pushed to by small hooks (IngestConfig.Observer,
// DrainerConfig.Observer, SegmentConfig.Observe, spool.SetCommitHook) that
// are nil unless metrics are on, so a relay without metrics pays nothing for
// them; what the spool and the rate limiter already count is read at scrape
// time instead.

// Routes of the public server, as counted in gwenrelay_http_requests_total.
const (
	routeWebhook = "/webhook"
	routeSegment = "/v1" // Segment's API: /v1/track, /v1/batch, ...
	routeHealthz = "/healthz"
	routeReadyz  = "/readyz"
	routeOther   = "other"
)

// Reasons a webhook request is refused, as counted in
// gwenrelay_events_rejected_total.
const (
	rejectAuth         = "auth"                   // 401: no or wrong credential or signature
	rejectInvalid      = "invalid"                // 400: not JSON, not a valid GWEN event, ...
	rejectTooLarge     = "too_large"              // 413: body, or a message, over its limit
	rejectMediaType    = "unsupported_media_type" // 415: not JSON, or an unknown encoding
	rejectMethod       = "method_not_allowed"     // 405: not a POST
	rejectOverloaded   = "overloaded"             // 503: too many requests or bytes in progress
	rejectOverQuota    = "over_quota"             // 503: the spool is at --spool-max-bytes
	rejectDiskFull     = "disk_full"              // 503: the disk (or its quota) is full
	rejectCommitFailed = "commit_failed"          // 503: the spool could not commit
	rejectStopping     = "stopping"               // 503: the relay is shutting down
	rejectOther        = "other"
)

// Classes of failed deliveries, as counted in
// gwenrelay_delivery_failures_total.
const (
	failureTransient    = "transient"     // all of analytics-go's attempts failed; the record stays pending
	failureRejected     = "rejected"      // Segment refused its batch; the record is re-sent alone
	failureDeadLettered = "dead_lettered" // the record was moved to the dead letters
)

// eventTypeOther is the type label of every event outside the documented six.
const eventTypeOther = "other"

var (
	rejectReasons  = []string{rejectAuth, rejectInvalid, rejectTooLarge, rejectMediaType, rejectMethod, rejectOverloaded, rejectOverQuota, rejectDiskFull, rejectCommitFailed, rejectStopping, rejectOther}
	failureClasses = []string{failureTransient, failureRejected, failureDeadLettered}
	// statusClasses are the status_class label values, indexed by
	// statusClassIndex; "error" is an attempt that got no HTTP answer.
	statusClasses = []string{"error", "other", "2xx", "3xx", "4xx", "5xx"}
)

// IngestObserver is told what the public server does. Its methods run on the
// request path: they must be quick and must not block.
type IngestObserver interface {
	// ObserveRequest is told of every answer of the public server: its
	// route (routeWebhook, routeHealthz, routeReadyz or routeOther) and
	// status.
	ObserveRequest(route string, status int)
	// EventsReceived is told the GWEN type, as sent, of every event of a
	// webhook request that passed validation (before it is spooled).
	EventsReceived(types []string)
	// RequestRejected is told why a webhook request was refused: one of the
	// reject* reasons. A refused request stores none of its events.
	RequestRejected(reason string)
	// EventsSpooled is told, for each request whose commit succeeded, how
	// many of its events were stored and how many were duplicates.
	EventsSpooled(stored, duplicates int)
}

// DrainObserver is told the fate of deliveries. Its methods are called from
// the drainer's settling goroutine and must not block.
type DrainObserver interface {
	// Delivered is told of n records that Segment accepted and that left
	// the spool.
	Delivered(n int)
	// DeliveryFailed is told of n records that failed in the given class:
	// failureTransient, failureRejected or failureDeadLettered.
	DeliveryFailed(class string, n int)
}

// Metrics holds gwenrelay's Prometheus metrics. Build it with NewMetrics and
// hand it to the hooks: IngestConfig.Observer, DrainerConfig.Observer,
// SegmentConfig.Observe (ObserveUpload), spool.SetCommitHook
// (ObserveCommit), WatchSpool and WatchLimiter. A nil *Metrics is valid and
// records nothing.
type Metrics struct {
	requests      *prometheus.CounterVec
	received      map[string]prometheus.Counter // by type label
	rejected      map[string]prometheus.Counter // by reason
	duplicates    prometheus.Counter
	spooled       prometheus.Counter
	delivered     prometheus.Counter
	failures      map[string]prometheus.Counter // by class
	segment       [6]prometheus.Observer        // by statusClassIndex
	commitTook    prometheus.Histogram
	commitEntries prometheus.Histogram
	commitOps     prometheus.Histogram
	limiterWait   prometheus.Histogram

	spoolStats atomic.Pointer[func() (spool.Stats, error)]
	limiter    atomic.Pointer[ratelimit.Limiter]
	now        func() time.Time
}

// receivedTypes are the type label values: the six documented GWEN events,
// under the name their overrides use, and "other" for the rest, so that a
// sender inventing types cannot grow the metric without bound.
var receivedTypes = func() []string {
	seen := map[string]bool{}
	var out []string
	for norm := range defaultEventNames {
		if k := overrideKey(norm); !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return append(out, eventTypeOther)
}()

// NewMetrics creates the metrics and registers them with reg (the daemon
// passes a registry of its own; tests a private one). It panics if reg
// already holds metrics of the same names, as prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{now: time.Now}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gwenrelay_http_requests_total",
		Help: "Answers of the public server, by route (/webhook, /v1 for all of Segment's API, /healthz, /readyz, other) and status code.",
	}, []string{"route", "code"})
	received, receivedByType := labelledCounters(prometheus.CounterOpts{
		Name: "gwenrelay_events_received_total",
		Help: "Events in webhook requests that passed validation, by GWEN type (normalised; types outside the documented six count as other).",
	}, "type", receivedTypes)
	m.received = receivedByType
	rejected, rejectedByReason := labelledCounters(prometheus.CounterOpts{
		Name: "gwenrelay_events_rejected_total",
		Help: "Webhook requests refused (none of their events stored), by reason.",
	}, "reason", rejectReasons)
	m.rejected = rejectedByReason
	m.duplicates = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gwenrelay_events_duplicate_total",
		Help: "Events acknowledged without being stored again: seen within the dedup window.",
	})
	m.spooled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gwenrelay_events_spooled_total",
		Help: "Events stored in the spool (fsynced) and acknowledged.",
	})
	m.delivered = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gwenrelay_delivered_total",
		Help: "Records Segment accepted and that left the spool.",
	})
	failures, failuresByClass := labelledCounters(prometheus.CounterOpts{
		Name: "gwenrelay_delivery_failures_total",
		Help: "Records whose delivery failed, by class: transient (kept, retried after a backoff), rejected (Segment refused their batch; re-sent one a batch), dead_lettered (moved to the dead letters).",
	}, "class", failureClasses)
	m.failures = failuresByClass
	segment := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gwenrelay_segment_request_duration_seconds",
		Help:    "Time from sending an upload to Segment to its answer's headers, per attempt, by status class (2xx, 4xx, 5xx, ...; error: no answer). Time queued in the rate limiter is not included.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"status_class"})
	for i, c := range statusClasses {
		m.segment[i] = segment.WithLabelValues(c)
	}
	m.commitTook = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "gwenrelay_spool_commit_duration_seconds",
		Help:    "Duration of successful spool commits, fsync included.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12), // 0.5ms to about 1s
	})
	m.commitEntries = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "gwenrelay_spool_commit_group_entries",
		Help:    "Records written or removed by one spool commit (group commit: several requests share one fsync).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 15), // 1 to 16384, the spool's MaxGroup
	})
	m.commitOps = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "gwenrelay_spool_commit_group_ops",
		Help:    "Operations (appends, acks, ...) sharing one spool commit.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 to 1024
	})
	m.limiterWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "gwenrelay_ratelimit_wait_seconds",
		Help:    "Time each upload attempt to Segment waited in the rate limiter: for tokens (--rate) and for a pause imposed by a 429.",
		Buckets: []float64{.001, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	})
	reg.MustRegister(m.requests, received, rejected, m.duplicates, m.spooled, m.delivered, failures,
		segment, m.commitTook, m.commitEntries, m.commitOps, m.limiterWait, scrapeCollector{m})
	return m
}

// labelledCounters makes a counter with one label and its series for each
// of values, created up front so that every one is exported from the start
// (at 0) and the hot path only looks a series up.
func labelledCounters(opts prometheus.CounterOpts, label string, values []string) (*prometheus.CounterVec, map[string]prometheus.Counter) {
	vec := prometheus.NewCounterVec(opts, []string{label})
	series := make(map[string]prometheus.Counter, len(values))
	for _, v := range values {
		series[v] = vec.WithLabelValues(v)
	}
	return vec, series
}

// WatchSpool makes every scrape report the spool's gauges from stats
// (*spool.Spool.Stats).
func (m *Metrics) WatchSpool(stats func() (spool.Stats, error)) {
	if m != nil {
		m.spoolStats.Store(&stats)
	}
}

// WatchLimiter makes every scrape report the pauses l has imposed.
func (m *Metrics) WatchLimiter(l *ratelimit.Limiter) {
	if m != nil {
		m.limiter.Store(l)
	}
}

// ObserveRequest implements IngestObserver.
func (m *Metrics) ObserveRequest(route string, status int) {
	if m == nil {
		return
	}
	switch route {
	case routeWebhook, routeSegment, routeHealthz, routeReadyz:
	default:
		route = routeOther
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
}

// EventsReceived implements IngestObserver.
func (m *Metrics) EventsReceived(types []string) {
	if m == nil {
		return
	}
	for _, t := range types {
		m.received[typeLabel(t)].Inc()
	}
}

// typeLabel is the type label of a GWEN type as sent.
func typeLabel(t string) string {
	norm := NormalizeType(t)
	if !KnownType(norm) {
		return eventTypeOther
	}
	if canon, ok := typeAliases[norm]; ok {
		return canon
	}
	return norm
}

// RequestRejected implements IngestObserver.
func (m *Metrics) RequestRejected(reason string) {
	if m == nil {
		return
	}
	c, ok := m.rejected[reason]
	if !ok {
		c = m.rejected[rejectOther]
	}
	c.Inc()
}

// EventsSpooled implements IngestObserver.
func (m *Metrics) EventsSpooled(stored, duplicates int) {
	if m == nil {
		return
	}
	m.spooled.Add(float64(stored))
	m.duplicates.Add(float64(duplicates))
}

// Delivered implements DrainObserver.
func (m *Metrics) Delivered(n int) {
	if m != nil {
		m.delivered.Add(float64(n))
	}
}

// DeliveryFailed implements DrainObserver.
func (m *Metrics) DeliveryFailed(class string, n int) {
	if m == nil {
		return
	}
	if c, ok := m.failures[class]; ok {
		c.Add(float64(n))
	}
}

// ObserveUpload is for SegmentConfig.Observe: it records one upload
// attempt's time on the wire and its wait in the rate limiter.
func (m *Metrics) ObserveUpload(events, status int, err error, waited, took time.Duration) {
	if m == nil {
		return
	}
	m.segment[statusClassIndex(status)].Observe(took.Seconds())
	m.limiterWait.Observe(waited.Seconds())
}

// statusClassIndex is the index in statusClasses of an HTTP status (0: no
// answer).
func statusClassIndex(status int) int {
	switch {
	case status == 0:
		return 0
	case status >= 200 && status < 600:
		return status / 100 // "2xx" is at index 2, and so on
	}
	return 1
}

// ObserveCommit is for spool.SetCommitHook.
func (m *Metrics) ObserveCommit(groupOps, groupEntries int, d time.Duration) {
	if m == nil {
		return
	}
	m.commitTook.Observe(d.Seconds())
	m.commitEntries.Observe(float64(groupEntries))
	m.commitOps.Observe(float64(groupOps))
}

// Descriptions of what is read at scrape time.
var (
	descSpoolPending = prometheus.NewDesc("gwenrelay_spool_pending_records",
		"Records waiting for delivery, those being delivered included.", nil, nil)
	descSpoolDead = prometheus.NewDesc("gwenrelay_spool_dead_records",
		"Records in the dead letters.", nil, nil)
	descSpoolBytes = prometheus.NewDesc("gwenrelay_spool_stored_bytes",
		"Stored bytes of pending and dead records: what --spool-max-bytes counts.", nil, nil)
	descSpoolFile = prometheus.NewDesc("gwenrelay_spool_file_bytes",
		"Size of the spool file on disk.", nil, nil)
	descSpoolAge = prometheus.NewDesc("gwenrelay_spool_oldest_pending_age_seconds",
		"Age of the oldest pending record since it was received; 0 when nothing is pending.", nil, nil)
	descPauses = prometheus.NewDesc("gwenrelay_ratelimit_pauses_total",
		"Pauses of all uploads imposed by Segment's 429 answers (their Retry-After, or 1s).", nil, nil)
)

// scrapeCollector reports, at each scrape, what the spool and the limiter
// count themselves.
type scrapeCollector struct{ m *Metrics }

func (c scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSpoolPending, descSpoolDead, descSpoolBytes, descSpoolFile, descSpoolAge, descPauses} {
		ch <- d
	}
}

func (c scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	if l := c.m.limiter.Load(); l != nil {
		ch <- prometheus.MustNewConstMetric(descPauses, prometheus.CounterValue, float64(l.Pauses()))
	}
	f := c.m.spoolStats.Load()
	if f == nil {
		return
	}
	st, err := (*f)()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descSpoolPending, err)
		return
	}
	age := 0.0
	if !st.OldestPending.IsZero() {
		age = max(c.m.now().Sub(st.OldestPending).Seconds(), 0)
	}
	for _, g := range []struct {
		d *prometheus.Desc
		v float64
	}{
		{descSpoolPending, float64(st.Pending)},
		{descSpoolDead, float64(st.Dead)},
		{descSpoolBytes, float64(st.Bytes)},
		{descSpoolFile, float64(st.FileSize)},
		{descSpoolAge, age},
	} {
		ch <- prometheus.MustNewConstMetric(g.d, prometheus.GaugeValue, g.v)
	}
}

// MetricsHandler serves g in the Prometheus text format. A metric that
// cannot be read (the spool's, while it fails) is left out and logged;
// the others are still served.
func MetricsHandler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.With("system", "metrics").Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// AdminHTTPHandler serves the admin listener (--admin-listen): /metrics
// from metrics (MetricsHandler; nil leaves it out), /healthz (the process
// answers) and /readyz (ready: the same answer as the public server's,
// (*Ingest).Ready).
func AdminHTTPHandler(metrics http.Handler, ready func() (bool, string)) http.Handler {
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("/metrics", metrics)
	}
	mux.HandleFunc("/healthz", healthz)
	mux.HandleFunc("/readyz", readyz(ready))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(http.StatusNotFound, "no such endpoint %s: try /metrics, /healthz or /readyz", r.URL.Path))
	})
	return mux
}

// rejectReason is the reason label of a refusal.
func rejectReason(e *apiError) string {
	if e.reason != "" {
		return e.reason
	}
	switch e.status {
	case http.StatusBadRequest:
		return rejectInvalid
	case http.StatusUnauthorized:
		return rejectAuth
	case http.StatusMethodNotAllowed:
		return rejectMethod
	case http.StatusRequestEntityTooLarge:
		return rejectTooLarge
	case http.StatusUnsupportedMediaType:
		return rejectMediaType
	}
	return rejectOther
}

// as labels a refusal with its reason, where the status does not tell it
// (every 503).
func (e *apiError) as(reason string) *apiError {
	e.reason = reason
	return e
}

// counted makes next count its answers under route when ingest has an
// observer; without one it is next itself. (The webhook route counts its
// own answers: wrapping its ResponseWriter would hide it from
// http.MaxBytesReader, which then could not close the connection of an
// oversized request.)
func (h *Ingest) counted(route string, next http.HandlerFunc) http.HandlerFunc {
	obs := h.obs
	if obs == nil {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		next(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		obs.ObserveRequest(route, sw.status)
	}
}

// observeAnswer tells the observer how a webhook request was answered.
func (h *Ingest) observeAnswer(route string, resp *ingestResponse, status int, aerr *apiError) {
	if aerr != nil {
		h.obs.RequestRejected(rejectReason(aerr))
		h.obs.ObserveRequest(route, aerr.status)
		return
	}
	h.obs.EventsSpooled(resp.Accepted, resp.Duplicates)
	h.obs.ObserveRequest(route, status)
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
