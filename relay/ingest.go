package relay

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gwenrelay/gwenrelay/spool"
)

// Store is where accepted events go. *spool.Spool implements it: Append
// returns only once the entries are fsynced.
type Store interface {
	Append([]spool.Entry) (spool.AppendResult, error)
	OverQuota() bool
}

// Limits of the ingest path.
const (
	// DefaultMaxBody is the default cap on a request body, after gzip.
	DefaultMaxBody = 5 << 20
	// MaxEventsPerRequest is the most events one request may carry.
	MaxEventsPerRequest = 1000
	// MaxMessageBytes is Segment's limit on one message; a bigger one would
	// be rejected by Segment, so it is refused here while the sender can
	// still act on it.
	MaxMessageBytes = 32000
	// DefaultMaxInFlight is how many ingest requests are processed at once;
	// beyond it the relay answers 503 rather than queueing without bound.
	DefaultMaxInFlight = 1024
	// DefaultMaxBuffered bounds the memory that bodies in progress may take
	// (each body is counted three times: as received, decompressed and
	// parsed); beyond it the relay answers 503 rather than run out of memory.
	DefaultMaxBuffered = 256 << 20
)

// IngestConfig configures the webhook handler.
type IngestConfig struct {
	Store       Store
	Auth        *Auth
	Mapping     *Mapping
	MaxBody     int64 // default DefaultMaxBody
	MaxInFlight int   // default DefaultMaxInFlight
	MaxBuffered int64 // default DefaultMaxBuffered
	Now         func() time.Time
	Logger      *slog.Logger
	// OnSpooled, when set, is called after each successful commit (the
	// drainer uses it to pick new records up at once).
	OnSpooled func()
	// Observer, when set, is told of every answer, validated event and
	// refusal (for metrics); nil costs nothing.
	Observer IngestObserver
}

// Ingest serves POST /webhook, and Segment's API through SegmentAPI:
// authenticate, bound, validate, map, spool, and answer 2xx only after the
// spool's commit is on disk.
type Ingest struct {
	store     Store
	auth      atomic.Pointer[Auth]
	mapping   atomic.Pointer[Mapping]
	maxBody   int64
	inflight  chan struct{}
	buffered  atomic.Int64 // bytes reserved by bodies in progress
	lastPost  atomic.Int64 // unix nanos of the last POST /webhook
	spooled   atomic.Int64 // events stored so far
	maxBuf    int64
	now       func() time.Time
	log       *slog.Logger
	onSpooled func()
	obs       IngestObserver
	stopping  atomic.Bool
	// storeFailing is set when the last Append failed for want of disk or a
	// failed commit (not a refusal such as the quota), cleared by a success:
	// /readyz then tells load balancers to send traffic elsewhere.
	storeFailing atomic.Bool

	typesMu   sync.Mutex
	typesSeen map[string]bool
}

// NewIngest builds the handler.
func NewIngest(cfg IngestConfig) *Ingest {
	h := &Ingest{store: cfg.Store, maxBody: cfg.MaxBody, now: cfg.Now, log: cfg.Logger, onSpooled: cfg.OnSpooled, typesSeen: map[string]bool{}}
	h.obs = cfg.Observer
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBody
	}
	n := cfg.MaxInFlight
	if n <= 0 {
		n = DefaultMaxInFlight
	}
	h.inflight = make(chan struct{}, n)
	h.maxBuf = cfg.MaxBuffered
	if h.maxBuf <= 0 {
		// At least four bodies of the largest size at once, whatever
		// --max-body is.
		h.maxBuf = max(DefaultMaxBuffered, 4*3*h.maxBody)
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	h.log = h.log.With("system", "ingest")
	a := cfg.Auth
	if a == nil {
		a = &Auth{} // no token and not insecure: every request is refused
	}
	h.auth.Store(a)
	m := cfg.Mapping
	if m == nil {
		m = DefaultMapping("")
	}
	h.mapping.Store(m)
	return h
}

// SetAuth replaces the credential check without dropping requests.
func (h *Ingest) SetAuth(a *Auth) { h.auth.Store(a) }

// Mapping returns the mapping in force.
func (h *Ingest) Mapping() *Mapping { return h.mapping.Load() }

// SetMapping replaces the mapping overrides for later requests.
func (h *Ingest) SetMapping(m *Mapping) { h.mapping.Store(m) }

