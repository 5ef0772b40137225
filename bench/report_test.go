package main

import (
	"strings"
	"testing"
	"time"
)

// fakeBench is a bench with made-up results in every section (the spool CLI
// left out).
func fakeBench(t *testing.T) *bench {
	t.Helper()
	cfg, err := parseFlags([]string{"--admin=false"})
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{cfg: cfg, main: map[string][]runResult{}, backlog: map[string][]runResult{}, sweep: map[string][]sweepPoint{}, began: time.Now(), fs: "ext4",
		mach: machine{CPUs: 2, CPUModel: "Test CPU", Kernel: "Linux test", MemGiB: 8, GoVersion: "go1.26", Commit: "abc", LoadAvg: "1 1 1", Virt: "virtual machine", Disk: "/dev/vda (256 GiB, virtio)"}}
	run := func(label string, c int, ev float64, p50, p99, p999 time.Duration) runResult {
		return runResult{Spec: runSpec{Label: label, Clients: c, Duration: 10 * time.Second, Run: 1}, Requests: int(ev * 10), EvPerSec: ev, P50: p50, P99: p99, P999: p999,
			ServerCPU: time.Duration(ev) * time.Millisecond, Attempt: 1}
	}
	ms := time.Millisecond
	for _, c := range cfg.Clients {
		b.main[key("durable", c)] = []runResult{run("durable", c, 8000, ms/2, 8*ms, 12*ms)}
		b.main[key("ceiling", c)] = []runResult{run("ceiling", c, 10000, ms/4, 4*ms, 6*ms)}
	}
	e := run("empty", 64, 9000, 6*ms, 15*ms, 20*ms)
	e.MaxRSSKiB, e.PeakAnonKiB, e.PeakFileKiB = 140<<10, 20<<10, 120<<10
	bl := run("backlog", 64, 8000, 7*ms, 16*ms, 25*ms)
	bl.MaxRSSKiB, bl.PeakAnonKiB, bl.PeakFileKiB, bl.PeakRSSKiB = 90<<10, 17<<10, 70<<10, 91<<10
	b.backlog["empty"], b.backlog["backlog"] = []runResult{e}, []runResult{bl}
	b.prefill.Result = prefillResult{Seconds: 40, Pending: 1_000_000, Bytes: 1_163_000_000, FileSize: 2_300_000_000}
	b.opens = []openSample{{Cold: true, Result: openResult{OpenSeconds: 0.01}}, {Result: openResult{OpenSeconds: 0.002}}, {Cold: true, Crashed: true, Result: openResult{OpenSeconds: 28}}}
	for i, r := range cfg.SweepRates { // durable stops after 4,000 (i == 4)
		for _, m := range []string{"durable", "ceiling"} {
			if m == "durable" && i > 4 {
				continue
			}
			pt := sweepPoint{runResult: run("sweep-"+m, cfg.SweepConns, r, ms, 3*ms, 5*ms)}
			pt.Spec.Rate = r
			pt.Open = &openStats{Offered: r, Conns: cfg.SweepConns, Scheduled: int(r * 5), KeptUp: !(m == "durable" && i == 4)}
			b.sweep[m] = append(b.sweep[m], pt)
		}
	}
	b.drain = drainResults{ran: true, mixed: map[string][]mixedRun{}}
	b.drain.build.Bin = "/x/gwenrelay"
	b.drain.through = []drainRun{{Run: 1, Attempt: 1, Events: 1_000_000, DrainTime: 20 * time.Second, EvPerSec: 50_000, ServerCPU: 30 * time.Second,
		Stop: relayStop{MaxRSSKiB: 2 << 20, Mem: memPeaks{Anon: 73 << 10, File: 2 << 20, RSS: 2 << 20, HWM: 2 << 20}}}}
	b.drain.latency = []latencyRun{{Attempt: 1, Rate: 100, Duration: time.Minute, Sent: 6000, Acked: 6000, Arrived: 6000, P50: 100 * ms, P99: 200 * ms, P999: 210 * ms, Window: time.Minute}}
	mix := func(label string, draining bool, ev float64) mixedRun {
		return mixedRun{runResult: run(label, 64, ev, 7*ms, 15*ms, 30*ms), Draining: draining, DrainPerSec: ev}
	}
	b.drain.mixed["idle"] = []mixedRun{mix("idle", false, 9000)}
	b.drain.mixed["draining"] = []mixedRun{mix("draining", true, 4000)}
	return b
}

