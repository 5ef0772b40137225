package main

// The real gwenrelay binary under test: built once per bench run, started
// with `serve` against the fake Segment, watched through its JSON log and
// /proc, stopped with SIGTERM.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// relayBuild is the gwenrelay binary the delivery measurements run.
type relayBuild struct {
	Bin     string
	Version string // what `gwenrelay version` printed
	Took    time.Duration
	Root    string // module directory it was built from
}

// buildRelay builds gwenrelay from the module this bench is run in, stamped
// with -X main.version=bench, into dir.
func buildRelay(dir string) (relayBuild, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return relayBuild{}, fmt.Errorf("cannot find the gwenrelay module (go env GOMOD: %q, %v): run the bench from the repository", gomod, err)
	}
	b := relayBuild{Root: filepath.Dir(gomod)}
	if b.Bin, err = filepath.Abs(filepath.Join(dir, "gwenrelay")); err != nil {
		return b, err
	}
	t := time.Now()
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version=bench", "-o", b.Bin, ".")
	cmd.Dir = b.Root
	if out, err := cmd.CombinedOutput(); err != nil {
		return b, fmt.Errorf("go build the relay in %s: %v: %s", b.Root, err, bytes.TrimSpace(out))
	}
	b.Took = time.Since(t)
	v, err := exec.Command(b.Bin, "version").Output()
	if err != nil {
		return b, fmt.Errorf("%s version: %w", b.Bin, err)
	}
	b.Version = strings.TrimSpace(string(v))
	return b, nil
}

// expectedWarning is the one warning every run logs, because the bench
// starts the relay with --insecure-no-auth; it is not tallied.
const expectedWarning = "accepting webhooks without a credential (--insecure-no-auth)"

// noAdminSocket starts the warning a relay started without --admin-socket
// logs (the delivery runs do not need one); it is not tallied either.
const noAdminSocket = "no admin socket"

// relayLog reads the relay's JSON log (stderr) line by line: it finds the
// "listening" line and tallies every warning and error.
type relayLog struct {
	mu        sync.Mutex
	partial   []byte
	listening chan string // the addr, once
	sent      bool
	lines     int
	counts    map[string]int // "LEVEL msg" -> count, for WARN and above and non-JSON lines
	firsts    []string       // the first few such lines, whole
}

func newRelayLog() *relayLog {
	return &relayLog{listening: make(chan string, 1), counts: map[string]int{}}
}

func (l *relayLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(bytes.TrimSpace(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) == 0 {
		l.partial = nil
	}
	return len(p), nil
}

func (l *relayLog) line(b []byte) {
	if len(b) == 0 {
		return
	}
	l.lines++
	var rec struct {
		Level string `json:"level"`
		Msg   string `json:"msg"`
		Addr  string `json:"addr"`
	}
	k := ""
	if err := json.Unmarshal(b, &rec); err != nil || rec.Msg == "" {
		k = "TEXT " + string(b)
		if len(k) > 200 {
			k = k[:200] + "…"
		}
	} else {
		if rec.Msg == "listening" && !l.sent && rec.Addr != "" {
			l.sent = true
			l.listening <- rec.Addr
		}
		if rec.Level == "INFO" || rec.Level == "DEBUG" || rec.Msg == expectedWarning || strings.HasPrefix(rec.Msg, noAdminSocket) {
			return
		}
		k = rec.Level + " " + rec.Msg
	}
	if l.counts[k] == 0 && len(l.firsts) < 5 {
		s := string(b)
		if len(s) > 600 {
			s = s[:600] + "…"
		}
		l.firsts = append(l.firsts, s)
	}
	l.counts[k]++
}

// summary lists the warnings and errors the relay logged, most frequent
// first ("3× WARN delivery failed; …").
func (l *relayLog) summary() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	type kn struct {
		k string
		n int
	}
	var all []kn
	for k, n := range l.counts {
		all = append(all, kn{k, n})
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].n != all[j].n {
			return all[i].n > all[j].n
		}
		return all[i].k < all[j].k
	})
	out := make([]string, len(all))
	for i, x := range all {
		out[i] = fmt.Sprintf("%d× %s", x.n, x.k)
	}
	return out
}

func (l *relayLog) samples() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.firsts...)
}

// memPeaks is what the memory sampler saw, in KiB.
type memPeaks struct {
	Anon, File, RSS, HWM int64
	Samples              int
}

// memSampler reads /proc/PID/status every interval until stopped.
type memSampler struct {
	pid     int
	mu      sync.Mutex
	p       memPeaks
	stop    chan struct{}
	stopped chan struct{}
}

