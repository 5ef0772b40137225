package relay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/gwenrelay/gwenrelay/ratelimit"
)

// Segment delivery defaults.
const (
	// DefaultSegmentEndpoint is Segment's US API; EU workspaces use
	// https://events.eu1.segmentapis.com.
	DefaultSegmentEndpoint = "https://api.segment.io"
	// DefaultFlushInterval is how long a partial batch waits: at low traffic
	// an event reaches Segment within about this long.
	DefaultFlushInterval = 200 * time.Millisecond
	// DefaultRequestTimeout bounds one upload attempt; analytics-go's own
	// client timeout is a fixed 10 s.
	DefaultRequestTimeout = 10 * time.Second
	// maxBatch is analytics-go's default and Segment's comfortable size.
	maxBatch = 250
)

// SegmentConfig configures delivery to Segment, through analytics-go and
// the raw sender.
type SegmentConfig struct {
	WriteKey string
	Endpoint string             // default DefaultSegmentEndpoint
	Limiter  *ratelimit.Limiter // required: events/s and Retry-After pauses
	// Base is the HTTP transport under the limiter (default: a clone of
	// http.DefaultTransport).
	Base http.RoundTripper
	// FlushInterval (default DefaultFlushInterval) and RequestTimeout
	// (default DefaultRequestTimeout).
	FlushInterval  time.Duration
	RequestTimeout time.Duration
	// RetryBase and RetryMax shape the ten attempts at a batch (defaults
	// 100ms and 2s); the drainer's own backoff follows them.
	RetryBase, RetryMax time.Duration
	// Rejections, when set, records what Segment says when it refuses a
	// batch as invalid; give the same log to the drainer.
	Rejections *RejectionLog
	// Observe is told of every upload attempt (for metrics and tests).
	Observe func(events, status int, err error, waited, took time.Duration)
	Logger  *slog.Logger
}

// NewSegmentSenders returns the constructors the drainer needs: one for
// normal batches, one that sends each message in a batch of its own (to
// find the record that made Segment reject a batch). Their senders deliver
// a SegmentMessage (one that came in through Segment's own API) through the
// raw sender, field for field as stored, and any other message through
// analytics-go. Both kinds share one HTTP stack and the limiter, so the rate,
// any pause, the metrics and the rejection log apply to all traffic.
func NewSegmentSenders(cfg SegmentConfig) (normal, isolation func(analytics.Callback) (Sender, error)) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultSegmentEndpoint
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = 100 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Up to MaxInFlight/batch uploads run at once; the default of two
		// idle connections per host would open a new TLS connection to
		// Segment for most of them.
		t.MaxIdleConnsPerHost = 32
		cfg.Base = t
	}
	transport := segmentTransport(cfg)
	build := func(batchSize int) func(analytics.Callback) (Sender, error) {
		return func(cb analytics.Callback) (Sender, error) {
			c, err := analytics.NewWithConfig(cfg.WriteKey, analytics.Config{
				Endpoint:   cfg.Endpoint,
				Interval:   cfg.FlushInterval,
				BatchSize:  batchSize,
				Transport:  transport,
				Callback:   cb,
				RetryAfter: cfg.Limiter.RetryAfter(cfg.RetryBase, cfg.RetryMax),
				Logger:     analyticsLogger{cfg.Logger.With("system", "analytics-go")},
			})
			if err != nil {
				return nil, fmt.Errorf("configure the Segment client: %w", err)
			}
			return &segmentSender{sdk: c, raw: newRawSender(cfg, transport, batchSize, cb)}, nil
		}
	}
	// A batch never carries more events than the limiter's burst, so the
	// window bound (rate + burst events in any second) holds per request.
	size := maxBatch
	if b := cfg.Limiter.Burst(); b > 0 && b < size {
		size = b
	}
	return build(size), build(1)
}

// segmentSender routes each message to the sender that can carry it: a
// SegmentMessage to the raw sender, the rest to analytics-go.
type segmentSender struct {
	sdk Sender
	raw *rawSender
}

func (s *segmentSender) Enqueue(m analytics.Message) error {
	if _, ok := m.(*SegmentMessage); ok {
		return s.raw.Enqueue(m)
	}
	return s.sdk.Enqueue(m)
}

// Close closes both senders at once (each may wait for its uploads) and
// returns analytics-go's error, else the raw sender's.
func (s *segmentSender) Close() error {
	rawErr := make(chan error, 1)
	go func() { rawErr <- s.raw.Close() }()
	err := s.sdk.Close()
	if rerr := <-rawErr; err == nil {
		err = rerr
	}
	return err
}

