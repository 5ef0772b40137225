package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// reportDrain renders the delivery sections.
func (b *bench) reportDrain(p func(string, ...any)) {
	d := &b.drain
	if d.build.Bin != "" {
		p("\n## Delivery: how the relay was run\n\n")
		p("- The real `gwenrelay` binary, built from this tree once per bench run (`go build -ldflags \"-X main.version=bench\"`, %.1f s; `gwenrelay version` prints %q), "+
			"started as `gwenrelay serve --spool FILE --write-key bench --segment-endpoint http://127.0.0.1:PORT --insecure-no-auth --listen 127.0.0.1:0 --log-format json` "+
			"plus the flags named in each section; it is ready when it logs `{\"msg\":\"listening\"}`, and it is stopped with SIGTERM. Its warnings and errors are tallied (except the expected ones about --insecure-no-auth and the absent --admin-socket).\n", d.build.Took.Seconds(), d.build.Version)
		p("- The fake Segment runs in this (the bench) process, on the same %d cores: it checks the Basic auth (write key `bench`) once per request, answers 200 with an empty body, "+
			"and counts each `/v1/batch` body's messages by searching it for their `\"messageId\":\"gwenrelay-…` keys (no JSON decode, except in the latency run), noting each id so that a redelivery is not counted twice; "+
			"it keeps a per-second histogram of arrivals. Its CPU is this process's and is reported separately.\n", b.mach.CPUs)
	}
	if len(d.through) > 0 {
		b.reportThroughput(p)
	}
	if len(d.latency) > 0 {
		b.reportLatency(p)
	}
	if len(d.mixed["idle"]) > 0 || len(d.mixed["draining"]) > 0 {
		b.reportMixed(p)
	}
	if len(d.errs) > 0 || len(d.skipNotes) > 0 {
		p("\n## Delivery: problems and notes\n\n")
		for _, e := range d.errs {
			p("- **Could not finish** %s\n", e)
		}
		for _, n := range d.skipNotes {
			p("- %s\n", n)
		}
	}
}

