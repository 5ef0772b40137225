package main

import (
	"fmt"
	"strings"
	"time"
)

// summary is the median of a point's runs.
type summary struct {
	N                    int
	EvPerSec             float64
	MinEv, MaxEv         float64
	P50, P99             time.Duration
	ServerCPU1k          float64
	ClientCPU1k          float64
	CommitsPerSec        float64
	PerCommit            float64
	CommitP50, CommitP99 float64
	Others               float64 // median cores used by other processes
}

func summarize(runs []runResult) summary {
	s := summary{N: len(runs)}
	if len(runs) == 0 {
		return s
	}
	var ev, scpu, ccpu, cps, per, c50, c99, oth []float64
	var p50, p99 []time.Duration
	for _, r := range runs {
		ev = append(ev, r.EvPerSec)
		p50 = append(p50, r.P50)
		p99 = append(p99, r.P99)
		scpu = append(scpu, r.serverCPUPer1k())
		ccpu = append(ccpu, r.clientCPUPer1k())
		cps = append(cps, float64(r.Server.Commits)/r.Spec.Duration.Seconds())
		per = append(per, perCommit(r.Server))
		c50 = append(c50, r.Server.CommitP50Ms)
		c99 = append(c99, r.Server.CommitP99Ms)
		oth = append(oth, r.othersCores())
	}
	s.Others = median(oth)
	s.EvPerSec, s.P50, s.P99 = median(ev), medianDuration(p50), medianDuration(p99)
	s.MinEv, s.MaxEv = minOf(ev), maxOf(ev)
	s.ServerCPU1k, s.ClientCPU1k = median(scpu), median(ccpu)
	s.CommitsPerSec, s.PerCommit, s.CommitP50, s.CommitP99 = median(cps), median(per), median(c50), median(c99)
	return s
}

func minOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

func maxOf(v []float64) float64 {
	m := v[0]
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

func verdict(ok bool) string {
	if ok {
		return "**PASS**"
	}
	return "**MISS**"
}

// report renders the results as markdown (printed and, with --out, saved).
func (b *bench) report() string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	cfg := b.cfg
	m := b.mach

	switch {
	case cfg.Ingest && cfg.Drain:
		p("# gwenrelay benchmark: ingest and delivery\n\n")
	case cfg.Drain:
		p("# gwenrelay delivery benchmark\n\n")
	default:
		p("# gwenrelay ingest benchmark\n\n")
	}
	p("- Command: `go run ./bench%s`\n", joinArgs(cfg.Args))
	p("- Machine: %d CPUs (%s), %s, %.1f GiB RAM; load average %s at the start, %s at the end (shared machine: expect noise)\n",
		m.CPUs, m.CPUModel, m.Kernel, m.MemGiB, m.LoadAvg, loadAvg())
	p("- %s, %s, commit %s; took %s\n", m.GoVersion, b.began.Format("2006-01-02 15:04 MST"), m.Commit, time.Since(b.began).Round(time.Second))
	p("- Spool files: a fresh file per run under `%s` (%s, a real disk: every commit's fsync reaches it)\n", b.cfg.Dir, b.fs)
	if cfg.Ingest {
		p("- Ingest method: the relay runs in a child process built as `gwenrelay serve --insecure-no-auth` builds its ingest path (no drainer) "+
			"(relay.NewIngest + NewServer, DefaultMapping, spool.Open with the default 24 h dedup window, so each event also writes its dedup keys); "+
			"this process drives it over loopback with N keep-alive clients, one request in flight each, on the same %d cores. "+
			"Bodies are %d-byte `achievement_update` events (the testdata example, padded) with a unique userId each, so none is a duplicate. "+
			"The ceiling is the same handler path with a store whose Append keeps nothing and returns fresh ids. "+
			"Durable and ceiling runs alternate (D C D C …); each point is the median of %d run(s) of %v after a %v warm-up that is not counted; "+
			"a run during which other processes kept more than --max-others cores busy is repeated (up to --retries times). "+
			"Every durable run checks that the spool gained exactly as many records as were answered 202.\n",
			m.CPUs, eventSize, cfg.Runs, cfg.Duration, cfg.Warmup)
	}
	if cfg.Drain {
		p("- Delivery method: the real gwenrelay binary drains into a fake Segment in this process (details in the delivery sections); compared runs alternate and report medians of %d run(s).\n", cfg.Runs)
	}
	if cfg.Dedup != serveDedupWindow {
		p("- **Non-default dedup window**: the servers ran with --dedup-window %v (serve's default is %v): an experiment, not the shipped configuration.\n", cfg.Dedup, serveDedupWindow)
	}
	p("- %s\n", b.noiseLine())
	if cfg.Quick {
		p("- **Quick mode**: %d run(s) of %v per point, a %s-event backlog instead of 1,000,000 and a %v latency run: a smoke test, not the reference figures.\n",
			cfg.Runs, cfg.Duration, fmtInt(int64(cfg.Backlog)), cfg.LatencyDuration)
	}
	if cfg.Ingest {
		b.reportIngest(&w)
	}
	if cfg.Drain {
		b.reportDrain(p)
	}
	if len(b.notes) > 0 {
		p("\n## Notes\n\n")
		for _, n := range b.notes {
			p("- %s\n", n)
		}
	}
	return w.String()
}

