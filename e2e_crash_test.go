package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// e2eSeed returns the seed for a randomised test: GWENRELAY_E2E_SEED when
// set, else the clock. It is logged so a failing run can be repeated.
func e2eSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("GWENRELAY_E2E_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("GWENRELAY_E2E_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (repeat with GWENRELAY_E2E_SEED=%d)", seed, seed)
	return seed
}

// TestCrash_KillDashNine loads the relay with 16 keep-alive clients, kills
// it with SIGKILL at a random moment, restarts it on the same spool, and
// repeats; then checks that nothing acknowledged was lost, nothing refused
// was stored, nothing is stored twice, and the file is consistent.
//
// Its length is bounded without timing assertions: after budget no new kill
// round starts (once minRounds have run), so a slow or loaded machine runs
// fewer rounds instead of failing.
func TestCrash_KillDashNine(t *testing.T) {
	const (
		rounds        = 8 // kill rounds at most
		minRounds     = 2 // kill rounds always run, whatever the clock says
		clients       = 16
		maxPerClient  = 2000             // requests per client per round (a bound; the kill comes first)
		budget        = 40 * time.Second // no kill round starts after this (beyond minRounds)
		minLoad       = 50 * time.Millisecond
		maxExtraLoad  = 350 * time.Millisecond
		approxReqSize = 1024
	)
	seed := e2eSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	path := filepath.Join(t.TempDir(), "spool.db")
	var led e2eLedger
	var acked atomic.Int64 // events answered 2xx so far
	var sent atomic.Int64  // events sent (whatever the answer) so far
	start := time.Now()

	load := func(round int, p *e2eRelay, stop <-chan struct{}, phase string) *sync.WaitGroup {
		var wg sync.WaitGroup
		for c := 0; c < clients; c++ {
			crng := rand.New(rand.NewPCG(seed, uint64(round*1000+c+1)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				hc := e2eClient()
				defer hc.CloseIdleConnections()
				for n := 0; n < maxPerClient; n++ {
					select {
					case <-stop:
						return
					default:
					}
					// Half single objects, half arrays of 2-4 events; about 1 KiB a request.
					k := 1
					if crng.IntN(2) == 1 {
						k = 2 + crng.IntN(3)
					}
					users := make([]string, k)
					for i := range users {
						users[i] = fmt.Sprintf("crash-r%d-c%02d-n%04d-e%d", round, c, n, i)
					}
					o := e2ePost(hc, p.URL, users, approxReqSize/k, k == 1, phase)
					sent.Add(int64(k))
					if o.ok() {
						acked.Add(int64(k))
					}
					led.add(o)
					if o.noAnswer() {
						return // the relay is gone; the round is over
					}
				}
			}()
		}
		return &wg
	}

	killed := 0
	for round := 0; round < rounds; round++ {
		if round >= minRounds && time.Since(start) > budget {
			t.Logf("time budget of %v spent: no further kill rounds", budget)
			break
		}
		ackedBefore, sentBefore := acked.Load(), sent.Load()
		p := e2eStart(t, path, "--insecure-no-auth")
		open := p.WaitLog("spool open", time.Second)
		if pending, ok := open["pending"].(float64); ok {
			// Everything acknowledged before the last kill must be pending
			// now; no more than was ever sent can be.
			if int64(pending) < ackedBefore || int64(pending) > sentBefore {
				t.Errorf("round %d: spool opened with %v pending, want between %d (acknowledged) and %d (sent)", round, pending, ackedBefore, sentBefore)
			}
		} else {
			t.Errorf("round %d: spool open line without pending count: %v", round, open)
		}
		delay := minLoad + time.Duration(rng.Int64N(int64(maxExtraLoad)))
		stop := make(chan struct{})
		wg := load(round, p, stop, fmt.Sprintf("round %d", round))
		time.Sleep(delay) // the random moment of the crash is the point of this test
		p.Kill()
		killed++
		close(stop)
		wg.Wait()
		t.Logf("round %d: kill -9 after %v of load; events acknowledged so far %d, sent %d", round, delay, acked.Load(), sent.Load())
	}

	t.Logf("%d kill rounds of at most %d ran in %v", killed, rounds, time.Since(start).Round(time.Millisecond))
	if killed < minRounds {
		t.Fatalf("only %d kill rounds ran, want at least %d", killed, minRounds)
	}

	// A last life without a crash, ended by SIGTERM.
	p := e2eStart(t, path, "--insecure-no-auth")
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := e2eClient()
			defer hc.CloseIdleConnections()
			for n := 0; n < 10; n++ {
				users := []string{fmt.Sprintf("crash-final-c%02d-n%02d", c, n)}
				o := e2ePost(hc, p.URL, users, approxReqSize, true, "final")
				if !o.ok() {
					t.Errorf("final round: request answered %d %q (%v), want 2xx", o.Status, o.Body, o.Err)
				}
				led.add(o)
			}
		}()
	}
	wg.Wait()
	p.StopClean(20 * time.Second)

	recs := e2eReadSpool(t, path)
	c := e2eVerify(t, led.all(), recs)
	t.Logf("after %d kills: %v", killed, c)
	t.Logf("requests without an answer whose events were nevertheless stored: %d of %d (%d events)", c.NoAnswerStoredReqs, c.NoAnswerReqs, c.NoAnswerStoredEv)
	if c.OKEvents == 0 {
		t.Errorf("no request was ever acknowledged: the test proves nothing")
	}
	t.Logf("test took %v", time.Since(start).Round(time.Millisecond))
}