func (b *bench) reportThroughput(p func(string, ...any)) {
	d := &b.drain
	n := int64(b.cfg.Backlog)
	p("\n## Delivery: draining %s pending events to a local fake Segment (`--rate 0`)\n\n", fmtInt(n))
	var copies []float64
	for _, r := range d.through {
		copies = append(copies, r.CopySecs)
	}
	p("Each run starts the relay with `--rate 0` on a fresh copy of the cached %s-event backlog (records shaped as the relay writes them; copied and fsynced first: %s s). "+
		"Rate = %s / (arrival of the %s-th distinct event − the first arrival); CPU from /proc over that same interval. "+
		"Memory from /proc/PID/status every 100 ms, exec to SIGTERM: RssAnon (Go heap, stacks, runtime: what the relay itself allocates), RssFile (bbolt's read-only mmap of the spool: page cache, shared and reclaimable) and VmHWM (peak total). "+
		"0.5 s after the last arrival the relay gets SIGTERM; its spool is then opened read-only (spool.Open with ReadOnly) and must hold no pending and no dead record.\n\n",
		fmtInt(n), fmtSecs(copies), fmtInt(n), fmtInt(n))
	p("| run | drain time | ev/s | relay CPU-s / 1k ev | relay cores | fake Segment CPU-s / 1k ev | requests | ev/request (max) | TCP conns | redelivered | longest pause between requests | ev per second min / median / max | peak RssAnon | VmHWM | peak RssFile | spool after stop | exec → listening / first arrival | SIGTERM → exit | others' CPU | attempt |\n")
	p("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|\n")
	row := func(label string, r drainRun) {
		lo, mid, hi := histStats(r.Hist)
		att := fmt.Sprint(r.Attempt)
		if r.Noisy {
			att += " (noisy)"
		}
		p("| %s | %.1f s | %s | %.3f | %.2f | %.3f | %s | %.0f (%d) | %d | %s | %s at %.0f s | %s / %s / %s | %s | %s | %s | %s pending, %s dead | %.2f / %.2f s | %.2f s | %.2f | %s |\n",
			label, r.DrainTime.Seconds(), fmtInt(int64(r.EvPerSec)), r.serverCPUPer1k(), r.ServerCPU.Seconds()/r.DrainTime.Seconds(), r.clientCPUPer1k(),
			fmtInt(r.Fake.Requests), float64(r.Fake.Messages)/float64(max(r.Fake.Requests, 1)), r.Fake.MaxBatch, r.Fake.Conns, fmtInt(r.Fake.Dups),
			fmtDur(r.Fake.MaxGap), r.Fake.MaxGapAt.Seconds(), fmtInt(lo), fmtInt(mid), fmtInt(hi),
			fmtBytes(r.Stop.Mem.Anon<<10), fmtBytes(r.Stop.Mem.HWM<<10), fmtBytes(r.Stop.Mem.File<<10),
			fmtInt(r.PendingAfter), fmtInt(r.DeadAfter), r.Ready.Seconds(), r.FirstAfter.Seconds(), r.Stop.Took.Seconds(), r.othersCores(), att)
	}
	for _, r := range d.through {
		row(fmt.Sprint(r.Run), r)
	}
	if d.perfRun != nil {
		row("perf", *d.perfRun)
	}
	p("\n")
	var rates, cpu, fcpu, cores []float64
	var anon, hwm, rss, maxRSS, file, fileSize int64
	empty := true
	for _, r := range d.through {
		rates = append(rates, r.EvPerSec)
		cpu = append(cpu, r.serverCPUPer1k())
		fcpu = append(fcpu, r.clientCPUPer1k())
		cores = append(cores, r.ServerCPU.Seconds()/r.DrainTime.Seconds())
		anon, hwm, file = max(anon, r.Stop.Mem.Anon), max(hwm, r.Stop.Mem.HWM), max(file, r.Stop.Mem.File)
		rss, maxRSS = max(rss, r.Stop.Mem.RSS), max(maxRSS, r.Stop.MaxRSSKiB)
		fileSize = max(fileSize, r.FileSize)
		if r.PendingAfter != 0 || r.DeadAfter != 0 {
			empty = false
		}
	}
	rate := median(rates)
	p("- Drain throughput with `--rate 0`: median %s ev/s (runs: %s) — target ≥ %s ev/s: %s\n", fmtInt(int64(rate)), fmtRates(rates), fmtInt(int64(targetDrainRate)),
		b.check(fmt.Sprintf("Drain throughput to a local fake Segment, `--rate 0`, %s pending", fmtInt(n)), fmtInt(int64(rate))+" ev/s",
			fmt.Sprintf("≥ %s ev/s", fmtInt(int64(targetDrainRate))), rate >= targetDrainRate))
	p("- Relay CPU while draining: median %.3f CPU-s per 1,000 events delivered (%.2f of %d cores busy); the fake Segment, in this process, %.3f more.\n", median(cpu), median(cores), b.mach.CPUs, median(fcpu))
	b.info("Relay CPU-s per 1,000 events delivered (draining, `--rate 0`)", fmt.Sprintf("%.3f", median(cpu)))
	rssPeak := max(hwm, rss, maxRSS)
	p("- **RSS while draining %s pending events**: peak %s — target ≤ %s: %s. "+
		"As for the ingest server above, the verdict is on the resident set size as `ps` shows it (VmRSS), at its peak: VmHWM, the kernel's high-water mark, read every 100 ms and at the stop (getrusage's ru_maxrss at exit: %s). "+
		"Of it, sampled every 100 ms: at most %s anonymous (RssAnon: the Go heap, stacks, bbolt's freelist — what the relay allocates) and at most %s file-backed "+
		"(RssFile: the pages of bbolt's read-only mmap of the %s spool file that the drainer read — page cache, shared and reclaimable, counted by `ps` all the same).\n",
		fmtInt(n), fmtBytes(rssPeak<<10), fmtBytes(targetRSSKiB<<10),
		b.check(fmt.Sprintf("RSS (as `ps` shows it, peak) while draining %s pending", fmtInt(n)),
			fmt.Sprintf("%s (anonymous %s, file-backed %s)", fmtBytes(rssPeak<<10), fmtBytes(anon<<10), fmtBytes(file<<10)),
			fmt.Sprintf("≤ %s", fmtBytes(targetRSSKiB<<10)), rssPeak > 0 && rssPeak <= targetRSSKiB),
		fmtBytes(maxRSS<<10), fmtBytes(anon<<10), fmtBytes(file<<10), fmtBytes(fileSize))
	if empty {
		p("- Spool after SIGTERM, opened read-only: 0 pending and 0 dead records in every run — every event was delivered and then deleted, none dead-lettered.\n")
	} else {
		p("- **Spool after SIGTERM not empty** in some run (see the table): delivered events left pending (they would be sent again at the next start) or dead-lettered.\n")
	}
	if i := medianIndex(rates); i >= 0 {
		r := d.through[i]
		p("- Arrivals per second in run %d, thousands (second 0 starts at the first arrival): %s\n", r.Run, fmtHist(r.Hist))
	}
	warn := map[string]bool{}
	for _, r := range d.through {
		for _, w := range r.Stop.Warnings {
			warn[w] = true
		}
	}
	if len(warn) == 0 {
		p("- The relay logged no warning or error in these runs.\n")
	} else {
		p("- The relay logged (per run, tallied): %s\n", strings.Join(slices.Sorted(maps.Keys(warn)), "; "))
	}
	if d.perfFile != "" {
		switch {
		case d.perfErr != "":
			p("- perf profile: not taken (%s).\n", d.perfErr)
		case d.perfRun != nil:
			p("- An extra run under `perf record -F 499 -g -p PID` (row \"perf\", not in the medians) wrote `%s`: `perf report -i %s --no-children --sort dso,sym`.\n", d.perfFile, d.perfFile)
		}
	}
}

