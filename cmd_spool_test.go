package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gwenrelay/gwenrelay/relay"
	"github.com/gwenrelay/gwenrelay/spool"
)

// What the testscript scripts cannot see: output to a terminal (stats
// --watch redrawing in place, export's progress bar), driven through a real
// pseudo-terminal.

// makeTestSpool writes a stopped spool with n pending GWEN events.
func makeTestSpool(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	sp, err := spool.Open(path, spool.Options{DedupWindow: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var entries []spool.Entry
	for i := 0; i < n; i++ {
		e, err := relay.GWENEntry(e2eEvent(fmt.Sprintf("tty-%d", i), 300), "", 0, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	if _, err := sp.Append(entries); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// openPTY returns a pseudo-terminal's controlling side and its terminal.
func openPTY(t *testing.T) (ctl, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// screen collects what a program writes to a terminal.
type screen struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func readScreen(ctl *os.File) *screen {
	s := &screen{changed: make(chan struct{}, 1)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ctl.Read(buf)
			s.mu.Lock()
			s.b.Write(buf[:n])
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
			if err != nil {
				return // EIO once the terminal side is closed everywhere
			}
		}
	}()
	return s
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor waits until the screen satisfies ok, for at most 20 s.
func (s *screen) waitFor(t *testing.T, what string, ok func(string) bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for !ok(s.String()) {
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("terminal never showed %s; it shows:\n%q", what, s.String())
		}
	}
}

func spoolCmd(t *testing.T, args ...string) *exec.Cmd {
	cmd := exec.Command(e2eBinary(t), append([]string{"spool"}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GWENRELAY_") && !strings.HasPrefix(kv, "RUNTIME_DIRECTORY=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	return cmd
}

// waitExit waits for cmd and fails unless it exits 0 within 10 s.
func waitExit(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: %v", strings.Join(cmd.Args[1:], " "), err)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("%s did not exit within 10s", strings.Join(cmd.Args[1:], " "))
	}
}

func TestSpoolStats_WatchOnTerminal(t *testing.T) {
	path := makeTestSpool(t, 3)
	ctl, tty := openPTY(t)
	scr := readScreen(ctl)
	cmd := spoolCmd(t, "stats", "--watch", "--interval", "100ms", "--spool", path, "--admin-socket", "")
	cmd.Stdout, cmd.Stderr = tty, tty
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const clear = "\x1b[H\x1b[2J"
	scr.waitFor(t, "three refreshes in place", func(s string) bool {
		return strings.Count(s, clear) >= 3 && strings.Count(s, "pending") >= 3
	})
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd)
	// Each refresh starts with the clear sequence and is one full report
	// (the last frame may still be on its way through the terminal).
	frames := strings.Split(scr.String(), clear)[1:]
	for i, frame := range frames[:len(frames)-1] {
		if !strings.Contains(frame, "pending         3 records") || !strings.Contains(frame, "source          file") {
			t.Errorf("frame %d is not a whole report:\n%q", i, frame)
		}
	}
}

func TestSpoolStats_WatchToAPipe(t *testing.T) {
	path := makeTestSpool(t, 2)
	cmd := spoolCmd(t, "stats", "--watch", "--json", "--interval", "50ms", "--spool", path, "--admin-socket", "")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for i := 0; i < 3; i++ {
		if !sc.Scan() {
			t.Fatalf("line %d: %v", i, sc.Err())
		}
		var v relay.StatsView
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil || v.Pending != 2 || strings.Contains(sc.Text(), "\x1b") {
			t.Fatalf("line %d = %q (%v), want a plain JSON object with pending 2", i, sc.Text(), err)
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	go func() {
		for sc.Scan() {
		}
	}()
	waitExit(t, cmd)
}

func TestSpoolExport_ProgressOnTerminal(t *testing.T) {
	path := makeTestSpool(t, 2500)
	ctl, tty := openPTY(t)
	scr := readScreen(ctl)
	var stdout bytes.Buffer
	cmd := spoolCmd(t, "export", "--spool", path, "--admin-socket", "")
	cmd.Stdout, cmd.Stderr = &stdout, tty
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd)
	scr.waitFor(t, "the finished progress bar", func(s string) bool {
		return strings.Contains(s, "] 100%  2500/2500 records exported")
	})
	if n := bytes.Count(stdout.Bytes(), []byte("\n")); n != 2500 {
		t.Errorf("export wrote %d lines, want 2500", n)
	}
	if bytes.Contains(stdout.Bytes(), []byte("records exported")) {
		t.Errorf("progress went to stdout with the records")
	}

	// Not on a terminal: no progress at all.
	var stderr bytes.Buffer
	cmd = spoolCmd(t, "export", "--spool", path, "--admin-socket", "")
	cmd.Stdout, cmd.Stderr = &bytes.Buffer{}, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr off a terminal = %q, want nothing", stderr.String())
	}
}

func TestSpoolFormat(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"}, {0, "0s"}, {59 * time.Second, "59s"}, {61 * time.Second, "1m1s"},
		{3*time.Hour + 4*time.Minute + 5*time.Second, "3h4m"}, {50 * time.Hour, "2d2h"},
	} {
		if got := formatAge(c.d); got != c.want {
			t.Errorf("formatAge(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	for _, c := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 KiB"}, {1536, "1.5 KiB"}, {5 << 20, "5.0 MiB"}, {3 << 30, "3.0 GiB"},
	} {
		if got := formatBytes(c.n); got != c.want {
			t.Errorf("formatBytes(%d) = %q, want %q", c.n, got, c.want)
		}
	}
	if got := cell("", 5); got != "-" {
		t.Errorf("empty cell = %q", got)
	}
	if got := cell("two\nlines  here", 40); got != "two lines here" {
		t.Errorf("cell joins lines: %q", got)
	}
	if got := cell("abcdefghij", 5); got != "abcd…" {
		t.Errorf("long cell = %q", got)
	}
}

// A daemon that holds the spool but does not answer on its socket (stopped
// with SIGSTOP, or wedged): the CLI says so within seconds instead of
// waiting for it.
func TestSpool_WedgedDaemon(t *testing.T) {
	dir := t.TempDir()
	sp, sock := filepath.Join(dir, "spool.db"), filepath.Join(dir, "admin.sock")
	p := e2eStart(t, sp, "--insecure-no-auth", "--admin-socket", sock)
	st, out, _ := e2eRun(t, 10*time.Second, "spool", "stats", "--json", "--spool", sp, "--admin-socket", sock)
	if !st.Success() || !strings.Contains(out, `"live":true`) {
		t.Fatalf("stats through a running daemon: %v\n%s", st, out)
	}
	p.Signal(syscall.SIGSTOP)
	for _, args := range [][]string{
		{"spool", "stats", "--spool", sp, "--admin-socket", sock},
		{"spool", "rm", "--yes", "--spool", sp, "--admin-socket", sock, "1"},
	} {
		st, out, took := e2eRun(t, 20*time.Second, args...)
		if st.ExitCode() != 1 {
			t.Errorf("%s: %v, want exit status 1; output:\n%s", strings.Join(args, " "), st, out)
		}
		for _, want := range []string{"did not answer within", "stopped or wedged", "is locked by another process"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: output lacks %q:\n%s", strings.Join(args, " "), want, out)
			}
		}
		if limit := relay.AdminDialTimeout + 3*time.Second; took > limit {
			t.Errorf("%s took %s, want at most %s", strings.Join(args, " "), took.Round(time.Millisecond), limit)
		}
	}
	p.Signal(syscall.SIGCONT)
	p.StopClean(20 * time.Second)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("admin socket after a clean stop: %v, want it removed", err)
	}
}

// Mistakes in the command line exit 2, with a message that says what to
// do; failures of the operation itself exit 1.
func TestSpool_ExitCodes(t *testing.T) {
	path := makeTestSpool(t, 1)
	base := []string{"--spool", path, "--admin-socket", ""}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"purge"}, 2, "pass --dead"},
		{[]string{"retry"}, 2, "needs record ids"},
		{[]string{"retry", "--all", "--type", "x", "3"}, 2, "ids or --all, not both"},
		{[]string{"rm", "--yes", "abc"}, 2, `"abc" is not a record id`},
		{[]string{"rm", "1"}, 2, "pass --yes to confirm"},
		{[]string{"show"}, 2, "one record id"},
		{[]string{"show", "1", "--json"}, 2, "flags go first"},
		{[]string{"ls", "--limit", "-1"}, 2, "--limit -1"},
		{[]string{"export", "--all", "--dead"}, 2, "--all already includes --dead"},
		{[]string{"ls", "--no-such-flag"}, 2, "no-such-flag"},
		{[]string{"frobnicate"}, 2, `unknown spool command "frobnicate"`},
		{[]string{"show", "99"}, 1, "record 99 is neither pending nor dead"},
		{[]string{"retry", "1"}, 1, "record 1 is not dead-lettered"},
	} {
		args := append([]string{"spool", c.args[0]}, append(append([]string(nil), base...), c.args[1:]...)...)
		if c.args[0] == "frobnicate" {
			args = []string{"spool", "frobnicate"}
		}
		st, out, _ := e2eRun(t, 10*time.Second, args...)
		if st.ExitCode() != c.code || !strings.Contains(out, c.want) {
			t.Errorf("gwenrelay %s: exit %d, want %d with %q; output:\n%s", strings.Join(args, " "), st.ExitCode(), c.code, c.want, out)
		}
	}
	// Nothing of that changed the spool.
	if st := stoppedSpoolStats(t, path); st.Pending != 1 || st.Dead != 0 {
		t.Errorf("after the refused commands: %+v, want the one pending record", st)
	}
}
