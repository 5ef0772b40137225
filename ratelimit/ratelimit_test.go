package ratelimit

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"runtime"
	"sort"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeClock is a clock the tests move by hand, for the state of a pause
// (PausedFor, Backoff). It must not be used with anything that blocks on a
// pause (WaitPause, Wait): their timers run on the real clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newFakeLimiter(eventsPerSec float64, burst int) (*Limiter, *fakeClock) {
	l := New(eventsPerSec, burst)
	c := &fakeClock{t: time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)}
	l.now = c.Now
	return l, c
}

// pauseEnd is the instant the current pause ends (zero if none ever).
func pauseEnd(l *Limiter) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pauseUntil
}

// release is one return of Limiter.Wait: when, and for how many events.
type release struct {
	at time.Time
	n  int
}

// releaseLog collects releases from several goroutines.
type releaseLog struct {
	mu sync.Mutex
	rs []release
}

func (r *releaseLog) add(at time.Time, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rs = append(r.rs, release{at, n})
}

func (r *releaseLog) sorted() []release {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := append([]release(nil), r.rs...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].at.Before(rs[j].at) })
	return rs
}

// maxWindow returns the largest number of events released in a window
// [t, t+w) over all windows that start at a release time, and that start.
func maxWindow(rs []release, w time.Duration) (int, time.Time) {
	best, bestAt := 0, time.Time{}
	sum, j := 0, 0
	for i := range rs {
		for j < len(rs) && rs[j].at.Before(rs[i].at.Add(w)) {
			sum += rs[j].n
			j++
		}
		if sum > best {
			best, bestAt = sum, rs[i].at
		}
		sum -= rs[i].n
	}
	return best, bestAt
}

func totalEvents(rs []release) int {
	n := 0
	for _, r := range rs {
		n += r.n
	}
	return n
}

func TestMaxWindow(t *testing.T) {
	t0 := time.Unix(0, 0)
	rs := []release{
		{t0, 5},
		{t0.Add(500 * time.Millisecond), 3},
		{t0.Add(999 * time.Millisecond), 2},
		{t0.Add(time.Second), 7}, // not in [t0, t0+1s)
		{t0.Add(1400 * time.Millisecond), 1},
	}
	got, at := maxWindow(rs, time.Second)
	if want := 3 + 2 + 7 + 1; got != want || !at.Equal(rs[1].at) {
		t.Fatalf("maxWindow = %d at %v, want %d at %v", got, at.Sub(t0), want, rs[1].at.Sub(t0))
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC) // a Friday
	cases := []struct {
		name, v string
		want    time.Duration
		ok      bool
	}{
		{"zero", "0", 0, true},
		{"seconds", "5", 5 * time.Second, true},
		{"padded", " 7 ", 7 * time.Second, true},
		{"tabs and newline", "\t7\r\n", 7 * time.Second, true},
		{"exactly MaxPause", "300", MaxPause, true},
		{"above MaxPause", "301", MaxPause, true},
		{"a day", "86400", MaxPause, true},
		{"beyond int64", "99999999999999999999", MaxPause, true},
		{"negative", "-1", 0, false},
		{"negative beyond int64", "-99999999999999999999", 0, false},
		{"fraction", "1.5", 0, false},
		{"garbage", "abc", 0, false},
		{"empty", "", 0, false},
		{"blank", "   ", 0, false},
		{"IMF-fixdate 30s ahead", "Fri, 01 Mar 2024 12:00:30 GMT", 30 * time.Second, true},
		{"RFC 850 30s ahead", "Friday, 01-Mar-24 12:00:30 GMT", 30 * time.Second, true},
		{"asctime 30s ahead", "Fri Mar  1 12:00:30 2024", 30 * time.Second, true},
		{"past date", "Fri, 01 Mar 2024 11:59:00 GMT", 0, true},
		{"date a day ahead", "Sat, 02 Mar 2024 12:00:00 GMT", MaxPause, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := ParseRetryAfter(c.v, now)
			if got != c.want || ok != c.ok {
				t.Fatalf("ParseRetryAfter(%q) = %v, %v; want %v, %v", c.v, got, ok, c.want, c.ok)
			}
		})
	}

	t.Run("HTTP date from a real clock is about 30s", func(t *testing.T) {
		// An HTTP date has whole seconds, so a date made from a clock with a
		// fraction reads a little under 30 s.
		now := time.Now()
		got, ok := ParseRetryAfter(now.Add(30*time.Second).UTC().Format(http.TimeFormat), now)
		if !ok || got <= 29*time.Second || got > 30*time.Second {
			t.Fatalf("got %v, %v; want (29s, 30s], true", got, ok)
		}
	})
}

