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
)

// Limits of the raw sender.
const (
	// maxBatchBodyBytes is Segment's limit on one /v1/batch request body.
	maxBatchBodyBytes = 500000
	// rawAttempts is how many times a batch is tried in all, as analytics-go
	// does.
	rawAttempts = 10
	// rawMaxUploads bounds the raw sender's batches in progress (on the
	// wire, held by the limiter or waiting to retry); more wait for a free
	// one (see dispatch).
	rawMaxUploads = 32
	// bodyGrowth bounds what Body can add to a message: it rewrites a
	// caller's sentAt (the shortest parseISOTime takes, "2006-01-02T1:04:05",
	// is 20 bytes quoted) as "2006-01-02T15:04:05.000Z" (26 bytes quoted);
	// 8 leaves a margin.
	bodyGrowth = 8
	// batchEnvelopeBytes is the most a batch body holds besides its
	// messages and the commas between them: {"sentAt":"…","batch":[…]}
	// with an RFC 3339 UTC time of at most nanosecond precision.
	batchEnvelopeBytes = len(`{"sentAt":"","batch":[]}`) + len("2006-01-02T15:04:05.999999999Z")
	// maxAnswerBytes is how much of an answer's body is read (and thrown
	// away) so that the connection can be used again.
	maxAnswerBytes = 64 << 10
)

// rawSender delivers SegmentMessages to Segment's /v1/batch as they are
// stored, field for field, which analytics-go cannot (its Enqueue takes only
// its own six structs). It batches like analytics-go (batch size, 500,000
// bytes, a flush interval) and reports every message to the callback the
// same way, with errors of the same shape, so the drainer handles both alike.
// Where it differs, it is on purpose: a batch Segment refuses as invalid
// (400, 413, 422) fails at once instead of being sent nine more times, so
// that the drainer isolates the culprit quickly; each attempt's body, and so
// its sentAt, is built when the attempt really leaves; and Close never races
// a concurrent Enqueue.
type rawSender struct {
	url, writeKey string
	client        *http.Client
	cb            analytics.Callback
	batchSize     int
	interval      time.Duration
	retryAfter    func(attempt int) time.Duration
	log           *slog.Logger

	mu           sync.Mutex
	closed       bool
	pending      []*SegmentMessage
	pendingBytes int         // the body the pending messages would make, at most
	timer        *time.Timer // flushes the pending batch FlushInterval after its first message
	gen          uint64      // which pending batch the timer belongs to

	slots     chan struct{} // one per batch in progress
	wg        sync.WaitGroup
	quit      chan struct{} // closed by Close: batches waiting to retry give up
	closeOnce sync.Once
}

// newRawSender returns a raw sender over transport (segmentTransport's
// stack, shared with analytics-go) that reports to cb.
func newRawSender(cfg SegmentConfig, transport http.RoundTripper, batchSize int, cb analytics.Callback) *rawSender {
	if batchSize < 1 {
		batchSize = 1
	}
	return &rawSender{
		url:        cfg.Endpoint + "/v1/batch",
		writeKey:   cfg.WriteKey,
		client:     &http.Client{Transport: transport}, // each attempt is bounded by timeoutTransport
		cb:         cb,
		batchSize:  batchSize,
		interval:   cfg.FlushInterval,
		retryAfter: cfg.Limiter.RetryAfter(cfg.RetryBase, cfg.RetryMax),
		log:        cfg.Logger.With("system", "segment-raw"),
		slots:      make(chan struct{}, rawMaxUploads),
		quit:       make(chan struct{}),
	}
}

// Enqueue adds a SegmentMessage to the current batch, sending the batch if
// the message fills it. It may wait for a batch in progress to end.
func (s *rawSender) Enqueue(msg analytics.Message) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return analytics.ErrClosed
	}
	if err := msg.Validate(); err != nil {
		return err
	}
	m, ok := msg.(*SegmentMessage)
	if !ok {
		return fmt.Errorf("the raw Segment sender cannot send a %T", msg)
	}
	if segmentMessageTooBig(m) {
		s.cb.Failure(m, analytics.ErrMessageTooBig)
		return nil
	}
	size := len(m.Raw) + bodyGrowth
	var ready [][]*SegmentMessage
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return analytics.ErrClosed
	}
	if len(s.pending) > 0 && s.pendingBytes+1+size > maxBatchBodyBytes {
		ready = append(ready, s.takeLocked())
	}
	if len(s.pending) == 0 {
		s.pendingBytes = batchEnvelopeBytes + size
		if s.batchSize > 1 {
			gen := s.gen
			s.timer = time.AfterFunc(s.interval, func() { s.flushTimed(gen) })
		}
	} else {
		s.pendingBytes += 1 + size // and a comma
	}
	s.pending = append(s.pending, m)
	if len(s.pending) >= s.batchSize {
		ready = append(ready, s.takeLocked())
	}
	s.mu.Unlock()
	for _, b := range ready {
		s.dispatch(b)
	}
	return nil
}

