package main

// End-to-end test harness: the real gwenrelay binary, built once, run as a
// separate process and driven over real HTTP, real signals and real files.
//
// The e2e tests are skipped with -short. GWENRELAY_E2E_RACE=1 builds the
// binary under test with the race detector; GWENRELAY_E2E_VERBOSE=1 logs the
// relay's stderr even when a test passes.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

var e2e struct {
	dir  string // temp dir owned by TestMain
	bin  string // path of the built binary
	once sync.Once
	err  error
	out  string
}

// TestMain owns the directory the binary is built into and removes it after
// the run. The build itself happens once, on first use, so that running only
// the package's unit tests does not pay for it.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gwenrelay-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		os.Exit(1)
	}
	e2e.dir = dir
	e2e.bin = filepath.Join(dir, "gwenrelay")
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// relayBinary builds the binary (once per test run) and returns its path.
func e2eBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: builds and runs the binary (skipped with -short)")
	}
	e2e.once.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			e2e.err = fmt.Errorf("go tool not found in PATH: %w", err)
			return
		}
		args := []string{"build", "-o", e2e.bin}
		if os.Getenv("GWENRELAY_E2E_RACE") == "1" {
			args = append(args, "-race")
		}
		args = append(args, ".")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, args...)
		out, err := cmd.CombinedOutput()
		e2e.out = string(out)
		if err != nil {
			e2e.err = fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
		}
	})
	if e2e.err != nil {
		t.Fatalf("building gwenrelay: %v\n%s", e2e.err, e2e.out)
	}
	return e2e.bin
}

// e2eLogLine is one line the relay wrote to stderr (or stdout), parsed as JSON
// when it is JSON.
type e2eLogLine struct {
	at   time.Time
	text string
	json map[string]any
}

// e2eRelay is a running gwenrelay process.
type e2eRelay struct {
	t    testing.TB
	cmd  *exec.Cmd
	args []string

	Addr string // host:port it listens on
	URL  string // http://Addr

	exited  chan struct{} // closed once Wait has returned
	waitErr error
	state   *os.ProcessState

	outDone chan struct{} // closed at EOF of the output pipe
	mu      sync.Mutex
	lines   []e2eLogLine
	dropped int           // lines not kept (over e2eMaxLines)
	crash   string        // first line with a crash marker
	changed chan struct{} // closed and replaced on every new line
}

// e2eStartOptions tune e2eStartOpts.
type e2eStartOptions struct {
	// Timeout for the "listening" line (default 10 s).
	Timeout time.Duration
	// Raw uses args as given instead of adding serve --listen 127.0.0.1:0
	// --log-format json --spool and an unreachable Segment.
	Raw bool
	// Env is added to the environment.
	Env []string
	// Listeners, when set, are passed as systemd passes socket-activated
	// ones: from fd 3 on, with LISTEN_FDS and LISTEN_PID set to the
	// process's own pid (through a shell that execs the binary).
	Listeners []*os.File
}

// e2eStart runs `gwenrelay serve --listen 127.0.0.1:0 --log-format json
// --spool spoolPath extra...` with a Segment endpoint that resets every
// connection (e2eDeadEndpoint), so every acknowledged event stays in the
// spool to be counted; it waits for its "listening"
// log line and returns the process. It fails the test if the relay does not
// come up within 10 s. The process is killed at the end of the test if it is
// still running, and its output is logged if the test failed.
func e2eStart(t testing.TB, spoolPath string, extra ...string) *e2eRelay {
	t.Helper()
	p, err := e2eStartOpts(t, e2eStartOptions{}, spoolPath, extra...)
	if err != nil {
		t.Fatalf("starting relay: %v", err)
	}
	return p
}