func TestLimiter_Pause(t *testing.T) {
	t.Run("extends only", func(t *testing.T) {
		l, _ := newFakeLimiter(0, 0)
		l.Pause(10 * time.Second)
		l.Pause(5 * time.Second) // shorter: must not cut the pause short
		if got := l.PausedFor(); got != 10*time.Second {
			t.Fatalf("after 10s then 5s: PausedFor = %v, want 10s", got)
		}
		l.Pause(20 * time.Second)
		if got := l.PausedFor(); got != 20*time.Second {
			t.Fatalf("after 20s: PausedFor = %v, want 20s", got)
		}
	})

	t.Run("capped at MaxPause", func(t *testing.T) {
		l, _ := newFakeLimiter(0, 0)
		l.Pause(3 * time.Hour)
		if got := l.PausedFor(); got != MaxPause {
			t.Fatalf("PausedFor = %v, want MaxPause %v", got, MaxPause)
		}
		l.Pause(MaxPause + time.Nanosecond) // still capped, not an extension
		if got, n := l.PausedFor(), l.Pauses(); got != MaxPause || n != 1 {
			t.Fatalf("PausedFor, Pauses = %v, %d; want %v, 1", got, n, MaxPause)
		}
	})

	t.Run("non-positive is a no-op", func(t *testing.T) {
		l, _ := newFakeLimiter(0, 0)
		l.Pause(0)
		l.Pause(-time.Second)
		if got, n := l.PausedFor(), l.Pauses(); got != 0 || n != 0 {
			t.Fatalf("PausedFor, Pauses = %v, %d; want 0, 0", got, n)
		}
	})

	t.Run("PausedFor decreases", func(t *testing.T) {
		l, c := newFakeLimiter(0, 0)
		if got := l.PausedFor(); got != 0 {
			t.Fatalf("no pause: PausedFor = %v, want 0", got)
		}
		l.Pause(10 * time.Second)
		c.Advance(3 * time.Second)
		if got := l.PausedFor(); got != 7*time.Second {
			t.Fatalf("3s in: PausedFor = %v, want 7s", got)
		}
		c.Advance(7 * time.Second)
		if got := l.PausedFor(); got != 0 {
			t.Fatalf("at the end: PausedFor = %v, want 0", got)
		}
		c.Advance(time.Hour)
		if got := l.PausedFor(); got != 0 {
			t.Fatalf("long after: PausedFor = %v, want 0 (never negative)", got)
		}
	})

	t.Run("Pauses counts extensions", func(t *testing.T) {
		l, c := newFakeLimiter(0, 0)
		steps := []struct {
			d    time.Duration
			want int64
		}{
			{time.Second, 1},            // new pause
			{time.Second, 1},            // same end: not an extension
			{500 * time.Millisecond, 1}, // shorter
			{2 * time.Second, 2},        // extends
		}
		for i, s := range steps {
			l.Pause(s.d)
			if got := l.Pauses(); got != s.want {
				t.Fatalf("step %d Pause(%v): Pauses = %d, want %d", i, s.d, got, s.want)
			}
		}
		c.Advance(time.Minute) // the pause is over; a new one counts
		l.Pause(time.Millisecond)
		if got := l.Pauses(); got != 3 {
			t.Fatalf("after a new pause: Pauses = %d, want 3", got)
		}
	})
}

