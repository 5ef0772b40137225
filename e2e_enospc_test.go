package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// mountTmpfs mounts a tmpfs of the given size (e.g. "4m") on dir and
// unmounts it when the test ends (lazily if it is still busy).
func e2eMountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount -t tmpfs -o size=%s tmpfs %s: %v (the test runs as root, so this must work)", size, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Logf("umount %s: %v; unmounting lazily", dir, err)
			if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
				t.Errorf("umount -l %s: %v", dir, err)
			}
		}
	})
}

func e2eRemountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT, "size="+size+",mode=0700"); err != nil {
		t.Fatalf("mount -o remount,size=%s %s: %v", size, dir, err)
	}
}

func e2eFreeBytes(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d of %d bytes free", st.Bavail*uint64(st.Bsize), st.Blocks*uint64(st.Bsize))
}

// TestENOSPC_TmpfsFull fills a real 4 MiB tmpfs under the spool: the relay
// must answer 503 + Retry-After once a commit cannot be written, never
// acknowledge what it did not store, stay up, stop cleanly, and come back
// with every acknowledged event once there is space again.
func TestENOSPC_TmpfsFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs and fill it (CI runs the suite as root)")
	}
	e2eBinary(t)
	dir := t.TempDir()
	e2eMountTmpfs(t, dir, "4m")
	path := filepath.Join(dir, "spool.db")
	var led e2eLedger

	// --- fill the disk --------------------------------------------------
	p := e2eStart(t, path, "--insecure-no-auth")
	const (
		clients       = 4
		afterFullReqs = 400 // requests sent once the first 503 was seen
		maxFillReqs   = 20000
	)
	var (
		full      atomic.Bool
		firstFull *e2eOutcome
		fullMu    sync.Mutex
		afterFull atomic.Int64
		total     atomic.Int64
		wg        sync.WaitGroup
	)
	deadline := time.Now().Add(40 * time.Second)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := e2eClient()
			defer hc.CloseIdleConnections()
			for n := 0; ; n++ {
				if total.Add(1) > maxFillReqs || time.Now().After(deadline) {
					return
				}
				phase := "fill"
				if full.Load() {
					phase = "full"
					if afterFull.Add(1) > afterFullReqs {
						return
					}
				}
				// Mostly 4 × 1 KiB arrays; once full, also single small
				// events that may fit in the space left.
				var users []string
				size, single := 1024, false
				k := 4
				if phase == "full" && n%3 == 0 {
					k, size, single = 1, 150, true
				}
				for i := 0; i < k; i++ {
					users = append(users, fmt.Sprintf("enospc-%s-c%d-n%05d-e%d", phase, c, n, i))
				}
				o := e2ePost(hc, p.URL, users, size, single, phase)
				led.add(o)
				if o.noAnswer() {
					t.Errorf("%s: request got no answer: %v (the relay must stay up on a full disk)", phase, o.Err)
					return
				}
				if o.Status == http.StatusServiceUnavailable && !full.Load() {
					fullMu.Lock()
					if firstFull == nil {
						firstFull = o
					}
					fullMu.Unlock()
					full.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	if firstFull == nil {
		// Before giving up, show whether what was acknowledged is there.
		p.Stop(20 * time.Second)
		c := e2eVerify(t, led.all(), e2eReadSpool(t, path))
		t.Logf("%v", c)
		fi, _ := os.Stat(path)
		t.Fatalf("no 503 after %d requests: the 4 MiB disk never filled (spool file %v, %s)", total.Load(), fi.Size(), e2eFreeBytes(dir))
	}
	t.Logf("first 503 after %v: Retry-After %q, body %s", firstFull.Start.Sub(led.all()[0].Start).Round(time.Millisecond), firstFull.RetryAfter, strings.TrimSpace(firstFull.Body))
	if firstFull.RetryAfter == "" {
		t.Errorf("first 503 on a full disk has no Retry-After")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("spool file %d bytes; tmpfs %s", fi.Size(), e2eFreeBytes(dir))

	// Tally the answers of each phase and the 503 texts.
	summary := func(phase string) (ok, fail int, bodies map[string]int) {
		bodies = map[string]int{}
		for _, o := range led.all() {
			if o.Phase != phase {
				continue
			}
			if o.ok() {
				ok++
			} else if !o.noAnswer() {
				fail++
				if o.Status != http.StatusServiceUnavailable {
					t.Errorf("%s: answered %d %q; a full disk must give 503 + Retry-After", phase, o.Status, strings.TrimSpace(o.Body))
				}
				bodies[fmt.Sprintf("%d Retry-After=%s %s", o.Status, o.RetryAfter, strings.TrimSpace(o.Body))]++
			}
		}
		return
	}
	fillOK, fillFail, _ := summary("fill")
	fullOK, fullFail, fullBodies := summary("full")
	t.Logf("fill phase: %d acknowledged, %d refused; after the disk was full: %d acknowledged (must all be on disk), %d refused", fillOK, fillFail, fullOK, fullFail)
	keys := make([]string, 0, len(fullBodies))
	for k := range fullBodies {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("  %d× %s", fullBodies[k], k)
	}

	// The relay stays up: health and readiness still answer.
	if code, body := e2eGet(t, p.URL+"/healthz", 3*time.Second); code != http.StatusOK {
		t.Errorf("/healthz on a full disk: %d %s, want 200", code, body)
	}
	// Readiness follows the last commit: right after a post refused for a
	// full disk, a load balancer must be told to send traffic elsewhere.
	probe := e2ePost(e2eClient(), p.URL, []string{"enospc-readyz-probe"}, 1024, true, "probe")
	code, body := e2eGet(t, p.URL+"/readyz", 3*time.Second)
	t.Logf("/readyz on a full disk, after a post answered %d: %d %s", probe.Status, code, strings.TrimSpace(body))
	if probe.Status == http.StatusServiceUnavailable && code != http.StatusServiceUnavailable {
		t.Errorf("/readyz answered %d right after a post was refused for a full disk, want 503", code)
	}
	led.add(probe)

	// --- stop on the full disk -----------------------------------------
	st := p.Stop(20 * time.Second)
	if st.ExitCode() != 0 {
		t.Errorf("SIGTERM on a full disk: relay ended with %v, want exit status 0; last output:\n%s", st, p.tail(20))
	} else {
		t.Logf("SIGTERM on a full disk: exit status 0")
	}

	// --- restart on the same, still full, file -----------------------
	p2, err := e2eStartOpts(t, e2eStartOptions{}, path, "--insecure-no-auth")
	if err != nil {
		if p2 == nil || p2.state == nil {
			t.Fatalf("restart on the full disk: %v", err)
		}
		if ws, ok := p2.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Errorf("restart on the full disk crashed (%v):\n%s", p2.state, p2.Output())
		} else {
			t.Logf("restart on the full disk refused cleanly (%v): %s", p2.state, strings.TrimSpace(p2.tail(3)))
		}
	} else {
		t.Logf("restart on the full disk succeeded (%s)", e2eFreeBytes(dir))
		o := e2ePost(e2eClient(), p2.URL, []string{"enospc-restart-full-0"}, 150, true, "restart-full")
		led.add(o)
		t.Logf("post after the restart on the full disk: %d Retry-After=%q %s %v", o.Status, o.RetryAfter, strings.TrimSpace(o.Body), o.Err)
		if o.noAnswer() {
			t.Errorf("post after the restart on the full disk got no answer: %v", o.Err)
		}
		if st := p2.Stop(20 * time.Second); st.ExitCode() != 0 {
			t.Errorf("SIGTERM after the restart on the full disk: %v, want exit status 0; output:\n%s", st, p2.tail(20))
		}
	}

	// A crash on the full disk: kill -9 while senders are being refused.
	if p4, err := e2eStartOpts(t, e2eStartOptions{}, path, "--insecure-no-auth"); err == nil {
		stop := make(chan struct{})
		enough := make(chan struct{}) // closed after 50 answers
		var answers atomic.Int64
		var cwg sync.WaitGroup
		for c := 0; c < clients; c++ {
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				hc := e2eClient()
				defer hc.CloseIdleConnections()
				for n := 0; n < 1000; n++ {
					select {
					case <-stop:
						return
					default:
					}
					users := []string{fmt.Sprintf("enospc-crash-c%d-n%04d", c, n)}
					o := e2ePost(hc, p4.URL, users, 150, true, "crash-full")
					led.add(o)
					if o.noAnswer() {
						return
					}
					if answers.Add(1) == 50 {
						close(enough)
					}
				}
			}()
		}
		select {
		case <-enough:
		case <-time.After(10 * time.Second):
			t.Errorf("restarted relay on the full disk answered only %d requests in 10 s", answers.Load())
		}
		p4.Kill()
		close(stop)
		cwg.Wait()
		ok, fail, _ := summary("crash-full")
		t.Logf("kill -9 on the full disk after %d answers (%d acknowledged, %d refused)", answers.Load(), ok, fail)
	}

	// Everything acknowledged so far is on the (still full) disk.
	{
		recs := e2eReadSpool(t, path)
		c := e2eVerify(t, led.all(), recs)
		t.Logf("on the full disk: %v", c)
	}

	// --- free space, restart, and carry on ------------------------------
	e2eRemountTmpfs(t, dir, "16m")
	t.Logf("remounted with 16 MiB: %s", e2eFreeBytes(dir))
	p3 := e2eStart(t, path, "--insecure-no-auth")
	hc := e2eClient()
	for n := 0; n < 20; n++ {
		o := e2ePost(hc, p3.URL, []string{fmt.Sprintf("enospc-freed-n%02d", n)}, 1024, true, "freed")
		led.add(o)
		if o.Status != http.StatusAccepted {
			t.Errorf("post after space was freed: %d %q %v, want 202", o.Status, strings.TrimSpace(o.Body), o.Err)
		}
	}
	hc.CloseIdleConnections()
	p3.StopClean(20 * time.Second)

	recs := e2eReadSpool(t, path)
	c := e2eVerify(t, led.all(), recs)
	t.Logf("after freeing space: %v", c)
	if c.OKEvents == 0 || c.FailReqs == 0 {
		t.Errorf("want both acknowledged and refused requests, got %v", c)
	}
}
