// Command bench measures gwenrelay's ingest: POST /webhook with 1 KiB GWEN
// events against the durable relay (bbolt spool, fsync before 202) and, in
// the same run, against the in-memory ceiling (the same handler with a store
// that keeps nothing), from N closed-loop clients; then both offered a series
// of fixed rates, open loop (sweep.go), plotted as latency against offered
// load (svg.go); then the durable load with a large backlog already pending,
// and the time to open that backlog's spool.
//
// Then its delivery (drain*.go; --drain=false skips it): the real gwenrelay
// binary, built once per run, drains into a fake Segment in this process —
// the backlog's drain rate with --rate 0, end-to-end latency at a steady
// 100 events/s, and ingest while the backlog drains.
//
// Then the spool CLI (admin.go; --admin=false skips it): `gwenrelay spool
// stats|ls|show|export` on a copy of the backlog, each a process of the real
// binary, through a running daemon's admin socket and on the stopped file.
//
//	go run ./bench                 # full run, about 17 minutes (more on a busy machine: --repeat-budget)
//	go run ./bench --quick         # about a minute
//	go run ./bench --out bench-results/ingest.md
//	go run ./bench --docs docs     # also docs/benchmarks.md and its plot
//	go run ./bench --ingest=false --drain=false   # only the spool CLI
//
// The relay runs in a child process (this binary re-executed with a hidden
// subcommand) so that the load generator's memory and GC stay out of it; both
// share the machine's cores, as a relay and its neighbours would.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