// reportIngest renders the ingest sections.
func (b *bench) reportIngest(w *strings.Builder) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	cfg := b.cfg

	p("\n## Ingest: durable spool vs in-memory ceiling\n\n")
	p("| clients | durable ev/s | p50 | p99 | ceiling ev/s | p50 | p99 | durable/ceiling |\n")
	p("|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range cfg.Clients {
		d, cl := summarize(b.main[key("durable", c)]), summarize(b.main[key("ceiling", c)])
		p("| %d | %s | %s | %s | %s | %s | %s | %.0f%% |\n", c, fmtInt(int64(d.EvPerSec)), fmtDur(d.P50), fmtDur(d.P99),
			fmtInt(int64(cl.EvPerSec)), fmtDur(cl.P50), fmtDur(cl.P99), 100*ratio(d.EvPerSec, cl.EvPerSec))
	}
	p("\n")
	if has(cfg.Clients, 64) {
		d, cl := summarize(b.main[key("durable", 64)]), summarize(b.main[key("ceiling", 64)])
		r := ratio(d.EvPerSec, cl.EvPerSec)
		p("- 64 clients, durable/ceiling: %.0f%% (per round, each durable run over the ceiling run after it: %s) — target ≥ %.0f%%: %s\n",
			100*r, pairRatios(b.main[key("durable", 64)], b.main[key("ceiling", 64)]), 100*targetRatio64, verdict(r >= targetRatio64))
	}
	if has(cfg.Clients, 1) {
		d := summarize(b.main[key("durable", 1)])
		p("- 1 client, durable p50: %s — target ≤ %s: %s\n", fmtDur(d.P50), fmtDur(targetP50One), verdict(d.P50 <= targetP50One))
	}

	p("\n## Cost per event (medians over the measured window)\n\n")
	p("| clients | server CPU-s / 1k ev, durable | ceiling | load generator CPU-s / 1k ev, durable | commits/s | events/commit | commit p50 | commit p99 | others' CPU, durable / ceiling runs |\n")
	p("|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range cfg.Clients {
		d, cl := summarize(b.main[key("durable", c)]), summarize(b.main[key("ceiling", c)])
		p("| %d | %.3f | %.3f | %.3f | %s | %.1f | %.2f ms | %.2f ms | %.2f / %.2f cores |\n", c, d.ServerCPU1k, cl.ServerCPU1k, d.ClientCPU1k,
			fmtInt(int64(d.CommitsPerSec)), d.PerCommit, d.CommitP50, d.CommitP99, d.Others, cl.Others)
	}
	p("\nServer CPU is from /proc/PID/stat at the window's edges (all threads, user+system); commit figures come from the spool's commit hook (one bbolt transaction + fsync each).\n")

	if cfg.Backlog > 0 {
		b.reportBacklog(p)
	}

	p("\n## Every ingest run\n\n")
	p("In run order within each point. Others' CPU: cores kept busy by every other process on the machine during the window " +
		"(all of /proc/stat minus the server and the load generator); steal: taken by the hypervisor; fsync probe: 50 × (4 KiB append + fdatasync) just before the run.\n\n")
	p("| # | what | clients | ev/s | p50 | p99 | server CPU-s / 1k ev | commits | conns | others' CPU | steal | fsync probe p50 / max | attempt |\n")
	p("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	all := func(rs []runResult) {
		for _, r := range rs {
			att := fmt.Sprint(r.Attempt)
			if r.Noisy {
				att += " (noisy)"
			}
			p("| %d | %s | %d | %s | %s | %s | %.3f | %s | %d | %.2f | %.2f | %s / %s | %s |\n", r.Spec.Run, r.Spec.Label, r.Spec.Clients, fmtInt(int64(r.EvPerSec)),
				fmtDur(r.P50), fmtDur(r.P99), r.serverCPUPer1k(), fmtInt(int64(r.Server.Commits)), r.Dials,
				r.othersCores(), r.Steal.Seconds()/r.Spec.Duration.Seconds(), fmtDur(r.ProbeP50), fmtDur(r.ProbeMax), att)
		}
	}
	for _, c := range cfg.Clients {
		all(b.main[key("durable", c)])
		all(b.main[key("ceiling", c)])
	}
	all(b.backlog["empty"])
	all(b.backlog["backlog"])
}