// e2eStartOpts is e2eStart returning the failure instead of failing the
// test. On error the process (if any) has exited or been killed; its output
// is in the error. The returned *e2eRelay is non-nil whenever the process
// was started, so callers may inspect its exit state.
func e2eStartOpts(t testing.TB, o e2eStartOptions, spoolPath string, extra ...string) (*e2eRelay, error) {
	t.Helper()
	bin := e2eBinary(t)
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	var args []string
	if !o.Raw {
		args = []string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json", "--spool", spoolPath,
			"--write-key", "e2e-write-key", "--segment-endpoint", e2eDeadEndpoint(t)}
	}
	args = append(args, extra...)
	p := &e2eRelay{t: t, args: args, exited: make(chan struct{}), outDone: make(chan struct{}), changed: make(chan struct{})}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	if len(o.Listeners) > 0 {
		script := fmt.Sprintf(`LISTEN_PID=$$ LISTEN_FDS=%d exec "$0" "$@"`, len(o.Listeners))
		p.cmd = exec.Command("/bin/sh", append([]string{"-c", script, bin}, args...)...)
		p.cmd.ExtraFiles = o.Listeners
	}
	p.cmd.Stdout = pw
	p.cmd.Stderr = pw
	// No inherited GWENRELAY_* or systemd settings: the test decides.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GWENRELAY_") && !strings.HasPrefix(kv, "STATE_DIRECTORY=") &&
			!strings.HasPrefix(kv, "NOTIFY_SOCKET=") && !strings.HasPrefix(kv, "LISTEN_") && !strings.HasPrefix(kv, "WATCHDOG_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, o.Env...)
	if err := p.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	pw.Close() // the child holds its own copy; EOF comes when it exits
	go p.readOutput(pr)
	go func() {
		p.waitErr = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(p.cleanup)

	line, err := p.waitLog("listening", o.Timeout)
	if err != nil {
		if !p.Exited() {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		<-p.outDone
		return p, fmt.Errorf("gwenrelay %s: %v\n--- output ---\n%s", strings.Join(args, " "), err, p.Output())
	}
	addr, _ := line["addr"].(string)
	if addr == "" {
		return p, fmt.Errorf("listening line without addr: %v", line)
	}
	p.Addr = addr
	p.URL = "http://" + addr
	return p, nil
}

// Bounds on what is kept of a relay's output, so that a relay that floods
// its log cannot take the test process down with it.
const (
	e2eMaxLineBytes = 64 << 10
	e2eMaxLines     = 100_000
)

// e2eLifecycle are the log messages kept even past e2eMaxLines.
var e2eLifecycle = map[any]bool{
	"listening": true, "spool open": true, "stopping: finishing requests in progress": true, "stopped cleanly": true,
}

func (p *e2eRelay) readOutput(r *os.File) {
	defer close(p.outDone)
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	var cur []byte
	for {
		chunk, isPrefix, err := br.ReadLine()
		cur = append(cur, chunk[:min(len(chunk), max(0, e2eMaxLineBytes-len(cur)))]...)
		if isPrefix && err == nil {
			continue
		}
		if len(cur) > 0 || err == nil {
			p.addLine(string(cur))
		}
		cur = cur[:0]
		if err != nil {
			return
		}
	}
}

func (p *e2eRelay) addLine(text string) {
	ll := e2eLogLine{at: time.Now(), text: text}
	if strings.HasPrefix(text, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(text), &m) == nil {
			ll.json = m
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.crash == "" {
		for _, m := range e2eCrashMarkers {
			if strings.Contains(text, m) {
				p.crash = text
				break
			}
		}
	}
	if len(p.lines) >= e2eMaxLines && (ll.json == nil || !e2eLifecycle[ll.json["msg"]]) {
		p.dropped++
		return
	}
	p.lines = append(p.lines, ll)
	close(p.changed)
	p.changed = make(chan struct{})
}

// waitLog waits for a JSON log line whose msg is msg and returns it. It gives
// up when the process exits without writing it, or after timeout.
func (p *e2eRelay) waitLog(msg string, timeout time.Duration) (map[string]any, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		for ; seen < len(p.lines); seen++ {
			if m := p.lines[seen].json; m != nil && m["msg"] == msg {
				p.mu.Unlock()
				return m, nil
			}
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.outDone:
			// All output is read: one more pass over the lines, then give up.
			p.mu.Lock()
			for ; seen < len(p.lines); seen++ {
				if m := p.lines[seen].json; m != nil && m["msg"] == msg {
					p.mu.Unlock()
					return m, nil
				}
			}
			p.mu.Unlock()
			<-p.exited
			return nil, fmt.Errorf("exited (%v) without logging %q", p.state, msg)
		case <-deadline.C:
			return nil, fmt.Errorf("no %q log line within %v", msg, timeout)
		}
	}
}

// WaitLog is waitLog failing the test on error.
func (p *e2eRelay) WaitLog(msg string, timeout time.Duration) map[string]any {
	p.t.Helper()
	m, err := p.waitLog(msg, timeout)
	if err != nil {
		p.t.Fatalf("relay: %v", err)
	}
	return m
}

// LogLines returns the JSON log lines with the given msg seen so far.
func (p *e2eRelay) LogLines(msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range p.lines {
		if l.json != nil && l.json["msg"] == msg {
			out = append(out, l.json)
		}
	}
	return out
}

// Output returns everything the process wrote so far.
func (p *e2eRelay) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return b.String()
}

// tail returns the last n lines of output, with a note of how many were left out.
func (p *e2eRelay) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	start := 0
	if len(p.lines) > n {
		start = len(p.lines) - n
		fmt.Fprintf(&b, "[%d earlier lines left out]\n", start)
	}
	for _, l := range p.lines[start:] {
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	return b.String()
}

// Exited reports whether the process has exited.
func (p *e2eRelay) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process.
func (p *e2eRelay) Signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v to relay (pid %d): %v", sig, p.cmd.Process.Pid, err)
	}
}