func (b *bench) reportLatency(p func(string, ...any)) {
	r := b.drain.latency[len(b.drain.latency)-1]
	p("\n## Delivery latency at a steady %.0f events/s (default `--rate 500 --burst 100`)\n\n", r.Rate)
	p("The relay without `--rate`/`--burst` (so at most 500 events/s with bursts of 100, batches of at most 100 events, flushed by analytics-go every 200 ms) on an empty spool. "+
		"This process posts one %d-byte event every %v for %v, open loop (each POST leaves at its scheduled time in its own goroutine, whatever the earlier answers), each with a unique userId, "+
		"and notes when it has read each 202. The fake Segment decodes every batch and notes each userId's first arrival. Latency = arrival − 202, both on this process's clock, "+
		"so it is the time an acknowledged event spends in the relay before Segment has it.\n\n",
		eventSize, time.Duration(float64(time.Second)/r.Rate), r.Duration)
	p("| sent | 202s | arrived | missing | redelivered | p50 | p99 | p99.9 | max | min | arrived before the 202 was read | POST → 202 p50 / p99 / p99.9 | generator late by, max | batches | ev/batch (max) | spool after stop | relay CPU | others' CPU | attempt |\n")
	p("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|\n")
	att := fmt.Sprint(r.Attempt)
	if r.Noisy {
		att += " (noisy)"
	}
	p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s | %s | %s | %.1f (%d) | %s pending, %s dead | %.3f cores | %.2f | %s |\n\n",
		fmtInt(r.Sent), fmtInt(r.Acked), fmtInt(r.Arrived), fmtInt(r.Missing), fmtInt(r.Fake.Dups), fmtSigned(r.P50), fmtSigned(r.P99), fmtSigned(r.P999), fmtSigned(r.Max), fmtSigned(r.Min),
		fmtInt(r.Negative), fmtDur(r.AckP50), fmtDur(r.AckP99), fmtDur(r.AckP999), fmtDur(r.MaxLag), fmtInt(r.Fake.Requests),
		float64(r.Fake.Messages)/float64(max(r.Fake.Requests, 1)), r.Fake.MaxBatch, fmtInt(r.PendingLeft), fmtInt(r.DeadAfter),
		r.ServerCPU.Seconds()/r.Window.Seconds(), r.othersCores(), att)
	e2e := fmt.Sprintf("p50 %s, p99 %s, p99.9 %s", fmtSigned(r.P50), fmtSigned(r.P99), fmtSigned(r.P999))
	what := fmt.Sprintf("End-to-end latency (202 → arrival at Segment) at a steady %.0f ev/s", r.Rate)
	p("- Latency p50: %s — target ≤ %v: %s\n", fmtSigned(r.P50), targetLatencyP50, b.check(what, e2e, fmt.Sprintf("p50 ≤ %v", targetLatencyP50), r.Arrived > 0 && r.P50 <= targetLatencyP50))
	p("- Latency p99: %s — target ≤ %v: %s\n", fmtSigned(r.P99), targetLatencyP99, b.check(what, e2e, fmt.Sprintf("p99 ≤ %v", targetLatencyP99), r.Arrived > 0 && r.P99 <= targetLatencyP99))
	p("- Latency p99.9: %s (%s events: the %s slowest lie above it).\n", fmtSigned(r.P999), fmtInt(r.Arrived), fmtInt(max(r.Arrived/1000, 1)))
	if r.Missing == 0 && r.Acked == r.Sent {
		p("- Every acknowledged event arrived (%s of %s)%s.\n", fmtInt(r.Arrived), fmtInt(r.Acked), dupNote(r.Fake.Dups))
	} else {
		p("- **%s acknowledged event(s) never arrived** within 30 s of the last 202 (%s sent, %s acknowledged, %s arrived).\n", fmtInt(r.Missing), fmtInt(r.Sent), fmtInt(r.Acked), fmtInt(r.Arrived))
	}
	if len(r.Stop.Warnings) > 0 {
		p("- The relay logged: %s\n", strings.Join(r.Stop.Warnings, "; "))
	}
}

