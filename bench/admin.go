package main

// The spool CLI (`gwenrelay spool …`) on the cached backlog, each command run
// as its own process of the built binary, as an operator runs it:
//
//  1. live: a daemon serves a copy of the backlog and answers on its admin
//     socket; its Segment answers 429 with Retry-After: 300, so nothing
//     leaves and the count stays put;
//  2. offline: the same commands after the daemon stopped (SIGTERM), on the
//     file, with nobody answering on the socket; then once each with the
//     page cache dropped;
//  3. export: every pending record as NDJSON, live and offline.

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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// targetAdminCmd is the target for `spool stats` and
// `spool ls --limit 50` on a 1,000,000-record spool, live and offline.
const targetAdminCmd = 100 * time.Millisecond

// adminCmd is one command line the section times.
type adminCmd struct {
	Label  string   // as printed: "stats", "ls --limit 50", …
	Sub    []string // after `gwenrelay`: "version", or "spool" and its subcommand
	Flags  []string // after --spool and --admin-socket
	Pos    []string // positional arguments, last
	Target bool     // one of the issue's ≤ 100 ms targets
	// check looks at what the command printed; n is the spool's record count
	// and live whether a daemon should have answered.
	check func(out, errOut string, n int64, live bool) error
}

// argv is the command line after the binary.
func (c adminCmd) argv(spoolPath, socket string) []string {
	if len(c.Sub) == 0 || c.Sub[0] != "spool" {
		return append([]string(nil), c.Sub...)
	}
	a := append(append([]string(nil), c.Sub...), "--spool", spoolPath, "--admin-socket", socket)
	a = append(a, c.Flags...)
	return append(a, c.Pos...)
}

func (c adminCmd) isSpool() bool { return len(c.Sub) > 0 && c.Sub[0] == "spool" }

// adminCommands are the timed commands for a spool of n records with ids
// 1..n (the prefill's), the `version` baseline first.
func adminCommands(n int64) []adminCmd {
	mid := strconv.FormatInt(n/2, 10)
	return []adminCmd{
		{Label: "version", Sub: []string{"version"}, check: func(out, _ string, _ int64, _ bool) error {
			if strings.TrimSpace(out) == "" {
				return errors.New("printed nothing")
			}
			return nil
		}},
		{Label: "stats", Sub: []string{"spool", "stats"}, Target: true, check: checkStatsText},
		{Label: "stats --json", Sub: []string{"spool", "stats"}, Flags: []string{"--json"}, check: checkStatsJSON},
		{Label: "ls --limit 50", Sub: []string{"spool", "ls"}, Flags: []string{"--limit", "50"}, Target: true,
			check: func(out, errOut string, _ int64, _ bool) error { return checkList(out, errOut, 1, 50) }},
		{Label: "ls --limit 50 --after " + mid, Sub: []string{"spool", "ls"}, Flags: []string{"--limit", "50", "--after", mid},
			check: func(out, errOut string, n int64, _ bool) error { return checkList(out, errOut, uint64(n/2)+1, 50) }},
		{Label: "show " + mid, Sub: []string{"spool", "show"}, Pos: []string{mid},
			check: func(out, _ string, n int64, _ bool) error { return checkShow(out, uint64(n/2)) }},
	}
}

// wantSource is how `spool stats` names where it read the spool.
func wantSource(live bool) string {
	if live {
		return "live, through "
	}
	return "file (no daemon answering on "
}

func checkStatsText(out, _ string, n int64, live bool) error {
	var source, pending string
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "source":
			source = strings.TrimSpace(v)
		case "pending":
			pending = strings.TrimSpace(v)
		}
	}
	if !strings.HasPrefix(source, wantSource(live)) {
		return fmt.Errorf("source %q, want %q…", source, wantSource(live))
	}
	if f := strings.Fields(pending); len(f) == 0 || f[0] != strconv.FormatInt(n, 10) {
		return fmt.Errorf("pending %q, want %d records", pending, n)
	}
	return nil
}