// Kill sends SIGKILL and waits (up to 10 s) until the process is reaped, so
// that its file lock is gone.
func (p *e2eRelay) Kill() {
	p.t.Helper()
	p.Signal(syscall.SIGKILL)
	st := p.Wait(10 * time.Second)
	if ws, ok := st.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		p.t.Fatalf("after kill -9 the relay ended with %v, want killed by SIGKILL", st)
	}
}

// Wait waits up to timeout for the process to exit and returns its state.
// On timeout it fails the test, after killing the process with SIGQUIT (so
// that the Go runtime dumps its goroutines into the log) and then SIGKILL.
func (p *e2eRelay) Wait(timeout time.Duration) *os.ProcessState {
	p.t.Helper()
	select {
	case <-p.exited:
		<-p.outDone
		return p.state
	case <-time.After(timeout):
	}
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	<-p.outDone
	p.t.Fatalf("relay (pid %d) did not exit within %v; sent SIGQUIT (goroutine dump in its output):\n%s", p.cmd.Process.Pid, timeout, p.tail(400))
	return nil
}

// Stop sends SIGTERM and returns the exit state, waiting up to timeout.
func (p *e2eRelay) Stop(timeout time.Duration) *os.ProcessState {
	p.t.Helper()
	p.Signal(syscall.SIGTERM)
	return p.Wait(timeout)
}

// StopClean sends SIGTERM and requires exit status 0 within timeout.
func (p *e2eRelay) StopClean(timeout time.Duration) {
	p.t.Helper()
	st := p.Stop(timeout)
	if st.ExitCode() != 0 {
		p.t.Errorf("relay exited with %v after SIGTERM, want exit status 0; output:\n%s", st, p.tail(100))
	}
}

// e2eCrashMarkers are output that a relay must never produce, whatever the test.
var e2eCrashMarkers = []string{"panic:", "fatal error:", "SIGBUS", "SIGSEGV", "DATA RACE", "unexpected fault address"}

func (p *e2eRelay) cleanup() {
	if !p.Exited() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	<-p.outDone
	p.mu.Lock()
	crash, dropped := p.crash, p.dropped
	p.mu.Unlock()
	if crash != "" {
		p.t.Errorf("relay (pid %d, args %q) crashed or raced: %s", p.cmd.Process.Pid, p.args, crash)
	}
	if dropped > 0 {
		p.t.Logf("relay pid %d wrote more than %d lines; %d were not kept", p.cmd.Process.Pid, e2eMaxLines, dropped)
	}
	if p.t.Failed() || os.Getenv("GWENRELAY_E2E_VERBOSE") == "1" {
		p.t.Logf("relay pid %d (%s), %v; output:\n%s", p.cmd.Process.Pid, strings.Join(p.args, " "), p.state, p.tail(300))
	}
}

// e2eRun runs the binary with args to completion (killing it after
// timeout) and returns its exit state and combined output.
func e2eRun(t testing.TB, timeout time.Duration, args ...string) (*os.ProcessState, string, time.Duration) {
	t.Helper()
	bin := e2eBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GWENRELAY_") && !strings.HasPrefix(kv, "STATE_DIRECTORY=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.WaitDelay = 2 * time.Second
	out := &e2eCappedBuffer{max: 4 << 20}
	cmd.Stdout = out
	cmd.Stderr = out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("gwenrelay %s did not exit within %v (killed); output:\n%s", strings.Join(args, " "), timeout, out.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run gwenrelay: %v", err)
	}
	return cmd.ProcessState, out.String(), took
}

