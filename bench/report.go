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
	P50, P99, P999       time.Duration
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
	var p50, p99, p999 []time.Duration
	for _, r := range runs {
		ev = append(ev, r.EvPerSec)
		p50 = append(p50, r.P50)
		p99 = append(p99, r.P99)
		p999 = append(p999, r.P999)
		scpu = append(scpu, r.serverCPUPer1k())
		ccpu = append(ccpu, r.clientCPUPer1k())
		cps = append(cps, float64(r.Server.Commits)/r.Spec.Duration.Seconds())
		per = append(per, perCommit(r.Server))
		c50 = append(c50, r.Server.CommitP50Ms)
		c99 = append(c99, r.Server.CommitP99Ms)
		oth = append(oth, r.othersCores())
	}
	s.Others = median(oth)
	s.EvPerSec, s.P50, s.P99, s.P999 = median(ev), medianDuration(p50), medianDuration(p99), medianDuration(p999)
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

// reportOpts says how to render the report.
type reportOpts struct {
	Docs    bool   // the docs page (--docs): the machine and the command as sections of their own
	SVGLink string // the plot's path as the markdown links it ("" if none was written)
}

// row is one line of the summary table: a measurement and, if it has one,
// its target and verdict.
type row struct {
	What, Measured, Target, Verdict string
}

// info adds a summary row without a target.
func (b *bench) info(what, measured string) {
	b.rows = append(b.rows, row{What: what, Measured: measured, Target: "–", Verdict: "–"})
}

// check adds a summary row with a target and returns its verdict, for the
// section's own verdict line.
func (b *bench) check(what, measured, target string, ok bool) string {
	b.rows = append(b.rows, row{What: what, Measured: measured, Target: target, Verdict: verdict(ok)})
	return verdict(ok)
}

// render is the whole report as markdown (printed, and saved with --out or
// --docs).
func (b *bench) render(o reportOpts) string {
	b.rows = nil
	cfg := b.cfg
	var admin string
	if cfg.Admin {
		admin = b.reportAdmin(!cfg.Ingest && !cfg.Drain)
	}
	if !cfg.Ingest && !cfg.Drain {
		if o.Docs {
			return b.docsHeader() + admin
		}
		return admin
	}
	adminRows := b.rows
	b.rows = nil
	return b.report(o, admin, adminRows)
}

// report renders the ingest and delivery sections, then admin, under a
// header and the summary table.
func (b *bench) report(o reportOpts, admin string, adminRows []row) string {
	var body strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&body, format, args...) }
	cfg := b.cfg
	if cfg.Ingest {
		b.reportIngest(&body, o.SVGLink)
	}
	if cfg.Drain {
		b.reportDrain(p)
	}
	body.WriteString(admin)
	b.rows = append(b.rows, adminRows...)
	if len(b.notes) > 0 {
		p("\n## Notes\n\n")
		for _, n := range b.notes {
			p("- %s\n", n)
		}
	}

	var w strings.Builder
	p = func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	m := b.mach
	if o.Docs {
		w.WriteString(b.docsHeader())
	} else {
		switch {
		case cfg.Ingest && cfg.Drain:
			p("# gwenrelay benchmark: ingest and delivery\n\n")
		case cfg.Drain:
			p("# gwenrelay delivery benchmark\n\n")
		default:
			p("# gwenrelay ingest benchmark\n\n")
		}
		p("- Command: `go run ./bench%s`\n", joinArgs(cfg.Args))
		p("- Machine: %s; load average %s at the start, %s at the end (shared machine: expect noise)\n", m.describe(), m.LoadAvg, loadAvg())
		p("- %s, %s, commit %s; took %s\n", m.GoVersion, b.began.Format("2006-01-02 15:04 MST"), m.Commit, time.Since(b.began).Round(time.Second))
		p("- Spool files: a fresh file per run under `%s` (%s%s, a real disk: every commit's fsync reaches it)\n", b.cfg.Dir, b.fs, m.diskNote())
		p("- %s\n", b.noiseLine())
		b.quickLine(p)
	}
	p("\n## Summary\n\n")
	p("Every headline figure and target of this run; the sections below give the method, the spread and every run. Latencies are ingest POST → 202 unless said otherwise.\n\n")
	p("| measurement | result | target | verdict |\n|---|---|---|---|\n")
	for _, r := range b.rows {
		p("| %s | %s | %s | %s |\n", r.What, r.Measured, r.Target, r.Verdict)
	}
	p("\n## Method\n\n")
	if o.Docs {
		p("- Spool files: a fresh file per run under `%s` (%s%s, a real disk: every commit's fsync reaches it).\n", b.cfg.Dir, b.fs, m.diskNote())
	}
	if cfg.Ingest {
		p("- Ingest method: the relay runs in a child process built as `gwenrelay serve --insecure-no-auth` builds its ingest path (no drainer) "+
			"(relay.NewIngest + NewServer, DefaultMapping, spool.Open with the default 24 h dedup window, so each event also writes its dedup keys); "+
			"this process drives it over loopback with N keep-alive clients, one request in flight each, on the same %d cores. "+
			"Bodies are %d-byte `achievement_update` events (the testdata example, padded) with a unique userId each, so none is a duplicate. "+
			"The ceiling is the same handler path with a store whose Append keeps nothing and returns fresh ids. "+
			"Durable and ceiling runs alternate (D C D C …); each point is the median of %d run(s) of %v after a %v warm-up that is not counted; "+
			"a run during which other processes kept more than --max-others cores busy is repeated (up to --retries %d times). "+
			"Latency percentiles are nearest-rank over every request answered in the window (p99.9 of a 1-client run rests on its ~10 slowest of thousands; of a short --quick run, on one or two). "+
			"Every durable run checks that the spool gained exactly as many records as were answered 202.\n",
			m.CPUs, eventSize, cfg.Runs, cfg.Duration, cfg.Warmup, cfg.Retries)
	}
	if cfg.Drain {
		p("- Delivery method: the real gwenrelay binary drains into a fake Segment in this process (details in the delivery sections); compared runs alternate and report medians of %d run(s).\n", cfg.Runs)
	}
	if cfg.Dedup != serveDedupWindow {
		p("- **Non-default dedup window**: the servers ran with --dedup-window %v (serve's default is %v): an experiment, not the shipped configuration.\n", cfg.Dedup, serveDedupWindow)
	}
	w.WriteString(body.String())
	return w.String()
}

