package main

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
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// tailBuffer keeps the last max bytes written to it (a child's stderr).
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// child is a re-executed bench subcommand.
type child struct {
	name   string
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line; closed at EOF
	stderr *tailBuffer
	waited chan struct{}
	err    error // from Wait, valid once waited is closed
}

// startChild runs this binary with args (a hidden subcommand).
func startChild(exe, name string, args ...string) (*child, error) {
	return startCmd(name, exec.Command(exe, args...), nil)
}

// startCmd runs cmd as a child; its stderr goes to the tail buffer and, if
// not nil, also to extra.
func startCmd(name string, cmd *exec.Cmd, extra io.Writer) (*child, error) {
	c := &child{name: name, cmd: cmd, lines: make(chan string, 64), stderr: &tailBuffer{max: 16 << 10}, waited: make(chan struct{})}
	c.cmd.Stderr = c.stderr
	if extra != nil {
		c.cmd.Stderr = io.MultiWriter(c.stderr, extra)
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s child: %w", name, err)
	}
	current.Store(c)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		c.err = c.cmd.Wait()
		current.CompareAndSwap(c, nil)
		close(c.waited)
	}()
	return c, nil
}

// current is the running child, if any, so an interrupt can end it.
var current atomic.Pointer[child]

// onInterrupt ends the running child and calls cleanup when the bench is
// interrupted (Ctrl-C or SIGTERM), then exits.
func onInterrupt(cleanup func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		if c := current.Load(); c != nil {
			_ = c.cmd.Process.Kill()
			<-c.waited
		}
		cleanup()
		fmt.Fprintf(os.Stderr, "bench: interrupted (%v)\n", s)
		os.Exit(130)
	}()
}

// expect waits up to timeout for a stdout line starting with prefix and
// returns the rest of it.
func (c *child) expect(prefix string, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				<-c.waited
				return "", fmt.Errorf("%s child exited (%v) before printing %q; its stderr: %s", c.name, c.err, prefix, c.describeStderr())
			}
			if rest, found := strings.CutPrefix(line, prefix+" "); found {
				return rest, nil
			}
		case <-deadline.C:
			return "", fmt.Errorf("%s child printed no %q line within %v; its stderr: %s", c.name, prefix, timeout, c.describeStderr())
		}
	}
}

func (c *child) describeStderr() string {
	if s := c.stderr.String(); s != "" {
		return s
	}
	return "(empty)"
}

// stop sends SIGTERM and waits up to timeout for the child to exit; past
// that it kills it. It returns the child's resource usage.
func (c *child) stop(timeout time.Duration) (*syscall.Rusage, error) {
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return nil, fmt.Errorf("signal %s child: %w", c.name, err)
	}
	return c.wait(timeout)
}

// wait waits up to timeout for the child to exit, killing it past that.
func (c *child) wait(timeout time.Duration) (*syscall.Rusage, error) {
	select {
	case <-c.waited:
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.waited
		return nil, fmt.Errorf("%s child did not exit within %v of being asked to; killed it. Its stderr: %s", c.name, timeout, c.describeStderr())
	}
	ru, _ := c.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if c.err != nil {
		return ru, fmt.Errorf("%s child failed (%v); its stderr: %s", c.name, c.err, c.describeStderr())
	}
	return ru, nil
}

// kill ends the child at once (on an error path).
func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.waited
}

// runSpec is one load run against one server child.
type runSpec struct {
	Label    string // durable, ceiling, empty or backlog
	Mode     string // server --mode
	Spool    string // spool file (durable)
	Clients  int
	Warmup   time.Duration
	Duration time.Duration
	Profile  string // CPU profile file for the server, or ""
	Run      int    // 1-based run number
	Nonce    uint32 // makes this run's userIds unique
	Dedup    time.Duration
	// Rate, if above 0, makes the run open loop (sweep.go): requests are
	// scheduled at Rate per second and Clients is the number of connections
	// the generator may use; Grace is how long queued requests may still be
	// sent after the window.
	Rate  float64
	Grace time.Duration
}

// runResult is what one run measured. Rates and latencies cover the window
// after the warm-up only.
type runResult struct {
	Spec        runSpec
	Requests    int // completed with 202 inside the window
	EvPerSec    float64
	P50, P99    time.Duration
	P999        time.Duration // 99.9th percentile
	Acked       int64         // 202s over the whole run, warm-up included
	Dials       int64
	ServerCPU   time.Duration // in the window
	ClientCPU   time.Duration // this process, in the window
	StartupWait time.Duration // exec to LISTEN (the spool open, for a backlog)
	Server      serverStats
	MaxRSSKiB   int64         // server, from rusage at exit
	PeakAnonKiB int64         // server, sampled from /proc (RssAnon)
	PeakFileKiB int64         // RssFile
	PeakRSSKiB  int64         // VmRSS, what ps shows as RSS
	OthersCPU   time.Duration // CPU used by every other process in the window
	Steal       time.Duration // CPU time the hypervisor took in the window
	ProbeP50    time.Duration // fsync probe just before the run
	ProbeMax    time.Duration
	Attempt     int        // 1 unless the run was repeated because of noise
	Noisy       bool       // still over --max-others after the last repeat
	Open        *openStats // open-loop runs only
}

