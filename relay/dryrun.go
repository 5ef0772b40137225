package relay

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/gwenrelay/gwenrelay/ratelimit"
)

// NewDryRunSender returns the sender constructor of --dry-run: each message
// becomes one line of NDJSON on w (exactly the JSON analytics-go would put in
// a batch, or for a SegmentMessage its Body as the raw sender would send it
// now) and is then reported delivered, so the spool drains as it would to
// Segment; a message over Segment's limit (32,000 bytes as analytics-go
// encodes it; for a SegmentMessage, one that cannot fit a batch) is
// reported failed with analytics.ErrMessageTooBig, as the real senders do.
// Senders built from one constructor share w. lim, when not nil, paces the
// lines as --rate paces Segment. Lines are not fsynced: a dry run is for
// looking, not keeping.
func NewDryRunSender(w io.Writer, lim *ratelimit.Limiter) func(analytics.Callback) (Sender, error) {
	out := &lockedWriter{w: w}
	return func(cb analytics.Callback) (Sender, error) {
		return &dryRunSink{out: out, cb: cb, lim: lim}, nil
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

type dryRunSink struct {
	out    *lockedWriter
	cb     analytics.Callback
	lim    *ratelimit.Limiter
	closed atomic.Bool
}

func (s *dryRunSink) Enqueue(m analytics.Message) error {
	if s.closed.Load() {
		return analytics.ErrClosed
	}
	if err := m.Validate(); err != nil {
		return err
	}
	b, err := MarshalMessage(m)
	if err != nil {
		return fmt.Errorf("encode message: %w", err)
	}
	tooBig := len(b) > MaxMessageBytes
	if sm, ok := m.(*SegmentMessage); ok {
		tooBig = segmentMessageTooBig(sm) // as the raw sender decides
		b = sm.Body(time.Now())           // as the raw sender would send it now
	}
	if tooBig {
		// The real senders refuse it this way (Segment would reject it), so
		// a dry run drains the spool as a real one would: to dead letters.
		s.cb.Failure(m, analytics.ErrMessageTooBig)
		return nil
	}
	if s.lim != nil {
		if _, err := s.lim.Wait(context.Background(), 1); err != nil {
			return err
		}
	}
	s.out.mu.Lock()
	_, err = s.out.w.Write(append(b, '\n'))
	s.out.mu.Unlock()
	if err != nil {
		s.cb.Failure(m, fmt.Errorf("write dry-run output: %w", err))
		return nil
	}
	s.cb.Success(m)
	return nil
}

func (s *dryRunSink) Close() error {
	s.closed.Store(true)
	return nil
}
