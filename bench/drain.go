package main

// Delivery measurements: the real gwenrelay binary (built once per bench run)
// drains its spool into a fake Segment in this process.
//
//  1. throughput: a fresh copy of the cached backlog, --rate 0, until every
//     event arrived; the spool is then checked empty, read-only;
//  2. latency: an empty spool, default rate limits, an open-loop 100 events/s;
//     each event's arrival at the fake minus its 202;
//  3. ingest at 64 clients while the drainer empties the backlog, alternating
//     with the same relay on an empty spool (the drainer only delivers what
//     comes in).

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Delivery targets.
const (
	targetDrainRate   = 20_000.0 // events/s to Segment with --rate 0
	targetLatencyP50  = 500 * time.Millisecond
	targetLatencyP99  = 1500 * time.Millisecond
	targetDrainIngest = 0.70 // ingest while draining / ingest with the drainer idle
)

// stallLimit is how long a drain may go without a new event arriving before
// the run is declared stalled.
const stallLimit = 60 * time.Second

// drainResults holds the delivery measurements.
type drainResults struct {
	build      relayBuild
	through    []drainRun
	perfFile   string
	perfRun    *drainRun // the extra run under perf, not in the medians
	perfErr    string
	perfMixed  *mixedRun // the extra draining ingest run under perf
	perfMixErr string
	latency    []latencyRun
	mixed      map[string][]mixedRun // "idle", "draining"
	errs       []string              // sections that could not finish, and why
	ran        bool
	skipNotes  []string
}

// drainRun is one throughput run.
type drainRun struct {
	Run, Attempt int
	Noisy        bool
	Events       int64
	CopySecs     float64
	Ready        time.Duration // exec to "listening"
	FirstAfter   time.Duration // exec to the first arrival
	DrainTime    time.Duration // first arrival to the last of the Events distinct messages
	EvPerSec     float64
	ServerCPU    time.Duration // relay, over DrainTime
	ClientCPU    time.Duration // this process (the fake Segment), over DrainTime
	OthersCPU    time.Duration
	Steal        time.Duration
	Fake         fakeCounts
	Hist         []int64
	Stop         relayStop
	PendingAfter int64
	DeadAfter    int64
	FileSize     int64
	ProbeP50     time.Duration
	ProbeMax     time.Duration
}

func (r drainRun) othersCores() float64 {
	if r.DrainTime <= 0 {
		return 0
	}
	return r.OthersCPU.Seconds() / r.DrainTime.Seconds()
}

func (r drainRun) serverCPUPer1k() float64 {
	return r.ServerCPU.Seconds() * 1000 / float64(max(r.Events, 1))
}

func (r drainRun) clientCPUPer1k() float64 {
	return r.ClientCPU.Seconds() * 1000 / float64(max(r.Events, 1))
}

// latencyRun is one open-loop latency run.
type latencyRun struct {
	Attempt     int
	Noisy       bool
	Rate        float64
	Duration    time.Duration
	Sent        int64
	Acked       int64
	Failed      int64
	FirstErr    string
	Arrived     int64 // acknowledged events that arrived
	Missing     int64 // acknowledged events that never arrived
	Lat         []time.Duration
	P50, P99    time.Duration
	P999        time.Duration
	Min, Max    time.Duration
	Negative    int64 // arrived before this process had read its 202
	AckP50      time.Duration
	AckP99      time.Duration
	AckP999     time.Duration
	MaxLag      time.Duration // how late the generator was on its schedule, worst
	ServerCPU   time.Duration
	ClientCPU   time.Duration
	OthersCPU   time.Duration
	Window      time.Duration
	Fake        fakeCounts
	Stop        relayStop
	PendingLeft int64
	DeadAfter   int64
	ProbeP50    time.Duration
	ProbeMax    time.Duration
}

func (r latencyRun) othersCores() float64 {
	if r.Window <= 0 {
		return 0
	}
	return r.OthersCPU.Seconds() / r.Window.Seconds()
}