// othersCores is the average number of cores other processes kept busy
// during the window.
func (r runResult) othersCores() float64 {
	return r.OthersCPU.Seconds() / r.Spec.Duration.Seconds()
}

// serverCPUPer1k is the server's CPU-seconds per 1,000 events.
func (r runResult) serverCPUPer1k() float64 {
	if r.Requests == 0 {
		return 0
	}
	return r.ServerCPU.Seconds() * 1000 / float64(r.Requests)
}

func (r runResult) clientCPUPer1k() float64 {
	if r.Requests == 0 {
		return 0
	}
	return r.ClientCPU.Seconds() * 1000 / float64(r.Requests)
}

// worker's tally.
type workerStats struct {
	lat    []time.Duration
	acked  int64
	errs   int64
	errMsg string
}

// maxErrorsPerWorker stops a worker that only gets failures (a dead server)
// from spinning.
const maxErrorsPerWorker = 100

// runOnce starts a server child for spec, drives it with spec.Clients
// keep-alive clients for the warm-up plus the window, and stops it.
func runOnce(exe string, spec runSpec, body eventBody, probeDir string) (runResult, error) {
	res := runResult{Spec: spec}
	var err error
	if res.ProbeP50, res.ProbeMax, err = fsyncProbe(probeDir, 50); err != nil {
		return res, fmt.Errorf("fsync probe in %s: %w", probeDir, err)
	}
	args := []string{"server", "--mode", spec.Mode}
	if spec.Spool != "" {
		args = append(args, "--spool", spec.Spool)
	}
	if spec.Profile != "" {
		args = append(args, "--cpuprofile", spec.Profile)
	}
	args = append(args, "--dedup-window", spec.Dedup.String())
	started := time.Now()
	srv, err := startChild(exe, "server ("+spec.Label+")", args...)
	if err != nil {
		return res, err
	}
	addr, err := srv.expect("LISTEN", 10*time.Minute)
	if err != nil {
		srv.kill()
		return res, err
	}
	res.StartupWait = time.Since(started)
	drive := driveLoad
	if spec.Rate > 0 {
		drive = driveOpenLoad
	}
	out := drive(srv.cmd.Process.Pid, addr, spec, body, func() { _ = srv.cmd.Process.Signal(syscall.SIGUSR1) }, &res)

	ru, stopErr := srv.stop(2 * time.Minute)
	if ru != nil {
		res.MaxRSSKiB = ru.Maxrss
	}
	var statsLine string
	for line := range srv.lines {
		if rest, ok := strings.CutPrefix(line, "STATS "); ok {
			statsLine = rest
		}
	}
	if statsLine != "" {
		if err := json.Unmarshal([]byte(statsLine), &res.Server); err != nil {
			return res, fmt.Errorf("server (%s) printed unreadable stats %q: %v", spec.Label, statsLine, err)
		}
	}
	if stopErr != nil {
		return res, stopErr
	}
	if statsLine == "" {
		return res, fmt.Errorf("server (%s) exited without printing its stats; its stderr: %s", spec.Label, srv.describeStderr())
	}

	if out.errs > 0 {
		return res, fmt.Errorf("%d of %d requests to the %s server failed; the first: %s (server stderr: %s)", out.errs, out.errs+res.Acked, spec.Label, out.errMsg, srv.describeStderr())
	}
	if out.cpuErr != nil {
		return res, fmt.Errorf("reading the server's CPU time: %w", out.cpuErr)
	}
	if spec.Mode == "durable" {
		if got := res.Server.PendingAtEnd - res.Server.PendingAtStart; got != res.Acked {
			return res, fmt.Errorf("durability check failed: the server answered 202 to %d events but its spool gained %d pending records", res.Acked, got)
		}
	}
	return res, nil
}

// loadOutcome is what driveLoad saw go wrong.
type loadOutcome struct {
	errs   int64  // failed requests
	errMsg string // the first failure
	cpuErr error  // reading CPU times
}

