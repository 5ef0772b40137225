package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/relay"
	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
)

// testWriteKey is a distinctive write key for one test: unlikely to appear
// in any output by chance, so finding it there means it leaked.
func testWriteKey(t *testing.T, role string) string {
	t.Helper()
	name := strings.NewReplacer("/", "-", " ", "-", ":", "-").Replace(t.Name())
	return fmt.Sprintf("wk-%s-%s-Zq7Xv9Lp3", role, name)
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// walletEvent is the example wallet_update event with userId replaced.
func walletEvent(t *testing.T, userID string) []byte {
	t.Helper()
	raw, err := os.ReadFile("relay/testdata/examples/wallet_update.json")
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	if err := json.Unmarshal(raw, &ev); err != nil {
		t.Fatal(err)
	}
	ev["userId"] = userID
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectedMessageID is the Segment messageId ingest gives body (one event,
// no Idempotency-Key).
func expectedMessageID(t *testing.T, body []byte) string {
	t.Helper()
	e, err := relay.GWENEntry(body, "", 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return e.MessageID
}

// postBody posts body to addr's /webhook without a credential and requires 202.
func postBody(t *testing.T, addr string, body []byte) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/webhook", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /webhook: %d %s, want 202", resp.StatusCode, bytes.TrimSpace(b))
	}
}

// waitFirstRequest waits until the fake has answered a request and returns it.
func waitFirstRequest(t *testing.T, fake *segmenttest.Server, timeout time.Duration) segmenttest.Request {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if rs := fake.Requests(); len(rs) > 0 && rs[0].Status != 0 {
			return rs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fake Segment received no answered request within %v; requests %+v", timeout, fake.Requests())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logLine returns the first JSON log line in out whose msg is msg.
func logLine(out, msg string) map[string]any {
	for _, l := range strings.Split(out, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			return m
		}
	}
	return nil
}

// checkNoLeak fails the test if any secret, or the Basic auth credential
// made of it, appears in what serve wrote.
func checkNoLeak(t *testing.T, s *inProcessServe, secrets ...string) {
	t.Helper()
	for name, out := range map[string]string{"stdout": s.Stdout.String(), "stderr": s.Stderr.String()} {
		for _, k := range secrets {
			basic := base64.StdEncoding.EncodeToString([]byte(k + ":"))
			if strings.Contains(out, k) || strings.Contains(out, strings.TrimRight(basic, "=")) {
				t.Errorf("the write key %q (or its Basic auth form) appears in serve's %s:\n%s", k, name, out)
			}
		}
	}
}

// deliverWithKey runs serve against a fake Segment that accepts only want,
// posts one event and requires it delivered with that key; serve must log
// that the key came from wantFrom, and none of secrets may appear in its
// output.
func deliverWithKey(t *testing.T, want, wantFrom string, secrets []string, args ...string) {
	t.Helper()
	fake := segmenttest.New(want)
	t.Cleanup(fake.Close) // after serve stops (cleanups run last first)
	base := []string{"--listen", "127.0.0.1:0", "--spool", filepath.Join(t.TempDir(), "spool.db"),
		"--insecure-no-auth", "--segment-endpoint", fake.URL}
	s := startServe(t, append(base, args...)...)

	body := walletEvent(t, "user-"+t.Name())
	id := expectedMessageID(t, body)
	postBody(t, s.Addr, body)
	if r := waitFirstRequest(t, fake, 20*time.Second); r.Status != http.StatusOK {
		t.Fatalf("the fake Segment answered the first upload %d (%s): serve did not send the expected write key; problems: %q",
			r.Status, r.Err, fake.Problems())
	}
	if !fake.WaitDelivered(1, 20*time.Second) {
		t.Fatalf("event not delivered within 20s; requests %+v, problems %q", fake.Requests(), fake.Problems())
	}
	if got := fake.Delivered(); got[id] == 0 {
		t.Errorf("delivered messageIds %v, want %s", got, id)
	}
	if p := fake.Problems(); len(p) > 0 {
		t.Errorf("the fake Segment saw protocol problems: %q", p)
	}
	s.Stop(t)
	if d := logLine(s.Stderr.String(), "delivery"); d == nil {
		t.Errorf("no \"delivery\" log line; stderr:\n%s", s.Stderr)
	} else if d["write_key_from"] != wantFrom {
		t.Errorf("delivery log line says the key came from %v, want %q", d["write_key_from"], wantFrom)
	}
	checkNoLeak(t, s, secrets...)
}

func TestWriteKey_Sources(t *testing.T) {
	cases := []struct {
		name string
		// setup prepares the source of key in dir and returns serve's
		// extra arguments and where serve must say the key came from.
		setup func(t *testing.T, dir, key string) (args []string, from string)
	}{
		{"flag", func(t *testing.T, dir, key string) ([]string, string) {
			return []string{"--write-key", key}, "--write-key"
		}},
		{"env", func(t *testing.T, dir, key string) ([]string, string) {
			t.Setenv("GWENRELAY_WRITE_KEY", key)
			return nil, "--write-key"
		}},
		{"file", func(t *testing.T, dir, key string) ([]string, string) {
			p := writeFile(t, dir, "write-key.txt", "  "+key+"\n")
			return []string{"--write-key-file", p}, p
		}},
		{"file from env", func(t *testing.T, dir, key string) ([]string, string) {
			p := writeFile(t, dir, "write-key.txt", key+"\n")
			t.Setenv("GWENRELAY_WRITE_KEY_FILE", p)
			return nil, p
		}},
		{"systemd credential", func(t *testing.T, dir, key string) ([]string, string) {
			p := writeFile(t, dir, "write-key", key+"\n")
			t.Setenv("CREDENTIALS_DIRECTORY", dir)
			return nil, p
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearServeEnv(t)
			key := testWriteKey(t, "only")
			args, from := tc.setup(t, t.TempDir(), key)
			deliverWithKey(t, key, from, []string{key}, args...)
		})
	}
}

func TestWriteKey_Precedence(t *testing.T) {
	t.Run("flag beats file and credential", func(t *testing.T) {
		clearServeEnv(t)
		dir := t.TempDir()
		flagKey, fileKey, credKey := testWriteKey(t, "flag"), testWriteKey(t, "file"), testWriteKey(t, "cred")
		file := writeFile(t, dir, "key.txt", fileKey)
		writeFile(t, dir, "write-key", credKey)
		t.Setenv("CREDENTIALS_DIRECTORY", dir)
		deliverWithKey(t, flagKey, "--write-key", []string{flagKey, fileKey, credKey},
			"--write-key", flagKey, "--write-key-file", file)
	})
	t.Run("env beats file and credential", func(t *testing.T) {
		clearServeEnv(t)
		dir := t.TempDir()
		envKey, fileKey, credKey := testWriteKey(t, "env"), testWriteKey(t, "file"), testWriteKey(t, "cred")
		file := writeFile(t, dir, "key.txt", fileKey)
		writeFile(t, dir, "write-key", credKey)
		t.Setenv("CREDENTIALS_DIRECTORY", dir)
		t.Setenv("GWENRELAY_WRITE_KEY", envKey)
		deliverWithKey(t, envKey, "--write-key", []string{envKey, fileKey, credKey}, "--write-key-file", file)
	})
	t.Run("flag beats env", func(t *testing.T) {
		clearServeEnv(t)
		flagKey, envKey := testWriteKey(t, "flag"), testWriteKey(t, "env")
		t.Setenv("GWENRELAY_WRITE_KEY", envKey)
		deliverWithKey(t, flagKey, "--write-key", []string{flagKey, envKey}, "--write-key", flagKey)
	})
	t.Run("file beats credential", func(t *testing.T) {
		clearServeEnv(t)
		dir := t.TempDir()
		fileKey, credKey := testWriteKey(t, "file"), testWriteKey(t, "cred")
		file := writeFile(t, dir, "key.txt", fileKey+"\n")
		writeFile(t, dir, "write-key", credKey)
		t.Setenv("CREDENTIALS_DIRECTORY", dir)
		deliverWithKey(t, fileKey, file, []string{fileKey, credKey}, "--write-key-file", file)
	})
}

// TestWriteKey_NotLoggedWhenRefused: Segment refuses the key (401) and the
// relay logs the failures at debug level; the key must still not appear.
func TestWriteKey_NotLoggedWhenRefused(t *testing.T) {
	clearServeEnv(t)
	key := testWriteKey(t, "refused")
	fake := segmenttest.New(testWriteKey(t, "accepted"))
	t.Cleanup(fake.Close)
	s := startServe(t, "--listen", "127.0.0.1:0", "--spool", filepath.Join(t.TempDir(), "spool.db"),
		"--insecure-no-auth", "--segment-endpoint", fake.URL, "--write-key", key, "--log-level", "debug")
	postBody(t, s.Addr, walletEvent(t, "user-refused"))
	if r := waitFirstRequest(t, fake, 20*time.Second); r.Status != http.StatusUnauthorized {
		t.Fatalf("the fake Segment answered %d, want 401 for a key it does not know", r.Status)
	}
	// Give the relay a moment to log what it makes of the 401.
	time.Sleep(500 * time.Millisecond)
	s.Stop(t)
	if len(fake.Delivered()) != 0 {
		t.Errorf("delivered %v with a refused key", fake.Delivered())
	}
	checkNoLeak(t, s, key)
}

// ndjsonMessages parses dry-run output: every non-empty line must be a JSON
// object. It returns the lines by messageId.
func ndjsonMessages(t *testing.T, out string) map[string][]map[string]any {
	t.Helper()
	got := map[string][]map[string]any{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Errorf("dry-run output line is not a JSON object (%v): %s", err, line)
			continue
		}
		id, _ := m["messageId"].(string)
		got[id] = append(got[id], m)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// dryRunEvents posts n distinct events and returns their userIds by messageId.
func dryRunEvents(t *testing.T, addr string, n int) map[string]string {
	t.Helper()
	want := map[string]string{}
	for i := range n {
		user := fmt.Sprintf("dry-run-user-%d", i)
		body := walletEvent(t, user)
		want[expectedMessageID(t, body)] = user
		postBody(t, addr, body)
	}
	return want
}

// waitOutput polls read until every messageId in want appears in it.
func waitOutput(t *testing.T, read func() string, want map[string]string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := read()
		missing := 0
		for id := range want {
			if !strings.Contains(out, id) {
				missing++
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events not in the dry-run output within %v; output:\n%s", missing, len(want), timeout, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkDryRunOutput requires exactly one track line per posted event, with
// its messageId and userId, and nothing else.
func checkDryRunOutput(t *testing.T, out string, want map[string]string) {
	t.Helper()
	got := ndjsonMessages(t, out)
	for id, user := range want {
		lines := got[id]
		if len(lines) != 1 {
			t.Errorf("messageId %s: %d lines in the dry-run output, want 1", id, len(lines))
			continue
		}
		if m := lines[0]; m["type"] != "track" || m["userId"] != user {
			t.Errorf("messageId %s: type %v, userId %v; want track, %s: %v", id, m["type"], m["userId"], user, m)
		}
	}
	for id, lines := range got {
		if _, ok := want[id]; !ok {
			t.Errorf("dry-run output has %d line(s) with messageId %q that was never posted: %v", len(lines), id, lines[0])
		}
	}
}

// checkSpoolEmpty requires the spool to hold no pending and no dead record.
func checkSpoolEmpty(t *testing.T, path string) {
	t.Helper()
	if st := stoppedSpoolStats(t, path); st.Pending != 0 || st.Dead != 0 {
		t.Errorf("after a dry run the spool holds %d pending and %d dead records, want none", st.Pending, st.Dead)
	}
}

func TestDryRun_File(t *testing.T) {
	clearServeEnv(t)
	dir := t.TempDir()
	path, out := filepath.Join(dir, "spool.db"), filepath.Join(dir, "out.ndjson")
	s := startServe(t, "--listen", "127.0.0.1:0", "--spool", path, "--insecure-no-auth", "--dry-run", "--dry-run-file", out)
	want := dryRunEvents(t, s.Addr, 3)
	read := func() string {
		b, err := os.ReadFile(out)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return string(b)
	}
	waitOutput(t, read, want, 20*time.Second)
	s.Stop(t)
	checkDryRunOutput(t, read(), want)
	if o := s.Stdout.String(); o != "" {
		t.Errorf("with --dry-run-file, serve wrote to stdout:\n%s", o)
	}
	checkSpoolEmpty(t, path)
}

func TestDryRun_Stdout(t *testing.T) {
	clearServeEnv(t)
	path := filepath.Join(t.TempDir(), "spool.db")
	s := startServe(t, "--listen", "127.0.0.1:0", "--spool", path, "--insecure-no-auth", "--dry-run")
	want := dryRunEvents(t, s.Addr, 3)
	waitOutput(t, s.Stdout.String, want, 20*time.Second)
	s.Stop(t)
	checkDryRunOutput(t, s.Stdout.String(), want)
	checkSpoolEmpty(t, path)
}

func TestDelivery_UsageErrors(t *testing.T) {
	clearServeEnv(t)
	dir := t.TempDir()
	key := testWriteKey(t, "usage")
	empty := writeFile(t, dir, "empty-key", " \n\n")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"dry-run-file without dry-run", []string{"--write-key", key, "--dry-run-file", filepath.Join(dir, "out.ndjson")}, "--dry-run-file"},
		{"negative rate", []string{"--write-key", key, "--rate", "-1"}, "--rate"},
		{"zero burst", []string{"--write-key", key, "--burst", "0"}, "--burst"},
		{"ftp endpoint", []string{"--write-key", key, "--segment-endpoint", "ftp://x"}, "--segment-endpoint"},
		{"endpoint not a URL", []string{"--write-key", key, "--segment-endpoint", "not a url"}, "--segment-endpoint"},
		{"empty write-key file", []string{"--write-key-file", empty}, "--write-key-file"},
		{"missing write-key file", []string{"--write-key-file", filepath.Join(dir, "none")}, "--write-key-file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"gwenrelay", "serve", "--spool", filepath.Join(dir, "x.db"), "--listen", "127.0.0.1:0", "--insecure-no-auth"}, tc.args...)
			code := run(args, &stdout, &stderr)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr: %s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q does not mention %q", stderr.String(), tc.want)
			}
			if strings.Contains(stdout.String()+stderr.String(), key) {
				t.Errorf("the write key appears in the output: stdout %q, stderr %q", stdout.String(), stderr.String())
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "x.db")); err == nil {
		t.Error("a usage error created the spool file; configuration must be checked before the spool is opened")
	}
	if _, err := os.Stat(filepath.Join(dir, "out.ndjson")); err == nil {
		t.Error("--dry-run-file without --dry-run created the output file")
	}
}
