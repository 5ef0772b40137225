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
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// serveInProcess runs `gwenrelay serve` in this process until the test ends
// and returns the address it listens on, read from its "listening" log line.
func serveInProcess(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- runContext(ctx, append([]string{"gwenrelay", "serve", "--log-format", "json"}, args...), io.Discard, pw)
		pw.Close()
	}()
	addr := make(chan string, 1)
	var logs bytes.Buffer
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			logs.Write(sc.Bytes())
			logs.WriteByte('\n')
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				addr <- line.Addr
			}
		}
		close(addr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("serve exited %d", code)
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop within 10s of its context ending")
		}
	})
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatalf("serve stopped before listening")
		}
		return a
	case <-time.After(10 * time.Second):
		t.Fatalf("serve did not report listening within 10s")
	}
	return ""
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

func countPending(t *testing.T, path string) int64 {
	t.Helper()
	sp, err := spool.Open(path, spool.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	st, err := sp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Pending
}

func TestServe_FlagsFromEnvironment(t *testing.T) {
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
	if n := countPending(t, path); n != 1 {
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