// driveLoad drives the server at addr (process pid) with spec.Clients
// keep-alive clients for the warm-up plus the window, calling mark at both
// edges of the window, and fills res with the window's figures: rate,
// latencies, CPU (server, this process, everything else), peak memory.
func driveLoad(pid int, addr string, spec runSpec, body eventBody, mark func(), res *runResult) loadOutcome {
	var dials atomic.Int64
	tr := newTransport(spec.Clients, &dials)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	url := "http://" + addr + "/webhook"

	start := time.Now()
	t0 := start.Add(spec.Warmup)
	t1 := t0.Add(spec.Duration)
	meter := startMeter(pid, t0, t1, mark, res)

	stats := make([]workerStats, spec.Clients)
	var wg sync.WaitGroup
	for w := 0; w < spec.Clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws := &stats[w]
			ws.lat = make([]time.Duration, 0, 1<<14)
			for seq := uint64(0); ; seq++ {
				begin := time.Now()
				if !begin.Before(t1) {
					return
				}
				err := post(client, url, body.build(spec.Nonce, uint16(w), seq))
				end := time.Now()
				if err != nil {
					ws.errs++
					if ws.errMsg == "" {
						ws.errMsg = err.Error()
					}
					if ws.errs >= maxErrorsPerWorker {
						return
					}
					continue
				}
				ws.acked++
				if !end.Before(t0) && end.Before(t1) {
					ws.lat = append(ws.lat, end.Sub(begin))
				}
			}
		}()
	}
	wg.Wait()
	cpuErr := meter.finish()
	tr.CloseIdleConnections()

	var out loadOutcome
	var all []time.Duration
	for i := range stats {
		all = append(all, stats[i].lat...)
		res.Acked += stats[i].acked
		out.errs += stats[i].errs
		if out.errMsg == "" {
			out.errMsg = stats[i].errMsg
		}
	}
	out.cpuErr = cpuErr
	res.Requests = len(all)
	res.EvPerSec = float64(len(all)) / spec.Duration.Seconds()
	res.P50, res.P99, res.P999 = latencyPercentiles(all)
	res.Dials = dials.Load()
	return out
}

// latencyPercentiles is the p50, p99 and p99.9 of d (sorted in place).
func latencyPercentiles(d []time.Duration) (p50, p99, p999 time.Duration) {
	ps := percentiles(d, 50, 99, 99.9)
	return ps[0], ps[1], ps[2]
}

// newTransport is a keep-alive transport with at most conns connections,
// counting its dials.
func newTransport(conns int, dials *atomic.Int64) *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			dials.Add(1)
			return dialer.DialContext(ctx, network, a)
		},
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
}

// meter marks the window [t0, t1) in the server (mark at both edges: commit
// stats, CPU profile), takes CPU readings at its edges and samples the
// server's memory until finish.
type meter struct {
	res                                                  *runResult
	marks, memDone, memStopped                           chan struct{}
	pid                                                  int
	cpu0, cpu1, self0, self1, all0, all1, steal0, steal1 time.Duration
	cpuErr                                               error
}

func startMeter(pid int, t0, t1 time.Time, mark func(), res *runResult) *meter {
	m := &meter{res: res, pid: pid, marks: make(chan struct{}), memDone: make(chan struct{}), memStopped: make(chan struct{})}
	go func() {
		defer close(m.marks)
		time.Sleep(time.Until(t0))
		mark()
		var e0, e1, e2, e3 error
		m.cpu0, e0 = procCPU(pid)
		m.self0 = selfCPU()
		m.all0, m.steal0, e2 = machineCPU()
		time.Sleep(time.Until(t1))
		m.cpu1, e1 = procCPU(pid)
		m.self1 = selfCPU()
		m.all1, m.steal1, e3 = machineCPU()
		mark()
		m.cpuErr = errors.Join(e0, e1, e2, e3)
	}()
	go func() {
		defer close(m.memStopped)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			m.sampleMem()
			select {
			case <-m.memDone:
				return
			case <-tick.C:
			}
		}
	}()
	return m
}

func (m *meter) sampleMem() {
	if pm, err := readProcMem(m.pid); err == nil {
		m.res.PeakAnonKiB = max(m.res.PeakAnonKiB, pm.Anon)
		m.res.PeakFileKiB = max(m.res.PeakFileKiB, pm.File)
		m.res.PeakRSSKiB = max(m.res.PeakRSSKiB, pm.RSS)
	}
}

// finish waits for the window's end, stops the memory sampler and fills
// res's CPU figures.
func (m *meter) finish() error {
	<-m.marks
	close(m.memDone)
	<-m.memStopped
	m.sampleMem()
	r := m.res
	r.ServerCPU = m.cpu1 - m.cpu0
	r.ClientCPU = m.self1 - m.self0
	r.OthersCPU = max(0, (m.all1-m.all0)-r.ServerCPU-r.ClientCPU)
	r.Steal = m.steal1 - m.steal0
	return m.cpuErr
}

// post sends one event and wants 202 Accepted.
func post(client *http.Client, url string, body []byte) error {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return nil
}