// mixedRun is one ingest run against the real relay, with or without a
// backlog to drain.
type mixedRun struct {
	runResult
	Draining     bool
	Initial      int64 // pending at start
	InWindow     int64 // distinct events delivered during the window
	DrainPerSec  float64
	Delivered    int64 // distinct events delivered by the end
	PendingAfter int64
	Expected     int64 // Initial + acknowledged
	// ArrivedByEnd: distinct events arrived by the window's end; RanOut:
	// at least Initial, so the backlog may have run out inside the window.
	ArrivedByEnd int64
	RanOut       bool
	CopySecs     float64
	Fake         fakeCounts
	Stop         relayStop
}

// keepQuiet runs once until other processes kept at most --max-others cores
// busy (at most --retries repeats); if every attempt was noisy it keeps the
// quietest and reports it noisy. It returns the kept result and its attempt
// number.
func keepQuiet[T any](b *bench, what string, once func(attempt int) (T, error), others func(T) float64) (T, int, bool, error) {
	var quietest T
	var qo float64
	qa := 0
	for attempt := 1; ; attempt++ {
		t := time.Now()
		res, err := once(attempt)
		if attempt > 1 {
			b.repeatSpent += time.Since(t)
		}
		if err != nil {
			return res, attempt, false, err
		}
		o := others(res)
		if b.cfg.MaxOthers <= 0 || o <= b.cfg.MaxOthers {
			return res, attempt, false, nil
		}
		if qa == 0 || o < qo {
			quietest, qo, qa = res, o, attempt
		}
		if attempt > b.cfg.Retries || b.repeatSpent >= b.cfg.RepeatBudget {
			b.noisyKept++
			return quietest, qa, true, nil
		}
		b.repeats++
		progress("  other processes kept %.2f cores busy (over --max-others %.2f): repeating this %s run", o, b.cfg.MaxOthers, what)
	}
}

// runDrain runs the delivery measurements. A section that fails is noted in
// the report and the others still run.
func (b *bench) runDrain() {
	d := &b.drain
	d.ran = true
	d.mixed = map[string][]mixedRun{}
	progress("delivery: building gwenrelay …")
	rb, err := buildRelay(b.runDir)
	if err != nil {
		d.errs = append(d.errs, "build: "+err.Error())
		return
	}
	d.build = rb
	progress("delivery: built %s (version %q) in %.1f s", rb.Bin, rb.Version, rb.Took.Seconds())
	if b.cfg.Backlog > 0 && b.prefill.Path == "" {
		if err := b.ensureBacklog(); err != nil {
			d.errs = append(d.errs, "backlog: "+err.Error())
			return
		}
	}
	if b.cfg.Backlog > 0 && b.cfg.Dedup > 0 && time.Since(b.prefill.Created) > b.cfg.Dedup {
		d.skipNotes = append(d.skipNotes, fmt.Sprintf("the cached backlog was prefilled %s, longer ago than the dedup window (%v): its dedup keys have expired, so a relay draining it also prunes them (1,000 a commit, from a minute after its start); delete the cache for figures without that", b.prefill.Created.Format(time.RFC3339), b.cfg.Dedup))
	}
	if b.cfg.Backlog > 0 && b.cfg.Sections["throughput"] {
		if err := b.runThroughput(); err != nil {
			d.errs = append(d.errs, "throughput: "+err.Error())
			progress("delivery throughput: %v", err)
		}
	} else {
		d.skipNotes = append(d.skipNotes, "--backlog 0: the drain throughput and the ingest-while-draining comparison need a backlog and were skipped")
	}
	if b.cfg.Sections["latency"] {
		if err := b.runLatency(); err != nil {
			d.errs = append(d.errs, "latency: "+err.Error())
			progress("delivery latency: %v", err)
		}
	}
	if b.cfg.Backlog > 0 && b.cfg.Sections["mixed"] {
		if err := b.runMixed(); err != nil {
			d.errs = append(d.errs, "ingest while draining: "+err.Error())
			progress("ingest while draining: %v", err)
		}
	}
}

