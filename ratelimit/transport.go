package ratelimit

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"time"
)

// DefaultPause is the pause a 429 imposes when it carries no readable
// Retry-After.
const DefaultPause = time.Second

// Transport wraps the HTTP transport of a client (analytics-go's
// Config.Transport) so that every request waits for the limiter before it
// starts, and a 429 with Retry-After pauses all of them. analytics-go itself
// ignores Retry-After and sees only "status >= 300"; this is where the
// relay learns what Segment actually said.
type Transport struct {
	// Base sends the request; http.DefaultTransport when nil.
	Base http.RoundTripper
	// Limiter paces the requests; required.
	Limiter *Limiter
	// Count says how many events a request body carries; nil counts 1. It
	// is called only when the limiter has a rate or Observe is set.
	Count func(body []byte) int
	// Observe, when set, is told of every attempt: the events it carried, the
	// status (0 on a transport error), the error, how long the limiter held
	// it and how long the exchange took.
	Observe func(events, status int, err error, waited, took time.Duration)
	// Prepare, when set, gives the body each attempt is sent with, once the
	// limiter has released it: body is the one the request carried (what
	// Count counted), req the request as the caller made it (its context may
	// carry what the body is built from). The result must carry as many
	// events as body.
	Prepare func(req *http.Request, body []byte) []byte
}

// RoundTrip waits for the limiter, sends the request and, on a 429, imposes
// the pause its Retry-After asks for.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("read request body: %w", err)
		}
		body = b
	}
	// Counting scans the body: skip it when neither the limiter (no rate
	// set) nor an observer needs the number.
	n := 1
	if t.Count != nil && (t.Observe != nil || t.Limiter.Burst() > 0) {
		n = t.Count(body)
	}
	waited, err := t.Limiter.Wait(req.Context(), n)
	if err != nil {
		return nil, err
	}
	if t.Prepare != nil {
		body = t.Prepare(req, body)
	}
	out := req.Clone(req.Context())
	out.ContentLength = int64(len(body)) // Prepare may have changed it
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	start := time.Now()
	resp, err := base.RoundTrip(out)
	took := time.Since(start)
	status := 0
	if resp != nil {
		status = resp.StatusCode
		if status == http.StatusTooManyRequests {
			d, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
			if !ok {
				d = DefaultPause
			}
			t.Limiter.Pause(d)
		}
	}
	if t.Observe != nil {
		t.Observe(n, status, err, waited, took)
	}
	return resp, err
}

// RetryAfter returns a function for analytics-go's Config.RetryAfter: the
// backoff between its retries of one batch, exponential from base to max with
// jitter, and never shorter than the pause in force.
func (l *Limiter) RetryAfter(base, max time.Duration) func(int) time.Duration {
	return func(attempt int) time.Duration { return l.Backoff(attempt, base, max) }
}