func startMemSampler(pid int, every time.Duration) *memSampler {
	s := &memSampler{pid: pid, stop: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(s.stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *memSampler) sample() {
	m, err := readProcMem(s.pid)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.p.Anon, s.p.File, s.p.RSS = max(s.p.Anon, m.Anon), max(s.p.File, m.File), max(s.p.RSS, m.RSS)
	s.p.HWM = max(s.p.HWM, m.HWM)
	s.p.Samples++
	s.mu.Unlock()
}

// finish takes a last sample and stops the sampler.
func (s *memSampler) finish() memPeaks {
	select {
	case <-s.stop:
	default:
		s.sample()
		close(s.stop)
	}
	<-s.stopped
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p
}

// relayProc is a running gwenrelay serve.
type relayProc struct {
	c       *child
	log     *relayLog
	mem     *memSampler
	pid     int
	addr    string
	started time.Time
	ready   time.Duration // exec to the "listening" line
}

// launchRelay starts `gwenrelay serve` on spoolPath, delivering to
// segmentURL, with the flags every delivery run shares plus extra. Memory is
// sampled from the start. waitListening waits for it to be ready.
func launchRelay(rb relayBuild, spoolPath, segmentURL string, extra ...string) (*relayProc, error) {
	args := []string{"serve", "--spool", spoolPath, "--write-key", drainWriteKey, "--segment-endpoint", segmentURL,
		"--insecure-no-auth", "--listen", "127.0.0.1:0", "--log-format", "json"}
	args = append(args, extra...)
	cmd := exec.Command(rb.Bin, args...)
	// The operator's GWENRELAY_* settings must not change what is measured.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "GWENRELAY_") && !strings.HasPrefix(e, "STATE_DIRECTORY=") && !strings.HasPrefix(e, "CREDENTIALS_DIRECTORY=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	p := &relayProc{log: newRelayLog(), started: time.Now()}
	c, err := startCmd("gwenrelay", cmd, p.log)
	if err != nil {
		return nil, err
	}
	p.c, p.pid = c, c.cmd.Process.Pid
	go func() {
		for range c.lines { // it prints nothing on stdout outside --dry-run; never block it
		}
	}()
	p.mem = startMemSampler(p.pid, 100*time.Millisecond)
	return p, nil
}

// waitListening waits for the relay's "listening" line; on failure the
// relay is gone.
func (p *relayProc) waitListening() error {
	select {
	case p.addr = <-p.log.listening:
		p.ready = time.Since(p.started)
		return nil
	case <-p.c.waited:
		p.mem.finish()
		return fmt.Errorf("gwenrelay exited (%v) before listening; its stderr: %s", p.c.err, p.c.describeStderr())
	case <-time.After(10 * time.Minute):
		p.mem.finish()
		p.c.kill()
		return fmt.Errorf("gwenrelay printed no listening line within 10 minutes; its stderr: %s", p.c.describeStderr())
	}
}

// startRelay is launchRelay and waitListening.
func startRelay(rb relayBuild, spoolPath, segmentURL string, extra ...string) (*relayProc, error) {
	p, err := launchRelay(rb, spoolPath, segmentURL, extra...)
	if err != nil {
		return nil, err
	}
	if err := p.waitListening(); err != nil {
		return nil, err
	}
	return p, nil
}

// exited reports whether the relay has exited on its own.
func (p *relayProc) exited() bool {
	select {
	case <-p.c.waited:
		return true
	default:
		return false
	}
}

// relayStop is how a relay ended.
type relayStop struct {
	Took      time.Duration // SIGTERM to exit
	MaxRSSKiB int64
	Mem       memPeaks
	Warnings  []string // its warnings and errors, tallied
	Samples   []string
}

// stop sends SIGTERM and waits for a clean exit (2 minutes at most).
func (p *relayProc) stop() (relayStop, error) {
	var s relayStop
	s.Mem = p.mem.finish()
	t := time.Now()
	ru, err := p.c.stop(2 * time.Minute)
	s.Took = time.Since(t)
	if ru != nil {
		s.MaxRSSKiB = ru.Maxrss
	}
	s.Warnings, s.Samples = p.log.summary(), p.log.samples()
	if err != nil {
		return s, fmt.Errorf("stopping gwenrelay with SIGTERM: %w", err)
	}
	return s, nil
}

// spoolAfter opens a stopped relay's spool read-only and returns its stats.
func spoolAfter(path string) (spool.Stats, error) {
	sp, err := spool.Open(path, spool.Options{ReadOnly: true})
	if err != nil {
		return spool.Stats{}, fmt.Errorf("open %s read-only after the relay stopped: %w", path, err)
	}
	st, err := sp.Stats()
	if cerr := sp.Close(); err == nil {
		err = cerr
	}
	return st, err
}
