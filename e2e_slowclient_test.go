package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/relay"
)

// TestSlowClients_CannotExhaustServer holds hundreds of connections open
// with half-sent headers, and dozens more that dribble their bodies, while
// normal senders keep posting: the normal posts must still be answered
// promptly, and the half-sent headers must be cut off by ReadHeaderTimeout.
func TestSlowClients_CannotExhaustServer(t *testing.T) {
	const (
		stalled       = 300
		dribblers     = 50
		normalClients = 8
		normalEvery   = 50 * time.Millisecond // each normal client's pace
		promptly      = 2 * time.Second
		closeMargin   = 3 * time.Second
	)
	path := filepath.Join(t.TempDir(), "spool.db")
	testStart := time.Now()
	p := e2eStart(t, path, "--insecure-no-auth")
	var led e2eLedger

	// 300 connections that send part of a request header and stall.
	type stalledConn struct {
		c      net.Conn
		opened time.Time
	}
	conns := make([]stalledConn, 0, stalled)
	for i := 0; i < stalled; i++ {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("stalled connection %d: dial: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		opened := time.Now()
		if _, err := fmt.Fprintf(c, "POST /webhook HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nX-Stalled-%d: ", p.Addr, i); err != nil {
			t.Fatalf("stalled connection %d: write: %v", i, err)
		}
		conns = append(conns, stalledConn{c, opened})
	}

	// 50 connections that send a whole header and then dribble the body,
	// one byte every 100 ms, until told to finish.
	finish := make(chan struct{})
	var dribWG sync.WaitGroup
	for i := 0; i < dribblers; i++ {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dribbler %d: dial: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		user := fmt.Sprintf("slow-dribbler-%02d", i)
		body := e2eEvent(user, 600)
		if _, err := fmt.Fprintf(c, "POST /webhook HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", p.Addr, len(body)); err != nil {
			t.Fatalf("dribbler %d: write header: %v", i, err)
		}
		dribWG.Add(1)
		go func() {
			defer dribWG.Done()
			o := &e2eOutcome{Users: []string{user}, Phase: "dribbler", Start: time.Now()}
			defer func() { o.End = time.Now(); led.add(o) }()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			sentN := 0
		dribble:
			for sentN < len(body)-1 {
				select {
				case <-finish:
					break dribble
				case <-tick.C:
					if _, err := c.Write(body[sentN : sentN+1]); err != nil {
						o.Err = fmt.Errorf("dribbling byte %d: %w", sentN, err)
						return
					}
					sentN++
				}
			}
			finishedAt := time.Now()
			if _, err := c.Write(body[sentN:]); err != nil {
				o.Err = fmt.Errorf("sending the rest of the body after %d dribbled bytes: %w", sentN, err)
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				o.Err = fmt.Errorf("reading the answer after %d dribbled bytes: %w", sentN, err)
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			o.setAnswer(resp.StatusCode, resp.Header.Get("Retry-After"), b, err == nil)
			if took := time.Since(finishedAt); took > promptly {
				t.Errorf("dribbler %s: answer took %v after its body was complete, want under %v", user, took, promptly)
			}
		}()
	}
	t.Logf("holding %d stalled-header and %d dribbling connections (opened in %v)", stalled, dribblers, time.Since(conns[0].opened).Round(time.Millisecond))

	// A canary for the test process itself: if its own timers run late, the
	// machine is stalled, and the latencies below say so rather than
	// anything about the relay.
	canaryStop := make(chan struct{})
	canaryDone := make(chan time.Duration)
	go func() {
		var worst time.Duration
		const every = 10 * time.Millisecond
		tick := time.NewTicker(every)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-canaryStop:
				canaryDone <- worst
				return
			case <-tick.C:
				now := time.Now()
				worst = max(worst, now.Sub(last)-every)
				last = now
			}
		}
	}()

	// Watch the stalled connections: each must be closed by the relay within
	// ReadHeaderTimeout plus a margin, counted from when it was opened.
	type closeResult struct {
		after time.Duration
		read  string
		err   error
	}
	results := make([]closeResult, len(conns))
	var watchWG sync.WaitGroup
	for i, sc := range conns {
		watchWG.Add(1)
		go func() {
			defer watchWG.Done()
			_ = sc.c.SetReadDeadline(sc.opened.Add(relay.ReadHeaderTimeout + closeMargin))
			b, err := io.ReadAll(io.LimitReader(sc.c, 4096))
			results[i] = closeResult{after: time.Since(sc.opened), read: string(b), err: err}
		}()
	}
	stalledDone := make(chan struct{})
	go func() { watchWG.Wait(); close(stalledDone) }()

	// Normal senders post at a steady pace until every stalled connection
	// was dealt with; half of them open a new connection for every request.
	var normalWG sync.WaitGroup
	var slowest time.Duration
	var slowMu sync.Mutex
	var slowLog []string
	for c := 0; c < normalClients; c++ {
		normalWG.Add(1)
		go func() {
			defer normalWG.Done()
			hc := e2eClient()
			if c%2 == 1 {
				hc.Transport.(*http.Transport).DisableKeepAlives = true
			}
			defer hc.CloseIdleConnections()
			tick := time.NewTicker(normalEvery)
			defer tick.Stop()
			for n := 0; n < 1000; n++ {
				select {
				case <-stalledDone:
					return
				case <-tick.C:
				}
				o := e2ePost(hc, p.URL, []string{fmt.Sprintf("slow-normal-c%d-n%04d", c, n)}, 1024, true, "normal")
				led.add(o)
				took := o.End.Sub(o.Start)
				slowMu.Lock()
				slowest = max(slowest, took)
				if took > promptly/4 {
					slowLog = append(slowLog, fmt.Sprintf("%s +%v took %v", o.Users[0], o.Start.Sub(testStart).Round(time.Millisecond), took.Round(time.Millisecond)))
				}
				slowMu.Unlock()
				if o.Status != http.StatusAccepted {
					t.Errorf("normal post while slow clients hang: %d %q %v, want 202", o.Status, strings.TrimSpace(o.Body), o.Err)
				} else if took > promptly {
					t.Errorf("normal post while slow clients hang took %v, want under %v", took, promptly)
				}
			}
		}()
	}
	normalWG.Wait()
	<-stalledDone
	close(canaryStop)
	t.Logf("the test process's own 10 ms ticker ran at most %v late meanwhile", (<-canaryDone).Round(time.Millisecond))

	var minAfter, maxAfter time.Duration
	openCount := 0
	for i, r := range results {
		if errors.Is(r.err, os.ErrDeadlineExceeded) {
			openCount++
			if openCount <= 5 {
				t.Errorf("stalled connection %d still open %v after it was opened (want closed within ReadHeaderTimeout %v + %v)", i, r.after.Round(time.Millisecond), relay.ReadHeaderTimeout, closeMargin)
			}
			continue
		}
		if minAfter == 0 || r.after < minAfter {
			minAfter = r.after
		}
		maxAfter = max(maxAfter, r.after)
	}
	if openCount > 0 {
		t.Errorf("%d of %d stalled-header connections were not closed by the relay in time", openCount, stalled)
	}
	t.Logf("stalled-header connections closed by the relay between %v and %v after opening; first one read %q (err %v)",
		minAfter.Round(time.Millisecond), maxAfter.Round(time.Millisecond), results[0].read, results[0].err)

	// The dribblers have been at it all along; now they finish and must be served.
	close(finish)
	dribWG.Wait()

	// And the relay still takes a normal post after all that.
	o := e2ePost(e2eClient(), p.URL, []string{"slow-after"}, 1024, true, "after")
	led.add(o)
	if o.Status != http.StatusAccepted {
		t.Errorf("post after the slow clients: %d %q %v, want 202", o.Status, o.Body, o.Err)
	}
	p.StopClean(20 * time.Second)

	outs := led.all()
	normal, dribOK := 0, 0
	for _, o := range outs {
		switch o.Phase {
		case "normal":
			normal++
		case "dribbler":
			if o.Status == http.StatusAccepted {
				dribOK++
			} else {
				t.Errorf("dribbler %s: %d %q %v, want 202 (its body completed within ReadTimeout)", o.Users[0], o.Status, strings.TrimSpace(o.Body), o.Err)
			}
		}
	}
	recs := e2eReadSpool(t, path)
	c := e2eVerify(t, outs, recs)
	t.Logf("%d normal posts (slowest %v), %d of %d dribblers answered 202; %v", normal, slowest.Round(time.Millisecond), dribOK, dribblers, c)
	if len(slowLog) > 0 {
		t.Logf("normal posts slower than %v: %s", promptly/4, strings.Join(slowLog, "; "))
	}
	if normal < normalClients*10 {
		t.Errorf("only %d normal posts were made while the slow clients hung", normal)
	}
}