func main() {
	if handled, code := childMain(os.Args[1:], os.Stderr); handled {
		os.Exit(code)
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// config is the command line.
type config struct {
	Args      []string
	Quick     bool
	Runs      int
	Duration  time.Duration
	Warmup    time.Duration
	Clients   []int
	Backlog   int
	Opens     int
	MaxOthers float64
	Retries   int
	// RepeatBudget caps the time spent on repeats of noisy runs; past it
	// a noisy run is kept (flagged) at once.
	RepeatBudget time.Duration
	Out          string
	Keep         bool
	Dir          string
	CPUProfile   string
	Dedup        time.Duration

	Ingest          bool
	Drain           bool
	LatencyRate     float64
	LatencyDuration time.Duration
	Perf            string
	Sections        map[string]bool // delivery sections to run
	MixedRate       float64

	Admin     bool
	AdminRuns int

	Sweep         bool
	SweepRates    []float64
	SweepWarmup   time.Duration
	SweepDuration time.Duration
	SweepConns    int
	SweepGrace    time.Duration

	Docs string // also write DIR/benchmarks.md and DIR/benchmarks-latency.svg
	SVG  string // where the plot goes without --docs
}

func parseFlags(args []string) (config, error) {
	c := config{Args: args}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.BoolVar(&c.Quick, "quick", false, "a ~1-minute version: 1 run of 1s per point, 0.3s warm-up, clients 1,64,256, no repeats of noisy runs, a 100,000-event backlog, 1 open of each kind, a 3s latency run, a 4-point sweep of 1s points, 3 spool CLI rounds (explicit flags still win)")
	fs.IntVar(&c.Runs, "runs", 3, "runs per point; medians are reported")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured length of each run")
	fs.DurationVar(&c.Warmup, "warmup", time.Second, "warm-up before each run's window, excluded")
	clients := fs.String("clients", "1,16,64,256", "comma-separated concurrent keep-alive client counts")
	fs.IntVar(&c.Backlog, "backlog", 1_000_000, "events pending in the spool for the backlog comparison and the open time (0 skips both)")
	fs.IntVar(&c.Opens, "opens", 3, "open-time measurements, each cold and warm")
	fs.Float64Var(&c.MaxOthers, "max-others", 0.5, "repeat a run during which other processes kept more than this many cores busy (0: never); if all attempts are over it, the quietest is kept")
	fs.IntVar(&c.Retries, "retries", 2, "at most this many repeats of a noisy run; the last attempt is kept and flagged")
	fs.DurationVar(&c.RepeatBudget, "repeat-budget", 5*time.Minute, "at most this much time in all on repeats of noisy runs (keeps a run on a busy machine near its usual length); past it noisy runs are kept and flagged at once")
	fs.StringVar(&c.Out, "out", "", "also write the report (markdown) to this file")
	fs.BoolVar(&c.Keep, "keep", false, "keep the run directory with every spool file")
	fs.StringVar(&c.Dir, "dir", "bench-results", "directory for spool files and the cached backlog; must be on a real disk, not tmpfs")
	fs.DurationVar(&c.Dedup, "dedup-window", serveDedupWindow, "the servers' spool dedup window, as serve's --dedup-window (0 disables dedup: an experiment, not the shipped default; the backlog is always prefilled with dedup keys)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of each server's measurement window to FILE-<label>-<clients>c-r<run>.prof")
	fs.BoolVar(&c.Ingest, "ingest", true, "run the ingest measurements (--ingest=false: only the delivery ones)")
	fs.BoolVar(&c.Drain, "drain", true, "run the delivery measurements against the real gwenrelay binary and a fake Segment in this process: drain throughput of the backlog (--rate 0), end-to-end latency at --latency-rate, ingest while draining (--drain=false skips them)")
	fs.Float64Var(&c.LatencyRate, "latency-rate", 100, "events/s of the open-loop latency run")
	fs.DurationVar(&c.LatencyDuration, "latency-duration", time.Minute, "length of the open-loop latency run")
	fs.StringVar(&c.Perf, "perf", "", "after the drain throughput runs, drain once more under `perf record -g` of the relay and write the profile to FILE (not counted in the figures)")
	sections := fs.String("delivery", "throughput,latency,mixed", "delivery sections to run: throughput (the backlog's drain rate), latency, mixed (ingest while draining)")
	fs.Float64Var(&c.MixedRate, "mixed-rate", 0, "the relay's --rate in the ingest-while-draining comparison (0: no limit, the measurement's definition; other values are experiments)")
	fs.BoolVar(&c.Admin, "admin", true, "run the spool CLI measurements: gwenrelay spool stats, ls and show as processes of the real binary on the backlog, live (through a daemon's admin socket) and offline (the file), and the throughput of spool export (--admin=false skips them; --ingest=false --drain=false runs only them)")
	fs.IntVar(&c.AdminRuns, "admin-runs", 15, "rounds of the spool CLI commands per mode; medians are reported (export runs: --runs)")
	fs.BoolVar(&c.Sweep, "sweep", true, "run the open-loop sweep: durable ingest and the ceiling, alternated, at each of --sweep-rates, latency from each request's scheduled send time, plotted against the offered rate as an SVG (--sweep=false skips it)")
	sweepRates := fs.String("sweep-rates", "250,500,1000,2000,4000,6000,8000,10000,12000", "comma-separated offered rates (events/s) of the sweep, ascending; a series stops after the first rate it cannot keep up with")
	fs.DurationVar(&c.SweepWarmup, "sweep-warmup", time.Second, "warm-up of each sweep point at its offered rate, excluded")
	fs.DurationVar(&c.SweepDuration, "sweep-duration", 5*time.Second, "measured window of each sweep point")
	fs.IntVar(&c.SweepConns, "sweep-conns", 256, "keep-alive connections (one request in flight each) the sweep's generator may use, so that they do not limit the offered rate")
	fs.DurationVar(&c.SweepGrace, "sweep-grace", 2*time.Second, "after a sweep point's window, how long its queued requests may still be sent; those left are counted unanswered and the point as not kept up")
	fs.StringVar(&c.Docs, "docs", "", "also write DIR/benchmarks.md (the machine, the command, the whole report, the verdicts, the plot) and the plot DIR/benchmarks-latency.svg")
	fs.StringVar(&c.SVG, "svg", "", "write the sweep's plot here (default: beside --out as NAME-latency.svg, else --dir/latency.svg unless --docs; --docs DIR always writes DIR/benchmarks-latency.svg too)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.Sections = map[string]bool{}
	for _, s := range strings.Split(*sections, ",") {
		switch s = strings.TrimSpace(s); s {
		case "throughput", "latency", "mixed":
			c.Sections[s] = true
		case "":
		default:
			return c, fmt.Errorf("--delivery %q: want a comma-separated list of throughput, latency and mixed", *sections)
		}
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q (all options are flags; see -h)", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.Quick {
		if !set["runs"] {
			c.Runs = 1
		}
		if !set["duration"] {
			c.Duration = time.Second
		}
		if !set["warmup"] {
			c.Warmup = 300 * time.Millisecond
		}
		if !set["clients"] {
			*clients = "1,64,256"
		}
		if !set["retries"] {
			c.Retries = 0
		}
		if !set["backlog"] {
			c.Backlog = 100_000
		}
		if !set["opens"] {
			c.Opens = 1
		}
		if !set["latency-duration"] {
			c.LatencyDuration = 3 * time.Second
		}
		if !set["admin-runs"] {
			c.AdminRuns = 3
		}
		if !set["sweep-rates"] {
			*sweepRates = "500,2000,6000,12000"
		}
		if !set["sweep-warmup"] {
			c.SweepWarmup = 250 * time.Millisecond
		}
		if !set["sweep-duration"] {
			c.SweepDuration = time.Second
		}
		if !set["sweep-grace"] {
			c.SweepGrace = time.Second
		}
	}
	for _, s := range strings.Split(*sweepRates, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		r, err := strconv.ParseFloat(s, 64)
		if err != nil || r <= 0 || r > 200_000 || (len(c.SweepRates) > 0 && r <= c.SweepRates[len(c.SweepRates)-1]) {
			return c, fmt.Errorf("--sweep-rates %q: want ascending comma-separated rates above 0 and at most 200000 events/s", *sweepRates)
		}
		c.SweepRates = append(c.SweepRates, r)
	}
	for _, s := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 4096 {
			return c, fmt.Errorf("--clients %q: want comma-separated counts between 1 and 4096", *clients)
		}
		c.Clients = append(c.Clients, n)
	}
	switch {
	case c.Runs < 1:
		return c, fmt.Errorf("--runs %d: want at least 1", c.Runs)
	case c.Duration < 100*time.Millisecond:
		return c, fmt.Errorf("--duration %v: want at least 100ms", c.Duration)
	case c.Warmup < 0:
		return c, fmt.Errorf("--warmup %v: want 0 or more", c.Warmup)
	case c.Backlog < 0:
		return c, fmt.Errorf("--backlog %d: want 0 (skip) or more", c.Backlog)
	case c.Retries < 0:
		return c, fmt.Errorf("--retries %d: want 0 or more", c.Retries)
	case c.MaxOthers < 0:
		return c, fmt.Errorf("--max-others %v: want 0 (off) or more", c.MaxOthers)
	case c.Opens < 1:
		return c, fmt.Errorf("--opens %d: want at least 1", c.Opens)
	case c.LatencyRate <= 0 || c.LatencyRate > 10_000:
		return c, fmt.Errorf("--latency-rate %v: want more than 0 and at most 10000 events/s", c.LatencyRate)
	case c.LatencyDuration < time.Second:
		return c, fmt.Errorf("--latency-duration %v: want at least 1s", c.LatencyDuration)
	case c.MixedRate < 0:
		return c, fmt.Errorf("--mixed-rate %v: want 0 (no limit) or more", c.MixedRate)
	case c.AdminRuns < 1:
		return c, fmt.Errorf("--admin-runs %d: want at least 1", c.AdminRuns)
	case c.Sweep && c.Ingest && len(c.SweepRates) == 0:
		return c, errors.New("--sweep-rates: want at least one rate (or --sweep=false)")
	case c.SweepConns < 1 || c.SweepConns > 4096:
		return c, fmt.Errorf("--sweep-conns %d: want between 1 and 4096", c.SweepConns)
	case c.SweepDuration < 100*time.Millisecond:
		return c, fmt.Errorf("--sweep-duration %v: want at least 100ms", c.SweepDuration)
	case c.SweepWarmup < 0 || c.SweepGrace < 0:
		return c, errors.New("--sweep-warmup and --sweep-grace: want 0 or more")
	case !c.Ingest && !c.Drain && !c.Admin:
		return c, errors.New("--ingest=false, --drain=false and --admin=false leave nothing to measure")
	}
	return c, nil
}

// Targets.
const (
	targetRatio64      = 0.75 // durable / ceiling at 64 clients
	targetP99At64      = 10 * time.Millisecond
	targetP50One       = time.Millisecond
	targetBacklogRatio = 0.80
	targetOpen         = 2 * time.Second
	targetRSSKiB       = 100 << 10 // the relay's RSS, as ps shows it, with the backlog pending
)

// bench holds a run's state.
type bench struct {
	cfg    config
	exe    string
	runDir string
	body   eventBody
	fs     string
	mach   machine
	began  time.Time

	main    map[string][]runResult // "durable/64", "ceiling/64" -> runs
	backlog map[string][]runResult // "empty", "backlog" -> runs
	prefill prefillInfo
	opens   []openSample
	openErr string
	notes   []string
	drain   drainResults
	admin   adminResults
	sweep   map[string][]sweepPoint // "durable", "ceiling" -> points in rate order
	rows    []row                   // the summary table, filled while rendering

	repeats     int           // runs repeated because of noise
	noisyKept   int           // runs still noisy after the last repeat
	repeatSpent time.Duration // time spent on repeats
}

func key(label string, clients int) string { return fmt.Sprintf("%s/%d", label, clients) }

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(args []string) error {
	cfg, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	b := &bench{cfg: cfg, main: map[string][]runResult{}, backlog: map[string][]runResult{}, sweep: map[string][]sweepPoint{}, began: time.Now()}
	if b.exe, err = os.Executable(); err != nil {
		return fmt.Errorf("cannot find this binary to re-execute it as the server: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("create --dir %s: %w", cfg.Dir, err)
	}
	fsName, real := fsType(cfg.Dir)
	if !real {
		return fmt.Errorf("--dir %s is on %s: fsync would not reach a disk; point --dir at a real disk (e.g. /var/tmp/gwenrelay-bench)", cfg.Dir, fsName)
	}
	b.fs = fsName
	if b.runDir, err = os.MkdirTemp(cfg.Dir, "run-*"); err != nil {
		return fmt.Errorf("create a run directory under %s: %w", cfg.Dir, err)
	}
	cleanup := func() {
		if !cfg.Keep {
			os.RemoveAll(b.runDir)
		}
	}
	defer cleanup()
	onInterrupt(cleanup)
	if b.body, err = newEventBody(eventSize, time.Now()); err != nil {
		return err
	}
	b.mach = describeMachine()
	b.mach.Disk = describeDisk(cfg.Dir)
	progress("gwenrelay bench (ingest %v, delivery %v, spool CLI %v): %d run(s) of %v (+%v warm-up) per point, clients %v, backlog %d; spool files in %s (%s)",
		cfg.Ingest, cfg.Drain, cfg.Admin, cfg.Runs, cfg.Duration, cfg.Warmup, cfg.Clients, cfg.Backlog, b.runDir, fsName)

	if cfg.Ingest {
		if err := b.runMain(); err != nil {
			return err
		}
		if cfg.Sweep {
			b.runSweep()
		}
		if cfg.Backlog > 0 {
			if err := b.runBacklog(); err != nil {
				return err
			}
			b.runOpens()
		}
	}
	if cfg.Drain {
		b.runDrain()
	}
	if cfg.Admin {
		b.runAdmin()
	}
	return b.write()
}

// write prints the report, writes the plot and, with --out and --docs, the
// report's files.
func (b *bench) write() error {
	cfg := b.cfg
	// The plot: one SVG, written where --svg, --docs, --out or --dir say.
	var svgs []string
	if cfg.Ingest && cfg.Sweep && len(b.sweep) > 0 {
		switch {
		case cfg.SVG != "":
			svgs = append(svgs, cfg.SVG)
		case cfg.Out != "":
			svgs = append(svgs, strings.TrimSuffix(cfg.Out, filepath.Ext(cfg.Out))+"-latency.svg")
		case cfg.Docs == "":
			svgs = append(svgs, filepath.Join(cfg.Dir, "latency.svg"))
		}
		if cfg.Docs != "" {
			svgs = append(svgs, filepath.Join(cfg.Docs, docsSVG))
		}
		plot := b.sweepPlot().svg()
		for _, f := range svgs {
			if err := writeFile(f, plot); err != nil {
				return fmt.Errorf("write the plot: %w", err)
			}
			progress("plot written to %s", f)
		}
	}
	link := func(from string) string {
		if len(svgs) == 0 {
			return ""
		}
		if rel, err := filepath.Rel(from, svgs[0]); err == nil {
			return filepath.ToSlash(rel)
		}
		return svgs[0]
	}
	if cfg.Out != "" {
		report := b.render(reportOpts{SVGLink: link(filepath.Dir(cfg.Out))})
		fmt.Print(report)
		if err := writeFile(cfg.Out, []byte(report)); err != nil {
			return fmt.Errorf("write --out: %w", err)
		}
		progress("report written to %s", cfg.Out)
	} else {
		fmt.Print(b.render(reportOpts{SVGLink: link(".")}))
	}
	if cfg.Docs != "" {
		docsLink := ""
		if len(svgs) > 0 {
			docsLink = docsSVG
		}
		page := b.render(reportOpts{Docs: true, SVGLink: docsLink})
		f := filepath.Join(cfg.Docs, docsPage)
		if err := writeFile(f, []byte(page)); err != nil {
			return fmt.Errorf("write --docs: %w", err)
		}
		progress("docs page written to %s", f)
	}
	if cfg.Keep {
		progress("kept the run directory %s", b.runDir)
	}
	return nil
}

// The --docs files.
const (
	docsPage = "benchmarks.md"
	docsSVG  = "benchmarks-latency.svg"
)

// writeFile writes data to name, creating its directory.
func writeFile(name string, data []byte) error {
	if dir := filepath.Dir(name); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(name, data, 0o644)
}

func (b *bench) spec(label, mode string, clients, r int) runSpec {
	s := runSpec{Label: label, Mode: mode, Clients: clients, Warmup: b.cfg.Warmup, Duration: b.cfg.Duration, Run: r, Nonce: rand.Uint32(), Dedup: b.cfg.Dedup}
	if mode == "durable" {
		s.Spool = filepath.Join(b.runDir, fmt.Sprintf("%s-%dc-r%d.db", label, clients, r))
	}
	if b.cfg.CPUProfile != "" {
		s.Profile = fmt.Sprintf("%s-%s-%dc-r%d.prof", b.cfg.CPUProfile, label, clients, r)
	}
	return s
}

// do runs one spec, repeating it while other processes took more than
// --max-others cores during its window (at most --retries times); if every
// attempt was noisy, the quietest is kept and flagged. prepare, if not nil,
// makes the spool file before each attempt.
func (b *bench) do(spec runSpec, prepare func(runSpec) error) (runResult, error) {
	return b.doRetries(spec, prepare, b.cfg.Retries)
}

// doRetries is do with at most retries repeats.
func (b *bench) doRetries(spec runSpec, prepare func(runSpec) error, retries int) (runResult, error) {
	var quietest runResult
	for attempt := 0; ; attempt++ {
		t := time.Now()
		if prepare != nil {
			if err := prepare(spec); err != nil {
				return runResult{}, err
			}
		}
		res, err := b.doOnce(spec)
		if attempt > 0 {
			b.repeatSpent += time.Since(t)
		}
		if err != nil {
			return res, err
		}
		res.Attempt = attempt + 1
		noisy := b.cfg.MaxOthers > 0 && res.othersCores() > b.cfg.MaxOthers
		if !noisy {
			return res, nil
		}
		if attempt == 0 || res.othersCores() < quietest.othersCores() {
			quietest = res
		}
		if attempt >= retries || b.repeatSpent >= b.cfg.RepeatBudget {
			quietest.Noisy = true
			b.noisyKept++
			return quietest, nil
		}
		b.repeats++
		progress("  other processes kept %.2f cores busy (over --max-others %.2f): repeating this run", res.othersCores(), b.cfg.MaxOthers)
		spec.Nonce = rand.Uint32()
		// A fresh file for the next attempt (the last one may be kept).
		suffix := fmt.Sprintf("-a%d", attempt+2)
		if spec.Spool != "" {
			spec.Spool = strings.TrimSuffix(strings.TrimSuffix(spec.Spool, ".db"), fmt.Sprintf("-a%d", attempt+1)) + suffix + ".db"
		}
		if spec.Profile != "" {
			spec.Profile = strings.TrimSuffix(strings.TrimSuffix(spec.Profile, ".prof"), fmt.Sprintf("-a%d", attempt+1)) + suffix + ".prof"
		}
	}
}

// doOnce runs one spec, logs it and removes its spool unless --keep.
func (b *bench) doOnce(spec runSpec) (runResult, error) {
	res, err := runOnce(b.exe, spec, b.body, b.runDir)
	if spec.Spool != "" && !b.cfg.Keep {
		os.Remove(spec.Spool)
	}
	if err != nil {
		return res, fmt.Errorf("run %d, %s, %d clients: %w", spec.Run, spec.Label, spec.Clients, err)
	}
	extra := ""
	if spec.Mode == "durable" {
		extra = fmt.Sprintf("; server %.3f CPU-s/1k ev; %d commits, %.1f ev/commit, commit p50 %.2f ms",
			res.serverCPUPer1k(), res.Server.Commits, perCommit(res.Server), res.Server.CommitP50Ms)
	}
	if res.Dials > int64(spec.Clients) && res.Open == nil {
		extra += fmt.Sprintf("; NOTE %d connections dialled for %d clients", res.Dials, spec.Clients)
	}
	if o := res.Open; o != nil {
		kept := "kept up"
		if !o.KeptUp {
			kept = "did NOT keep up"
		}
		progress("sweep %-7s %6.0f ev/s offered: %8.0f achieved (%s)  p50 %s  p99 %s  p99.9 %s  max %s; %d unanswered; pickup p50 %s p99 %s; peak %d in flight of %d conns%s; others' CPU %.2f cores",
			spec.Mode, spec.Rate, res.EvPerSec, kept, fmtDur(res.P50), fmtDur(res.P99), fmtDur(res.P999), fmtDur(o.Max), o.Unanswered, fmtDur(o.PickupP50), fmtDur(o.PickupP99), o.PeakInFlight, o.Conns, extra, res.othersCores())
		return res, nil
	}
	progress("run %d/%d %-8s %3d clients: %8.0f ev/s  p50 %s  p99 %s  p99.9 %s%s; others' CPU %.2f cores, fsync probe p50 %s",
		spec.Run, b.cfg.Runs, spec.Label, spec.Clients, res.EvPerSec, fmtDur(res.P50), fmtDur(res.P99), fmtDur(res.P999), extra, res.othersCores(), fmtDur(res.ProbeP50))
	return res, nil
}

func perCommit(s serverStats) float64 {
	if s.Commits == 0 {
		return 0
	}
	return float64(s.CommitEntries) / float64(s.Commits)
}

// runMain alternates durable and ceiling runs (D C D C …), every client count
// in each round, so slow drift in the machine's load hits both alike.
func (b *bench) runMain() error {
	for r := 1; r <= b.cfg.Runs; r++ {
		for _, c := range b.cfg.Clients {
			for _, m := range []string{"durable", "ceiling"} {
				res, err := b.do(b.spec(m, m, c, r), nil)
				if err != nil {
					return err
				}
				b.main[key(m, c)] = append(b.main[key(m, c)], res)
			}
		}
	}
	return nil
}

// backlogClients is the client count of the backlog comparison and of
// ingest while draining: 64, the targets' count, if asked for, else the
// largest asked for.
func (b *bench) backlogClients() int {
	if has(b.cfg.Clients, 64) {
		return 64
	}
	return slices.Max(b.cfg.Clients)
}

// prefillInfo describes the cached backlog file.
type prefillInfo struct {
	Path     string        `json:"-"`
	Count    int           `json:"count"`
	Size     int           `json:"event_size"`
	Result   prefillResult `json:"result"`
	Created  time.Time     `json:"created"`
	Reused   bool          `json:"-"`
	CopySecs []float64     `json:"-"`
}

// prefillVersion changes whenever the prefill's record shape changes, so an
// old cached file is not reused.
const prefillVersion = "1"

func (b *bench) backlogPath() string {
	h := sha256.Sum256([]byte(eventTemplate + "|" + prefillVersion + "|" + strconv.Itoa(spool.FormatVersion)))
	return filepath.Join(b.cfg.Dir, fmt.Sprintf("backlog-%d-%dB-%s.db", b.cfg.Backlog, eventSize, hex.EncodeToString(h[:4])))
}

// ensureBacklog prefills the cached backlog file unless a complete one is
// already there.
func (b *bench) ensureBacklog() error {
	path := b.backlogPath()
	b.prefill = prefillInfo{Path: path, Count: b.cfg.Backlog, Size: eventSize}
	if meta, err := os.ReadFile(path + ".json"); err == nil {
		var p prefillInfo
		if json.Unmarshal(meta, &p) == nil && p.Count == b.cfg.Backlog && p.Result.Pending == int64(b.cfg.Backlog) {
			if fi, err := os.Stat(path); err == nil && fi.Size() == p.Result.FileSize {
				p.Path, p.Reused = path, true
				b.prefill = p
				progress("reusing the cached backlog %s (%d events, %s, prefilled %s)", path, p.Count, fmtBytes(fi.Size()), p.Created.Format(time.RFC3339))
				return nil
			}
		}
	}
	partial := path + ".partial"
	os.Remove(partial)
	os.Remove(path + ".json")
	progress("prefilling %d events of %d bytes into %s (cached for later runs) …", b.cfg.Backlog, eventSize, path)
	c, err := startChild(b.exe, "prefill", "prefill", "--spool", partial, "--count", strconv.Itoa(b.cfg.Backlog), "--size", strconv.Itoa(eventSize))
	if err != nil {
		return err
	}
	line, err := c.expect("RESULT", 2*time.Hour)
	if err != nil {
		c.kill()
		os.Remove(partial)
		return fmt.Errorf("prefill: %w", err)
	}
	if _, err := c.wait(time.Minute); err != nil {
		os.Remove(partial)
		return fmt.Errorf("prefill: %w", err)
	}
	var res prefillResult
	if err := json.Unmarshal([]byte(line), &res); err != nil {
		return fmt.Errorf("prefill printed an unreadable result %q: %v", line, err)
	}
	if res.Pending != int64(b.cfg.Backlog) {
		return fmt.Errorf("prefill left %d pending events, want %d", res.Pending, b.cfg.Backlog)
	}
	if err := os.Rename(partial, path); err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	b.prefill.Result, b.prefill.Created = res, time.Now()
	meta, _ := json.MarshalIndent(b.prefill, "", "  ")
	if err := os.WriteFile(path+".json", meta, 0o644); err != nil {
		return fmt.Errorf("prefill: write %s.json: %w", path, err)
	}
	progress("prefill done in %.1f s (%.0f ev/s); file %s", res.Seconds, float64(res.Pending)/res.Seconds, fmtBytes(res.FileSize))
	return nil
}

// runBacklog alternates the durable server on an empty spool and on a fresh
// copy of the backlog (E B E B …), at the largest client count.
func (b *bench) runBacklog() error {
	if err := b.ensureBacklog(); err != nil {
		return err
	}
	c := b.backlogClients()
	for r := 1; r <= b.cfg.Runs; r++ {
		res, err := b.do(b.spec("empty", "durable", c, r), nil)
		if err != nil {
			return err
		}
		b.backlog["empty"] = append(b.backlog["empty"], res)

		copyBacklog := func(spec runSpec) error {
			t := time.Now()
			os.Remove(spec.Spool)
			if err := copyFile(spec.Spool, b.prefill.Path); err != nil {
				return fmt.Errorf("copy the backlog for run %d: %w", r, err)
			}
			b.prefill.CopySecs = append(b.prefill.CopySecs, time.Since(t).Seconds())
			return nil
		}
		res, err = b.do(b.spec("backlog", "durable", c, r), copyBacklog)
		if err != nil {
			return err
		}
		if res.Server.PendingAtStart != int64(b.cfg.Backlog) {
			return fmt.Errorf("run %d: the backlog copy held %d pending events, want %d", r, res.Server.PendingAtStart, b.cfg.Backlog)
		}
		b.backlog["backlog"] = append(b.backlog["backlog"], res)
	}
	return nil
}

// openSample is one timed open of the backlog file.
type openSample struct {
	Cold      bool
	Crashed   bool    // the file was left as a killed relay leaves it
	Resident  float64 // fraction of the file in the page cache just before
	Result    openResult
	Wall      time.Duration // exec to exit of the child
	EvictNote string
}

// runOpens times spool.Open + the first Stats of the cached backlog file, in
// a fresh child each time, alternating cold (the file evicted from the page
// cache first) and warm (right after a cold open read it all).
func (b *bench) runOpens() {
	path := b.prefill.Path
	before, _ := os.Stat(path)
	type kind struct{ cold, crashed bool }
	for i := 1; i <= b.cfg.Opens; i++ {
		for _, k := range []kind{{true, false}, {false, false}, {true, true}} {
			cold := k.cold
			s := openSample{Cold: cold, Crashed: k.crashed}
			if k.crashed {
				c, err := startChild(b.exe, "open", "open", "--crash", "--spool", path)
				if err == nil {
					_, err = c.wait(10 * time.Minute)
				}
				if err != nil {
					b.openErr = fmt.Sprintf("leave the file as after a crash: %v", err)
					return
				}
			}
			if cold {
				if err := evict(path); err != nil {
					s.EvictNote = err.Error()
				}
			}
			var err error
			if s.Resident, err = residency(path); err != nil {
				s.Resident = -1
			}
			t := time.Now()
			c, err := startChild(b.exe, "open", "open", "--spool", path)
			if err != nil {
				b.openErr = err.Error()
				return
			}
			line, err := c.expect("RESULT", 10*time.Minute)
			if err == nil {
				_, err = c.wait(time.Minute)
			} else {
				c.kill()
			}
			s.Wall = time.Since(t)
			if err == nil {
				err = json.Unmarshal([]byte(line), &s.Result)
			}
			if err != nil {
				b.openErr = fmt.Sprintf("open %d: %v", i, err)
				return
			}
			if s.Result.Pending != int64(b.cfg.Backlog) {
				b.openErr = fmt.Sprintf("open %d saw %d pending events, want %d", i, s.Result.Pending, b.cfg.Backlog)
				return
			}
			kind := "warm"
			if cold {
				kind = "cold, after a clean stop"
			}
			if k.crashed {
				kind = "cold, after a crash"
			}
			progress("open %d/%d %s (%.0f%% of the file in the page cache): spool.Open %.3f s + Stats %.4f s; max RSS %s",
				i, b.cfg.Opens, kind, 100*s.Resident, s.Result.OpenSeconds, s.Result.StatsSeconds, fmtBytes(s.Result.MaxRSSKiB<<10))
			b.opens = append(b.opens, s)
		}
	}
	if after, err := os.Stat(path); err == nil && before != nil && after.Size() != before.Size() {
		b.notes = append(b.notes, fmt.Sprintf("the cached backlog file changed during the open timings (size %d -> %d): delete it so the next run prefills afresh", before.Size(), after.Size()))
	}
}