func TestLimiter_WaitPause(t *testing.T) {
	t.Run("no pause returns at once", func(t *testing.T) {
		l := New(0, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := l.WaitPause(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("returns when the pause ends", func(t *testing.T) {
		l := New(0, 0)
		start := time.Now()
		l.Pause(200 * time.Millisecond)
		end := pauseEnd(l)
		if err := l.WaitPause(context.Background()); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		if now.Before(end) {
			t.Fatalf("returned %v before the pause ended", end.Sub(now))
		}
		if el := now.Sub(start); el < 200*time.Millisecond || el > 2*time.Second {
			t.Fatalf("waited %v; want at least 200ms and well under 2s", el)
		}
		if got := l.PausedFor(); got != 0 {
			t.Fatalf("PausedFor after the wait = %v", got)
		}
	})

	t.Run("honours ctx cancellation", func(t *testing.T) {
		l := New(0, 0)
		l.Pause(MaxPause)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		if err := l.WaitPause(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("took %v to notice the deadline", el)
		}
		done, cancel2 := context.WithCancel(context.Background())
		cancel2()
		if err := l.WaitPause(done); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled ctx: err = %v, want Canceled", err)
		}
	})

	t.Run("a pause imposed while waiting extends the wait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := New(0, 0)
			t0 := time.Now()
			l.Pause(time.Second)
			done := make(chan time.Time, 1)
			go func() {
				if err := l.WaitPause(context.Background()); err != nil {
					t.Error(err)
				}
				done <- time.Now()
			}()
			synctest.Wait()                    // the waiter is blocked on the 1s pause
			time.Sleep(500 * time.Millisecond) // advance the bubble's clock
			l.Pause(2 * time.Second)           // now ends at t0+2.5s
			synctest.Wait()
			select {
			case at := <-done:
				t.Fatalf("returned at t0+%v, before the extended pause", at.Sub(t0))
			default:
			}
			if at := <-done; at.Sub(t0) != 2500*time.Millisecond {
				t.Fatalf("returned at t0+%v, want t0+2.5s", at.Sub(t0))
			}
		})
	})

	t.Run("a shorter pause while waiting does not cut it short", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := New(0, 0)
			t0 := time.Now()
			l.Pause(2 * time.Second)
			done := make(chan time.Time, 1)
			go func() {
				_ = l.WaitPause(context.Background())
				done <- time.Now()
			}()
			synctest.Wait()
			l.Pause(100 * time.Millisecond)
			if at := <-done; at.Sub(t0) != 2*time.Second {
				t.Fatalf("returned at t0+%v, want t0+2s", at.Sub(t0))
			}
		})
	})
}