// segmentTransport is the HTTP stack under analytics-go and the raw sender:
// the limiter (rate and Retry-After pauses), then the per-attempt timeout,
// then cfg.Base.
func segmentTransport(cfg SegmentConfig) http.RoundTripper {
	return queueTransport{next: &ratelimit.Transport{
		Base:    timeoutTransport{base: rejectionRecorder{base: cfg.Base, log: cfg.Rejections}, timeout: cfg.RequestTimeout},
		Limiter: cfg.Limiter,
		Count:   countBatch,
		Observe: cfg.Observe,
		Prepare: prepareBody,
	}}
}

// bodyBuilderKey is the context key under which a request carries the
// function that builds its body for the moment it leaves.
type bodyBuilderKey struct{}

// withBodyBuilder returns ctx carrying build, for prepareBody.
func withBodyBuilder(ctx context.Context, build func(now time.Time) []byte) context.Context {
	return context.WithValue(ctx, bodyBuilderKey{}, build)
}

// prepareBody is the body an upload leaves with, once the limiter released
// it: built anew by the raw sender's builder when the request carries one,
// else analytics-go's body with its sentAt restamped.
func prepareBody(req *http.Request, body []byte) []byte {
	if build, ok := req.Context().Value(bodyBuilderKey{}).(func(time.Time) []byte); ok {
		return build(time.Now())
	}
	return restampSentAt(body)
}

// restampSentAt sets the batch's sentAt to the moment it is really sent.
// analytics-go stamps it once, when it builds the batch, before the rate
// limiter holds the upload and before its retries; Segment computes each
// event's time as receivedAt - (sentAt - timestamp), so a stale sentAt moved
// every event of the batch later by the time it waited. The field is the
// batch envelope's second one ({"messageId":…,"sentAt":…,"batch":…}), so the
// first "sentAt" before "batch" is that one; a body of another shape is
// left as it is.
func restampSentAt(body []byte) []byte {
	key := []byte(`"sentAt":"`)
	i := bytes.Index(body, key)
	if i < 0 {
		return body
	}
	if b := bytes.Index(body, []byte(`"batch":`)); b >= 0 && b < i {
		return body
	}
	start := i + len(key)
	end := bytes.IndexByte(body[start:], '"')
	if end < 0 {
		return body
	}
	now := time.Now().UTC().AppendFormat(nil, time.RFC3339Nano)
	out := make([]byte, 0, len(body)-end+len(now))
	out = append(out, body[:start]...)
	out = append(out, now...)
	return append(out, body[start+end:]...)
}

// queueTransport takes the request out of the deadline of analytics-go's
// http.Client (a fixed 10 s, on the request's context and Cancel channel),
// so that time spent queued in the limiter does not count against it: a
// backlog deeper than 10 s of --rate, or a Retry-After over 10 s, would
// otherwise fail batches that never left the process, record failed
// attempts on their records and back the drainer off. Each exchange with
// Segment is still bounded, by timeoutTransport below the limiter.
type queueTransport struct{ next http.RoundTripper }

func (t queueTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	out := req.Clone(context.WithoutCancel(req.Context()))
	out.Cancel = nil //nolint:staticcheck // http.Client still sets it for transports it does not know
	return t.next.RoundTrip(out)
}

// countBatch counts the messages of a batch body, for the token bucket,
// without decoding them: the elements of the top-level "batch" array (see
// arrayElements). Both senders write the body with the key spelled exactly
// `"batch":[`. A body without one counts as one message.
func countBatch(body []byte) int {
	i := bytes.Index(body, []byte(`"batch":[`))
	if i < 0 {
		return 1
	}
	return len(arrayElements(body[i+len(`"batch":`):]))
}

// timeoutTransport bounds each attempt, including reading the answer.
type timeoutTransport struct {
	base    http.RoundTripper
	timeout time.Duration
}

func (t timeoutTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(req.Context(), t.timeout)
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
	once   sync.Once
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.once.Do(c.cancel)
	return err
}

// analyticsLogger sends analytics-go's chatter to slog at debug level: the
// drainer logs what matters (failures, backoff) itself, once.
type analyticsLogger struct{ log *slog.Logger }

func (l analyticsLogger) Logf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}

func (l analyticsLogger) Errorf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}
