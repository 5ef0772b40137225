// Package ratelimit paces what gwenrelay sends to Segment: an events-per-
// second token bucket (golang.org/x/time/rate) and a shared pause that a 429
// with Retry-After imposes on every sender.
//
// The contract: over any one-second window at most rate + burst events are
// released, provided no single request carries more than burst events; and
// while a pause is in force no new request is released (requests already on
// the wire may finish, and one released in the instant before the pause was
// imposed may still go out: the check and the send are not one step).
package ratelimit

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MaxPause caps the pause one Retry-After can impose, so a bogus header
// cannot stop delivery for hours.
const MaxPause = 5 * time.Minute

// Limiter is an events/s limit plus a pause. The zero value is not usable;
// build one with New. It is safe for concurrent use.
type Limiter struct {
	mu         sync.Mutex
	lim        *rate.Limiter // nil: no rate limit
	pauseUntil time.Time
	pauseCh    chan struct{} // closed and replaced whenever the pause changes
	pauses     int64
	rates      int64 // SetRate calls, so Wait can tell a burst changed under it

	// now is the clock; tests move it.
	now func() time.Time
}

// New returns a limiter releasing eventsPerSec events a second with bursts
// of up to burst. eventsPerSec <= 0 means no rate limit (pauses still apply).
func New(eventsPerSec float64, burst int) *Limiter {
	l := &Limiter{now: time.Now, pauseCh: make(chan struct{})}
	l.SetRate(eventsPerSec, burst)
	return l
}

// SetRate changes the limit in place (on reload); waiters keep their turn.
func (l *Limiter) SetRate(eventsPerSec float64, burst int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rates++
	if eventsPerSec <= 0 {
		l.lim = nil
		return
	}
	if burst < 1 {
		burst = 1
	}
	if l.lim == nil {
		l.lim = rate.NewLimiter(rate.Limit(eventsPerSec), burst)
		return
	}
	l.lim.SetLimit(rate.Limit(eventsPerSec))
	l.lim.SetBurst(burst)
}

// Rate returns the events per second released; 0 when there is no limit.
func (l *Limiter) Rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim == nil {
		return 0
	}
	return float64(l.lim.Limit())
}

// Burst returns the largest number of events one request may carry and still
// be released at once; 0 when there is no rate limit.
func (l *Limiter) Burst() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim == nil {
		return 0
	}
	return l.lim.Burst()
}

// Pause stops every release until d from now (capped at MaxPause). A pause
// only ever extends: a shorter Retry-After does not cut a longer one short.
func (l *Limiter) Pause(d time.Duration) {
	if d <= 0 {
		return
	}
	if d > MaxPause {
		d = MaxPause
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	until := l.now().Add(d)
	if until.After(l.pauseUntil) {
		l.pauseUntil = until
		l.pauses++
		close(l.pauseCh)
		l.pauseCh = make(chan struct{})
	}
}

// PausedFor returns how much of the current pause remains (0 if none).
func (l *Limiter) PausedFor() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := l.pauseUntil.Sub(l.now()); d > 0 {
		return d
	}
	return 0
}

// Pauses counts the pauses imposed so far.
func (l *Limiter) Pauses() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pauses
}

// WaitPause blocks until no pause is in force (a pause imposed while
// waiting extends the wait) or ctx ends.
func (l *Limiter) WaitPause(ctx context.Context) error {
	for {
		l.mu.Lock()
		d := l.pauseUntil.Sub(l.now())
		ch := l.pauseCh
		l.mu.Unlock()
		if d <= 0 {
			return nil
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-ch:
			t.Stop()
		case <-t.C:
		}
	}
}

// Wait blocks until n events may be released: no pause is in force and the
// token bucket has given n tokens. Tokens taken while a pause began are
// forfeited and taken again after it, since the bucket refills during the
// pause and releasing both would exceed the window bound. n above the burst
// is taken in burst-sized steps (the window bound then does not hold for that
// request: keep requests at most Burst events). It returns how long it waited.
func (l *Limiter) Wait(ctx context.Context, n int) (time.Duration, error) {
	start := time.Now()
	for {
		if err := l.WaitPause(ctx); err != nil {
			return time.Since(start), err
		}
		l.mu.Lock()
		lim := l.lim
		l.mu.Unlock()
		for left := n; lim != nil && left > 0; {
			l.mu.Lock()
			step, rates := min(left, lim.Burst()), l.rates
			l.mu.Unlock()
			if err := lim.WaitN(ctx, step); err != nil {
				// A SetRate that shrank the burst after we read it fails
				// WaitN ("exceeds limiter's burst" or "would exceed context
				// deadline"): read the burst again and retry.
				l.mu.Lock()
				changed := l.rates != rates
				l.mu.Unlock()
				if changed && ctx.Err() == nil {
					continue
				}
				return time.Since(start), err
			}
			left -= step
		}
		if l.PausedFor() == 0 {
			return time.Since(start), nil
		}
	}
}

// Backoff returns the delay before retry number attempt (0-based):
// exponential from base, capped at max, with full jitter in its upper half,
// and never shorter than the pause in force.
func (l *Limiter) Backoff(attempt int, base, max time.Duration) time.Duration {
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	if p := l.PausedFor(); p > d {
		d = p
	}
	return d
}

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
// It caps the result at MaxPause and reports false for an absent or
// unreadable header.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	var d time.Duration
	// Out of range, ParseInt returns the largest value of the right sign:
	// a huge delay-seconds is still a (capped) delay, not garbage.
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(MaxPause/time.Second) {
			return MaxPause, true
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
		if d < 0 {
			d = 0
		}
	} else {
		return 0, false
	}
	if d > MaxPause {
		d = MaxPause
	}
	return d, true
}