func dupNote(dups int64) string {
	if dups == 0 {
		return ", none twice"
	}
	return fmt.Sprintf(", %s of them more than once", fmtInt(dups))
}

func (b *bench) reportMixed(p func(string, ...any)) {
	d := &b.drain
	c := b.backlogClients()
	n := fmtInt(int64(b.cfg.Backlog))
	idle, drn := d.mixed["idle"], d.mixed["draining"]
	rateFlag := fmt.Sprintf("--rate %v", b.cfg.MixedRate)
	p("\n## Ingest while the drainer empties the backlog (%d clients, `%s`)\n\n", c, rateFlag)
	if b.cfg.MixedRate != 0 {
		p("**Experiment**: `--mixed-rate %v` ran these relays with `--rate %v` instead of the measurement's `--rate 0`.\n\n", b.cfg.MixedRate, b.cfg.MixedRate)
	}
	var copies []float64
	for _, r := range drn {
		copies = append(copies, r.CopySecs)
	}
	p("The same binary with `%s`, driven by the ingest load generator (%d keep-alive clients, %d-byte events with unique userIds; %v warm-up, then a %v window). "+
		"*Drainer idle*: an empty spool, so the drainer only delivers what is being ingested. *Draining*: a fresh copy of the %s-event backlog (copy: %s s); the load starts once the first backlog event has reached the fake Segment, "+
		"so the window sees ingest and the backlog drain together. The two alternate (idle, draining, idle, …); figures are medians. "+
		"After each run the relay is stopped and its spool read: the events delivered to the fake plus those still pending must cover the backlog plus every event answered 202 (at-least-once).\n\n",
		rateFlag, c, eventSize, b.cfg.Warmup, b.cfg.Duration, n, fmtSecs(copies))
	toRR := func(ms []mixedRun) []runResult {
		out := make([]runResult, len(ms))
		for i, m := range ms {
			out[i] = m.runResult
		}
		return out
	}
	si, sd := summarize(toRR(idle)), summarize(toRR(drn))
	cores := func(ms []mixedRun) (relay, self, deliv float64) {
		var r, s, dv []float64
		for _, m := range ms {
			r = append(r, m.ServerCPU.Seconds()/m.Spec.Duration.Seconds())
			s = append(s, m.ClientCPU.Seconds()/m.Spec.Duration.Seconds())
			dv = append(dv, m.DrainPerSec)
		}
		return median(r), median(s), median(dv)
	}
	ri, seli, di := cores(idle)
	rd, seld, dd := cores(drn)
	per1k := func(cores, in, out float64) float64 {
		if in+out == 0 {
			return 0
		}
		return cores * 1000 / (in + out)
	}
	p("| drainer | ingest ev/s | p50 | p99 | p99.9 | delivered to Segment in the window, ev/s | relay cores | relay CPU-s / 1k ev ingested + delivered | load generator + fake Segment cores | others' CPU |\n")
	p("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	p("| idle (empty spool) | %s | %s | %s | %s | %s | %.2f | %.3f | %.2f | %.2f |\n", fmtInt(int64(si.EvPerSec)), fmtDur(si.P50), fmtDur(si.P99), fmtDur(si.P999), fmtInt(int64(di)), ri, per1k(ri, si.EvPerSec, di), seli, si.Others)
	p("| draining %s | %s | %s | %s | %s | %s | %.2f | %.3f | %.2f | %.2f |\n\n", n, fmtInt(int64(sd.EvPerSec)), fmtDur(sd.P50), fmtDur(sd.P99), fmtDur(sd.P999), fmtInt(int64(dd)), rd, per1k(rd, sd.EvPerSec, dd), seld, sd.Others)
	r := ratio(sd.EvPerSec, si.EvPerSec)
	p("- %d clients while draining vs drainer idle: %.0f%% (per round: %s) — target ≥ %.0f%%: %s\n", c, 100*r,
		pairRatios(toRR(drn), toRR(idle)), 100*targetDrainIngest,
		b.check(fmt.Sprintf("Durable ingest while the %s-event backlog drains / with the drainer idle, %d clients", n, c),
			fmt.Sprintf("%.0f%% (%s of %s ev/s; p99 %s, p99.9 %s)", 100*r, fmtInt(int64(sd.EvPerSec)), fmtInt(int64(si.EvPerSec)), fmtDur(sd.P99), fmtDur(sd.P999)),
			fmt.Sprintf("≥ %.0f%%", 100*targetDrainIngest), len(drn) > 0 && len(idle) > 0 && r >= targetDrainIngest))
	b.info("Relay CPU-s per 1,000 events ingested + delivered, while draining", fmt.Sprintf("%.3f (drainer idle: %.3f)", per1k(rd, sd.EvPerSec, dd), per1k(ri, si.EvPerSec, di)))
	if e := summarize(b.backlog["empty"]); e.N > 0 {
		p("- For reference, the ingest-only server of the backlog section above (no drainer at all, empty spool, %d clients): %s ev/s.\n", c, fmtInt(int64(e.EvPerSec)))
	}
	for _, m := range drn {
		if m.RanOut {
			p("- **The backlog may have run out inside the window** in run %d (%s distinct events had arrived by its end, the backlog held %s): that run's ingest was partly measured with nothing left to drain; use a larger --backlog.\n",
				m.Spec.Run, fmtInt(m.ArrivedByEnd), n)
		}
	}
	p("- At-least-once check passed in every run (runs that fail it stop the section).\n")
	p("\n| # | drainer | ingest ev/s | p50 | p99 | p99.9 | delivered in window, ev/s | relay cores | 202s (whole run) | after stop: delivered + pending ≥ expected | peak RSS (VmHWM) | peak RssAnon | others' CPU | fsync probe p50 | attempt |\n")
	p("|--:|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|\n")
	for i := range max(len(idle), len(drn)) {
		for _, ms := range [][]mixedRun{idle, drn} {
			if i >= len(ms) {
				continue
			}
			m := ms[i]
			att := fmt.Sprint(m.Attempt)
			if m.Noisy {
				att += " (noisy)"
			}
			p("| %d | %s | %s | %s | %s | %s | %s | %.2f | %s | %s + %s ≥ %s | %s | %s | %.2f | %s | %s |\n", m.Spec.Run, m.Spec.Label, fmtInt(int64(m.EvPerSec)), fmtDur(m.P50), fmtDur(m.P99), fmtDur(m.P999),
				fmtInt(int64(m.DrainPerSec)), m.ServerCPU.Seconds()/m.Spec.Duration.Seconds(), fmtInt(m.Acked),
				fmtInt(m.Delivered), fmtInt(m.PendingAfter), fmtInt(m.Expected), fmtBytes(max(m.Stop.Mem.HWM, m.Stop.MaxRSSKiB)<<10), fmtBytes(m.Stop.Mem.Anon<<10), m.othersCores(), fmtDur(m.ProbeP50), att)
		}
	}
	if d.perfFile != "" {
		switch {
		case d.perfMixErr != "":
			p("\n- perf profile of a draining run: not taken (%s).\n", d.perfMixErr)
		case d.perfMixed != nil:
			m := d.perfMixed
			p("\n- An extra draining run with the relay under `perf record -F 499 -g` during its window (not in the medians: %s ingest ev/s, %s delivered ev/s under perf) wrote `%s.ingest-draining`.\n",
				fmtInt(int64(m.EvPerSec)), fmtInt(int64(m.DrainPerSec)), d.perfFile)
		}
	}
	warn := map[string]bool{}
	for _, ms := range [][]mixedRun{idle, drn} {
		for _, m := range ms {
			for _, w := range m.Stop.Warnings {
				warn[m.Spec.Label+": "+w] = true
			}
		}
	}
	if len(warn) > 0 {
		p("\n- The relay logged (per run, tallied): %s\n", strings.Join(slices.Sorted(maps.Keys(warn)), "; "))
	}
}

// drainNoise returns the others' cores and fsync probes of the delivery runs,
// for the report's noise line.
func (b *bench) drainNoise() (others []float64, probes []time.Duration) {
	d := &b.drain
	for _, r := range d.through {
		others, probes = append(others, r.othersCores()), append(probes, r.ProbeP50)
	}
	for _, r := range d.latency {
		others, probes = append(others, r.othersCores()), append(probes, r.ProbeP50)
	}
	for _, ms := range d.mixed {
		for _, m := range ms {
			others, probes = append(others, m.othersCores()), append(probes, m.ProbeP50)
		}
	}
	return others, probes
}

// histStats is the min, median and max of the whole seconds of a per-second
// histogram (the first and last seconds are partial and left out when there
// are more than two).
func histStats(h []int64) (lo, mid, hi int64) {
	if len(h) > 2 {
		h = h[1 : len(h)-1]
	}
	if len(h) == 0 {
		return 0, 0, 0
	}
	f := make([]float64, len(h))
	for i, v := range h {
		f[i] = float64(v)
	}
	return int64(minOf(f)), int64(median(f)), int64(maxOf(f))
}

// medianIndex is the index of the run whose value is the (lower) median.
func medianIndex(v []float64) int {
	if len(v) == 0 {
		return -1
	}
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		switch {
		case v[a] < v[b]:
			return -1
		case v[a] > v[b]:
			return 1
		}
		return 0
	})
	return idx[(len(v)-1)/2]
}

func fmtRates(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmtInt(int64(x))
	}
	return strings.Join(s, ", ")
}

// fmtSigned is fmtDur for values that may be negative.
func fmtSigned(d time.Duration) string {
	if d < 0 {
		return "−" + fmtDur(-d)
	}
	if d == 0 {
		return "0"
	}
	return fmtDur(d)
}