// --- 1. throughput -----------------------------------------------------------

func (b *bench) runThroughput() error {
	d := &b.drain
	for r := 1; r <= b.cfg.Runs; r++ {
		res, att, noisy, err := keepQuiet(b, "drain", func(a int) (drainRun, error) { return b.drainOnce(r, a, "") }, drainRun.othersCores)
		if err != nil {
			return fmt.Errorf("run %d: %w", r, err)
		}
		res.Attempt, res.Noisy = att, noisy
		d.through = append(d.through, res)
	}
	if b.cfg.Perf != "" {
		d.perfFile = b.cfg.Perf
		if _, err := exec.LookPath("perf"); err != nil {
			d.perfErr = "perf is not installed"
			return nil
		}
		progress("delivery: one more drain under perf record (not counted) → %s", b.cfg.Perf)
		res, err := b.drainOnce(0, 1, b.cfg.Perf)
		if err != nil {
			d.perfErr = err.Error()
			return nil
		}
		d.perfRun = &res
	}
	return nil
}

// cpuMarks are CPU readings at one instant.
type cpuMarks struct {
	server, self, all, steal time.Duration
	err                      error
}

func readMarks(pid int) cpuMarks {
	var m cpuMarks
	var e1, e2 error
	m.server, e1 = procCPU(pid)
	m.self = selfCPU()
	m.all, m.steal, e2 = machineCPU()
	m.err = errors.Join(e1, e2)
	return m
}