func TestReportVerdicts(t *testing.T) {
	b := fakeBench(t)
	out := b.render(reportOpts{SVGLink: "latency.svg"})
	for _, want := range []string{
		"## Summary",
		"| Durable ingest, 1 client | 8,000 ev/s; p50 0.50 ms, p99 8.00 ms, p99.9 12.0 ms | p50 ≤ 1.00 ms | **PASS** |",
		"| Durable ingest, 64 clients | 8,000 ev/s; p50 0.50 ms, p99 8.00 ms, p99.9 12.0 ms | p99 ≤ 10.0 ms | **PASS** |",
		"| Durable ingest, 256 clients | 8,000 ev/s;",
		"| Durable / ceiling, 64 clients | 80% | ≥ 75% | **PASS** |",
		"| Ceiling (non-durable), 16 clients | 10,000 ev/s;",
		"| clients | durable ev/s | p50 | p99 | p99.9 | ceiling ev/s | p50 | p99 | p99.9 | durable/ceiling |",
		"| 256 | 8,000 | 0.50 ms | 8.00 ms | 12.0 ms | 10,000 | 0.25 ms | 4.00 ms | 6.00 ms | 80% |",
		"| Drain throughput to a local fake Segment, `--rate 0`, 1,000,000 pending | 50,000 ev/s | ≥ 20,000 ev/s | **PASS** |",
		"| Relay CPU-s per 1,000 events delivered (draining, `--rate 0`) | 0.030 |",
		"| Server CPU-s per 1,000 events ingested, 64 clients |",
		// RSS: judged on ps's RSS, anonymous and file-backed beside it.
		"| RSS (as `ps` shows it, peak) with 1,000,000 pending, ingesting at 64 clients | 91 MiB (anonymous 17 MiB, file-backed 70 MiB) | ≤ 100 MiB | **PASS** |",
		"| RSS (as `ps` shows it, peak) while draining 1,000,000 pending | 2.00 GiB (anonymous 73 MiB, file-backed 2.00 GiB) | ≤ 100 MiB | **MISS** |",
		"| Open of the 1,000,000-event spool (spool.Open + Stats), cold after a crash | 28.00 s (median of 1) | ≤ 2s | **MISS** |",
		"| Durable ingest while the 1,000,000-event backlog drains / with the drainer idle, 64 clients | 44% (4,000 of 9,000 ev/s; p99 15.0 ms, p99.9 30.0 ms) | ≥ 70% | **MISS** |",
		"| End-to-end latency (202 → arrival at Segment) at a steady 100 ev/s | p50 100.0 ms, p99 200.0 ms, p99.9 210.0 ms | p99 ≤ 1.5s | **PASS** |",
		"| Open-loop sweep, durable: highest offered rate kept up | 2,000 ev/s (not 4,000) |",
		"| Open-loop sweep, ceiling: highest offered rate kept up | 12,000 ev/s (every rate offered) |",
		"## Latency against offered load (open loop)",
		"![Latency (p50, p99, p99.9; log scale) against offered load, durable and ceiling](latency.svg)",
		"| 4,000 | 4,000 | 1.00 ms | 3.00 ms | 5.00 ms | **no** | 4,000 |",
		"| 6,000 | – | – | – | – | not run | 6,000 | 1.00 ms |",
		"- 64 clients, durable/ceiling: 80% (per round, each durable run over the ceiling run after it: 80%) — target ≥ 75%: **PASS**",
		"- 64 clients, durable p99: 8.00 ms — target ≤ 10.0 ms: **PASS**",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Every verdict of the sections is in the summary, and no more.
	sum, _, _ := strings.Cut(out[strings.Index(out, "## Summary"):], "## Method")
	if a, s := strings.Count(out, "**PASS**")+strings.Count(out, "**MISS**"), strings.Count(sum, "**PASS**")+strings.Count(sum, "**MISS**"); a != 2*s {
		t.Errorf("%d verdicts in the report, %d in its summary: want each in both", a, s)
	}

	docs := b.render(reportOpts{Docs: true, SVGLink: docsSVG})
	for _, want := range []string{"# Benchmarks", "## The machine", "- CPU: 2 × Test CPU; virtual machine", "/dev/vda (256 GiB, virtio)", "## The command",
		"```sh\ngo run ./bench --admin=false\n```", "## Summary", "](benchmarks-latency.svg)", "## Delivery latency"} {
		if !strings.Contains(docs, want) {
			t.Errorf("docs page lacks %q", want)
		}
	}
	if strings.Count(docs, "| Durable / ceiling, 64 clients |") != 1 {
		t.Errorf("rendering twice must not repeat the summary's rows")
	}
}

func TestQuickFlags(t *testing.T) {
	c, err := parseFlags([]string{"--quick"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Retries != 0 || c.Backlog != 100_000 || len(c.SweepRates) != 4 || c.LatencyDuration != 3*time.Second || len(c.Clients) != 3 {
		t.Errorf("--quick: %+v", c)
	}
	c, err = parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 16, 64, 256}; len(c.Clients) != 4 || c.Clients[3] != want[3] {
		t.Errorf("default clients %v, want %v", c.Clients, want)
	}
	if _, err := parseFlags([]string{"--sweep-rates", "500,250"}); err == nil {
		t.Error("descending --sweep-rates accepted")
	}
}
