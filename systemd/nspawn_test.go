//go:build linux

package systemd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
)

// TestService_UnderSystemd installs the .deb that scripts/package.sh builds
// into a Debian bookworm booted with systemd-nspawn, and drives the real
// gwenrelay.service there: the package does not start it before a write key
// exists; `systemctl start` returns once the relay is READY; a webhook posted
// from the host gets 202 and reaches a fake Segment on the host; a reload
// rotates the inbound tokens in the same process; a SIGSTOPped process is
// killed by the watchdog and restarted with its spool intact; stop is clean;
// purge removes it.
//
// It skips, loudly, only where systemd-nspawn cannot run (not root, a
// read-only /proc/sys, nspawn failing to boot). The bootstrapped tree is
// cached in /var/cache/gwenrelay-nspawn ($GWENRELAY_NSPAWN_CACHE). Set
// GWENRELAY_NSPAWN_DEB to a .deb to test that one instead of building one.
func TestService_UnderSystemd(t *testing.T) {
	testStart := time.Now()
	// Every wait has its own bound; this one is for the whole, within go
	// test's -timeout.
	deadline := time.Now().Add(12 * time.Minute)
	if d, ok := t.Deadline(); ok && d.Add(-30*time.Second).Before(deadline) {
		deadline = d.Add(-30 * time.Second)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	preflight(t, ctx)
	phase := func(name string, since time.Time) {
		t.Logf("== %s: %v", name, time.Since(since).Round(time.Millisecond))
	}

	// The package, built as a release would be.
	start := time.Now()
	deb := buildDeb(t, ctx)
	phase("package", start)

	// The tree and the container.
	start = time.Now()
	work := t.TempDir()
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	prepareTree(t, ctx, root)
	phase("tree", start)
	start = time.Now()
	c := boot(t, ctx, root, filepath.Join(work, "console.log"))
	phase("boot", start)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// Runs before the container is shut down.
		st, _ := c.run(context.Background(), 15*time.Second, "systemctl", "status", "--no-pager", "--lines=0", "gwenrelay")
		j, _ := c.run(context.Background(), 15*time.Second, "journalctl", "--no-pager", "-u", "gwenrelay", "-o", "short-monotonic")
		t.Logf("the container's systemctl status gwenrelay:\n%s\njournalctl -u gwenrelay:\n%s", st, tail(compactJournal(j), 150))
	})

	// Fake Segment on the host, behind a gate the test can close to make
	// Segment unreachable (503) without restarting anything.
	const writeKey = "wk-nspawn-test-5b1f"
	fake := segmenttest.New(writeKey)
	defer fake.Close()
	var gateClosed atomic.Bool
	var gateRefused atomic.Int64
	target, _ := url.Parse(fake.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	gate := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gateClosed.Load() {
			gateRefused.Add(1)
			io.Copy(io.Discard, r.Body)
			http.Error(w, "Segment is down (the test closed the gate)", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer gate.Close()
	port := freePort(t)
	adminPort := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	// Install.
	start = time.Now()
	if err := copyFile(deb, filepath.Join(root, "root", filepath.Base(deb))); err != nil {
		t.Fatal(err)
	}
	out := c.must(ctx, "dpkg", "-i", "/root/"+filepath.Base(deb))
	t.Logf("dpkg -i:\n%s", tail(out, 15))
	phase("dpkg -i", start)
	// Without a write key the package must not even try to start it.
	st := c.show(ctx, "gwenrelay.service", "LoadState", "ActiveState", "InactiveExitTimestampMonotonic", "UnitFileState")
	if st["LoadState"] != "loaded" || st["ActiveState"] != "inactive" || st["InactiveExitTimestampMonotonic"] != "0" {
		t.Fatalf("after dpkg -i without a write key: %v; want loaded, inactive and never started (InactiveExitTimestampMonotonic=0)", st)
	}
	t.Logf("after dpkg -i: %v (never started)", st)
	// A start before the key exists (at boot, say) fails at once with
	// 243/CREDENTIALS, and Restart= does not repeat it.
	if out, err := c.run(ctx, time.Minute, "systemctl", "start", "gwenrelay"); err == nil {
		t.Fatalf("systemctl start without a write key succeeded: %s", out)
	}
	st = c.show(ctx, "gwenrelay.service", "ActiveState", "ExecMainStatus", "NRestarts", "Result")
	if st["ActiveState"] != "failed" || st["ExecMainStatus"] != "243" || st["NRestarts"] != "0" {
		t.Fatalf("systemctl start without a write key: %v; want failed with 243 (CREDENTIALS) and no restart", st)
	}
	c.must(ctx, "systemctl", "reset-failed", "gwenrelay")

	// Configure: the write key (systemd reads it as root: LoadCredential), the
	// senders' token, and where to listen and deliver (/etc/default wins over
	// the packaged YAML).
	tokenA, tokenB := "tok-A-2f9c61", "tok-B-77d0e3"
	c.writeFile(ctx, "/etc/gwenrelay/write-key", []byte(writeKey+"\n"), 0o600, "root:root")
	c.writeFile(ctx, "/etc/gwenrelay/inbound-tokens", []byte("# senders\n"+tokenA+"\n"), 0o640, "root:gwenrelay")
	defaults, err := os.ReadFile(filepath.Join(root, "etc/default/gwenrelay"))
	if err != nil {
		t.Fatalf("the package did not install /etc/default/gwenrelay: %v", err)
	}
	defaults = append(defaults, fmt.Sprintf("\n# nspawn test\nGWENRELAY_LISTEN=127.0.0.1:%d\nGWENRELAY_SEGMENT_ENDPOINT=%s\nGWENRELAY_ADMIN_LISTEN=127.0.0.1:%d\n", port, gate.URL, adminPort)...)
	c.writeFile(ctx, "/etc/default/gwenrelay", defaults, 0o644, "root:root")

	// start returns only once the relay said READY=1: it is running and
	// answering at once, without a retry.
	start = time.Now()
	c.must(ctx, "systemctl", "start", "gwenrelay")
	took := time.Since(start)
	st = c.show(ctx, "gwenrelay.service", "ActiveState", "SubState", "MainPID", "Result")
	if st["ActiveState"] != "active" || st["SubState"] != "running" || st["MainPID"] == "0" {
		t.Fatalf("right after systemctl start returned: %v; want active/running with a MainPID", st)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := get(t, base+path); code != http.StatusOK {
			t.Fatalf("GET %s right after systemctl start: %d %s; want 200", path, code, body)
		}
	}
	pid := st["MainPID"]
	t.Logf("systemctl start returned after %v: %v; /healthz and /readyz 200 at once", took.Round(time.Millisecond), st)
	checkSandbox(t, ctx, c, pid)

	// A webhook from the host: 202, and it reaches Segment.
	start = time.Now()
	if code, body := post(t, base+"/webhook", tokenA, event("user-first")); code != http.StatusAccepted {
		t.Fatalf("POST /webhook: %d %s; want 202", code, body)
	}
	waitDelivered(t, fake, 20*time.Second, "user-first")
	phase("webhook → 202 → fake Segment", start)
	// The admin listener works inside the sandbox too.
	if code, body := get(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", adminPort)); code != http.StatusOK || !strings.Contains(body, "gwenrelay_delivered_total") {
		t.Errorf("GET /metrics on --admin-listen: %d, %d bytes; want 200 with gwenrelay_delivered_total", code, len(body))
	}

	// Reload: the token file rotated; same process, old token refused, new one accepted.
	start = time.Now()
	c.writeFile(ctx, "/etc/gwenrelay/inbound-tokens", []byte(tokenB+"\n"), 0o640, "root:gwenrelay")
	c.must(ctx, "systemctl", "reload", "gwenrelay")
	// ExecReload (kill -HUP) returns before the relay has re-read the file
	// (systemd 252 does not wait for READY=1 after RELOADING=1): wait for the
	// old token to be refused. An empty array is authenticated first, then
	// refused with 400, so probing spools nothing.
	waitFor(t, 10*time.Second, "the old token to be refused after reload", func() (bool, string) {
		code, body := post(t, base+"/webhook", tokenA, []byte(`[]`))
		return code == http.StatusUnauthorized, fmt.Sprintf("%d %s", code, body)
	})
	if code, body := post(t, base+"/webhook", tokenB, event("user-after-reload")); code != http.StatusAccepted {
		t.Fatalf("POST with the new token after reload: %d %s; want 202", code, body)
	}
	st = c.show(ctx, "gwenrelay.service", "ActiveState", "SubState", "MainPID", "NRestarts")
	if st["ActiveState"] != "active" || st["MainPID"] != pid {
		t.Fatalf("after reload: %v; want active with the same MainPID %s", st, pid)
	}
	waitDelivered(t, fake, 20*time.Second, "user-after-reload")
	phase("reload", start)

	// Watchdog: a short WatchdogSec in a drop-in; a SIGSTOPped relay holding
	// undelivered events is killed and restarted with its spool intact.
	start = time.Now()
	c.writeFile(ctx, "/etc/systemd/system/gwenrelay.service.d/nspawn-test.conf",
		[]byte("[Service]\nWatchdogSec=8s\nRestartSec=1s\n"), 0o644, "root:root")
	c.must(ctx, "systemctl", "daemon-reload")
	c.must(ctx, "systemctl", "restart", "gwenrelay")
	restarted := time.Now()
	st = c.show(ctx, "gwenrelay.service", "ActiveState", "SubState", "MainPID", "NRestarts", "WatchdogUSec")
	if st["ActiveState"] != "active" || st["SubState"] != "running" || st["MainPID"] == pid || st["WatchdogUSec"] != "8s" {
		t.Fatalf("after the drop-in and a restart: %v; want active/running, a new MainPID, WatchdogUSec=8s", st)
	}
	pid, restarts := st["MainPID"], st["NRestarts"]
	gateClosed.Store(true)
	var stuck []string
	var batch []json.RawMessage
	for i := range 20 {
		u := fmt.Sprintf("user-wd-%02d", i)
		stuck = append(stuck, u)
		batch = append(batch, event(u))
	}
	body, _ := json.Marshal(batch)
	if code, b := post(t, base+"/webhook", tokenB, body); code != http.StatusAccepted {
		t.Fatalf("POST 20 events while Segment is down: %d %s; want 202", code, b)
	}
	waitFor(t, 15*time.Second, "the relay to try Segment and fail", func() (bool, string) {
		return gateRefused.Load() > 0, ""
	})
	if n := pendingLive(t, ctx, c); n != len(stuck) {
		t.Fatalf("spool stats before the watchdog: %d pending; want %d", n, len(stuck))
	}
	// A relay that only fails to deliver is making progress: it keeps
	// pinging, and is not killed, over more than one WatchdogSec.
	time.Sleep(time.Until(restarted.Add(10 * time.Second)))
	st = c.show(ctx, "gwenrelay.service", "ActiveState", "MainPID", "NRestarts", "StatusText")
	if st["ActiveState"] != "active" || st["MainPID"] != pid || st["NRestarts"] != restarts {
		t.Fatalf("10 s after the restart, with Segment down: %v; want the same process (MainPID %s) still active", st, pid)
	}
	t.Logf("with Segment down for %v, the relay is alive and pinging: %q", time.Since(restarted).Round(time.Millisecond), st["StatusText"])
	c.must(ctx, "kill", "-STOP", pid)
	stopped := time.Now()
	waitFor(t, 30*time.Second, "the watchdog to kill the stopped relay and systemd to restart it", func() (bool, string) {
		st = c.show(ctx, "gwenrelay.service", "ActiveState", "SubState", "MainPID", "NRestarts", "Result", "ExecMainCode", "ExecMainStatus")
		if st["ActiveState"] == "failed" {
			why := ""
			if st["ExecMainCode"] == "1" && st["ExecMainStatus"] == "2" {
				// CLD_EXITED with 2: Go's default answer to SIGABRT (and to a panic).
				why = "\nThe relay exited with status 2 on the watchdog's SIGABRT (Go's default, GOTRACEBACK=single), and " +
					"the unit's RestartPreventExitStatus=2 forbids restarting after exit status 2, so a wedged (or panicking) relay stays down. " +
					"Fix the unit: Environment=GOTRACEBACK=crash makes the Go runtime die by SIGABRT (status=6/ABRT), which Restart=on-failure restarts."
			}
			t.Fatalf("systemd did not restart the relay after the watchdog: %v%s", st, why)
		}
		return st["ActiveState"] == "active" && st["SubState"] == "running" && st["MainPID"] != pid && st["MainPID"] != "0", fmt.Sprint(st)
	})
	t.Logf("restarted %v after SIGSTOP: %v", time.Since(stopped).Round(time.Millisecond), st)
	if a, _ := strconv.Atoi(st["NRestarts"]); a <= mustAtoi(t, restarts) {
		t.Fatalf("NRestarts %s after the watchdog, %s before: want more", st["NRestarts"], restarts)
	}
	waitFor(t, 10*time.Second, "the journal to show the watchdog timeout", func() (bool, string) {
		j, _ := c.run(ctx, 10*time.Second, "journalctl", "--no-pager", "-u", "gwenrelay", "-o", "cat", "--grep", "[Ww]atchdog timeout|Main process exited")
		return strings.Contains(j, "Watchdog timeout"), j
	})
	j, _ := c.run(ctx, 10*time.Second, "journalctl", "--no-pager", "-u", "gwenrelay", "-o", "cat", "--grep", "[Ww]atchdog timeout|Main process exited|[Kk]illing|SIGABRT")
	t.Logf("journal:\n%s", strings.TrimSpace(j))
	if strings.Contains(j, "SIGKILL") {
		t.Errorf("the watchdog needed SIGKILL; SIGABRT should end the relay")
	}
	if n := pendingLive(t, ctx, c); n != len(stuck) {
		t.Fatalf("spool stats after the watchdog restart: %d pending; want %d", n, len(stuck))
	}
	gateClosed.Store(false)
	waitDelivered(t, fake, 60*time.Second, stuck...)
	waitFor(t, 10*time.Second, "the spool to empty", func() (bool, string) {
		n := pendingLive(t, ctx, c)
		return n == 0, fmt.Sprintf("%d pending", n)
	})
	phase("watchdog", start)

	// A clean stop: exit 0, no timeout, no SIGKILL.
	start = time.Now()
	c.must(ctx, "systemctl", "stop", "gwenrelay")
	st = c.show(ctx, "gwenrelay.service", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
	// ExecMainCode 1 is CLD_EXITED.
	if st["ActiveState"] != "inactive" || st["Result"] != "success" || st["ExecMainCode"] != "1" || st["ExecMainStatus"] != "0" {
		t.Fatalf("after systemctl stop: %v; want inactive, Result=success, exited (ExecMainCode=1) with status 0", st)
	}
	phase(fmt.Sprintf("stop (%v)", st), start)

	// Purge.
	start = time.Now()
	if err := os.RemoveAll(filepath.Join(root, "etc/systemd/system/gwenrelay.service.d")); err != nil {
		t.Fatal(err)
	}
	c.must(ctx, "systemctl", "daemon-reload")
	out = c.must(ctx, "dpkg", "-P", "gwenrelay")
	t.Logf("dpkg -P:\n%s", tail(out, 15))
	if s, _ := c.run(ctx, 10*time.Second, "dpkg-query", "-W", "-f=${db:Status-Status}", "gwenrelay"); strings.TrimSpace(s) == "installed" {
		t.Errorf("dpkg-query after purge: %q", s)
	}
	for _, p := range []string{"/usr/bin/gwenrelay", "/lib/systemd/system/gwenrelay.service", "/lib/systemd/system/gwenrelay.socket",
		"/etc/gwenrelay", "/etc/default/gwenrelay", "/var/lib/gwenrelay"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("after dpkg -P: %s is still there", p)
		}
	}
	if st := c.show(ctx, "gwenrelay.service", "LoadState"); st["LoadState"] != "not-found" {
		t.Errorf("after dpkg -P: gwenrelay.service %v; want not-found", st)
	}
	phase("dpkg -P", start)
	if p := fake.Problems(); len(p) > 0 {
		t.Errorf("the fake Segment saw protocol problems: %v", p)
	}
	phase("total", testStart)
}

// buildDeb runs scripts/package.sh (or takes $GWENRELAY_NSPAWN_DEB) and
// returns the .deb.
func buildDeb(t *testing.T, ctx context.Context) string {
	t.Helper()
	if deb := os.Getenv("GWENRELAY_NSPAWN_DEB"); deb != "" {
		t.Logf("package: %s (GWENRELAY_NSPAWN_DEB)", deb)
		return deb
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// A DIST of its own: other tests may be building into dist/ meanwhile.
	dist := t.TempDir()
	cmd := []string{"env", "DIST=" + dist, filepath.Join(repo, "scripts/package.sh")}
	out, err := hostRunIn(ctx, repo, 5*time.Minute, cmd...)
	if err != nil {
		t.Fatalf("scripts/package.sh: %v", err)
	}
	// It names its packages last, one a line: the .deb, then the .rpm.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if n := len(lines); n >= 2 {
		deb := strings.TrimSpace(lines[n-2])
		if strings.HasPrefix(filepath.Base(deb), "gwenrelay_") && strings.HasSuffix(deb, "_amd64.deb") {
			if !filepath.IsAbs(deb) {
				deb = filepath.Join(repo, deb)
			}
			t.Logf("package: %s", filepath.Base(deb))
			return deb
		}
	}
	t.Fatalf("scripts/package.sh did not name a gwenrelay_*_amd64.deb:\n%s", tail(out, 20))
	return ""
}

// checkSandbox looks at the running relay from inside the container: not
// root, no capability, no new privileges, seccomp on.
func checkSandbox(t *testing.T, ctx context.Context, c *container, pid string) {
	t.Helper()
	status := c.must(ctx, "cat", "/proc/"+pid+"/status")
	want := map[string]func(string) bool{
		"Uid":        func(v string) bool { return !strings.HasPrefix(v, "0\t") && !strings.HasPrefix(v, "0 ") },
		"CapEff":     func(v string) bool { return v == "0000000000000000" },
		"CapBnd":     func(v string) bool { return v == "0000000000000000" },
		"NoNewPrivs": func(v string) bool { return v == "1" },
		"Seccomp":    func(v string) bool { return v == "2" },
	}
	var got []string
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if check, ok := want[k]; ok {
			got = append(got, k+"="+v)
			if !check(v) {
				t.Errorf("the relay's /proc/%s/status: %s: %s", pid, k, v)
			}
			delete(want, k)
		}
	}
	for k := range want {
		t.Errorf("the relay's /proc/%s/status has no %s line", pid, k)
	}
	sort.Strings(got)
	user := strings.TrimSpace(c.must(ctx, "stat", "-c", "%U", "/proc/"+pid))
	if user != "gwenrelay" {
		t.Errorf("the relay runs as %q; want gwenrelay", user)
	}
	t.Logf("sandbox: user %s, %s", user, strings.Join(got, " "))
}

// pendingLive counts pending events with `gwenrelay spool stats --json`,
// which must reach the running relay through its admin socket.
func pendingLive(t *testing.T, ctx context.Context, c *container) int {
	t.Helper()
	out := c.must(ctx, "gwenrelay", "spool", "stats", "--json")
	var v struct {
		Live    bool  `json:"live"`
		Pending int64 `json:"pending"`
		Dead    int64 `json:"dead"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &v); err != nil {
		t.Fatalf("gwenrelay spool stats --json: %v\n%s", err, out)
	}
	if !v.Live {
		t.Fatalf("gwenrelay spool stats --json did not reach the running relay (live=false): %s", out)
	}
	if v.Dead != 0 {
		t.Fatalf("gwenrelay spool stats --json: %d dead letters: %s", v.Dead, out)
	}
	return int(v.Pending)
}

// event is a GWEN achievement update for user.
func event(user string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{
		"type":      "achievement_update",
		"userId":    user,
		"timestamp": time.Now().Unix(),
		"state":     map[string]any{"id": "ach-nspawn", "title": "Booted", "active": true},
		"updates":   []any{map[string]any{"tierIndex": 0, "progressFrom": 0, "progressTo": 1, "completed": true}},
	})
	return b
}

var client = &http.Client{Timeout: 10 * time.Second}

func post(t *testing.T, url, token string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// waitDelivered waits until the fake Segment answered 200 to a message of
// each user.
func waitDelivered(t *testing.T, fake *segmenttest.Server, timeout time.Duration, users ...string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d users' events at the fake Segment", len(users)), func() (bool, string) {
		reqs := fake.Requests()
		got := map[string]bool{}
		for _, m := range fake.Messages() {
			if m.Request >= len(reqs) || reqs[m.Request].Status != http.StatusOK {
				continue
			}
			var v struct {
				UserID string `json:"userId"`
			}
			if json.Unmarshal(m.Raw, &v) == nil {
				got[v.UserID] = true
			}
		}
		var missing []string
		for _, u := range users {
			if !got[u] {
				missing = append(missing, u)
			}
		}
		return len(missing) == 0, fmt.Sprintf("missing %v", missing)
	})
}

// waitFor polls cond until it holds or timeout passes; then it fails with
// cond's last word.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; last: %s", timeout, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

func copyFile(src, dst string) error {
	out, err := exec.Command("cp", "--", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp %s %s: %v: %s", src, dst, err, out)
	}
	return nil
}

// compactJournal drops the goroutine dump that a relay prints when it
// aborts (the watchdog's SIGABRT): every later line of that process, which
// systemd's own lines interleave, is left out and counted.
func compactJournal(j string) string {
	lines := strings.Split(strings.TrimRight(j, "\n"), "\n")
	pidOf := func(line string) string {
		if m := relayPID.FindStringSubmatch(line); m != nil {
			return m[1]
		}
		return ""
	}
	dropped := map[string]int{}
	aborted := map[string]bool{}
	for _, line := range lines {
		pid := pidOf(line)
		if pid == "" {
			continue
		}
		if aborted[pid] {
			dropped[pid]++
		} else if strings.Contains(line, "SIGABRT: abort") || strings.Contains(line, "SIGQUIT: quit") {
			aborted[pid] = true
		}
	}
	var out []string
	seen := map[string]bool{}
	for _, line := range lines {
		pid := pidOf(line)
		if pid != "" && aborted[pid] {
			if seen[pid] {
				continue
			}
			if strings.Contains(line, "SIGABRT: abort") || strings.Contains(line, "SIGQUIT: quit") {
				seen[pid] = true
				out = append(out, line, fmt.Sprintf("    [the goroutine dump of gwenrelay[%s], %d lines, left out]", pid, dropped[pid]))
				continue
			}
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

var relayPID = regexp.MustCompile(` gwenrelay\[(\d+)\]: `)
