package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERM_FinishesInFlight stops a loaded relay with SIGTERM: it must
// exit 0 in bounded time, answer the requests it was in the middle of, keep
// every event it acknowledged, and after the stop answer 503 or refuse the
// connection, never acknowledge something it then loses.
func TestSIGTERM_FinishesInFlight(t *testing.T) {
	const (
		clients   = 16
		inFlight  = 4 // requests held half-sent across the signal
		exitBound = 10 * time.Second
	)
	seed := e2eSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	path := filepath.Join(t.TempDir(), "spool.db")
	p := e2eStart(t, path, "--insecure-no-auth")
	var led e2eLedger

	// Requests that are in progress when the signal comes: header and half
	// the body sent; the rest follows once the relay says it is stopping.
	type held struct {
		c    net.Conn
		user string
		body []byte
	}
	var holds []held
	for i := 0; i < inFlight; i++ {
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		h := held{c: c, user: fmt.Sprintf("sigterm-inflight-%d", i)}
		h.body = e2eEvent(h.user, 800)
		if _, err := fmt.Fprintf(c, "POST /webhook HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", p.Addr, len(h.body), h.body[:len(h.body)/2]); err != nil {
			t.Fatalf("write half a request: %v", err)
		}
		holds = append(holds, h)
	}

	// Make sure the relay has read what was sent of each held request (its
	// socket's receive queue is empty), so that its handler is past the
	// stopping check by the time the signal comes.
	for _, h := range holds {
		if err := e2eWaitDrained(h.c, 5*time.Second); err != nil {
			t.Fatalf("held request %s: %v", h.user, err)
		}
	}

	// 16 keep-alive clients post until the relay is gone.
	// Phase of a request by when it started: before the signal, after it,
	// or after the relay logged that it is stopping.
	var signalled, stopping atomic.Bool
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := e2eClient()
			defer hc.CloseIdleConnections()
			for n := 0; n < 5000; n++ {
				k := 1 + n%3
				users := make([]string, k)
				for i := range users {
					users[i] = fmt.Sprintf("sigterm-c%02d-n%04d-e%d", c, n, i)
				}
				phase := "before"
				if stopping.Load() {
					phase = "after-stopping"
				} else if signalled.Load() {
					phase = "after"
				}
				o := e2ePost(hc, p.URL, users, 1024/k, k == 1, phase)
				led.add(o)
				if o.noAnswer() {
					return
				}
			}
			t.Errorf("client %d sent its whole quota without the relay going away", c)
		}()
	}

	delay := 100*time.Millisecond + time.Duration(rng.Int64N(int64(300*time.Millisecond)))
	time.Sleep(delay) // load for a random while before the signal: the point of the test
	signalled.Store(true)
	sigAt := time.Now()
	p.Signal(syscall.SIGTERM)
	p.WaitLog("stopping: finishing requests in progress", exitBound)
	stopping.Store(true)

	// Complete the held requests: the relay is stopping, and must still answer them.
	var heldWG sync.WaitGroup
	for _, h := range holds {
		heldWG.Add(1)
		go func() {
			defer heldWG.Done()
			o := &e2eOutcome{Users: []string{h.user}, Phase: "in-flight", Start: time.Now()}
			defer func() { o.End = time.Now(); led.add(o) }()
			if _, err := h.c.Write(h.body[len(h.body)/2:]); err != nil {
				o.Err = fmt.Errorf("sending the second half: %w", err)
				return
			}
			_ = h.c.SetReadDeadline(time.Now().Add(exitBound))
			resp, err := http.ReadResponse(bufio.NewReader(h.c), nil)
			if err != nil {
				o.Err = fmt.Errorf("reading the answer: %w", err)
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			o.setAnswer(resp.StatusCode, resp.Header.Get("Retry-After"), b, err == nil)
		}()
	}
	heldWG.Wait()

	st := p.Wait(exitBound)
	exitedAt := time.Now()
	if st.ExitCode() != 0 {
		t.Errorf("relay ended with %v after SIGTERM, want exit status 0", st)
	}
	if _, err := p.waitLog("stopped cleanly", time.Second); err != nil {
		t.Errorf("no \"stopped cleanly\" log line: %v", err)
	}
	t.Logf("SIGTERM after %v of load; exited %v after the signal", delay, exitedAt.Sub(sigAt).Round(time.Millisecond))
	if took := exitedAt.Sub(sigAt); took > exitBound {
		t.Errorf("relay took %v to exit after SIGTERM, want under %v", took, exitBound)
	}
	wg.Wait()

	// After the exit, a post is refused at the door.
	after := e2ePost(e2eClient(), p.URL, []string{"sigterm-after-exit"}, 200, true, "after-exit")
	led.add(after)
	if !after.Refused {
		t.Errorf("post after the relay exited: %d %q %v, want connection refused", after.Status, after.Body, after.Err)
	}

	outs := led.all()
	counts := map[string]map[string]int{}
	errSample := map[string]string{}
	for _, o := range outs {
		kind := "no answer"
		switch {
		case o.Refused:
			kind = "refused"
		case !o.noAnswer():
			kind = fmt.Sprint(o.Status)
		}
		if counts[o.Phase] == nil {
			counts[o.Phase] = map[string]int{}
		}
		counts[o.Phase][kind]++
		if kind == "no answer" && errSample[o.Phase] == "" {
			errSample[o.Phase] = o.Err.Error()
		}
		switch o.Phase {
		case "in-flight":
			// The relay was reading its body when the signal came: it must
			// finish it, and its events must be kept.
			if o.Status != http.StatusAccepted {
				t.Errorf("request in progress at SIGTERM (%s): %d %q %v, want 202", o.Users[0], o.Status, strings.TrimSpace(o.Body), o.Err)
			}
		case "after", "after-stopping":
			if !o.ok() && !o.noAnswer() && o.Status != http.StatusServiceUnavailable {
				t.Errorf("request sent after SIGTERM answered %d %q, want 503, a 2xx that is kept, or a closed connection", o.Status, o.Body)
			}
		}
	}
	for _, ph := range []string{"before", "in-flight", "after", "after-stopping", "after-exit"} {
		if e := errSample[ph]; e != "" {
			t.Logf("%-14s %v (a no answer: %s)", ph, counts[ph], e)
		} else {
			t.Logf("%-14s %v", ph, counts[ph])
		}
	}
	recs := e2eReadSpool(t, path)
	c := e2eVerify(t, outs, recs)
	t.Logf("%v", c)
}