func (b *bench) reportBacklog(p func(string, ...any)) {
	cfg := b.cfg
	n := fmtInt(int64(cfg.Backlog))
	c := b.backlogClients()
	p("\n## Backlog: %s events already pending\n\n", n)
	pf := b.prefill
	how := fmt.Sprintf("prefilled in %.1f s (%s ev/s; spool.Append of 5,000 entries per call from 4 goroutines, group-committed)",
		pf.Result.Seconds, fmtInt(int64(float64(pf.Result.Pending)/pf.Result.Seconds)))
	if pf.Reused {
		how = fmt.Sprintf("reused from the cache, prefilled %s in %.1f s", pf.Created.Format("2006-01-02 15:04"), pf.Result.Seconds)
	}
	p("- Backlog file: %s events of %d bytes, %s (%.2f KB of file per event), %s. Records are shaped as the relay writes them "+
		"(canonical JSON, sha256 dedup key, its messageId, dedup and expiry index entries).\n",
		n, eventSize, fmtBytes(pf.Result.FileSize), float64(pf.Result.FileSize)/float64(cfg.Backlog)/1000, how)
	var relayBytes []float64
	for _, x := range b.backlog["empty"] {
		if x.Server.PendingAtEnd > 0 {
			relayBytes = append(relayBytes, float64(x.Server.BytesAtEnd)/float64(x.Server.PendingAtEnd))
		}
	}
	if pf.Result.Pending > 0 && len(relayBytes) > 0 {
		p("- Stored bytes per record: %.0f in the prefill, %.0f in records the relay wrote itself (same shape check).\n",
			float64(pf.Result.Bytes)/float64(pf.Result.Pending), median(relayBytes))
	}
	p("- Each backlog run gets its own copy of the cached file (copied and fsynced before the server starts: %s s), so every run starts from the same %s pending "+
		"and the runs' own appends never accumulate. No drainer runs in these ingest measurements, so the backlog only sits there. "+
		"The file was last closed cleanly, so the server's open reads bbolt's saved freelist instead of walking the file.\n",
		fmtSecs(pf.CopySecs), n)
	e, bl := summarize(b.backlog["empty"]), summarize(b.backlog["backlog"])
	p("\n| spool at start (%d clients, durable) | ev/s | p50 | p99 | server CPU-s / 1k ev | commit p50 | commit p99 | events/commit |\n", c)
	p("|---|--:|--:|--:|--:|--:|--:|--:|\n")
	p("| empty | %s | %s | %s | %.3f | %.2f ms | %.2f ms | %.1f |\n", fmtInt(int64(e.EvPerSec)), fmtDur(e.P50), fmtDur(e.P99), e.ServerCPU1k, e.CommitP50, e.CommitP99, e.PerCommit)
	p("| %s pending | %s | %s | %s | %.3f | %.2f ms | %.2f ms | %.1f |\n\n", n, fmtInt(int64(bl.EvPerSec)), fmtDur(bl.P50), fmtDur(bl.P99), bl.ServerCPU1k, bl.CommitP50, bl.CommitP99, bl.PerCommit)
	r := ratio(bl.EvPerSec, e.EvPerSec)
	p("- %d clients with %s pending vs empty: %.0f%% (per round: %s) — target ≥ %.0f%%: %s\n", c, n, 100*r,
		pairRatios(b.backlog["backlog"], b.backlog["empty"]), 100*targetBacklogRatio, verdict(r >= targetBacklogRatio))
	var rss, anon, file, startup int64
	var opens []float64
	for _, x := range b.backlog["backlog"] {
		rss, anon, file = max(rss, x.MaxRSSKiB), max(anon, x.PeakAnonKiB), max(file, x.PeakFileKiB)
		startup = max(startup, int64(x.StartupWait))
		opens = append(opens, x.Server.OpenSeconds)
	}
	var emptyRSS int64
	for _, x := range b.backlog["empty"] {
		emptyRSS = max(emptyRSS, x.MaxRSSKiB)
	}
	p("- Server peak RSS with %s pending: %s (rusage max RSS), of which at most %s anonymous (Go heap, freelist) and %s file-backed "+
		"(bbolt's mmap of the spool: page cache, shared and reclaimable); with an empty spool: %s.\n",
		n, fmtBytes(rss<<10), fmtBytes(anon<<10), fmtBytes(file<<10), fmtBytes(emptyRSS<<10))
	p("- The backlog servers' own spool.Open + Stats (file just copied, so in the page cache): %s s.\n", fmtSecs(opens))

	p("\n### Opening the %s-event spool\n\n", n)
	if b.openErr != "" {
		p("- Open timing failed: %s\n", b.openErr)
		return
	}
	var cold, crashed, warm []float64
	var coldRes, crashedRes, warmRes []float64
	var maxRSS int64
	for _, s := range b.opens {
		t := s.Result.OpenSeconds + s.Result.StatsSeconds
		switch {
		case s.Crashed:
			crashed, crashedRes = append(crashed, t), append(crashedRes, s.Resident)
		case s.Cold:
			cold, coldRes = append(cold, t), append(coldRes, s.Resident)
		default:
			warm, warmRes = append(warm, t), append(warmRes, s.Resident)
		}
		maxRSS = max(maxRSS, s.Result.MaxRSSKiB)
	}
	p("spool.Open + the first Stats, as `gwenrelay serve` does at start, each in a fresh child process on the cached file. ")
	p("Cold = the file dropped from the page cache first (fsync + posix_fadvise DONTNEED; the hypervisor may still cache the virtual disk), as after a reboot; warm = right after a cold open, as a service restart. ")
	p("After a clean stop the file holds bbolt's freelist (spool.Close writes it), so an open reads that; after a crash (a child that committed and exited without closing) it does not, and bbolt rebuilds the freelist by walking every page.\n\n")
	p("| | median | each | file in page cache before |\n|---|--:|---|--:|\n")
	p("| cold, after a clean stop | %.2f s | %s | %s |\n", median(cold), fmtSecs(cold), fmtPcts(coldRes))
	p("| warm | %.2f s | %s | %s |\n", median(warm), fmtSecs(warm), fmtPcts(warmRes))
	p("| cold, after a crash | %.2f s | %s | %s |\n\n", median(crashed), fmtSecs(crashed), fmtPcts(crashedRes))
	p("- Open, cold after a clean stop (a reboot): %.2f s — target ≤ %v: %s\n", median(cold), targetOpen, verdict(time.Duration(median(cold)*float64(time.Second)) <= targetOpen))
	p("- Open, warm (a service restart): %.2f s — target ≤ %v: %s\n", median(warm), targetOpen, verdict(time.Duration(median(warm)*float64(time.Second)) <= targetOpen))
	p("- Open, cold after a crash (freelist rebuilt by walking the file): %.2f s — target ≤ %v: %s\n", median(crashed), targetOpen, verdict(time.Duration(median(crashed)*float64(time.Second)) <= targetOpen))
	p("- Peak RSS of an open child: %s (the pages of the mapped file it read).\n", fmtBytes(maxRSS<<10))
	for _, s := range b.opens {
		if s.EvictNote != "" {
			p("- Could not evict the file before a cold open: %s\n", s.EvictNote)
			break
		}
	}
}