// e2eCappedBuffer keeps the first max bytes written to it and drops the rest.
type e2eCappedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	max     int
	dropped int
}

func (b *e2eCappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := min(len(p), max(0, b.max-b.buf.Len()))
	b.buf.Write(p[:n])
	b.dropped += len(p) - n
	return len(p), nil
}

func (b *e2eCappedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped > 0 {
		return fmt.Sprintf("%s\n[%d more bytes not kept]", b.buf.String(), b.dropped)
	}
	return b.buf.String()
}

// e2eReadSpool opens the spool file (the relay must be gone), runs bbolt's
// consistency check, and returns every pending record, oldest first.
func e2eReadSpool(t testing.TB, path string) []spool.Record {
	t.Helper()
	s, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatalf("open spool %s after the relay exited: %v", path, err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Errorf("close spool: %v", err)
		}
	}()
	var all []spool.Record
	var after uint64
	for {
		recs, err := s.ReadPending(after, 1000)
		if err != nil {
			t.Fatalf("ReadPending(%d): %v", after, err)
		}
		if len(recs) == 0 {
			break
		}
		// Ids must rise past after: a page that does not advance would
		// loop for ever.
		for i, r := range recs {
			if r.ID <= after || (i > 0 && r.ID <= recs[i-1].ID) {
				t.Fatalf("ReadPending(after=%d) returned record id %d at position %d: ids must be greater than after and rising", after, r.ID, i)
			}
		}
		all = append(all, recs...)
		after = recs[len(recs)-1].ID
		if len(all) > 10_000_000 {
			t.Fatalf("spool %s holds over 10 million pending records; no e2e test writes that many", path)
		}
	}
	if err := s.Check(); err != nil {
		t.Errorf("spool %s fails bbolt's consistency check: %v", path, err)
	}
	return all
}

// --- load generation and bookkeeping ---------------------------------------

// newClient is one keep-alive HTTP client (its own connection pool).
func e2eClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		},
		Timeout: 20 * time.Second,
	}
}

// e2ePadding is filler text for event bodies.
const e2ePadding = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// eventJSON is one GWEN event with the given (unique) userId and about size bytes.
func e2eEvent(userID string, size int) []byte {
	head := fmt.Sprintf(`{"type":"achievement","userId":%q,"segmentId":"seg-e2e","productId":42,"updates":[{"k":"v"}],"state":{"pad":"`, userID)
	n := size - len(head) - 3
	if n < 0 {
		n = 0
	}
	var b bytes.Buffer
	b.WriteString(head)
	for b.Len() < len(head)+n {
		b.WriteString(e2ePadding)
	}
	b.Truncate(len(head) + n)
	b.WriteString(`"}}`)
	return b.Bytes()
}

// batchBody is the request body for users: one object when single, else an array.
func e2eBody(users []string, eventSize int, single bool) []byte {
	if single && len(users) == 1 {
		return e2eEvent(users[0], eventSize)
	}
	var b bytes.Buffer
	b.WriteByte('[')
	for i, u := range users {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(e2eEvent(u, eventSize))
	}
	b.WriteByte(']')
	return b.Bytes()
}

// e2eAck is a 2xx answer.
type e2eAck struct {
	Accepted   int      `json:"accepted"`
	Duplicates int      `json:"duplicates"`
	IDs        []uint64 `json:"ids"`
}

// e2eOutcome is what became of one request.
type e2eOutcome struct {
	Users      []string
	Phase      string // free-form label for the test's own bookkeeping
	Start, End time.Time
	Status     int // 0: no HTTP answer
	RetryAfter string
	Body       string
	Ack        *e2eAck
	Err        error // transport error when Status is 0
	Refused    bool  // the connection was refused: the request never reached the relay
}

func (o *e2eOutcome) ok() bool       { return o.Status >= 200 && o.Status < 300 }
func (o *e2eOutcome) noAnswer() bool { return o.Status == 0 }