// TestServe_RefusesWithoutCredential checks serve's refusals: no credential,
// no --dry-run, a spool locked by another relay, a file that is not a spool.
func TestServe_RefusesWithoutCredential(t *testing.T) {
	e2eBinary(t)

	t.Run("no credential", func(t *testing.T) {
		sp := filepath.Join(t.TempDir(), "spool.db")
		st, out, _ := e2eRun(t, 10*time.Second, "serve", "--dry-run", "--listen", "127.0.0.1:0", "--spool", sp)
		if st.ExitCode() != 2 {
			t.Errorf("exit %v, want exit status 2; output:\n%s", st, out)
		}
		if !strings.Contains(out, "--inbound-token") {
			t.Errorf("message does not name --inbound-token:\n%s", out)
		}
		if _, err := os.Stat(sp); err == nil {
			t.Logf("note: the refused start created the spool file %s", sp)
		}
	})

	t.Run("no dry-run", func(t *testing.T) {
		sp := filepath.Join(t.TempDir(), "spool.db")
		st, out, _ := e2eRun(t, 10*time.Second, "serve", "--insecure-no-auth", "--listen", "127.0.0.1:0", "--spool", sp)
		if st.ExitCode() != 2 {
			t.Errorf("exit %v, want exit status 2; output:\n%s", st, out)
		}
		if !strings.Contains(out, "--dry-run") {
			t.Errorf("message does not say to pass --dry-run:\n%s", out)
		}
	})

	t.Run("locked spool", func(t *testing.T) {
		sp := filepath.Join(t.TempDir(), "spool.db")
		first := e2eStart(t, sp, "--insecure-no-auth")
		st, out, took := e2eRun(t, 10*time.Second, "serve", "--dry-run", "--insecure-no-auth", "--listen", "127.0.0.1:0", "--log-format", "json", "--spool", sp)
		if st.ExitCode() != 1 {
			t.Errorf("second relay on a locked spool: %v, want exit status 1; output:\n%s", st, out)
		}
		if took > 3*time.Second {
			t.Errorf("second relay took %v to give up on the lock, want under 3 s", took)
		}
		if !strings.Contains(strings.ToLower(out), "locked") {
			t.Errorf("message does not say the spool is locked:\n%s", out)
		}
		t.Logf("second relay gave up after %v: %s", took.Round(time.Millisecond), e2eLastLine(out))
		// The first one is unharmed.
		o := e2ePost(e2eClient(), first.URL, []string{"locked-still-works"}, 200, true, "x")
		if o.Status != http.StatusAccepted {
			t.Errorf("first relay after the second one's attempt: %d %q %v, want 202", o.Status, o.Body, o.Err)
		}
		first.StopClean(10 * time.Second)
		e2eVerify(t, []*e2eOutcome{o}, e2eReadSpool(t, sp))
	})

	// Files that are not spools: each must be refused, and left byte for byte as it was.
	garbage := map[string]func(t *testing.T) []byte{
		"text": func(*testing.T) []byte {
			return []byte("this is not a bbolt file\n")
		},
		"random 64 KiB": func(*testing.T) []byte {
			b := make([]byte, 64<<10)
			r := rand.New(rand.NewPCG(7, 7))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		},
		"zeros 32 KiB": func(*testing.T) []byte {
			return make([]byte, 32<<10)
		},
		"truncated spool": func(t *testing.T) []byte {
			// A real spool with some records, cut in half (a copy or
			// restore that stopped short).
			sp := filepath.Join(t.TempDir(), "real.db")
			p := e2eStart(t, sp, "--insecure-no-auth")
			hc := e2eClient()
			for i := 0; i < 100; i++ {
				if o := e2ePost(hc, p.URL, []string{fmt.Sprintf("trunc-%03d", i)}, 1024, true, "x"); o.Status != http.StatusAccepted {
					t.Fatalf("filling a spool to truncate: %d %q %v", o.Status, o.Body, o.Err)
				}
			}
			hc.CloseIdleConnections()
			p.StopClean(10 * time.Second)
			b, err := os.ReadFile(sp)
			if err != nil {
				t.Fatal(err)
			}
			// bbolt grows the file in steps ahead of its data; the cut
			// must fall inside the data, not in the zeroed tail.
			data := bytes.TrimRight(b, "\x00")
			return b[:len(data)/2]
		},
	}
	for name, gen := range garbage {
		t.Run("garbage "+name, func(t *testing.T) {
			sp := filepath.Join(t.TempDir(), "spool.db")
			want := gen(t)
			if err := os.WriteFile(sp, want, 0o600); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Stat(sp)
			st, out, _ := e2eRun(t, 10*time.Second, "serve", "--dry-run", "--insecure-no-auth", "--listen", "127.0.0.1:0", "--spool", sp)
			if st.Success() {
				t.Errorf("serve on a %s file succeeded, want a refusal; output:\n%s", name, out)
			}
			if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				t.Errorf("serve on a %s file crashed (%v) instead of refusing it; output:\n%s", name, st, out)
			} else if st.ExitCode() != 1 && st.ExitCode() != 2 {
				t.Errorf("serve on a %s file: %v, want exit status 1 (or 2); output:\n%s", name, st, out)
			}
			for _, m := range e2eCrashMarkers {
				if strings.Contains(out, m) {
					t.Errorf("output contains %q:\n%s", m, out)
				}
			}
			got, err := os.ReadFile(sp)
			if err != nil {
				t.Fatalf("the %s file is gone after the refusal: %v", name, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("serve changed the %s file: %d bytes sha256 %x, was %d bytes sha256 %x", name, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
			}
			after, _ := os.Stat(sp)
			if before != nil && after != nil && !after.ModTime().Equal(before.ModTime()) {
				t.Errorf("serve touched the %s file (mtime %v, was %v)", name, after.ModTime(), before.ModTime())
			}
			if _, err := os.Stat(sp + ".lock"); !errors.Is(err, os.ErrNotExist) {
				t.Logf("note: %s.lock exists after the refusal (%v)", sp, err)
			}
			t.Logf("%v: %s", st, e2eLastLine(out))
		})
	}
}

// e2eWaitDrained waits until the peer of c (a relay on 127.0.0.1) has read
// everything c sent, as the kernel's receive queue of the peer's socket in
// /proc/net/tcp shows.
func e2eWaitDrained(c net.Conn, timeout time.Duration) error {
	local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	// The relay's side: local address = our remote, remote address = our local.
	want := fmt.Sprintf("%s %s", e2eProcAddr(remote), e2eProcAddr(local))
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile("/proc/net/tcp")
		if err != nil {
			return fmt.Errorf("cannot see the relay's socket queue: %w", err)
		}
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 5 || f[1]+" "+f[2] != want {
				continue
			}
			found = true
			if _, rx, ok := strings.Cut(f[4], ":"); ok && strings.Trim(rx, "0") == "" {
				return nil
			}
		}
		if !found {
			return fmt.Errorf("the relay's end of %v is not in /proc/net/tcp", local)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the relay did not read the request within %v", timeout)
		}
		<-tick.C
	}
}

// e2eProcAddr spells an IPv4 address the way /proc/net/tcp does (little-endian hex on x86).
func e2eProcAddr(a *net.TCPAddr) string {
	ip := a.IP.To4()
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
}

func e2eLastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