// drainOnce drains a fresh copy of the backlog into a fake Segment and checks
// the spool is empty afterwards. With perfOut, the relay runs under
// `perf record` from ready to done.
func (b *bench) drainOnce(r, attempt int, perfOut string) (drainRun, error) {
	n := int64(b.cfg.Backlog)
	res := drainRun{Run: r, Events: n}
	path := filepath.Join(b.runDir, fmt.Sprintf("drain-r%d-a%d.db", r, attempt))
	if !b.cfg.Keep {
		defer os.Remove(path)
	}
	t := time.Now()
	if err := copyFile(path, b.prefill.Path); err != nil {
		return res, fmt.Errorf("copy the backlog: %w", err)
	}
	res.CopySecs = time.Since(t).Seconds()
	var err error
	if res.ProbeP50, res.ProbeMax, err = fsyncProbe(b.runDir, 50); err != nil {
		return res, fmt.Errorf("fsync probe: %w", err)
	}
	fake, err := newFakeSegment(false, n)
	if err != nil {
		return res, err
	}
	defer fake.close()

	var pid atomic.Int64
	var mu sync.Mutex
	var m0, m1 cpuMarks
	fake.onFirst = func(time.Time) {
		m := readMarks(int(pid.Load()))
		mu.Lock()
		m0 = m
		mu.Unlock()
	}
	fake.onDone = func(time.Time) {
		m := readMarks(int(pid.Load()))
		mu.Lock()
		m1 = m
		mu.Unlock()
	}
	extra := []string{"--rate", "0"}
	if b.cfg.Dedup != serveDedupWindow {
		extra = append(extra, "--dedup-window", b.cfg.Dedup.String())
	}
	p, err := launchRelay(b.drain.build, path, fake.URL, extra...)
	if err != nil {
		return res, err
	}
	pid.Store(int64(p.pid))
	if err := p.waitListening(); err != nil {
		return res, err
	}
	res.Ready = p.ready
	var perf *exec.Cmd
	if perfOut != "" {
		perf = exec.Command("perf", "record", "-F", "499", "-g", "-p", strconv.Itoa(p.pid), "-o", perfOut)
		perf.Stdout, perf.Stderr = nil, nil
		if err := perf.Start(); err != nil {
			b.drain.perfErr = "start perf: " + err.Error()
			perf = nil
		}
	}
	stopPerf := func() {
		if perf != nil {
			_ = perf.Process.Signal(syscall.SIGINT)
			_ = perf.Wait()
			perf = nil
		}
	}
	defer stopPerf()

	fail := func(format string, args ...any) (drainRun, error) {
		stop, serr := p.stop()
		msg := fmt.Sprintf(format, args...)
		fc := fake.counts()
		msg += fmt.Sprintf("; the fake Segment had %s of %s distinct events (%s requests); per-second arrivals: %s; relay warnings: %v; relay stderr: %s",
			fmtInt(fc.Distinct), fmtInt(n), fmtInt(fc.Requests), fmtHist(fake.histogram()), stop.Warnings, p.c.describeStderr())
		if serr != nil {
			msg += "; " + serr.Error()
		}
		return res, errors.New(msg)
	}

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastDistinct int64
	lastProgress, lastReport := time.Now(), time.Now()
wait:
	for {
		select {
		case <-fake.done:
			break wait
		case <-p.c.waited:
			return fail("gwenrelay exited during the drain (%v)", p.c.err)
		case now := <-tick.C:
			fc := fake.counts()
			if fc.Distinct > lastDistinct {
				lastDistinct, lastProgress = fc.Distinct, now
			} else if now.Sub(lastProgress) > stallLimit {
				return fail("the drain stalled: no new event arrived for %v", stallLimit)
			}
			if now.Sub(lastReport) >= 15*time.Second {
				lastReport = now
				progress("  draining: %s of %s arrived", fmtInt(fc.Distinct), fmtInt(n))
			}
		}
	}
	stopPerf()
	fc := fake.counts()
	mu.Lock()
	a, z := m0, m1
	mu.Unlock()
	if err := errors.Join(a.err, z.err); err != nil {
		return fail("reading CPU times: %v", err)
	}
	res.FirstAfter = fc.First.Sub(p.started)
	res.DrainTime = fc.DoneAt.Sub(fc.First)
	res.EvPerSec = float64(n) / res.DrainTime.Seconds()
	res.ServerCPU, res.ClientCPU = z.server-a.server, z.self-a.self
	res.OthersCPU = max(0, (z.all-a.all)-res.ServerCPU-res.ClientCPU)
	res.Steal = z.steal - a.steal
	// Let the last acknowledgements commit (the drainer groups deletes for
	// up to 100 ms) before the stop; the check below is about the stop too.
	time.Sleep(500 * time.Millisecond)
	stop, err := p.stop()
	res.Stop = stop
	res.Fake, res.Hist = fake.counts(), fake.histogram()
	if err != nil {
		return res, err
	}
	st, err := spoolAfter(path)
	if err != nil {
		return res, err
	}
	res.PendingAfter, res.DeadAfter, res.FileSize = st.Pending, st.Dead, st.FileSize
	progress("drain %d: %s events in %.1f s = %s ev/s (first arrival %.2f s after exec); relay %.3f CPU-s/1k ev, fake Segment %.3f; peak anon %s, VmHWM %s, file-backed %s; %s requests, %s redelivered, longest gap %s; spool after SIGTERM: %d pending, %d dead; others' CPU %.2f cores",
		r, fmtInt(n), res.DrainTime.Seconds(), fmtInt(int64(res.EvPerSec)), res.FirstAfter.Seconds(), res.serverCPUPer1k(), res.clientCPUPer1k(),
		fmtBytes(stop.Mem.Anon<<10), fmtBytes(stop.Mem.HWM<<10), fmtBytes(stop.Mem.File<<10), fmtInt(res.Fake.Requests), fmtInt(res.Fake.Dups),
		fmtDur(res.Fake.MaxGap), res.PendingAfter, res.DeadAfter, res.othersCores())
	return res, nil
}

// --- 2. latency --------------------------------------------------------------

func (b *bench) runLatency() error {
	res, att, noisy, err := keepQuiet(b, "latency", b.latencyOnce, latencyRun.othersCores)
	if err != nil {
		return err
	}
	res.Attempt, res.Noisy = att, noisy
	b.drain.latency = append(b.drain.latency, res)
	return nil
}

