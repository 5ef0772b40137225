package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/gwenrelay/gwenrelay/spool"
)

// syncBuffer keeps what is written to it, safe for concurrent use; onLine,
// when set, is called (under the lock) with each complete line.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	onLine  func(line []byte)
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.onLine != nil {
		b.partial = append(b.partial, p...)
		for {
			i := bytes.IndexByte(b.partial, '\n')
			if i < 0 {
				break
			}
			b.onLine(b.partial[:i])
			b.partial = b.partial[i+1:]
		}
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// inProcessServe is `gwenrelay serve` running in this process.
type inProcessServe struct {
	Addr           string      // where it listens
	Stdout, Stderr *syncBuffer // everything it wrote so far
	cancel         context.CancelFunc
	exited         chan struct{} // closed once runContext has returned
	code           int           // its exit code, once exited is closed
	stopped        bool
}

// startServe runs `gwenrelay serve --log-format json args...` in this
// process, capturing its stdout and stderr, and waits for its "listening"
// log line. It is stopped (as by SIGTERM) at the end of the test if the test
// did not call Stop, and must then exit 0.
func startServe(t *testing.T, args ...string) *inProcessServe {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &inProcessServe{Stdout: &syncBuffer{}, Stderr: &syncBuffer{}, cancel: cancel, exited: make(chan struct{})}
	addr := make(chan string, 1)
	s.Stderr.onLine = func(line []byte) {
		var l struct{ Msg, Addr string }
		if json.Unmarshal(line, &l) == nil && l.Msg == "listening" {
			select {
			case addr <- l.Addr:
			default:
			}
		}
	}
	full := append([]string{"gwenrelay", "serve", "--log-format", "json", "--admin-listen", "127.0.0.1:0"}, args...)
	go func() {
		defer close(s.exited)
		s.code = runContext(ctx, full, s.Stdout, s.Stderr)
	}()
	t.Cleanup(func() {
		if !s.stopped {
			s.Stop(t)
		}
	})
	select {
	case a := <-addr:
		s.Addr = a
		return s
	case <-s.exited:
		s.stopped = true
		t.Fatalf("serve exited %d before listening; stderr:\n%s", s.code, s.Stderr)
	case <-time.After(10 * time.Second):
		t.Fatalf("serve did not report listening within 10s; stderr:\n%s", s.Stderr)
	}
	return nil
}

// Stop ends serve's context (as SIGTERM does), waits for it to return and
// fails the test unless it exits 0 within 30 s (longer than its own stop
// deadlines need when nothing is in progress).
func (s *inProcessServe) Stop(t *testing.T) {
	t.Helper()
	s.stopped = true
	s.cancel()
	select {
	case <-s.exited:
		if s.code != 0 {
			t.Errorf("serve exited %d after its context ended, want 0; stderr:\n%s", s.code, s.Stderr)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("serve did not stop within 30s of its context ending; stderr:\n%s", s.Stderr)
	}
}

// serveInProcess runs `gwenrelay serve` in this process until the test ends
// and returns the address it listens on.
func serveInProcess(t *testing.T, args ...string) string {
	t.Helper()
	return startServe(t, args...).Addr
}

// unsetEnv removes an environment variable for the rest of the test; it is
// restored afterwards.
func unsetEnv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "")
	os.Unsetenv(name)
}