func TestLimiter_Wait(t *testing.T) {
	t.Run("no rate returns at once", func(t *testing.T) {
		l := New(0, 10)
		if b := l.Burst(); b != 0 {
			t.Fatalf("Burst = %d, want 0 with no rate", b)
		}
		start := time.Now()
		for range 100 {
			if _, err := l.Wait(context.Background(), 1_000_000); err != nil {
				t.Fatal(err)
			}
		}
		if el := time.Since(start); el > time.Second {
			t.Fatalf("100 unlimited waits took %v", el)
		}
	})

	t.Run("n above burst is taken in burst-sized steps", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := New(10, 5)
			t0 := time.Now()
			waited, err := l.Wait(context.Background(), 15)
			if err != nil {
				t.Fatal(err)
			}
			// 5 at once, 5 more after 0.5s, the last 5 after 1s.
			if waited != time.Second || time.Since(t0) != time.Second {
				t.Fatalf("waited %v (clock %v), want exactly 1s", waited, time.Since(t0))
			}
		})
	})

	t.Run("ctx cancellation", func(t *testing.T) {
		l := New(1, 1)
		if _, err := l.Wait(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		// The next token is 1s away: a 50ms deadline cannot be met.
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if _, err := l.Wait(ctx, 1); err == nil {
			t.Fatal("Wait met a deadline it cannot meet")
		}
		// Cancelled while a pause is in force.
		l.Pause(MaxPause)
		ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel2()
		start := time.Now()
		if _, err := l.Wait(ctx2, 1); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("during a pause: err = %v, want DeadlineExceeded", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("took %v to notice the deadline", el)
		}
	})

	// The same contract on the bubble's clock, where a release is recorded at
	// the very instant Wait decides it, with pauses imposed in the middle: the
	// window bound is exact, and no release falls inside a pause.
	t.Run("token bucket bound and pauses on a fake clock", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			const (
				R       = 200.0
				B       = 20
				workers = 5
			)
			l := New(R, B)
			t0 := time.Now()
			var log releaseLog
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					for {
						n := 1 + rng.IntN(B)
						if _, err := l.Wait(ctx, n); err != nil {
							if ctx.Err() == nil {
								t.Errorf("Wait(%d): %v", n, err)
							}
							return
						}
						log.add(time.Now(), n)
					}
				})
			}
			type window struct{ from, to time.Time }
			var pauses []window
			for _, p := range []struct{ after, d time.Duration }{
				{730 * time.Millisecond, 300 * time.Millisecond},  // [730ms, 1030ms)
				{1100 * time.Millisecond, 300 * time.Millisecond}, // [1830ms, 2130ms)
				{100 * time.Millisecond, 50 * time.Millisecond},   // inside the last: no-op
				{20 * time.Millisecond, 500 * time.Millisecond},   // extends it to 2450ms
			} {
				time.Sleep(p.after) // advance the bubble's clock
				from := time.Now()
				l.Pause(p.d)
				pauses = append(pauses, window{from, from.Add(p.d)})
			}
			time.Sleep(4 * time.Second)
			end := time.Now()
			cancel()
			wg.Wait()

			rs := log.sorted()
			if maxN, at := maxWindow(rs, time.Second); maxN > R+B {
				t.Errorf("%d events released in [t0+%v, +1s); the bound is R+B = %v", maxN, at.Sub(t0), R+B)
			} else if maxN < R {
				t.Errorf("busiest second released only %d events: not saturated", maxN)
			}
			for _, r := range rs {
				for _, p := range pauses {
					// A release at the very instant of the Pause call may
					// have been decided before it: only (from, to) is off limits.
					if r.at.After(p.from) && r.at.Before(p.to) {
						t.Errorf("release of %d at t0+%v inside the pause [t0+%v, t0+%v)",
							r.n, r.at.Sub(t0), p.from.Sub(t0), p.to.Sub(t0))
					}
				}
			}
			// Token math: at most B + R*elapsed, and the workers are greedy,
			// so the last stretch (no pause) runs at exactly R.
			last := pauses[len(pauses)-1].to
			var tail int
			for _, r := range rs {
				if r.at.After(last.Add(time.Second)) {
					tail += r.n
				}
			}
			if got, want := float64(tail)/end.Sub(last.Add(time.Second)).Seconds(), R; got < want*0.95 || got > want*1.05 {
				t.Errorf("rate after the pauses %.1f/s, want %v", got, want)
			}
			if total, most := totalEvents(rs), B+R*end.Sub(t0).Seconds(); float64(total) > most {
				t.Errorf("%d events released in %v; at most %v", total, end.Sub(t0), most)
			}
		})
	})

	t.Run("a pause in force blocks Wait", func(t *testing.T) {
		l := New(1000, 10)
		l.Pause(300 * time.Millisecond)
		end := pauseEnd(l)
		if _, err := l.Wait(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		if now := time.Now(); now.Before(end) {
			t.Fatalf("released %v before the pause ended", end.Sub(now))
		}
		if el := time.Until(end) + 300*time.Millisecond; el > 2*time.Second {
			t.Fatalf("released %v after the pause began", el)
		}
	})

	t.Run("tokens taken when a pause began are released after it", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := New(10, 1)
			t0 := time.Now()
			if _, err := l.Wait(context.Background(), 1); err != nil { // the burst
				t.Fatal(err)
			}
			done := make(chan time.Time, 1)
			go func() {
				// The next token acts at t0+100ms, inside the pause below.
				if _, err := l.Wait(context.Background(), 1); err != nil {
					t.Error(err)
				}
				done <- time.Now()
			}()
			synctest.Wait()                   // the waiter holds its reservation
			time.Sleep(50 * time.Millisecond) // advance the bubble's clock
			l.Pause(300 * time.Millisecond)   // [t0+50ms, t0+350ms)
			at := <-done
			if got := at.Sub(t0); got < 350*time.Millisecond {
				t.Fatalf("released at t0+%v, inside the pause [50ms, 350ms)", got)
			}
			// The forfeited token is taken again: the bucket refilled during
			// the pause, so that is at once.
			if got := at.Sub(t0); got != 350*time.Millisecond {
				t.Fatalf("released at t0+%v, want t0+350ms", got)
			}
		})
	})

	t.Run("tokens taken when a pause began are released after it, on a real clock", func(t *testing.T) {
		l := New(4, 1)
		if _, err := l.Wait(context.Background(), 1); err != nil { // the burst
			t.Fatal(err)
		}
		start := time.Now()
		done := make(chan time.Time, 1)
		go func() {
			// The next token acts about 250ms from now, inside the pause.
			if _, err := l.Wait(context.Background(), 1); err != nil {
				t.Error(err)
			}
			done <- time.Now()
		}()
		for l.lim.Tokens() >= 0 { // until the waiter holds its reservation
			select {
			case at := <-done:
				t.Fatalf("released after %v, before the test could pause", at.Sub(start))
			default:
			}
			if time.Since(start) > 5*time.Second {
				t.Fatal("the waiter never reserved its token")
			}
			runtime.Gosched()
		}
		l.Pause(400 * time.Millisecond)
		end := pauseEnd(l)
		at := <-done
		if at.Before(end) {
			t.Fatalf("released %v before the pause ended", end.Sub(at))
		}
		if at.Sub(end) > 2*time.Second {
			t.Fatalf("released %v after the pause ended", at.Sub(end))
		}
	})

	t.Run("a pause while waiting for a later token", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// The reservation acts after the pause ends: it is kept, not
			// taken twice.
			l := New(2, 1)
			t0 := time.Now()
			if _, err := l.Wait(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
			done := make(chan time.Time, 1)
			go func() {
				_, _ = l.Wait(context.Background(), 1) // acts at t0+500ms
				done <- time.Now()
			}()
			synctest.Wait()
			l.Pause(100 * time.Millisecond)
			if got := (<-done).Sub(t0); got != 500*time.Millisecond {
				t.Fatalf("released at t0+%v, want t0+500ms", got)
			}
		})
	})
}