// segmentMessageTooBig reports whether m cannot be sent at all: it does not
// fit in a batch request by itself. (Ingest holds what callers send to
// Segment's 32 KB; whether Segment takes a message grown by the relay's
// additions is Segment's to say, and a refusal dead-letters it with
// Segment's answer.)
func segmentMessageTooBig(m *SegmentMessage) bool {
	return len(m.Raw) > maxStoredSegmentMessage
}

// takeLocked takes the pending batch (s.mu held) and counts it as in
// progress, so that Close waits for it.
func (s *rawSender) takeLocked() []*SegmentMessage {
	b := s.pending
	s.pending, s.pendingBytes = nil, 0
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.gen++
	if len(b) > 0 {
		s.wg.Add(1)
	}
	return b
}

// flushTimed sends the batch whose timer fired, if it is still pending.
func (s *rawSender) flushTimed(gen uint64) {
	s.mu.Lock()
	if s.closed || s.gen != gen || len(s.pending) == 0 {
		s.mu.Unlock()
		return
	}
	b := s.takeLocked()
	s.mu.Unlock()
	s.dispatch(b)
}

// dispatch starts the upload of a batch counted by takeLocked. It never
// waits: the batch waits for a free upload slot on its own goroutine, so
// that Enqueue (the drainer's loop) is not held while the limiter holds
// every upload through a long Retry-After pause (the loop must keep going
// round, or the service watchdog takes it for stuck). The drainer's bound on
// records in flight bounds the batches waiting.
func (s *rawSender) dispatch(b []*SegmentMessage) {
	if len(b) == 0 {
		return
	}
	go s.send(b)
}

// send waits for an upload slot, delivers one batch, retrying transient
// failures, and reports every message of it to the callback.
func (s *rawSender) send(b []*SegmentMessage) {
	defer s.wg.Done()
	s.slots <- struct{}{}
	defer func() { <-s.slots }()
	build := func(now time.Time) []byte { return segmentBatchBody(b, now) }
	// This body is what the limiter counts; each attempt is sent with one
	// built anew when it leaves (see prepareBody).
	body := build(time.Now())
	var err error
	for attempt := 0; ; attempt++ {
		var retry bool
		if retry, err = s.upload(body, build); err == nil {
			for _, m := range b {
				s.cb.Success(m)
			}
			return
		}
		if !retry || attempt+1 >= rawAttempts {
			s.log.Debug("batch failed", "messages", len(b), "attempts", attempt+1, "error", err)
			break
		}
		t := time.NewTimer(s.retryAfter(attempt))
		select {
		case <-t.C:
			continue
		case <-s.quit:
			t.Stop()
			s.log.Debug("batch given up: it failed and the sender was closed", "messages", len(b), "error", err)
		}
		break
	}
	for _, m := range b {
		s.cb.Failure(m, err)
	}
}

// upload makes one attempt. Its error is shaped like analytics-go's ("<code>
// <status>" for an answer of 300 or more, the transport's error otherwise),
// which the drainer's classify reads; retry says whether another attempt
// may fare better.
func (s *rawSender) upload(body []byte, build func(time.Time) []byte) (retry bool, err error) {
	ctx := withBodyBuilder(context.Background(), build)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("User-Agent", "gwenrelay")
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(s.writeKey, "")
	res, err := s.client.Do(req)
	if err != nil {
		return true, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxAnswerBytes))
	res.Body.Close()
	if res.StatusCode < 300 {
		return false, nil
	}
	return classifyStatus(res.StatusCode) == failTransient, fmt.Errorf("%d %s", res.StatusCode, res.Status)
}

// Close stops taking messages, sends the pending batch and waits for the
// batches in progress; a batch waiting to retry is given up at once and its
// messages reported failed. Later calls do nothing.
func (s *rawSender) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		b := s.takeLocked()
		s.mu.Unlock()
		close(s.quit)
		s.dispatch(b)
		s.wg.Wait()
	})
	return nil
}

// segmentBatchBody is the /v1/batch body for msgs leaving at now. sentAt
// comes before batch: restampSentAt and countBatch read bodies of that shape.
func segmentBatchBody(msgs []*SegmentMessage, now time.Time) []byte {
	n := batchEnvelopeBytes
	for _, m := range msgs {
		n += len(m.Raw) + bodyGrowth + 1
	}
	out := make([]byte, 0, n)
	out = append(out, `{"sentAt":"`...)
	out = now.UTC().AppendFormat(out, time.RFC3339Nano)
	out = append(out, `","batch":[`...)
	for i, m := range msgs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, m.Body(now)...)
	}
	return append(out, "]}"...)
}