// noiseLine summarises how busy the machine was during the windows.
func (b *bench) noiseLine() string {
	var others, probes []float64
	var worstOthers float64
	var worstProbe time.Duration
	add := func(rs []runResult) {
		for _, r := range rs {
			others = append(others, r.othersCores())
			worstOthers = max(worstOthers, r.othersCores())
			probes = append(probes, float64(r.ProbeP50))
			worstProbe = max(worstProbe, r.ProbeP50)
		}
	}
	for _, rs := range b.main {
		add(rs)
	}
	for _, rs := range b.backlog {
		add(rs)
	}
	do, dp := b.drainNoise()
	for i := range do {
		others = append(others, do[i])
		worstOthers = max(worstOthers, do[i])
		probes = append(probes, float64(dp[i]))
		worstProbe = max(worstProbe, dp[i])
	}
	if len(others) == 0 {
		return "Noise: no runs"
	}
	guard := "no noise guard (--max-others 0)"
	if b.cfg.MaxOthers > 0 {
		guard = fmt.Sprintf("%d run(s) were repeated because other processes kept more than %.2f cores busy (--max-others); %d point-run(s) stayed over it through %d repeats and show their quietest attempt (marked noisy below)",
			b.repeats, b.cfg.MaxOthers, b.noisyKept, b.cfg.Retries)
	}
	return fmt.Sprintf("Noise: in the kept runs other processes kept a median of %.2f cores busy during the measured windows (worst run %.2f of %d); "+
		"fsync probe p50 before each run: median %s, worst %s; %s",
		median(others), worstOthers, b.mach.CPUs, fmtDur(time.Duration(median(probes))), fmtDur(worstProbe), guard)
}

// pairRatios lists num[i]/den[i] for each round.
func pairRatios(num, den []runResult) string {
	var out []string
	for i := range min(len(num), len(den)) {
		out = append(out, fmt.Sprintf("%.0f%%", 100*ratio(num[i].EvPerSec, den[i].EvPerSec)))
	}
	if len(out) == 0 {
		return "–"
	}
	return strings.Join(out, ", ")
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func has(v []int, x int) bool {
	for _, y := range v {
		if y == x {
			return true
		}
	}
	return false
}

func joinArgs(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return " " + strings.Join(args, " ")
}

// fmtDur prints a latency in ms (µs below 0.1 ms).
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "–"
	case d < 100*time.Microsecond:
		return fmt.Sprintf("%d µs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// fmtInt prints n with thousands separators.
func fmtInt(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func fmtSecs(v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, ", ")
}

func fmtPcts(v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	s := make([]string, len(v))
	for i, x := range v {
		if x < 0 {
			s[i] = "?"
			continue
		}
		s[i] = fmt.Sprintf("%.0f%%", 100*x)
	}
	return strings.Join(s, ", ")
}