// post sends users' events to the relay and records the e2eOutcome.
func e2ePost(c *http.Client, url string, users []string, eventSize int, single bool, phase string) *e2eOutcome {
	o := &e2eOutcome{Users: users, Phase: phase, Start: time.Now()}
	defer func() { o.End = time.Now() }()
	req, err := http.NewRequest(http.MethodPost, url+"/webhook", bytes.NewReader(e2eBody(users, eventSize, single)))
	if err != nil {
		o.Err = err
		return o
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		o.Err = err
		o.Refused = errors.Is(err, syscall.ECONNREFUSED)
		return o
	}
	defer resp.Body.Close()
	body, rerr := io.ReadAll(resp.Body)
	if rerr != nil {
		// The status line arrived but the body did not: count it as an
		// answer with its status (the relay decided), keep the error.
		o.Err = rerr
	}
	o.setAnswer(resp.StatusCode, resp.Header.Get("Retry-After"), body, rerr == nil)
	return o
}

// setAnswer records an HTTP answer; complete says the whole body was read.
func (o *e2eOutcome) setAnswer(status int, retryAfter string, body []byte, complete bool) {
	o.Status = status
	o.RetryAfter = retryAfter
	o.Body = string(body)
	if o.ok() && complete {
		var a e2eAck
		if err := json.Unmarshal(body, &a); err == nil {
			o.Ack = &a
		}
	}
}

// e2eLedger collects outcomes from many goroutines.
type e2eLedger struct {
	mu   sync.Mutex
	outs []*e2eOutcome
}

func (l *e2eLedger) add(o *e2eOutcome) {
	l.mu.Lock()
	l.outs = append(l.outs, o)
	l.mu.Unlock()
}

func (l *e2eLedger) all() []*e2eOutcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*e2eOutcome(nil), l.outs...)
}

// e2eTally is what e2eVerify counted.
type e2eTally struct {
	Requests, Events                     int
	OKReqs, OKEvents, Status200          int
	FailReqs, FailEvents                 int
	NoAnswerReqs, NoAnswerEvents         int
	NoAnswerStoredReqs, NoAnswerStoredEv int
	RefusedReqs                          int
	SpoolRecords                         int
	Statuses                             map[int]int
}

func (c e2eTally) String() string {
	codes := make([]int, 0, len(c.Statuses))
	for s := range c.Statuses {
		codes = append(codes, s)
	}
	sort.Ints(codes)
	var st []string
	for _, s := range codes {
		st = append(st, fmt.Sprintf("%d×%d", s, c.Statuses[s]))
	}
	return fmt.Sprintf("%d requests / %d events: 2xx %d req / %d ev (of which 200: %d); non-2xx %d req / %d ev; "+
		"no answer %d req / %d ev (%d refused), of those stored %d req / %d ev; statuses [%s]; spool holds %d records",
		c.Requests, c.Events, c.OKReqs, c.OKEvents, c.Status200, c.FailReqs, c.FailEvents,
		c.NoAnswerReqs, c.NoAnswerEvents, c.RefusedReqs, c.NoAnswerStoredReqs, c.NoAnswerStoredEv,
		strings.Join(st, " "), c.SpoolRecords)
}