func TestLimiter_WaitRate(t *testing.T) {
	// The contract on a real clock: over every 1-second window starting at a
	// release, at most R+B events; the long-run rate is R.
	//
	// A release is recorded when the worker runs again after its token came
	// due; on a loaded machine that is late, and late releases bunch into a
	// window the bucket never put them in. So the bound is R+B plus R times
	// the scheduling lateness, which a probe measures: on a quiet machine
	// (lateness under 1/R = 5ms) that is exactly R+B. The fake-clock test
	// below has no lateness and checks R+B exactly, always.
	t.Run("token bucket bound on a real clock", func(t *testing.T) {
		const (
			R       = 200.0
			B       = 20
			workers = 4
			run     = 2 * time.Second
		)
		l := New(R, B)
		if got := l.Burst(); got != B {
			t.Fatalf("Burst = %d, want %d", got, B)
		}
		var log releaseLog
		stop := time.Now().Add(run)
		ctx, cancel := context.WithDeadline(context.Background(), stop)
		defer cancel()
		var wg sync.WaitGroup
		var late time.Duration // the probe's worst wake-up lateness
		wg.Go(func() {
			tk := time.NewTicker(2 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case due := <-tk.C: // the time the tick was due
					late = max(late, time.Since(due))
				}
			}
		})
		for w := range workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), 42))
				for {
					n := 1 + rng.IntN(B) // requests of at most B events
					if _, err := l.Wait(ctx, n); err != nil {
						// Only the run's deadline may stop a worker: the
						// limiter refuses a wait it cannot finish in time.
						if left := time.Until(stop); left > time.Duration(workers*B)*time.Second/R+100*time.Millisecond {
							t.Errorf("Wait(%d) with %v left: %v", n, left, err)
						}
						return
					}
					log.add(time.Now(), n)
				}
			})
		}
		wg.Wait()
		rs := log.sorted()
		if len(rs) < 2 {
			t.Fatalf("only %d releases", len(rs))
		}
		maxN, at := maxWindow(rs, time.Second)
		slack := int(R * (2*late + time.Millisecond).Seconds()) // generous: twice the probe's lateness
		if maxN > R+B+slack {
			t.Errorf("%d events released in [%v, +1s) (from the first release); the bound is R+B = %v (+%d for %v of scheduling lateness)",
				maxN, at.Sub(rs[0].at), R+B, slack, late)
		}
		if maxN < R*0.8 {
			t.Errorf("busiest second released only %d events: the limiter was not saturated", maxN)
		}
		// The initial burst is free; after it the bucket refills at R.
		span := rs[len(rs)-1].at.Sub(rs[0].at)
		got := float64(totalEvents(rs)-B) / span.Seconds()
		if got < R*0.9 || got > R*1.1 {
			t.Errorf("long-run rate %.1f events/s over %v (%d events in %d releases); want within 10%% of %v",
				got, span, totalEvents(rs), len(rs), R)
		}
		t.Logf("%d events in %d releases over %v: %.1f/s after the burst; busiest second %d (bound %v+%d, lateness %v)",
			totalEvents(rs), len(rs), span, got, maxN, R+B, slack, late)
	})
}