// latencyWorker is the worker id of the latency run's userIds (load runs use
// ids below the client count, the prefill 0xffff).
const latencyWorker = 0xfffe

func (b *bench) latencyOnce(attempt int) (latencyRun, error) {
	rate, dur := b.cfg.LatencyRate, b.cfg.LatencyDuration
	res := latencyRun{Rate: rate, Duration: dur}
	path := filepath.Join(b.runDir, fmt.Sprintf("latency-a%d.db", attempt))
	if !b.cfg.Keep {
		defer os.Remove(path)
	}
	var err error
	if res.ProbeP50, res.ProbeMax, err = fsyncProbe(b.runDir, 50); err != nil {
		return res, fmt.Errorf("fsync probe: %w", err)
	}
	fake, err := newFakeSegment(true, 0)
	if err != nil {
		return res, err
	}
	defer fake.close()
	var extra []string
	if b.cfg.Dedup != serveDedupWindow {
		extra = append(extra, "--dedup-window", b.cfg.Dedup.String())
	}
	p, err := startRelay(b.drain.build, path, fake.URL, extra...) // default --rate and --burst
	if err != nil {
		return res, err
	}

	n := int(rate * dur.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	type sent struct {
		user         string
		begin, acked time.Time
		err          error
	}
	recs := make([]sent, n)
	nonce := rand.Uint32()
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	url := "http://" + p.addr + "/webhook"

	progress("  latency: %d events at %.0f/s, open loop, one POST each", n, rate)
	t0 := time.Now().Add(100 * time.Millisecond)
	time.Sleep(time.Until(t0))
	a := readMarks(p.pid)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		at := t0.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(at))
		res.MaxLag = max(res.MaxLag, time.Since(at))
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &recs[i]
			s.user = string(appendUUID(nil, nonce, latencyWorker, uint64(i)))
			body := b.body.build(nonce, latencyWorker, uint64(i))
			s.begin = time.Now()
			s.err = post(client, url, body)
			s.acked = time.Now()
		}()
	}
	wg.Wait()
	z := readMarks(p.pid)
	res.Window = time.Since(t0)
	res.Sent = int64(n)
	var acked []int
	var ackLat []time.Duration
	for i := range recs {
		if recs[i].err != nil {
			res.Failed++
			if res.FirstErr == "" {
				res.FirstErr = recs[i].err.Error()
			}
			continue
		}
		acked = append(acked, i)
		ackLat = append(ackLat, recs[i].acked.Sub(recs[i].begin))
	}
	res.Acked = int64(len(acked))
	// Wait for every acknowledged event to arrive (30 s at most).
	deadline := time.Now().Add(30 * time.Second)
	for fake.arrived() < len(acked) && time.Now().Before(deadline) && !p.exited() {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	stop, err := p.stop()
	res.Stop = stop
	res.Fake = fake.counts()
	if err != nil {
		return res, err
	}
	for _, i := range acked {
		at, ok := fake.arrival(recs[i].user)
		if !ok {
			res.Missing++
			continue
		}
		l := at.Sub(recs[i].acked)
		if l < 0 {
			res.Negative++
		}
		res.Lat = append(res.Lat, l)
	}
	res.Arrived = int64(len(res.Lat))
	ps := percentiles(res.Lat, 50, 99, 99.9, 100)
	res.P50, res.P99, res.P999, res.Max = ps[0], ps[1], ps[2], ps[3]
	if len(res.Lat) > 0 {
		res.Min = res.Lat[0] // sorted by percentiles
	}
	res.AckP50, res.AckP99, res.AckP999 = latencyPercentiles(ackLat)
	res.ServerCPU, res.ClientCPU = z.server-a.server, z.self-a.self
	res.OthersCPU = max(0, (z.all-a.all)-res.ServerCPU-res.ClientCPU)
	if err := errors.Join(a.err, z.err); err != nil {
		return res, fmt.Errorf("reading CPU times: %w", err)
	}
	st, err := spoolAfter(path)
	if err != nil {
		return res, err
	}
	res.PendingLeft, res.DeadAfter = st.Pending, st.Dead
	progress("latency: %d sent, %d acknowledged, %d arrived, %d missing, %d redelivered; 202→arrival p50 %s p99 %s p99.9 %s max %s; POST→202 p50 %s p99 %s p99.9 %s; generator lag max %s; others' CPU %.2f cores",
		res.Sent, res.Acked, res.Arrived, res.Missing, res.Fake.Dups, fmtDur(res.P50), fmtDur(res.P99), fmtDur(res.P999), fmtDur(res.Max),
		fmtDur(res.AckP50), fmtDur(res.AckP99), fmtDur(res.AckP999), fmtDur(res.MaxLag), res.othersCores())
	if res.Failed > 0 {
		return res, fmt.Errorf("%d of %d POSTs failed; the first: %s (relay stderr: %s)", res.Failed, n, res.FirstErr, p.c.describeStderr())
	}
	return res, nil
}