func checkStatsJSON(out, _ string, n int64, live bool) error {
	var v struct {
		Live    bool  `json:"live"`
		Pending int64 `json:"pending"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return fmt.Errorf("unreadable JSON: %v", err)
	}
	if v.Live != live || v.Pending != n {
		return fmt.Errorf("live %v, pending %d; want live %v, pending %d", v.Live, v.Pending, live, n)
	}
	return nil
}

// checkList checks a `spool ls` table: a header and want rows, the first
// with id first, and the next-page hint on stderr.
func checkList(out, errOut string, first uint64, want int) error {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != want+1 || !strings.HasPrefix(lines[0], "ID") {
		return fmt.Errorf("%d lines, want a header and %d rows", len(lines), want)
	}
	if f := strings.Fields(lines[1]); len(f) == 0 || f[0] != strconv.FormatUint(first, 10) {
		return fmt.Errorf("first row %q, want id %d", lines[1], first)
	}
	if !strings.Contains(errOut, fmt.Sprintf("first %d shown", want)) {
		return fmt.Errorf("no next-page hint on stderr (%q)", errOut)
	}
	return nil
}

func checkShow(out string, id uint64) error {
	first, _, _ := strings.Cut(out, "\n")
	if f := strings.Fields(first); len(f) != 2 || f[0] != "id" || f[1] != strconv.FormatUint(id, 10) {
		return fmt.Errorf("first line %q, want id %d", first, id)
	}
	return nil
}

// cliSample is one timed process.
type cliSample struct {
	Wall      time.Duration // exec to exit, as the operator waits
	CPU       time.Duration // its user+system time
	MaxRSSKiB int64
}

// coldSample is one command run right after the page cache was dropped.
type coldSample struct {
	cliSample
	SpoolResident float64 // fraction of the spool file in the page cache just before (-1: unknown)
	BinResident   float64 // of the gwenrelay binary
}

// adminPhase is the rounds of one mode.
type adminPhase struct {
	Samples   map[string][]cliSample // label -> in run order
	Wall      time.Duration          // the counted rounds
	OthersCPU time.Duration          // other processes over Wall
	DaemonCPU time.Duration          // the daemon over Wall (live)
	Cold      map[string]coldSample
	Attempt   int
	Noisy     bool // every attempt was over --max-others; the quietest is kept
}

func (p adminPhase) othersCores() float64 {
	if p.Wall <= 0 {
		return 0
	}
	return p.OthersCPU.Seconds() / p.Wall.Seconds()
}

// exportRun is one `spool export` of every pending record.
type exportRun struct {
	Live      bool
	ToFile    bool // written to a file and checked; else to /dev/null
	Records   int64
	Wall      time.Duration
	CPU       time.Duration // the CLI process
	DaemonCPU time.Duration // live: the daemon over the same time
	MaxRSSKiB int64
	OthersCPU time.Duration // other processes over the same time
	Bytes     int64         // ToFile
	Check     exportCheck
	Attempt   int
	Noisy     bool
}

func (r exportRun) perSec() float64 { return float64(r.Records) / r.Wall.Seconds() }

func (r exportRun) othersCores() float64 {
	if r.Wall <= 0 {
		return 0
	}
	return r.OthersCPU.Seconds() / r.Wall.Seconds()
}

// adminResults holds the section's measurements.
type adminResults struct {
	ran         bool
	build       relayBuild
	records     int64
	copySecs    float64
	ctrBefore   int // bytes of the copy's counters value before its first read-write open
	ctrAfter    int
	ctrErr      string
	firstOpen   openResult // spool.Open + Stats, read-write, in a child: the upgrade if any
	firstWall   time.Duration
	secondOpen  openResult
	secondWall  time.Duration
	ready       time.Duration // daemon exec to listening
	socket      string
	live        adminPhase
	offline     adminPhase
	exports     []exportRun
	fakeReqs    int64 // requests the stuck Segment answered 429
	firstReq    time.Duration
	stop        relayStop
	pendingStop int64 // read-only, after SIGTERM
	dropNote    string
	errs        []string
	notes       []string
}

// stuckSegment answers every request 429 with Retry-After: 300, so a relay
// draining into it pauses for five minutes after each attempt and its spool
// keeps every record.
type stuckSegment struct {
	srv      *http.Server
	URL      string
	requests atomic.Int64
	first    chan struct{}
	once     sync.Once
}

func newStuckSegment() (*stuckSegment, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("stuck Segment: listen: %w", err)
	}
	s := &stuckSegment{URL: "http://" + ln.Addr().String(), first: make(chan struct{})}
	s.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		s.requests.Add(1)
		s.once.Do(func() { close(s.first) })
		w.Header().Set("Retry-After", "300")
		http.Error(w, "rate limit exceeded", http.StatusTooManyRequests)
	})}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *stuckSegment) close() { _ = s.srv.Close() }

// cliEnv is this process's environment without the operator's gwenrelay
// settings, which must not change what is measured.
func cliEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "GWENRELAY_") && !strings.HasPrefix(e, "STATE_DIRECTORY=") &&
			!strings.HasPrefix(e, "CREDENTIALS_DIRECTORY=") && !strings.HasPrefix(e, "RUNTIME_DIRECTORY=") {
			env = append(env, e)
		}
	}
	return env
}

// runCLI runs the gwenrelay binary once with args, stdout to stdout (a
// buffer if nil), and times it from exec to exit.
func runCLI(bin string, args []string, stdout io.Writer, timeout time.Duration) (cliSample, string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cliEnv()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if stdout != nil {
		cmd.Stdout = stdout
	}
	t := time.Now()
	err := cmd.Run()
	var s cliSample
	s.Wall = time.Since(t)
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			s.CPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			s.MaxRSSKiB = ru.Maxrss
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no exit within %v", timeout)
		}
		return s, out.String(), errOut.String(), fmt.Errorf("gwenrelay %s: %v; stderr: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return s, out.String(), errOut.String(), nil
}

// countersLen is the length of the spool's counters value (40 bytes in
// files written before the attempts histogram), read with bbolt directly.
// The bucket and key names are the spool package's.
func countersLen(path string) (int, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	n := -1
	err = db.View(func(tx *bolt.Tx) error {
		if m := tx.Bucket([]byte("meta")); m != nil {
			n = len(m.Get([]byte("counters")))
		}
		return nil
	})
	if err == nil && n < 0 {
		err = errors.New("no meta bucket")
	}
	return n, err
}

// timedOpen is spool.Open (read-write, as serve opens it) + Stats + Close in
// a fresh `bench open` child.
func (b *bench) timedOpen(path string) (openResult, time.Duration, error) {
	t := time.Now()
	c, err := startChild(b.exe, "open", "open", "--spool", path)
	if err != nil {
		return openResult{}, 0, err
	}
	line, err := c.expect("RESULT", 10*time.Minute)
	if err != nil {
		c.kill()
		return openResult{}, 0, err
	}
	if _, err := c.wait(time.Minute); err != nil {
		return openResult{}, 0, err
	}
	wall := time.Since(t)
	var r openResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return r, wall, fmt.Errorf("open printed an unreadable result %q: %v", line, err)
	}
	return r, wall, nil
}

// runAdmin runs the spool CLI measurements. A failure is noted in the
// report.
func (b *bench) runAdmin() {
	a := &b.admin
	a.ran = true
	if b.cfg.Backlog <= 0 {
		a.errs = append(a.errs, "--backlog 0: the spool CLI measurements need a backlog and were skipped")
		return
	}
	if b.drain.build.Bin != "" {
		a.build = b.drain.build
	} else {
		progress("spool CLI: building gwenrelay …")
		rb, err := buildRelay(b.runDir)
		if err != nil {
			a.errs = append(a.errs, "build: "+err.Error())
			return
		}
		a.build = rb
		progress("spool CLI: built %s (version %q) in %.1f s", rb.Bin, rb.Version, rb.Took.Seconds())
	}
	if b.prefill.Path == "" {
		if err := b.ensureBacklog(); err != nil {
			a.errs = append(a.errs, "backlog: "+err.Error())
			return
		}
	}
	if err := b.adminMeasure(); err != nil {
		a.errs = append(a.errs, err.Error())
		progress("spool CLI: %v", err)
	}
}

func (b *bench) adminMeasure() error {
	a := &b.admin
	n := int64(b.cfg.Backlog)
	a.records = n
	dir, err := filepath.Abs(b.runDir)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "admin.db")
	if !b.cfg.Keep {
		defer os.Remove(path)
	}
	t := time.Now()
	if err := copyFile(path, b.prefill.Path); err != nil {
		return fmt.Errorf("copy the backlog: %w", err)
	}
	a.copySecs = time.Since(t).Seconds()

	// The one-time upgrade of older counters, paid by the first read-write
	// open, and a second open for comparison.
	a.ctrBefore, err = countersLen(path)
	if err != nil {
		a.ctrErr = err.Error()
	}
	if a.firstOpen, a.firstWall, err = b.timedOpen(path); err != nil {
		return fmt.Errorf("first read-write open of the copy: %w", err)
	}
	if a.secondOpen, a.secondWall, err = b.timedOpen(path); err != nil {
		return fmt.Errorf("second read-write open of the copy: %w", err)
	}
	if a.ctrAfter, err = countersLen(path); err != nil && a.ctrErr == "" {
		a.ctrErr = err.Error()
	}
	progress("spool CLI: copy of the %s-record backlog in %.1f s; counters %d → %d bytes; first read-write open %.2f s (child exec to exit %.2f s), second %.2f s",
		fmtInt(n), a.copySecs, a.ctrBefore, a.ctrAfter, a.firstOpen.OpenSeconds+a.firstOpen.StatsSeconds, a.firstWall.Seconds(), a.secondOpen.OpenSeconds+a.secondOpen.StatsSeconds)
	if a.firstOpen.Pending != n {
		return fmt.Errorf("the copy holds %d pending records, want %d", a.firstOpen.Pending, n)
	}

	sockDir, err := os.MkdirTemp("", "gwenrelay-admin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(sockDir)
	a.socket = filepath.Join(sockDir, "a.sock")
	fake, err := newStuckSegment()
	if err != nil {
		return err
	}
	defer fake.close()
	p, err := startRelay(a.build, path, fake.URL, "--admin-socket", a.socket)
	if err != nil {
		return err
	}
	a.ready = p.ready
	stopped := false
	defer func() {
		if !stopped {
			_, _ = p.stop()
		}
	}()
	// Let the drainer make its first attempt, take the 429 and pause, so the
	// measurements see the daemon as it sits out a Retry-After.
	select {
	case <-fake.first:
		a.firstReq = time.Since(p.started)
	case <-time.After(time.Minute):
		a.notes = append(a.notes, "the daemon sent nothing to the stuck Segment within a minute of its start; measured anyway")
	case <-p.c.waited:
		return fmt.Errorf("gwenrelay exited (%v) before the measurements; its stderr: %s", p.c.err, p.c.describeStderr())
	}
	time.Sleep(2 * time.Second)
	progress("spool CLI: daemon ready in %.2f s on %s; Segment answered 429 (Retry-After: 300) %d time(s) so far", a.ready.Seconds(), a.socket, fake.requests.Load())

	if a.live, err = b.quietRounds(path, true, p.pid); err != nil {
		return fmt.Errorf("live: %w", err)
	}
	if err := b.adminExports(path, true, p.pid); err != nil {
		return fmt.Errorf("live export: %w", err)
	}
	// The daemon must still hold every record.
	if _, out, errOut, err := runCLI(a.build.Bin, adminCommands(n)[2].argv(path, a.socket), nil, time.Minute); err != nil {
		return fmt.Errorf("live, at the end: %w", err)
	} else if err := checkStatsJSON(out, errOut, n, true); err != nil {
		return fmt.Errorf("live, at the end: stats --json: %w", err)
	}
	a.fakeReqs = fake.requests.Load()
	if p.exited() {
		return fmt.Errorf("gwenrelay exited during the live measurements (%v); its stderr: %s", p.c.err, p.c.describeStderr())
	}
	stopped = true
	a.stop, err = p.stop()
	if err != nil {
		return err
	}
	st, err := spoolAfter(path)
	if err != nil {
		return err
	}
	a.pendingStop = st.Pending
	if st.Pending != n {
		return fmt.Errorf("after the daemon stopped the spool holds %d pending records, want %d", st.Pending, n)
	}
	progress("spool CLI: daemon stopped (SIGTERM) in %.2f s; %s pending", a.stop.Took.Seconds(), fmtInt(st.Pending))

	if a.offline, err = b.quietRounds(path, false, 0); err != nil {
		return fmt.Errorf("offline: %w", err)
	}
	if err := b.adminExports(path, false, 0); err != nil {
		return fmt.Errorf("offline export: %w", err)
	}
	a.offline.Cold, a.dropNote = b.adminCold(path)
	return nil
}

// quietRounds runs adminRounds, again while other processes kept more than
// --max-others cores busy (at most --retries times).
func (b *bench) quietRounds(path string, live bool, pid int) (adminPhase, error) {
	what := "offline rounds"
	if live {
		what = "live rounds"
	}
	ph, att, noisy, err := keepQuiet(b, what, func(int) (adminPhase, error) { return b.adminRounds(path, live, pid) }, adminPhase.othersCores)
	ph.Attempt, ph.Noisy = att, noisy
	return ph, err
}

// adminRounds runs one uncounted warm-up round of every command, then
// --admin-runs counted rounds, each command once per round and the order
// rotated from round to round.
func (b *bench) adminRounds(path string, live bool, pid int) (adminPhase, error) {
	a := &b.admin
	mode := "offline"
	if live {
		mode = "live"
	}
	cmds := adminCommands(a.records)
	ph := adminPhase{Samples: map[string][]cliSample{}}
	once := func(c adminCmd) (cliSample, error) {
		s, out, errOut, err := runCLI(a.build.Bin, c.argv(path, a.socket), nil, 2*time.Minute)
		if err != nil {
			return s, err
		}
		if err := c.check(out, errOut, a.records, live); err != nil {
			return s, fmt.Errorf("%s: %w", c.Label, err)
		}
		return s, nil
	}
	for _, c := range cmds {
		if _, err := once(c); err != nil {
			return ph, err
		}
	}
	all0, _, err0 := machineCPU()
	self0 := selfCPU()
	var d0 time.Duration
	if pid > 0 {
		d0, _ = procCPU(pid)
	}
	var children time.Duration
	t := time.Now()
	for r := 0; r < b.cfg.AdminRuns; r++ {
		for i := range cmds {
			c := cmds[(i+r)%len(cmds)]
			s, err := once(c)
			if err != nil {
				return ph, fmt.Errorf("round %d: %w", r+1, err)
			}
			children += s.CPU
			ph.Samples[c.Label] = append(ph.Samples[c.Label], s)
		}
	}
	ph.Wall = time.Since(t)
	all1, _, err1 := machineCPU()
	self := selfCPU() - self0
	if pid > 0 {
		d1, _ := procCPU(pid)
		ph.DaemonCPU = d1 - d0
	}
	if err0 == nil && err1 == nil {
		ph.OthersCPU = max(0, all1-all0-self-children-ph.DaemonCPU)
	}
	var parts []string
	for _, c := range cmds {
		w := walls(ph.Samples[c.Label])
		parts = append(parts, fmt.Sprintf("%s %s", c.Label, fmtDur(medianDuration(w))))
	}
	progress("spool CLI %s: %d rounds in %.1f s, medians: %s; others' CPU %.2f cores", mode, b.cfg.AdminRuns, ph.Wall.Seconds(), strings.Join(parts, ", "), ph.othersCores())
	return ph, nil
}

func walls(s []cliSample) []time.Duration {
	out := make([]time.Duration, len(s))
	for i, x := range s {
		out[i] = x.Wall
	}
	return out
}

// adminExports runs `spool export` once into a file, checked, then --runs
// times into /dev/null; a /dev/null run during which other processes kept
// more than --max-others cores busy is repeated, as the other sections do.
func (b *bench) adminExports(path string, live bool, pid int) error {
	a := &b.admin
	r, err := b.exportOnce(path, live, pid, true)
	if err != nil {
		return err
	}
	a.exports = append(a.exports, r)
	for i := 0; i < b.cfg.Runs; i++ {
		r, att, noisy, err := keepQuiet(b, "export", func(int) (exportRun, error) { return b.exportOnce(path, live, pid, false) }, exportRun.othersCores)
		if err != nil {
			return err
		}
		r.Attempt, r.Noisy = att, noisy
		a.exports = append(a.exports, r)
	}
	return nil
}

// exportOnce runs `spool export` of every pending record into a file (then
// checks and removes it) or into /dev/null.
func (b *bench) exportOnce(path string, live bool, pid int, toFile bool) (exportRun, error) {
	a := &b.admin
	r := exportRun{Live: live, ToFile: toFile, Records: a.records}
	var out *os.File
	var err error
	if toFile {
		out, err = os.CreateTemp(b.runDir, "export-*.ndjson")
	} else {
		out, err = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	if err != nil {
		return r, err
	}
	args := []string{"spool", "export", "--spool", path, "--admin-socket", a.socket}
	var d0 time.Duration
	if pid > 0 {
		d0, _ = procCPU(pid)
	}
	all0, _, err0 := machineCPU()
	self0 := selfCPU()
	s, _, _, err := runCLI(a.build.Bin, args, out, time.Hour)
	all1, _, err1 := machineCPU()
	self := selfCPU() - self0
	if pid > 0 {
		d1, _ := procCPU(pid)
		r.DaemonCPU = d1 - d0
	}
	r.Wall, r.CPU, r.MaxRSSKiB = s.Wall, s.CPU, s.MaxRSSKiB
	if err0 == nil && err1 == nil {
		r.OthersCPU = max(0, all1-all0-self-r.CPU-r.DaemonCPU)
	}
	name := out.Name()
	out.Close()
	if toFile {
		if err == nil {
			r.Check, err = checkExportFile(name)
			r.Bytes = r.Check.Bytes
			if err == nil {
				err = r.Check.want(a.records)
			}
		}
		if !b.cfg.Keep {
			os.Remove(name)
		}
	}
	if err != nil {
		return r, err
	}
	mode, where := "offline", "/dev/null"
	if live {
		mode = "live"
	}
	if toFile {
		where = fmt.Sprintf("a file (%s lines, %s, ids %d..%d in order)", fmtInt(r.Check.Lines), fmtBytes(r.Bytes), r.Check.First, r.Check.Last)
	}
	progress("spool CLI export (%s) to %s: %.1f s = %s records/s; CLI %.1f CPU-s, daemon %.1f CPU-s; others' CPU %.2f cores",
		mode, where, r.Wall.Seconds(), fmtInt(int64(r.perSec())), r.CPU.Seconds(), r.DaemonCPU.Seconds(), r.othersCores())
	return r, nil
}

// exportCheck is what an export file held.
type exportCheck struct {
	Lines        int64 // newlines
	Bytes        int64
	First, Last  uint64 // ids of the first and last lines
	Ordered      bool   // every id larger than the one before
	Unterminated bool   // bytes after the last newline
}

// want checks an export of the records 1..n.
func (c exportCheck) want(n int64) error {
	switch {
	case c.Lines != n:
		return fmt.Errorf("the export has %d lines, want %d", c.Lines, n)
	case c.Unterminated:
		return errors.New("the export's last line has no newline")
	case !c.Ordered:
		return errors.New("the export's ids are not in increasing order")
	case c.First != 1 || c.Last != uint64(n):
		return fmt.Errorf("the export runs from id %d to %d, want 1 to %d", c.First, c.Last, n)
	}
	return nil
}

func checkExportFile(name string) (exportCheck, error) {
	f, err := os.Open(name)
	if err != nil {
		return exportCheck{}, err
	}
	defer f.Close()
	return scanExport(f)
}

// scanExport counts an export's lines and checks that their ids (the
// leading "id" field, as RecordView is encoded) increase.
func scanExport(r io.Reader) (exportCheck, error) {
	c := exportCheck{Ordered: true}
	br := bufio.NewReaderSize(r, 1<<20)
	var prev uint64
	var seen int64
	var long []byte // a line longer than the buffer, assembled
	for {
		chunk, err := br.ReadSlice('\n')
		c.Bytes += int64(len(chunk))
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, chunk...)
			continue
		}
		line := chunk
		if long != nil {
			line = append(long, chunk...)
			long = nil
		}
		if len(line) > 0 {
			if line[len(line)-1] == '\n' {
				c.Lines++
			} else {
				c.Unterminated = true
			}
			seen++
			id, ok := lineID(line)
			if !ok {
				return c, fmt.Errorf("export line %d does not start with an id: %.80q", seen, line)
			}
			if seen == 1 {
				c.First = id
			} else if id <= prev {
				c.Ordered = false
			}
			prev, c.Last = id, id
		}
		if err == io.EOF {
			return c, nil
		}
		if err != nil {
			return c, err
		}
	}
}

// lineID reads the id of an export line: {"id":123,…
func lineID(line []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"id":`))
	if !ok {
		return 0, false
	}
	i := bytes.IndexByte(rest, ',')
	if i <= 0 {
		return 0, false
	}
	id, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	return id, err == nil
}