func TestLimiter_SetRate(t *testing.T) {
	t.Run("Burst reports it", func(t *testing.T) {
		l := New(100, 7)
		if got := l.Burst(); got != 7 {
			t.Fatalf("Burst = %d, want 7", got)
		}
		l.SetRate(100, 0) // at least 1
		if got := l.Burst(); got != 1 {
			t.Fatalf("burst 0: Burst = %d, want 1", got)
		}
		l.SetRate(0, 50) // no rate limit
		if got := l.Burst(); got != 0 {
			t.Fatalf("no rate: Burst = %d, want 0", got)
		}
		l.SetRate(5, 3)
		if got := l.Burst(); got != 3 {
			t.Fatalf("back on: Burst = %d, want 3", got)
		}
	})

	t.Run("changes the rate live", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			l := New(1, 1)
			t0 := time.Now()
			if _, err := l.Wait(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
			l.SetRate(100, 10)
			// At 1/s with burst 1 ten events would take 10s; at 100/s from an
			// empty bucket they take 100ms.
			if _, err := l.Wait(context.Background(), 10); err != nil {
				t.Fatal(err)
			}
			if got := time.Since(t0); got != 100*time.Millisecond {
				t.Fatalf("10 events at the new rate released at t0+%v, want t0+100ms", got)
			}
			l.SetRate(0, 0)
			if _, err := l.Wait(context.Background(), 1000); err != nil {
				t.Fatal(err)
			}
			if got := time.Since(t0); got != 100*time.Millisecond {
				t.Fatalf("no rate: released at t0+%v, want at once (t0+100ms)", got)
			}
			l.SetRate(4, 2) // a fresh bucket: full
			if _, err := l.Wait(context.Background(), 4); err != nil {
				t.Fatal(err)
			}
			if got := time.Since(t0); got != 600*time.Millisecond {
				t.Fatalf("4 events at 4/s burst 2 released at t0+%v, want t0+600ms", got)
			}
		})
	})

	t.Run("a waiter survives the burst shrinking under it", func(t *testing.T) {
		// Wait reads the burst, then takes a step of that size: a SetRate
		// in between must not fail the wait with "exceeds limiter's burst".
		l := New(1e9, 10)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				l.SetRate(1e9, 10)
				l.SetRate(1e9, 1)
			}
		})
		deadline := time.Now().Add(500 * time.Millisecond)
		var errs int
		var first error
		for i := 0; i < 200_000 && time.Now().Before(deadline); i++ {
			if _, err := l.Wait(context.Background(), 5); err != nil {
				if errs++; first == nil {
					first = err
				}
			}
		}
		close(stop)
		wg.Wait()
		if errs > 0 {
			t.Fatalf("%d waits failed while the burst changed; first: %v", errs, first)
		}
	})

	t.Run("changes the rate live on a real clock", func(t *testing.T) {
		l := New(2, 1)
		if _, err := l.Wait(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		l.SetRate(1000, 1)
		start := time.Now()
		if _, err := l.Wait(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		// At 2/s the next token was up to 500ms away.
		if el := time.Since(start); el > 400*time.Millisecond {
			t.Fatalf("next event after SetRate(1000) waited %v", el)
		}
	})
}

func TestLimiter_Backoff(t *testing.T) {
	const base, ceil = 100 * time.Millisecond, 5 * time.Second
	nominal := func(attempt int) time.Duration {
		d := base
		for range attempt {
			d *= 2
			if d >= ceil {
				return ceil
			}
		}
		return d
	}

	t.Run("grows with attempt within the jitter range, capped at max", func(t *testing.T) {
		l := New(0, 0)
		prevMax := time.Duration(0)
		for attempt := range 12 {
			d := nominal(attempt)
			lo, hi := time.Duration(1<<62), time.Duration(0)
			for range 300 {
				got := l.Backoff(attempt, base, ceil)
				if got < d/2 || got > d {
					t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", attempt, got, d/2, d)
				}
				lo, hi = min(lo, got), max(hi, got)
			}
			if lo < prevMax && d < ceil {
				t.Errorf("Backoff(%d) as low as %v, below Backoff(%d)'s %v: does not grow", attempt, lo, attempt-1, prevMax)
			}
			if lo == hi {
				t.Errorf("Backoff(%d) always %v: no jitter", attempt, lo)
			}
			prevMax = hi
		}
	})

	t.Run("huge attempts do not overflow", func(t *testing.T) {
		l := New(0, 0)
		for _, attempt := range []int{62, 63, 64, 1000, 1 << 30} {
			if got := l.Backoff(attempt, base, ceil); got < ceil/2 || got > ceil {
				t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", attempt, got, ceil/2, ceil)
			}
		}
	})

	t.Run("base above max is capped", func(t *testing.T) {
		l := New(0, 0)
		if got := l.Backoff(0, time.Minute, time.Second); got < 500*time.Millisecond || got > time.Second {
			t.Fatalf("Backoff = %v, want within [500ms, 1s]", got)
		}
	})

	t.Run("never below PausedFor", func(t *testing.T) {
		l, c := newFakeLimiter(0, 0)
		l.Pause(30 * time.Second)
		for attempt := range 5 {
			if got := l.Backoff(attempt, base, ceil); got != 30*time.Second {
				t.Fatalf("Backoff(%d) during a 30s pause = %v, want 30s", attempt, got)
			}
		}
		c.Advance(29900 * time.Millisecond) // 100ms of pause left
		for range 100 {
			if got := l.Backoff(3, base, ceil); got < 400*time.Millisecond || got > 800*time.Millisecond {
				t.Fatalf("Backoff(3) with 100ms of pause left = %v, want within [400ms, 800ms]", got)
			}
		}
		if got := l.Backoff(0, 0, 0); got != 100*time.Millisecond {
			t.Fatalf("zero backoff with 100ms of pause left = %v, want 100ms", got)
		}
	})

	t.Run("RetryAfter is Backoff", func(t *testing.T) {
		l, _ := newFakeLimiter(0, 0)
		f := l.RetryAfter(base, ceil)
		for attempt := range 8 {
			if d, got := nominal(attempt), f(attempt); got < d/2 || got > d {
				t.Fatalf("RetryAfter(%d) = %v, want within [%v, %v]", attempt, got, d/2, d)
			}
		}
		l.Pause(time.Minute)
		if got := f(0); got != time.Minute {
			t.Fatalf("RetryAfter during a 1m pause = %v, want 1m", got)
		}
	})
}