// --- 3. ingest while draining --------------------------------------------------

// runMixed alternates the relay with its drainer idle (empty spool) and the
// relay draining a fresh copy of the backlog (I D I D …), at the largest
// client count.
func (b *bench) runMixed() error {
	d := &b.drain
	for r := 1; r <= b.cfg.Runs; r++ {
		for _, draining := range []bool{false, true} {
			label := "idle"
			if draining {
				label = "draining"
			}
			res, att, noisy, err := keepQuiet(b, label, func(a int) (mixedRun, error) { return b.mixedOnce(label, draining, r, a, "") },
				func(m mixedRun) float64 { return m.othersCores() })
			if err != nil {
				return fmt.Errorf("run %d, %s: %w", r, label, err)
			}
			res.Attempt, res.Noisy = att, noisy
			d.mixed[label] = append(d.mixed[label], res)
		}
	}
	if b.cfg.Perf != "" && d.perfErr != "perf is not installed" {
		out := b.cfg.Perf + ".ingest-draining"
		progress("ingest while draining: one more draining run with the relay under perf record (not counted) → %s", out)
		res, err := b.mixedOnce("draining", true, 0, 1, out)
		if err != nil {
			d.perfMixErr = err.Error()
			return nil
		}
		d.perfMixed = &res
	}
	return nil
}