// e2eVerify checks the spool against what the relay answered:
//   - every event of a 2xx request is in the spool, under the id the answer gave;
//   - no event of a request answered non-2xx is in the spool, and every 503 carries Retry-After;
//   - a request without an answer is stored all or nothing (never in part), and a refused one not at all;
//   - no event is stored twice, and nothing is stored that was never sent.
func e2eVerify(t testing.TB, outs []*e2eOutcome, recs []spool.Record) e2eTally {
	t.Helper()
	c := e2eTally{Requests: len(outs), SpoolRecords: len(recs), Statuses: map[int]int{}}
	byUser := make(map[string][]spool.Record, len(recs))
	for _, r := range recs {
		var ev struct {
			UserID string `json:"userId"`
		}
		if err := json.Unmarshal(r.Event, &ev); err != nil || ev.UserID == "" {
			t.Errorf("spool record %d has no readable userId (%v): %.200s", r.ID, err, r.Event)
			continue
		}
		byUser[ev.UserID] = append(byUser[ev.UserID], r)
	}
	// Violations are grouped by kind, so that the worst kind (lost data)
	// is never hidden behind a flood of another.
	type violations struct {
		n        int
		examples []string
	}
	var kinds []string
	found := map[string]*violations{}
	report := func(kind, format string, args ...any) {
		v := found[kind]
		if v == nil {
			v = &violations{}
			found[kind] = v
			kinds = append(kinds, kind)
		}
		v.n++
		if len(v.examples) < 5 {
			v.examples = append(v.examples, fmt.Sprintf(format, args...))
		}
	}
	defer func() {
		t.Helper()
		for _, k := range kinds {
			v := found[k]
			t.Errorf("%s: %d times, e.g.\n\t%s", k, v.n, strings.Join(v.examples, "\n\t"))
		}
	}()
	sent := make(map[string]bool)
	for _, o := range outs {
		c.Events += len(o.Users)
		c.Statuses[o.Status]++
		stored := 0
		for _, u := range o.Users {
			if sent[u] {
				report("TEST BUG: userId sent twice", "%s", u)
			}
			sent[u] = true
			if len(byUser[u]) > 0 {
				stored++
			}
		}
		switch {
		case o.ok():
			c.OKReqs++
			c.OKEvents += len(o.Users)
			if o.Status == http.StatusOK {
				c.Status200++
			}
			if stored != len(o.Users) {
				report("LOST ACKNOWLEDGED DATA (2xx, events missing from the spool)", "request (%s, started %s) answered %d %s, but only %d of its %d events are in the spool",
					o.Phase, o.Start.Format("15:04:05.000"), o.Status, strings.TrimSpace(o.Body), stored, len(o.Users))
			}
			if o.Ack != nil {
				if len(o.Ack.IDs) != len(o.Users) {
					report("2xx with the wrong number of ids", "request answered %d with %d ids for %d events: %s", o.Status, len(o.Ack.IDs), len(o.Users), o.Body)
				} else {
					for i, u := range o.Users {
						if rs := byUser[u]; len(rs) > 0 && rs[0].ID != o.Ack.IDs[i] {
							report("2xx ids do not match the spool", "event %s was acknowledged as id %d but is in the spool as id %d", u, o.Ack.IDs[i], rs[0].ID)
						}
					}
				}
			} else if o.Err == nil {
				report("2xx without a readable body", "%q", o.Body)
			}
		case !o.noAnswer():
			c.FailReqs++
			c.FailEvents += len(o.Users)
			if stored != 0 {
				report("REFUSED BUT STORED (non-2xx, events in the spool)", "request (%s) answered %d %q, yet %d of its %d events are in the spool", o.Phase, o.Status, strings.TrimSpace(o.Body), stored, len(o.Users))
			}
			if o.Status == http.StatusServiceUnavailable && o.RetryAfter == "" {
				report("503 without Retry-After", "%q", strings.TrimSpace(o.Body))
			}
		default:
			c.NoAnswerReqs++
			c.NoAnswerEvents += len(o.Users)
			if o.Refused {
				c.RefusedReqs++
				if stored != 0 {
					report("connection refused, yet stored", "request whose connection was refused has %d events in the spool", stored)
				}
			}
			if stored > 0 {
				c.NoAnswerStoredReqs++
				c.NoAnswerStoredEv += stored
			}
			if stored != 0 && stored != len(o.Users) {
				report("PARTIAL REQUEST STORED (a request is all-or-nothing)", "request without an answer (%v) is stored in part: %d of %d events", o.Err, stored, len(o.Users))
			}
		}
	}
	for u, rs := range byUser {
		if len(rs) > 1 {
			ids := make([]uint64, len(rs))
			for i, r := range rs {
				ids[i] = r.ID
			}
			report("DUPLICATE in the spool", "event %s is in the spool %d times (ids %v)", u, len(rs), ids)
		}
		if !sent[u] {
			report("PHANTOM event in the spool", "spool holds event %s that the test never sent", u)
		}
	}
	return c
}

// e2eGet does GET url and returns the status and body (status 0 and the error text when there is no answer).
func e2eGet(t testing.TB, url string, timeout time.Duration) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// e2eDeadEndpoint returns a URL on 127.0.0.1 where a listener, kept open
// for the rest of the test, accepts every connection and at once closes it
// with a reset, so every delivery fails; holding the port (instead of
// releasing it to get "connection refused") means nothing else can take it
// and answer. The listener is closed in t.Cleanup, after the cleanups
// registered later (such as the relay's own).
func e2eDeadEndpoint(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen for the dead Segment endpoint: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				// A transient accept failure (out of file descriptors, say):
				// back off a little rather than spin.
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // RST, not FIN
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return "http://" + l.Addr().String()
}

// e2eHeldListener is a listening socket on 127.0.0.1 held by the test, as
// systemd holds one for socket activation: its file is passed to the relay
// (e2eStartOptions.Listeners), and connections made while no relay runs
// wait in its backlog. Both are closed in t.Cleanup.
func e2eHeldListener(t testing.TB) (net.Listener, *os.File) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return l, f
}