// Stop makes every later request answer 503 with Retry-After; requests
// already past the check finish normally.
func (h *Ingest) Stop() { h.stopping.Store(true) }

// busyWindow is how long after a webhook ingest still counts as busy.
const busyWindow = 100 * time.Millisecond

// Busy reports whether webhooks are being taken: one is in progress, or one
// arrived within the last busyWindow.
func (h *Ingest) Busy() bool {
	return len(h.inflight) > 0 || time.Since(time.Unix(0, h.lastPost.Load())) < busyWindow
}

// Spooled returns how many events ingest has stored since it started.
func (h *Ingest) Spooled() int64 { return h.spooled.Load() }

// StoreFailing reports whether the last commit failed (disk full, I/O
// error) with no success since.
func (h *Ingest) StoreFailing() bool { return h.storeFailing.Load() }

// Stopping reports whether Stop was called.
func (h *Ingest) Stopping() bool { return h.stopping.Load() }

// ingestResponse is the body of a 2xx answer.
type ingestResponse struct {
	Accepted   int      `json:"accepted"`
	Duplicates int      `json:"duplicates"`
	IDs        []uint64 `json:"ids"`
}

// apiError is a failure answer: its status, a message that says what was
// wrong, and for 503 how long the sender should wait.
type apiError struct {
	status     int
	msg        string
	retryAfter int
	reason     string // for metrics, where status does not tell it (see as)
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) *apiError {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

func unavailable(retryAfter int, format string, args ...any) *apiError {
	return &apiError{status: http.StatusServiceUnavailable, msg: fmt.Sprintf(format, args...), retryAfter: retryAfter}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="gwenrelay", Bearer`)
	}
	writeJSON(w, e.status, map[string]string{"error": e.msg})
}

func (h *Ingest) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.serve(w, r, webhookEndpoint{h})
}

// endpoint is what differs between the ingest routes (/webhook and
// Segment's /v1/*): the checks are the same, the body's shape and the
// answer are not.
type endpoint interface {
	// route names it in metrics and logs.
	route() string
	// segmentAPI: Segment's rules for auth (writeKey in the body), content
	// type and signature (Segment's libraries sign nothing).
	segmentAPI() bool
	// parse validates the body and builds one spool entry per event;
	// authed says whether the request's header carried a valid credential
	// (when it did not, the body must).
	parse(r *http.Request, body []byte, auth *Auth, authed bool, now time.Time) ([]spool.Entry, *apiError)
	// answer is the status and body of a success.
	answer(res *ingestResponse, all bool) (int, any)
}

type webhookEndpoint struct{ h *Ingest }

func (webhookEndpoint) route() string    { return routeWebhook }
func (webhookEndpoint) segmentAPI() bool { return false }

func (e webhookEndpoint) parse(r *http.Request, body []byte, _ *Auth, _ bool, now time.Time) ([]spool.Entry, *apiError) {
	return e.h.parse(body, r.Header.Get("Idempotency-Key"), now)
}

func (webhookEndpoint) answer(res *ingestResponse, allDuplicates bool) (int, any) {
	if allDuplicates {
		return http.StatusOK, res
	}
	return http.StatusAccepted, res
}

func (h *Ingest) serve(w http.ResponseWriter, r *http.Request, ep endpoint) {
	resp, aerr := h.handle(w, r, ep)
	var status int
	var body any
	if aerr == nil {
		status, body = ep.answer(resp, resp.Accepted == 0)
	}
	if h.obs != nil {
		h.observeAnswer(ep.route(), resp, status, aerr)
	}
	if aerr != nil {
		if aerr.status >= 500 {
			h.log.Warn("request refused", "route", ep.route(), "status", aerr.status, "error", aerr.msg, "remote", r.RemoteAddr)
		} else {
			h.log.Debug("request rejected", "route", ep.route(), "status", aerr.status, "error", aerr.msg, "remote", r.RemoteAddr)
		}
		writeError(w, aerr)
		return
	}
	writeJSON(w, status, body)
}

func (h *Ingest) handle(w http.ResponseWriter, r *http.Request, ep endpoint) (*ingestResponse, *apiError) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		what := "a JSON event or array of events"
		if ep.segmentAPI() {
			what = "a Segment message as JSON"
		}
		return nil, errorf(http.StatusMethodNotAllowed, "method %s not allowed: POST %s", r.Method, what)
	}
	h.lastPost.Store(time.Now().UnixNano())
	if h.stopping.Load() {
		// Ask the client to drop this keep-alive connection: the listener is
		// about to close and the next request should go elsewhere.
		w.Header().Set("Connection", "close")
		return nil, unavailable(5, "gwenrelay is shutting down; retry shortly").as(rejectStopping)
	}
	auth := h.auth.Load()
	authed := auth.checkToken(r)
	if !authed {
		switch {
		case r.Header.Get("Authorization") != "":
			return nil, errorf(http.StatusUnauthorized, "credential not accepted: check the token the sender uses against --inbound-token / --inbound-token-file")
		case !ep.segmentAPI():
			return nil, errorf(http.StatusUnauthorized, "missing credential: send Authorization: Bearer <token> or Basic with the token as user name")
		}
		// Segment's API also takes the write key in the body: parse checks it.
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		// Segment's browser library posts text/plain to spare a CORS preflight.
		json := err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
		if !json && !(ep.segmentAPI() && err == nil && mt == "text/plain") {
			return nil, errorf(http.StatusUnsupportedMediaType, "content type %q is not JSON: send application/json", ct)
		}
	}
	gzipped := false
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		gzipped = true
	default:
		return nil, errorf(http.StatusUnsupportedMediaType, "content encoding %q is not supported: send gzip or no encoding", enc)
	}
	if r.ContentLength > h.maxBody {
		return nil, errorf(http.StatusRequestEntityTooLarge, "body is over the %d-byte limit", h.maxBody)
	}
	select {
	case h.inflight <- struct{}{}:
		defer func() { <-h.inflight }()
	default:
		return nil, unavailable(1, "too many requests in progress; retry shortly").as(rejectOverloaded)
	}
	// Reserve memory for the body before reading it: what it declares, or
	// the limit when it does not say (chunked) or is compressed.
	need := h.maxBody
	if r.ContentLength >= 0 && !gzipped {
		need = r.ContentLength
	}
	need *= 3
	if total := h.buffered.Add(need); total > h.maxBuf && total != need {
		h.buffered.Add(-need)
		return nil, unavailable(1, "too much request data in progress; retry shortly").as(rejectOverloaded)
	}
	defer h.buffered.Add(-need)

	raw, aerr := h.readBody(w, r, gzipped)
	if aerr != nil {
		return nil, aerr
	}
	if !ep.segmentAPI() {
		if err := auth.checkSignature(r, raw.wire); err != nil {
			return nil, errorf(http.StatusUnauthorized, "signature: %v", err)
		}
	}
	now := h.now()
	entries, aerr := ep.parse(r, raw.body, auth, authed, now)
	if aerr != nil {
		return nil, aerr
	}
	res, err := h.store.Append(entries)
	if err != nil {
		if !errors.Is(err, spool.ErrOverQuota) && !errors.Is(err, spool.ErrClosed) {
			h.storeFailing.Store(true)
		}
		return nil, storeError(err)
	}
	h.storeFailing.Store(false)
	h.spooled.Add(int64(len(entries) - res.Duplicates))
	if h.onSpooled != nil {
		h.onSpooled()
	}
	return &ingestResponse{Accepted: len(entries) - res.Duplicates, Duplicates: res.Duplicates, IDs: res.IDs}, nil
}

// storeError turns a failed commit into a 503 that tells the sender to come
// back: nothing of the request was stored.
func storeError(err error) *apiError {
	switch {
	case errors.Is(err, spool.ErrOverQuota):
		return unavailable(30, "%v; retry later", err).as(rejectOverQuota)
	case errors.Is(err, spool.ErrClosed):
		return unavailable(5, "gwenrelay is shutting down; retry shortly").as(rejectStopping)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return unavailable(30, "spool disk is full; nothing was stored, retry later").as(rejectDiskFull)
	}
	return unavailable(5, "spool could not commit; nothing was stored, retry later").as(rejectCommitFailed)
}

type requestBody struct {
	wire []byte // as received, for the signature
	body []byte // after gzip
}

func (h *Ingest) readBody(w http.ResponseWriter, r *http.Request, gzipped bool) (requestBody, *apiError) {
	wire, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return requestBody{}, errorf(http.StatusRequestEntityTooLarge, "body is over the %d-byte limit", h.maxBody)
		}
		return requestBody{}, errorf(http.StatusBadRequest, "reading body: %v", err)
	}
	if !gzipped {
		return requestBody{wire: wire, body: wire}, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(wire))
	if err != nil {
		return requestBody{}, errorf(http.StatusBadRequest, "body is not valid gzip: %v", err)
	}
	body, err := io.ReadAll(io.LimitReader(zr, h.maxBody+1))
	if err != nil {
		return requestBody{}, errorf(http.StatusBadRequest, "body is not valid gzip: %v", err)
	}
	if int64(len(body)) > h.maxBody {
		return requestBody{}, errorf(http.StatusRequestEntityTooLarge, "decompressed body is over the %d-byte limit", h.maxBody)
	}
	return requestBody{wire: wire, body: body}, nil
}

// parse validates the body and builds one spool entry per event. Any bad
// event rejects the whole request, so nothing of it is stored.
func (h *Ingest) parse(body []byte, idemKey string, now time.Time) ([]spool.Entry, *apiError) {
	if !utf8.Valid(body) {
		return nil, errorf(http.StatusBadRequest, "body is not valid UTF-8")
	}
	if !json.Valid(body) {
		return nil, errorf(http.StatusBadRequest, "body is not valid JSON")
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	var raws []json.RawMessage
	array := len(trimmed) > 0 && trimmed[0] == '['
	if array {
		if err := json.Unmarshal(trimmed, &raws); err != nil {
			return nil, errorf(http.StatusBadRequest, "body is not valid JSON: %v", err)
		}
		if len(raws) == 0 {
			return nil, errorf(http.StatusBadRequest, "empty array: send at least one event")
		}
		if len(raws) > MaxEventsPerRequest {
			return nil, errorf(http.StatusBadRequest, "%d events in one request; at most %d are allowed", len(raws), MaxEventsPerRequest)
		}
	} else {
		raws = []json.RawMessage{trimmed}
	}
	mapping := h.mapping.Load()
	entries := make([]spool.Entry, len(raws))
	var types []string // for the observer
	if h.obs != nil {
		types = make([]string, 0, len(raws))
	}
	for i, raw := range raws {
		where := ""
		if array {
			where = fmt.Sprintf("events[%d]", i)
		}
		ev, err := ParseEvent(raw, now)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%s", joinPath(where, err))
		}
		entry, err := GWENEntry(raw, idemKey, i, now)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%s", joinPath(where, err))
		}
		msg, err := mapping.Map(ev, now, entry.MessageID)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "%s", joinPath(where, err))
		}
		if mapping.messageSizeBound(len(raw)) > MaxMessageBytes {
			// Big enough that the message might be over Segment's limit:
			// encode it to know.
			enc, err := MarshalMessage(msg)
			if err != nil {
				return nil, errorf(http.StatusBadRequest, "%s", joinPath(where, err))
			}
			if len(enc) > MaxMessageBytes {
				return nil, errorf(http.StatusRequestEntityTooLarge, "%s", joinPath(where, fmt.Errorf("the Segment message would be %d bytes; Segment accepts at most %d", len(enc), MaxMessageBytes)))
			}
		}
		h.noteType(ev.Type)
		if types != nil {
			types = append(types, ev.Type)
		}
		entries[i] = entry
	}
	if h.obs != nil {
		h.obs.EventsReceived(types)
	}
	return entries, nil
}

// joinPath prefixes an event's position to its error: "events[3].userId: …".
func joinPath(where string, err error) string {
	if where == "" {
		return err.Error()
	}
	var fe *FieldError
	if errors.As(err, &fe) && fe.Field != "" {
		return where + "." + fe.Error()
	}
	return where + ": " + err.Error()
}

// maxTypesSeen bounds the memory spent remembering event types for the
// first-sighting log.
const maxTypesSeen = 1000

// noteType logs the first sighting of a GWEN type outside the mapping table:
// GWEN does not publish its type strings, so a new one is worth a look.
func (h *Ingest) noteType(t string) {
	n := NormalizeType(t)
	if KnownType(n) {
		return
	}
	h.typesMu.Lock()
	first := !h.typesSeen[n] && len(h.typesSeen) < maxTypesSeen
	if first {
		h.typesSeen[n] = true
	}
	h.typesMu.Unlock()
	if first {
		h.log.Info("first sighting of a GWEN event type outside the mapping table; forwarded with its type as the event name", "type", t)
	}
}