// clearServeEnv removes, for the test, every environment variable that
// serve reads (each flag's GWENRELAY_* variable, the systemd credential and
// state directories, JOURNAL_STREAM), so that the environment the tests run
// in cannot change their outcome.
func clearServeEnv(t *testing.T) {
	t.Helper()
	names := []string{"GWENRELAY_WRITE_KEY", "GWENRELAY_WRITE_KEY_FILE", "GWENRELAY_DRY_RUN", "GWENRELAY_DRY_RUN_FILE",
		"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "JOURNAL_STREAM"}
	for _, f := range serveFlags() {
		if df, ok := f.(cli.DocGenerationFlag); ok {
			names = append(names, df.GetEnvVars()...)
		}
	}
	for _, n := range names {
		unsetEnv(t, n)
	}
}

func postEvent(t *testing.T, addr, token string) int {
	t.Helper()
	body, err := os.ReadFile("relay/testdata/examples/wallet_update.json")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", "http://"+addr+"/webhook", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// stoppedSpoolStats opens the spool of a relay that has stopped, read-only,
// checks its consistency and returns its Stats.
func stoppedSpoolStats(t testing.TB, path string) spool.Stats {
	t.Helper()
	sp, err := spool.Open(path, spool.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if err := sp.Check(); err != nil {
		t.Errorf("spool check: %v", err)
	}
	st, err := sp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestServe_FlagsFromEnvironment(t *testing.T) {
	clearServeEnv(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "env.db")
	t.Setenv("GWENRELAY_SPOOL", path)
	t.Setenv("GWENRELAY_LISTEN", "127.0.0.1:0")
	t.Setenv("GWENRELAY_DRY_RUN", "true")
	t.Setenv("GWENRELAY_INBOUND_TOKEN", "env-token")
	func() {
		addr := serveInProcess(t)
		if got := postEvent(t, addr, "wrong"); got != http.StatusUnauthorized {
			t.Errorf("wrong token: status %d, want 401", got)
		}
		if got := postEvent(t, addr, "env-token"); got != http.StatusAccepted {
			t.Errorf("token from GWENRELAY_INBOUND_TOKEN: status %d, want 202", got)
		}
	}()
}

func TestServe_ConfigFile(t *testing.T) {
	clearServeEnv(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "cfg.db")
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("# rotation: old and new\nold-token\n\nnew-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "gwenrelay.yaml")
	yaml := "listen: 127.0.0.1:0\nspool: " + path + "\ndry-run: true\ninbound-token-file: " + tokens +
		"\nmapping:\n  wallet: {call: identify}\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := serveInProcess(t, "--config", cfg)
	for _, tok := range []string{"old-token", "new-token"} {
		if got := postEvent(t, addr, tok); got != http.StatusAccepted && got != http.StatusOK {
			t.Errorf("token %q from the config's token file: status %d, want 2xx", tok, got)
		}
	}
	if got := postEvent(t, addr, "other"); got != http.StatusUnauthorized {
		t.Errorf("unknown token: status %d, want 401", got)
	}
}

func TestServe_UsageErrors(t *testing.T) {
	clearServeEnv(t)
	dir := t.TempDir()
	badCfg := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badCfg, []byte("mapping:\n  wallet: {call: teleport}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no credential", []string{"--dry-run"}, "--inbound-token"},
		{"no dry-run", []string{"--insecure-no-auth"}, "--dry-run"},
		{"bad size", []string{"--dry-run", "--insecure-no-auth", "--max-body", "lots"}, "--max-body"},
		{"bad log level", []string{"--dry-run", "--insecure-no-auth", "--log-level", "loud"}, "--log-level"},
		{"bad listen address", []string{"--dry-run", "--insecure-no-auth", "--listen", "no-port-here"}, "--listen"},
		{"unknown flag", []string{"--bogus"}, "bogus"},
		{"bad mapping", []string{"--dry-run", "--insecure-no-auth", "--config", badCfg}, "teleport"},
		{"missing token file", []string{"--dry-run", "--inbound-token-file", filepath.Join(dir, "none")}, "--inbound-token-file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			args := append([]string{"gwenrelay", "serve", "--spool", filepath.Join(dir, "x.db"), "--listen", "127.0.0.1:0"}, tc.args...)
			code := run(args, io.Discard, &stderr)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr: %s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr.String(), tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "x.db")); err == nil {
		t.Error("a usage error created the spool file; configuration must be checked before the spool is opened")
	}
}

func TestServe_StopKeepsAcknowledged(t *testing.T) {
	clearServeEnv(t)
	path := filepath.Join(t.TempDir(), "stop.db")
	func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		pr, pw := io.Pipe()
		done := make(chan int, 1)
		go func() {
			// Segment is unreachable: the event stays pending.
			done <- runContext(ctx, []string{"gwenrelay", "serve", "--log-format", "json", "--write-key", "k", "--insecure-no-auth",
				"--segment-endpoint", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--spool", path}, io.Discard, pw)
			pw.Close()
		}()
		sc := bufio.NewScanner(pr)
		var addr string
		for addr == "" && sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				addr = line.Addr
			}
		}
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		if addr == "" {
			t.Fatal("serve did not report listening")
		}
		if got := postEvent(t, addr, ""); got != http.StatusAccepted {
			t.Fatalf("status %d, want 202", got)
		}
		cancel()
		if code := <-done; code != 0 {
			t.Fatalf("serve exited %d after its context ended, want 0", code)
		}
	}()
	if n := stoppedSpoolStats(t, path).Pending; n != 1 {
		t.Errorf("pending after a clean stop = %d, want 1", n)
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"gwenrelay", "version"}, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if strings.TrimSpace(out.String()) != buildVersion() || out.Len() < 2 {
		t.Errorf("version printed %q, want %q", out.String(), buildVersion())
	}
	if code := run([]string{"gwenrelay", "nope"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

// YAML reads "rate: 250" as a whole number; the float flag takes it, and
// the command line still wins over the file.
func TestServe_ConfigWholeNumberRate(t *testing.T) {
	clearServeEnv(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gwenrelay.yaml")
	if err := os.WriteFile(cfg, []byte("rate: 250\nburst: 50\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		extra []string
		want  float64
	}{{nil, 250}, {[]string{"--rate", "7.5"}, 7.5}} {
		args := append([]string{"--config", cfg, "--insecure-no-auth", "--dry-run", "--listen", "127.0.0.1:0",
			"--spool", filepath.Join(t.TempDir(), "s.db"), "--admin-socket", ""}, c.extra...)
		s := startServe(t, args...)
		s.Stop(t)
		var got *float64
		for _, line := range strings.Split(s.Stderr.String(), "\n") {
			var l struct {
				Msg  string
				Rate *float64
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "delivery" {
				got = l.Rate
			}
		}
		if got == nil || *got != c.want {
			t.Errorf("%v: delivery rate %v, want %v; log:\n%s", c.extra, got, c.want, s.Stderr)
		}
	}
}