// quickLine notes --quick's reductions.
func (b *bench) quickLine(p func(string, ...any)) {
	cfg := b.cfg
	if cfg.Quick {
		p("- **Quick mode**: %d run(s) of %v per point, clients %v, no repeat of noisy runs, a %s-event backlog instead of 1,000,000, a %v latency run, sweep points at %v ev/s of %v: a smoke test, not the reference figures.\n",
			cfg.Runs, cfg.Duration, cfg.Clients, fmtInt(int64(cfg.Backlog)), cfg.LatencyDuration, cfg.SweepRates, cfg.SweepDuration)
	}
}

// docsHeader opens the --docs page: what it is, the machine, the command.
func (b *bench) docsHeader() string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	m, cfg := b.mach, b.cfg
	p("# Benchmarks\n\n")
	p("This page is the whole report of one run of the benchmark command, written by it (`--docs`) and not edited by hand. " +
		"The machine is shared with other work, so figures move between runs: each closed-loop point is the median of several alternated runs, and the noise each run saw is in its row.\n\n")
	p("## The machine\n\n")
	p("- CPU: %d × %s%s\n", m.CPUs, m.CPUModel, m.virtNote())
	p("- Memory: %.1f GiB; %s\n", m.MemGiB, m.Kernel)
	p("- Disk: spool files under `%s`, %s%s\n", cfg.Dir, b.fs, m.diskNote())
	p("- The load generator, the fake Segment and the relay share these %d cores, as a relay and its neighbours would.\n", m.CPUs)
	p("- %s; commit %s; run %s, took %s; load average %s at the start, %s at the end\n", m.GoVersion, m.Commit, b.began.Format("2006-01-02 15:04 MST"),
		time.Since(b.began).Round(time.Second), m.LoadAvg, loadAvg())
	if cfg.Ingest || cfg.Drain {
		p("- %s\n", b.noiseLine())
	}
	p("\n## The command\n\n")
	p("```sh\ngo run ./bench%s\n```\n\n", joinArgs(cfg.Args))
	p("`go run ./bench --quick` is a one-minute smoke test of the same; `go run ./bench -h` lists every flag.\n")
	if cfg.Quick {
		p("\n")
		b.quickLine(p)
	}
	return w.String()
}