// mixedOnce runs one ingest window against the relay; with perfOut, the relay
// runs under `perf record` during the window.
func (b *bench) mixedOnce(label string, draining bool, r, attempt int, perfOut string) (mixedRun, error) {
	c := b.backlogClients()
	path := filepath.Join(b.runDir, fmt.Sprintf("mixed-%s-r%d-a%d.db", label, r, attempt))
	spec := runSpec{Label: label, Mode: "gwenrelay", Spool: path, Clients: c, Warmup: b.cfg.Warmup, Duration: b.cfg.Duration, Run: r, Nonce: rand.Uint32(), Dedup: b.cfg.Dedup}
	res := mixedRun{runResult: runResult{Spec: spec}, Draining: draining}
	if !b.cfg.Keep {
		defer os.Remove(path)
	}
	if draining {
		t := time.Now()
		if err := copyFile(path, b.prefill.Path); err != nil {
			return res, fmt.Errorf("copy the backlog: %w", err)
		}
		res.CopySecs = time.Since(t).Seconds()
		res.Initial = int64(b.cfg.Backlog)
	}
	var err error
	if res.ProbeP50, res.ProbeMax, err = fsyncProbe(b.runDir, 50); err != nil {
		return res, fmt.Errorf("fsync probe: %w", err)
	}
	fake, err := newFakeSegment(false, 0)
	if err != nil {
		return res, err
	}
	defer fake.close()
	extra := []string{"--rate", strconv.FormatFloat(b.cfg.MixedRate, 'f', -1, 64)}
	if b.cfg.Dedup != serveDedupWindow {
		extra = append(extra, "--dedup-window", b.cfg.Dedup.String())
	}
	p, err := startRelay(b.drain.build, path, fake.URL, extra...)
	if err != nil {
		return res, err
	}
	res.StartupWait = p.ready
	if draining {
		// Load starts once delivery has: the window must see both.
		deadline := time.Now().Add(5 * time.Minute)
		for fake.counts().First.IsZero() {
			if time.Now().After(deadline) || p.exited() {
				stop, _ := p.stop()
				return res, fmt.Errorf("no event arrived at the fake Segment within 5 minutes of the start; relay warnings: %v; stderr: %s", stop.Warnings, p.c.describeStderr())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var w0, w1 int64
	var perf *exec.Cmd
	edge := 0
	mark := func() {
		v := fake.counts().Distinct
		if edge == 0 {
			w0 = v
			if perfOut != "" {
				perf = exec.Command("perf", "record", "-F", "499", "-g", "-p", strconv.Itoa(p.pid), "-o", perfOut)
				if err := perf.Start(); err != nil {
					b.drain.perfMixErr = "start perf: " + err.Error()
					perf = nil
				}
			}
		} else {
			w1 = v
			if perf != nil {
				_ = perf.Process.Signal(syscall.SIGINT)
				_ = perf.Wait()
			}
		}
		edge++
	}
	out := driveLoad(p.pid, p.addr, spec, b.body, mark, &res.runResult)
	res.InWindow = w1 - w0
	res.ArrivedByEnd = w1
	res.RanOut = draining && w1 >= res.Initial
	res.DrainPerSec = float64(res.InWindow) / spec.Duration.Seconds()
	stop, stopErr := p.stop()
	res.Stop, res.MaxRSSKiB = stop, stop.MaxRSSKiB
	res.Fake = fake.counts()
	res.Delivered = res.Fake.Distinct
	if stopErr != nil {
		return res, stopErr
	}
	if out.errs > 0 {
		return res, fmt.Errorf("%d of %d requests to the relay failed; the first: %s (relay stderr: %s)", out.errs, out.errs+res.Acked, out.errMsg, p.c.describeStderr())
	}
	if out.cpuErr != nil {
		return res, fmt.Errorf("reading the relay's CPU time: %w", out.cpuErr)
	}
	st, err := spoolAfter(path)
	if err != nil {
		return res, err
	}
	res.PendingAfter = st.Pending
	res.Expected = res.Initial + res.Acked
	if res.Delivered+res.PendingAfter < res.Expected {
		return res, fmt.Errorf("at-least-once check failed: %s events were pending at the start and %s were answered 202, but only %s arrived at the fake Segment and %s are still pending",
			fmtInt(res.Initial), fmtInt(res.Acked), fmtInt(res.Delivered), fmtInt(res.PendingAfter))
	}
	progress("run %d/%d %-8s %3d clients: %8.0f ev/s  p50 %s  p99 %s  p99.9 %s; relay %.2f cores; delivered %s ev/s in the window; after stop: %s delivered, %s pending (of %s); others' CPU %.2f cores, fsync probe p50 %s",
		r, b.cfg.Runs, label, c, res.EvPerSec, fmtDur(res.P50), fmtDur(res.P99), fmtDur(res.P999), res.ServerCPU.Seconds()/spec.Duration.Seconds(),
		fmtInt(int64(res.DrainPerSec)), fmtInt(res.Delivered), fmtInt(res.PendingAfter), fmtInt(res.Expected), res.othersCores(), fmtDur(res.ProbeP50))
	return res, nil
}

// fmtHist prints per-second counts in thousands.
func fmtHist(h []int64) string {
	if len(h) == 0 {
		return "–"
	}
	s := make([]byte, 0, len(h)*5)
	for i, v := range h {
		if i > 0 {
			s = append(s, ' ')
		}
		s = fmt.Appendf(s, "%.1fk", float64(v)/1000)
	}
	return string(s)
}