// dropCaches writes dirty pages back and drops the page cache, dentries and
// inodes (root only).
func dropCaches() error {
	syscall.Sync()
	f, err := os.OpenFile("/proc/sys/vm/drop_caches", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("3\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// adminCold runs each command once, offline, right after dropping the page
// cache (falling back to evicting the spool file and the binary when that
// is not permitted). It returns the samples and a note on how.
func (b *bench) adminCold(path string) (map[string]coldSample, string) {
	a := &b.admin
	out := map[string]coldSample{}
	note := "page cache dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before each command: the binary, the spool file and the filesystem metadata all come from the disk (the hypervisor may still cache the virtual disk)"
	for _, c := range adminCommands(a.records) {
		if err := dropCaches(); err != nil {
			note = fmt.Sprintf("could not drop the page cache (%v): the spool file and the binary were evicted instead (fsync + posix_fadvise DONTNEED), other files the command reads stay cached", err)
			e1, e2 := evict(path), evict(a.build.Bin)
			if err := errors.Join(e1, e2); err != nil {
				return out, note + fmt.Sprintf("; that failed too (%v): no cold runs", err)
			}
		}
		s := coldSample{SpoolResident: -1, BinResident: -1}
		if r, err := residency(path); err == nil {
			s.SpoolResident = r
		}
		if r, err := residency(a.build.Bin); err == nil {
			s.BinResident = r
		}
		var errOut, o string
		var err error
		s.cliSample, o, errOut, err = runCLI(a.build.Bin, c.argv(path, a.socket), nil, 5*time.Minute)
		if err == nil {
			err = c.check(o, errOut, a.records, false)
		}
		if err != nil {
			return out, note + fmt.Sprintf("; %s failed cold: %v", c.Label, err)
		}
		out[c.Label] = s
		progress("spool CLI offline, page cache dropped: %s %s (spool file %.0f%% cached before, binary %.0f%%)", c.Label, fmtDur(s.Wall), 100*s.SpoolResident, 100*s.BinResident)
	}
	return out, note
}

// --- report ------------------------------------------------------------------

// reportAdmin renders the section; standalone, with the header the other
// sections' report has.
func (b *bench) reportAdmin(standalone bool) string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	cfg, m, a := b.cfg, b.mach, &b.admin
	n := fmtInt(a.records)
	if standalone {
		p("# gwenrelay spool CLI benchmark\n\n")
		p("- Command: `go run ./bench%s`\n", joinArgs(cfg.Args))
		p("- Machine: %d CPUs (%s), %s, %.1f GiB RAM; load average %s at the start, %s at the end (shared machine: expect noise)\n",
			m.CPUs, m.CPUModel, m.Kernel, m.MemGiB, m.LoadAvg, loadAvg())
		p("- %s, %s, commit %s; took %s\n", m.GoVersion, b.began.Format("2006-01-02 15:04 MST"), m.Commit, time.Since(b.began).Round(time.Second))
		p("- Spool files: a copy of the cached backlog under `%s` (%s, a real disk)\n", cfg.Dir, b.fs)
		if cfg.Quick {
			p("- **Quick mode**: %d round(s) per command, %d export run(s) per mode, a %s-record backlog instead of 1,000,000: a smoke test, not the reference figures.\n",
				cfg.AdminRuns, cfg.Runs, n)
		}
	}
	p("\n## Spool CLI: `gwenrelay spool` on a %s-record spool\n\n", n)
	quick := ""
	if cfg.Quick {
		quick = " --quick"
	}
	p("- Reproduce this section alone: `go run ./bench --ingest=false --drain=false%s` (%d rounds per command: `--admin-runs`; %d export run(s) per mode: `--runs`).\n",
		quick, cfg.AdminRuns, cfg.Runs)
	if a.build.Bin != "" {
		p("- The real `gwenrelay` binary built from this tree (`go build -ldflags \"-X main.version=bench\"`; `gwenrelay version` prints %q), each command run as its own process as an operator runs it: "+
			"`gwenrelay spool CMD --spool FILE --admin-socket SOCK [flags] [args]`, stdout and stderr read through pipes by this process; every output is checked (the source line and pending count of `stats`, `live` and `pending` of `stats --json`, the 50 rows and first id of `ls`, the id of `show`). "+
			"Wall time is exec to exit, the operator's wait; CPU and max RSS are the process's rusage.\n", a.build.Version)
	}
	if a.copySecs > 0 {
		p("- Spool: a fresh copy of the cached %s-record backlog (%d-byte events shaped as the relay writes them, ids 1..%s; copied and fsynced in %.1f s).\n", n, eventSize, n, a.copySecs)
	}
	if a.firstWall > 0 {
		up := a.firstOpen.OpenSeconds + a.firstOpen.StatsSeconds
		re := a.secondOpen.OpenSeconds + a.secondOpen.StatsSeconds
		switch {
		case a.ctrErr != "":
			p("- One-time counters upgrade: could not read the counters' size (%s); the first read-write open (spool.Open + Stats, as serve does, in a child) took %.2f s, the next %.2f s.\n", a.ctrErr, up, re)
		case a.ctrBefore != a.ctrAfter:
			p("- **One-time counters upgrade**: the cached file's counters were %d bytes (written before the attempts histogram); the first read-write open rebuilt the histogram by one scan of the %s pending records and wrote them as %d bytes: "+
				"spool.Open + Stats %.2f s (child exec to exit %.2f s), against %.2f s for the next open. It was paid once, before any measurement below; without it every read-only open (offline stats, ls, show, export) would repeat that scan.\n",
				a.ctrBefore, n, a.ctrAfter, up, a.firstWall.Seconds(), re)
		default:
			p("- Counters: already %d bytes (current) in the cached file, so no upgrade scan was due: first read-write open (spool.Open + Stats, in a child) %.2f s, the next %.2f s.\n", a.ctrAfter, up, re)
		}
	}
	if a.socket != "" {
		p("- Live: `gwenrelay serve --spool FILE --admin-socket SOCK --write-key bench --segment-endpoint http://127.0.0.1:PORT --insecure-no-auth --listen 127.0.0.1:0 --log-format json` (default --rate) "+
			"against a fake Segment in this process that answers every request `429` with `Retry-After: 300`: "+
			"the daemon's first batch was refused %s after exec, its limiter then paused delivery for 5 minutes, and the spool kept all %s records "+
			"(checked by every `stats --json` and once more after the live measurements; %s request(s) reached the fake in all). The daemon logged `listening` %s after exec; "+
			"the measurements began 2 s after its first refused batch.\n",
			fmtDur(a.firstReq), n, fmtInt(a.fakeReqs), fmtDur(a.ready))
		p("- Offline: the daemon stopped with SIGTERM, cleanly, in %.2f s%s; the spool, then opened read-only, held %s pending. The same commands then find nobody on the socket (the daemon removed it) and open the file read-only.\n",
			a.stop.Took.Seconds(), stopWhy(a.stop), fmtInt(a.pendingStop))
		p("- Rounds: one warm-up round (not counted), then %d rounds; each round runs every command once, the order rotated by one each round, so drift and position hit all alike. "+
			"Others' CPU during the counted rounds (all of /proc/stat minus this process, the commands and the daemon): live %s, offline %s; "+
			"rounds during which other processes kept more than --max-others %.2f cores busy are run again, up to --retries %d times. "+
			"The daemon used %.2f CPU-s over the %.1f s of live rounds.\n",
			cfg.AdminRuns, phaseNoise(a.live), phaseNoise(a.offline), cfg.MaxOthers, cfg.Retries, a.live.DaemonCPU.Seconds(), a.live.Wall.Seconds())
	}
	cmds := adminCommands(a.records)
	if len(a.live.Samples) > 0 {
		p("\n| command (`gwenrelay …`) | live median | p90 | max | offline median | p90 | max | offline, page cache dropped (1 run) |\n")
		p("|---|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, c := range cmds {
			label := c.Label
			if c.isSpool() {
				label = "spool " + label
			}
			lm, lp, lx := phaseStats(a.live, c.Label)
			om, op, ox := phaseStats(a.offline, c.Label)
			cold := "–"
			if s, ok := a.offline.Cold[c.Label]; ok {
				cold = fmtDur(s.Wall)
			}
			label = "`" + label + "`"
			if !c.isSpool() {
				label += " (process start: the baseline)"
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", label, fmtDur(lm), fmtDur(lp), fmtDur(lx), fmtDur(om), fmtDur(op), fmtDur(ox), cold)
		}
		p("\n| command | live: median − `version` median | CPU-s median | max RSS | offline: median − `version` median | CPU-s median | max RSS |\n")
		p("|---|--:|--:|--:|--:|--:|--:|\n")
		lv, _, _ := phaseStats(a.live, "version")
		ov, _, _ := phaseStats(a.offline, "version")
		for _, c := range cmds[1:] {
			lm, _, _ := phaseStats(a.live, c.Label)
			om, _, _ := phaseStats(a.offline, c.Label)
			lc, lr := phaseCost(a.live, c.Label)
			oc, or := phaseCost(a.offline, c.Label)
			p("| `spool %s` | %s | %.3f | %s | %s | %.3f | %s |\n", c.Label, fmtSigned(lm-lv), lc, fmtBytes(lr<<10), fmtSigned(om-ov), oc, fmtBytes(or<<10))
		}
		p("\nTargets (the issue: `spool stats` and `spool ls --limit 50` on a 1,000,000-record spool, live and offline, each ≤ %d ms; judged on the median wall time of the whole process, p90 beside it):\n\n", targetAdminCmd.Milliseconds())
		p("| measurement | target | live median (p90) | | offline median (p90) | |\n|---|--:|--:|---|--:|---|\n")
		for _, c := range cmds {
			if !c.Target {
				continue
			}
			lm, lp, _ := phaseStats(a.live, c.Label)
			om, op, _ := phaseStats(a.offline, c.Label)
			p("| `spool %s`, %s records | ≤ %d ms | %s (%s) | %s | %s (%s) | %s |\n", c.Label, n, targetAdminCmd.Milliseconds(),
				fmtDur(lm), fmtDur(lp), b.check(fmt.Sprintf("`gwenrelay spool %s`, %s records, live (through the daemon)", c.Label, n), fmtDur(lm)+" median", fmt.Sprintf("≤ %d ms", targetAdminCmd.Milliseconds()), lm > 0 && lm <= targetAdminCmd),
				fmtDur(om), fmtDur(op), b.check(fmt.Sprintf("`gwenrelay spool %s`, %s records, offline (the file)", c.Label, n), fmtDur(om)+" median", fmt.Sprintf("≤ %d ms", targetAdminCmd.Milliseconds()), om > 0 && om <= targetAdminCmd))
		}
		if a.records != 1_000_000 {
			p("\n(The targets are for 1,000,000 records; this run's spool holds %s.)\n", n)
		}
		p("\n")
		if a.dropNote != "" {
			p("- Cold runs: %s.", a.dropNote)
			var sr, br []float64
			var extra []time.Duration
			base, haveBase := a.offline.Cold["version"]
			for _, c := range cmds {
				if s, ok := a.offline.Cold[c.Label]; ok {
					sr, br = append(sr, s.SpoolResident), append(br, s.BinResident)
					if c.isSpool() && haveBase {
						extra = append(extra, s.Wall-base.Wall)
					}
				}
			}
			if len(sr) > 0 {
				p(" Just before each: spool file in the page cache %s, binary %s.", samePcts(sr), samePcts(br))
			}
			if len(extra) > 0 {
				ps := percentiles(extra, 0, 100)
				p(" Cold, the spool commands differed from the cold `version` by %s to %s (one run each): a cold run is mostly the binary loading.", fmtSigned(ps[0]), fmtSigned(ps[1]))
			}
			p("\n")
		}
	}
	b.reportExports(p)
	warn := a.stop.Warnings
	if len(warn) > 0 {
		p("- The live daemon logged (tallied): %s\n", strings.Join(warn, "; "))
	}
	for _, s := range a.notes {
		p("- %s\n", s)
	}
	for _, e := range a.errs {
		p("- **Could not finish** %s\n", e)
	}
	return w.String()
}

// samePcts is fmtPcts, said once when every value is the same.
func samePcts(v []float64) string {
	s := fmtPcts(v)
	first, _, _ := strings.Cut(s, ", ")
	if len(v) > 1 && strings.Count(s, first+", ")+1 == len(v) && strings.HasSuffix(s, first) {
		return first + " each time"
	}
	return s
}

// phaseNoise describes the others' CPU of a phase and its attempt.
func phaseNoise(ph adminPhase) string {
	s := fmt.Sprintf("%.2f cores", ph.othersCores())
	if ph.Attempt > 1 {
		s += fmt.Sprintf(" (attempt %d)", ph.Attempt)
	}
	if ph.Noisy {
		s += " (**noisy**: the quietest attempt)"
	}
	return s
}

// stopWhy explains a stop that waited out the drain timeout.
func stopWhy(s relayStop) string {
	for _, w := range s.Warnings {
		if strings.Contains(w, "deliveries unsettled") {
			return " (the drainer waits up to its 10 s drain timeout for the batch held in the Retry-After pause, then stops with it unsettled: its records stay pending, as the warning below says)"
		}
	}
	return ""
}

// phaseStats is the median, p90 and max wall time of a command in a phase.
func phaseStats(ph adminPhase, label string) (med, p90, mx time.Duration) {
	w := walls(ph.Samples[label])
	if len(w) == 0 {
		return 0, 0, 0
	}
	med = medianDuration(w)
	ps := percentiles(w, 90, 100)
	return med, ps[0], ps[1]
}

// phaseCost is the median CPU seconds and the largest max RSS (KiB) of a
// command in a phase.
func phaseCost(ph adminPhase, label string) (cpu float64, rss int64) {
	var c []float64
	for _, s := range ph.Samples[label] {
		c = append(c, s.CPU.Seconds())
		rss = max(rss, s.MaxRSSKiB)
	}
	return median(c), rss
}

func (b *bench) reportExports(p func(string, ...any)) {
	a := &b.admin
	if len(a.exports) == 0 {
		return
	}
	n := fmtInt(a.records)
	p("\n### `spool export` of all %s pending records\n\n", n)
	p("`gwenrelay spool export --spool FILE --admin-socket SOCK` (NDJSON, one record a line), live (the daemon scans and encodes, the CLI copies the stream to its stdout) and offline (the CLI opens the file read-only and does it all). "+
		"Each mode: one run into a file on the same disk, checked (newlines counted, ids read from every line: %s, in increasing order, from 1 to %s), then %d run(s) into /dev/null (each run again while other processes kept more than --max-others cores busy, as the rounds); records/s = %s / wall time of the process. "+
		"MB/s uses the size of the checked file. ", n, n, b.cfg.Runs, n)
	p("CLI max RSS counts the pages of the mapped spool file it read (offline).\n\n")
	p("| mode | runs into /dev/null: records/s | median records/s | median MB/s | median wall | CLI CPU-s | daemon CPU-s | CLI max RSS | others' CPU | into a file: records/s | lines | bytes (per record) |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	var costs []string
	for _, live := range []bool{true, false} {
		var file *exportRun
		var rates, mbs, wall, cpu, dcpu, others []float64
		var rss int64
		var each []string
		for i := range a.exports {
			r := &a.exports[i]
			if r.Live != live {
				continue
			}
			if r.ToFile {
				file = r
				continue
			}
			rates = append(rates, r.perSec())
			wall = append(wall, r.Wall.Seconds())
			cpu = append(cpu, r.CPU.Seconds())
			dcpu = append(dcpu, r.DaemonCPU.Seconds())
			rss = max(rss, r.MaxRSSKiB)
			others = append(others, r.othersCores())
			e := fmtInt(int64(r.perSec()))
			if r.Attempt > 1 {
				e += fmt.Sprintf(" (attempt %d)", r.Attempt)
			}
			if r.Noisy {
				e += " (noisy)"
			}
			each = append(each, e)
		}
		if file == nil && len(rates) == 0 {
			continue
		}
		mode := "offline"
		daemon := "–"
		if live {
			mode = "live"
			daemon = fmt.Sprintf("%.1f", median(dcpu))
		}
		fileRate, lines, bytesCol := "–", "–", "–"
		if file != nil {
			fileRate = fmtInt(int64(file.perSec()))
			lines = fmtInt(file.Check.Lines)
			bytesCol = fmt.Sprintf("%s (%.0f B)", fmtBytes(file.Bytes), float64(file.Bytes)/float64(max(file.Check.Lines, 1)))
			for _, r := range rates {
				mbs = append(mbs, r*float64(file.Bytes)/float64(a.records)/1e6)
			}
		}
		mb := "–"
		if len(mbs) > 0 {
			mb = fmt.Sprintf("%.0f", median(mbs))
		}
		p("| %s | %s | %s | %s | %.1f s | %.1f | %s | %s | %.2f cores | %s | %s | %s |\n", mode, strings.Join(each, ", "), fmtInt(int64(median(rates))), mb,
			median(wall), median(cpu), daemon, fmtBytes(rss<<10), median(others), fileRate, lines, bytesCol)
		perRec := func(sec float64) float64 { return sec * 1e6 / float64(max(a.records, 1)) }
		busy := 100 * max(median(dcpu), median(cpu)) / max(median(wall), 1e-9)
		if live {
			costs = append(costs, fmt.Sprintf("live, %.1f µs in the daemon + %.1f µs in the CLI (the daemon on a CPU %.0f%% of the wall time)", perRec(median(dcpu)), perRec(median(cpu)), busy))
		} else {
			costs = append(costs, fmt.Sprintf("offline, %.1f µs in the CLI (on a CPU %.0f%% of the wall time)", perRec(median(cpu)), busy))
		}
	}
	if len(costs) > 0 {
		p("\n- CPU per exported record (medians of the /dev/null runs): %s. The scan and the encoding run on one goroutine: at about 100%% the export is bound by one core.\n", strings.Join(costs, "; "))
	}
}