// reportIngest renders the ingest sections.
func (b *bench) reportIngest(w *strings.Builder, svgLink string) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	cfg := b.cfg

	p("\n## Ingest: durable spool vs in-memory ceiling\n\n")
	p("| clients | durable ev/s | p50 | p99 | p99.9 | ceiling ev/s | p50 | p99 | p99.9 | durable/ceiling |\n")
	p("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range cfg.Clients {
		d, cl := summarize(b.main[key("durable", c)]), summarize(b.main[key("ceiling", c)])
		p("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %.0f%% |\n", c, fmtInt(int64(d.EvPerSec)), fmtDur(d.P50), fmtDur(d.P99), fmtDur(d.P999),
			fmtInt(int64(cl.EvPerSec)), fmtDur(cl.P50), fmtDur(cl.P99), fmtDur(cl.P999), 100*ratio(d.EvPerSec, cl.EvPerSec))
	}
	p("\n")
	lat := func(s summary) string {
		return fmt.Sprintf("%s ev/s; p50 %s, p99 %s, p99.9 %s", fmtInt(int64(s.EvPerSec)), fmtDur(s.P50), fmtDur(s.P99), fmtDur(s.P999))
	}
	for _, c := range cfg.Clients {
		d, cl := summarize(b.main[key("durable", c)]), summarize(b.main[key("ceiling", c)])
		what := fmt.Sprintf("Durable ingest, %d client%s", c, plural(c))
		switch c {
		case 1:
			p("- 1 client, durable p50: %s — target ≤ %s: %s\n", fmtDur(d.P50), fmtDur(targetP50One),
				b.check(what, lat(d), fmt.Sprintf("p50 ≤ %s", fmtDur(targetP50One)), d.N > 0 && d.P50 <= targetP50One))
		case 64:
			p("- 64 clients, durable p99: %s — target ≤ %s: %s\n", fmtDur(d.P99), fmtDur(targetP99At64),
				b.check(what, lat(d), fmt.Sprintf("p99 ≤ %s", fmtDur(targetP99At64)), d.N > 0 && d.P99 <= targetP99At64))
		default:
			b.info(what, lat(d))
		}
		b.info(fmt.Sprintf("Ceiling (non-durable), %d client%s", c, plural(c)), lat(cl))
		r := ratio(d.EvPerSec, cl.EvPerSec)
		what = fmt.Sprintf("Durable / ceiling, %d client%s", c, plural(c))
		if c == 64 {
			p("- 64 clients, durable/ceiling: %.0f%% (per round, each durable run over the ceiling run after it: %s) — target ≥ %.0f%%: %s\n",
				100*r, pairRatios(b.main[key("durable", 64)], b.main[key("ceiling", 64)]), 100*targetRatio64,
				b.check(what, fmt.Sprintf("%.0f%%", 100*r), fmt.Sprintf("≥ %.0f%%", 100*targetRatio64), r >= targetRatio64))
		} else {
			b.info(what, fmt.Sprintf("%.0f%%", 100*r))
		}
	}
	if !has(cfg.Clients, 1) || !has(cfg.Clients, 64) {
		p("- The targets are for 1 client (p50) and 64 clients (p99, durable/ceiling); --clients %v leaves %s out.\n", cfg.Clients, missingTargets(cfg.Clients))
	}

	if cfg.Sweep && len(b.sweep) > 0 {
		b.reportSweep(p, svgLink)
		for _, m := range []string{"durable", "ceiling"} {
			b.info(fmt.Sprintf("Open-loop sweep, %s: highest offered rate kept up", m), sweepKeptUp(b.sweep[m]))
		}
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
	c := b.backlogClients()
	d, cl := summarize(b.main[key("durable", c)]), summarize(b.main[key("ceiling", c)])
	b.info(fmt.Sprintf("Server CPU-s per 1,000 events ingested, %d clients", c), fmt.Sprintf("%.3f durable, %.3f ceiling", d.ServerCPU1k, cl.ServerCPU1k))

	if cfg.Backlog > 0 {
		b.reportBacklog(p)
	}

	p("\n## Every ingest run\n\n")
	p("In run order within each point. Others' CPU: cores kept busy by every other process on the machine during the window " +
		"(all of /proc/stat minus the server and the load generator); steal: taken by the hypervisor; fsync probe: 50 × (4 KiB append + fdatasync) just before the run.\n\n")
	p("| # | what | clients | ev/s | p50 | p99 | p99.9 | server CPU-s / 1k ev | commits | conns | others' CPU | steal | fsync probe p50 / max | attempt |\n")
	p("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	all := func(rs []runResult) {
		for _, r := range rs {
			att := fmt.Sprint(r.Attempt)
			if r.Noisy {
				att += " (noisy)"
			}
			p("| %d | %s | %d | %s | %s | %s | %s | %.3f | %s | %d | %.2f | %.2f | %s / %s | %s |\n", r.Spec.Run, r.Spec.Label, r.Spec.Clients, fmtInt(int64(r.EvPerSec)),
				fmtDur(r.P50), fmtDur(r.P99), fmtDur(r.P999), r.serverCPUPer1k(), fmtInt(int64(r.Server.Commits)), r.Dials,
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

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// missingTargets names the target client counts --clients leaves out.
func missingTargets(clients []int) string {
	var out []string
	for _, c := range []int{1, 64} {
		if !has(clients, c) {
			out = append(out, fmt.Sprint(c))
		}
	}
	return strings.Join(out, " and ")
}

// sweepKeptUp is the highest offered rate a sweep series kept up with, and
// the first it did not.
func sweepKeptUp(pts []sweepPoint) string {
	last, stop := 0.0, 0.0
	for _, pt := range pts {
		if pt.Err == "" && pt.Open != nil && pt.Open.KeptUp {
			last = pt.Spec.Rate
		} else if stop == 0 {
			stop = pt.Spec.Rate
		}
	}
	switch {
	case last == 0 && stop == 0:
		return "–"
	case last == 0:
		return fmt.Sprintf("none (not even %s ev/s)", fmtInt(int64(stop)))
	case stop == 0:
		return fmt.Sprintf("%s ev/s (every rate offered)", fmtInt(int64(last)))
	}
	return fmt.Sprintf("%s ev/s (not %s)", fmtInt(int64(last)), fmtInt(int64(stop)))
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
	p("\n| spool at start (%d clients, durable) | ev/s | p50 | p99 | p99.9 | server CPU-s / 1k ev | commit p50 | commit p99 | events/commit | peak RSS | peak RssAnon | peak RssFile |\n", c)
	p("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	e, bl := summarize(b.backlog["empty"]), summarize(b.backlog["backlog"])
	em, bm := peakMem(b.backlog["empty"]), peakMem(b.backlog["backlog"])
	p("| empty | %s | %s | %s | %s | %.3f | %.2f ms | %.2f ms | %.1f | %s | %s | %s |\n", fmtInt(int64(e.EvPerSec)), fmtDur(e.P50), fmtDur(e.P99), fmtDur(e.P999), e.ServerCPU1k, e.CommitP50, e.CommitP99, e.PerCommit,
		fmtBytes(em.rss<<10), fmtBytes(em.anon<<10), fmtBytes(em.file<<10))
	p("| %s pending | %s | %s | %s | %s | %.3f | %.2f ms | %.2f ms | %.1f | %s | %s | %s |\n\n", n, fmtInt(int64(bl.EvPerSec)), fmtDur(bl.P50), fmtDur(bl.P99), fmtDur(bl.P999), bl.ServerCPU1k, bl.CommitP50, bl.CommitP99, bl.PerCommit,
		fmtBytes(bm.rss<<10), fmtBytes(bm.anon<<10), fmtBytes(bm.file<<10))
	r := ratio(bl.EvPerSec, e.EvPerSec)
	p("- %d clients with %s pending vs empty: %.0f%% (per round: %s) — target ≥ %.0f%%: %s\n", c, n, 100*r,
		pairRatios(b.backlog["backlog"], b.backlog["empty"]), 100*targetBacklogRatio,
		b.check(fmt.Sprintf("Durable ingest with %s pending / with an empty spool, %d clients", n, c), fmt.Sprintf("%.0f%% (%s ev/s)", 100*r, fmtInt(int64(bl.EvPerSec))),
			fmt.Sprintf("≥ %.0f%%", 100*targetBacklogRatio), r >= targetBacklogRatio))
	var opens []float64
	for _, x := range b.backlog["backlog"] {
		opens = append(opens, x.Server.OpenSeconds)
	}
	p("- **RSS with %s pending**, ingesting at %d clients (the relay's ingest path in the bench's server child, no drainer): peak %s — target ≤ %s: %s. "+
		"The verdict is on the process's resident set size as `ps` shows it (VmRSS, anonymous + file-backed + shared memory), at its peak: the kernel's high-water mark, getrusage's ru_maxrss at exit, over the whole run. "+
		"Of it, sampled from /proc/PID/status every 250 ms: at most %s anonymous (RssAnon: the Go heap, stacks, bbolt's freelist — what the relay allocates) and at most %s file-backed "+
		"(RssFile: pages of bbolt's read-only mmap of the %s spool file that the process touched; they are page cache, shared and reclaimable under memory pressure, but `ps` counts them). "+
		"With an empty spool the same load peaks at %s (%s anonymous, %s file-backed).\n",
		n, c, fmtBytes(bm.rss<<10), fmtBytes(targetRSSKiB<<10),
		b.check(fmt.Sprintf("RSS (as `ps` shows it, peak) with %s pending, ingesting at %d clients", n, c),
			fmt.Sprintf("%s (anonymous %s, file-backed %s)", fmtBytes(bm.rss<<10), fmtBytes(bm.anon<<10), fmtBytes(bm.file<<10)),
			fmt.Sprintf("≤ %s", fmtBytes(targetRSSKiB<<10)), bm.rss > 0 && bm.rss <= targetRSSKiB),
		fmtBytes(bm.anon<<10), fmtBytes(bm.file<<10), fmtBytes(pf.Result.FileSize), fmtBytes(em.rss<<10), fmtBytes(em.anon<<10), fmtBytes(em.file<<10))
	p("- The backlog servers' own spool.Open + Stats (file just copied, so in the page cache): %s s.\n", fmtSecs(opens))

	p("\n### Opening the %s-event spool\n\n", n)
	if b.openErr != "" {
		p("- Open timing failed: %s\n", b.openErr)
		b.check(fmt.Sprintf("Open of the %s-event spool", n), "failed: "+mdCell(b.openErr), fmt.Sprintf("≤ %v", targetOpen), false)
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
	openCheck := func(short string, v []float64) string {
		t := median(v)
		return b.check(fmt.Sprintf("Open of the %s-event spool (spool.Open + Stats), %s", n, short), fmt.Sprintf("%.2f s (median of %d)", t, len(v)),
			fmt.Sprintf("≤ %v", targetOpen), len(v) > 0 && time.Duration(t*float64(time.Second)) <= targetOpen)
	}
	p("- Open, cold after a clean stop (a reboot): %.2f s — target ≤ %v: %s\n", median(cold), targetOpen, openCheck("cold after a clean stop", cold))
	p("- Open, warm (a service restart): %.2f s — target ≤ %v: %s\n", median(warm), targetOpen, openCheck("warm", warm))
	p("- Open, cold after a crash (freelist rebuilt by walking the file): %.2f s — target ≤ %v: %s\n", median(crashed), targetOpen, openCheck("cold after a crash", crashed))
	p("- Peak RSS of an open child: %s (the pages of the mapped file it read).\n", fmtBytes(maxRSS<<10))
	for _, s := range b.opens {
		if s.EvictNote != "" {
			p("- Could not evict the file before a cold open: %s\n", s.EvictNote)
			break
		}
	}
}

// memPeak is the largest memory figures of some runs, in KiB.
type memPeak struct{ rss, anon, file int64 }

// peakMem is the peak RSS (rusage max RSS, the kernel's high-water mark of
// VmRSS; the sampled VmRSS if larger) and the sampled peaks of RssAnon and
// RssFile over runs.
func peakMem(rs []runResult) memPeak {
	var m memPeak
	for _, x := range rs {
		m.rss = max(m.rss, x.MaxRSSKiB, x.PeakRSSKiB)
		m.anon, m.file = max(m.anon, x.PeakAnonKiB), max(m.file, x.PeakFileKiB)
	}
	return m
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
	for _, pts := range b.sweep {
		for _, pt := range pts {
			if pt.Err == "" {
				add([]runResult{pt.runResult})
			}
		}
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
		guard = fmt.Sprintf("%d run(s) were repeated because other processes kept more than %.2f cores busy (--max-others), taking %s of the --repeat-budget %v; %d point-run(s) stayed over it through %d repeats (or once the budget was spent) and show their quietest attempt (marked noisy below)",
			b.repeats, b.cfg.MaxOthers, b.repeatSpent.Round(time.Second), b.cfg.RepeatBudget, b.noisyKept, b.cfg.Retries)
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

// mdCell makes s safe inside a markdown table cell.
func mdCell(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	return strings.ReplaceAll(s, "\n", " ")
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
