package main

// The open-loop sweep: durable ingest and the ceiling at a series of offered
// rates. Requests are scheduled at fixed times (the i-th at start + i/rate)
// whatever the earlier answers, handed to a pool of keep-alive connections
// (one request in flight each), and each request's latency runs from its
// scheduled time to its 202: a request that waits for a free connection, or
// behind a late scheduler, has that wait counted, so a stalled server cannot
// hide its stall by slowing the generator down (no coordinated omission).

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// A point keeps up when it answers at least keptUpShare of the offered rate
// within its window and half its requests at most find every connection
// busy for maxPickupP50: past that the server holds all the connections and
// the queue in front of them grows.
const (
	keptUpShare  = 0.97
	maxPickupP50 = 10 * time.Millisecond
)

// openStats is what an open-loop run measured besides runResult's figures
// (whose EvPerSec is the achieved rate: 202s inside the window per second,
// and whose percentiles run from the scheduled send times).
type openStats struct {
	Offered    float64
	Conns      int
	Scheduled  int           // requests scheduled inside the window
	Unanswered int           // of those, not sent or not answered by the cutoff
	Cutoff     time.Duration // window end to the cutoff (the grace)
	Max        time.Duration
	// PickupP50, PickupP99 and PickupMax: scheduled time to a connection
	// taking the request (the scheduler's lateness plus any wait for a free
	// connection), over the window's requests.
	PickupP50, PickupP99, PickupMax time.Duration
	PeakInFlight                    int
	KeptUp                          bool
}

// keptUp reports whether an open-loop point kept up with its offered rate:
// no failed or unanswered request, at least keptUpShare of the offered rate
// answered within the window, and a median pickup delay of at most
// maxPickupP50.
func keptUp(offered, achieved float64, unanswered int, errs int64, pickupP50 time.Duration) bool {
	return errs == 0 && unanswered == 0 && achieved >= keptUpShare*offered && pickupP50 <= maxPickupP50
}

// openWorker's tally.
type openWorker struct {
	lat, pickup []time.Duration
	acked       int64
	inWindow    int // 202s whose answer came inside the window
	unanswered  int
	errs        int64
	errMsg      string
}

type openJob struct {
	at time.Time
}

// driveOpenLoad offers spec.Rate requests per second to the server at addr
// (process pid) over at most spec.Clients keep-alive connections, for the
// warm-up plus the window, calling mark at both edges of the window. Queued
// requests still unsent spec.Grace after the window are dropped and counted
// unanswered, with their wait until then as their latency (a lower bound).
func driveOpenLoad(pid int, addr string, spec runSpec, body eventBody, mark func(), res *runResult) loadOutcome {
	var dials atomic.Int64
	conns := spec.Clients
	tr := newTransport(conns, &dials)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	url := "http://" + addr + "/webhook"

	start := time.Now().Add(20 * time.Millisecond)
	t0 := start.Add(spec.Warmup)
	t1 := t0.Add(spec.Duration)
	total := int(math.Ceil(t1.Sub(start).Seconds() * spec.Rate))
	interval := float64(time.Second) / spec.Rate
	meter := startMeter(pid, t0, t1, mark, res)

	jobs := make(chan openJob, total)
	var dropping atomic.Bool
	var cutoffAt atomic.Int64 // unix nanos of the cutoff, once dropping
	var inFlight, peak atomic.Int64
	inWin := func(at time.Time) bool { return !at.Before(t0) && at.Before(t1) }
	stats := make([]openWorker, conns)
	var wg sync.WaitGroup
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws := &stats[w]
			seq := uint64(0)
			for j := range jobs {
				if dropping.Load() {
					if inWin(j.at) {
						ws.unanswered++
						ws.lat = append(ws.lat, time.Unix(0, cutoffAt.Load()).Sub(j.at))
					}
					continue
				}
				picked := time.Now()
				if inWin(j.at) {
					ws.pickup = append(ws.pickup, picked.Sub(j.at))
				}
				n := inFlight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				err := post(client, url, body.build(spec.Nonce, uint16(w), seq))
				seq++
				inFlight.Add(-1)
				end := time.Now()
				if err != nil {
					ws.errs++
					if ws.errMsg == "" {
						ws.errMsg = err.Error()
					}
					if inWin(j.at) {
						ws.unanswered++
						ws.lat = append(ws.lat, end.Sub(j.at))
					}
					continue
				}
				ws.acked++
				if !end.Before(t0) && end.Before(t1) {
					ws.inWindow++
				}
				if inWin(j.at) {
					ws.lat = append(ws.lat, end.Sub(j.at))
				}
			}
		}()
	}

	// The scheduler: the i-th request is due at start + i*interval; it sleeps
	// until the next one is due and hands out every due one at once, so a
	// late wake-up is caught up at once rather than carried forward.
	for i := 0; i < total; i++ {
		at := start.Add(time.Duration(float64(i) * interval))
		for d := time.Until(at); d > 0; d = time.Until(at) {
			preciseSleep(d)
		}
		jobs <- openJob{at: at}
	}
	close(jobs)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	cutoff := t1.Add(spec.Grace)
	select {
	case <-done:
	case <-time.After(time.Until(cutoff)):
		cutoffAt.Store(time.Now().UnixNano())
		dropping.Store(true)
		<-done
	}
	cpuErr := meter.finish()
	tr.CloseIdleConnections()

	o := &openStats{Offered: spec.Rate, Conns: conns, Cutoff: spec.Grace, PeakInFlight: int(peak.Load())}
	var out loadOutcome
	var lat, pickup []time.Duration
	inWindow := 0
	for i := range stats {
		s := &stats[i]
		lat = append(lat, s.lat...)
		pickup = append(pickup, s.pickup...)
		res.Acked += s.acked
		inWindow += s.inWindow
		o.Unanswered += s.unanswered
		out.errs += s.errs
		if out.errMsg == "" {
			out.errMsg = s.errMsg
		}
	}
	out.cpuErr = cpuErr
	o.Scheduled = len(lat)
	res.Requests = inWindow
	res.EvPerSec = float64(inWindow) / spec.Duration.Seconds()
	ps := percentiles(lat, 50, 99, 99.9, 100)
	res.P50, res.P99, res.P999, o.Max = ps[0], ps[1], ps[2], ps[3]
	pp := percentiles(pickup, 50, 99, 100)
	o.PickupP50, o.PickupP99, o.PickupMax = pp[0], pp[1], pp[2]
	o.KeptUp = keptUp(spec.Rate, res.EvPerSec, o.Unanswered, out.errs, o.PickupP50)
	res.Dials = dials.Load()
	res.Open = o
	return out
}

// sweepPoint is one run of the sweep (or the reason it could not run).
type sweepPoint struct {
	runResult
	Err string
}

// runSweep runs the sweep: at each rate in turn, durable and ceiling
// alternately (the order swapped from rate to rate); a series stops after
// the first rate it cannot keep up with (that point is kept: it shows where
// latency takes off).
func (b *bench) runSweep() {
	cfg := b.cfg
	progress("sweep: open loop at %v events/s, %d connections, %v warm-up + %v window per point", cfg.SweepRates, cfg.SweepConns, cfg.SweepWarmup, cfg.SweepDuration)
	stopped := map[string]bool{}
	for i, rate := range cfg.SweepRates {
		order := []string{"durable", "ceiling"}
		if i%2 == 1 {
			order = []string{"ceiling", "durable"}
		}
		for _, m := range order {
			if stopped[m] {
				continue
			}
			spec := runSpec{Label: "sweep-" + m, Mode: m, Clients: cfg.SweepConns, Warmup: cfg.SweepWarmup, Duration: cfg.SweepDuration,
				Run: 1, Nonce: rand.Uint32(), Dedup: cfg.Dedup, Rate: rate, Grace: cfg.SweepGrace}
			if m == "durable" {
				spec.Spool = filepath.Join(b.runDir, fmt.Sprintf("sweep-%.0f.db", rate))
			}
			// One repeat at most of a noisy point: the sweep is one run per
			// point and should stay near its couple of minutes.
			res, err := b.doRetries(spec, nil, min(1, cfg.Retries))
			pt := sweepPoint{runResult: res}
			if err != nil {
				pt.Err = err.Error()
				progress("sweep: %s at %.0f ev/s failed: %v", m, rate, err)
			}
			if err == nil && res.Open == nil {
				pt.Err = "no open-loop figures"
			}
			b.sweep[m] = append(b.sweep[m], pt)
			if pt.Err != "" || !res.Open.KeptUp {
				stopped[m] = true
			}
		}
		if stopped["durable"] && stopped["ceiling"] {
			break
		}
	}
}

// sweepSeries are the plotted series: each mode's p50, p99 and p99.9 in ms
// against the offered rate; a point that did not keep up is drawn hollow.
func (b *bench) sweepPlot() linePlot {
	pl := linePlot{
		Title:  fmt.Sprintf("gwenrelay ingest: latency against offered load (open loop, %d connections, 1 KiB events)", b.cfg.SweepConns),
		XLabel: "offered load (events/s)",
		YLabel: "latency from scheduled send to 202 (ms, log scale)",
		LogY:   true,
	}
	colors := map[string]string{"durable": "#1f5fbf", "ceiling": "#e07b00"}
	type pc struct {
		name string
		dash string
		get  func(runResult) time.Duration
	}
	pcs := []pc{
		{"p50", "", func(r runResult) time.Duration { return r.P50 }},
		{"p99", "7 4", func(r runResult) time.Duration { return r.P99 }},
		{"p99.9", "2 3", func(r runResult) time.Duration { return r.P999 }},
	}
	for _, m := range []string{"durable", "ceiling"} {
		for _, c := range pcs {
			s := plotSeries{Name: m + " " + c.name, Color: colors[m], Dash: c.dash}
			for _, pt := range b.sweep[m] {
				if pt.Err != "" || pt.Open == nil {
					continue
				}
				s.Points = append(s.Points, plotPoint{X: pt.Open.Offered, Y: ms(c.get(pt.runResult)), Hollow: !pt.Open.KeptUp})
			}
			if len(s.Points) > 0 {
				pl.Series = append(pl.Series, s)
			}
		}
	}
	pl.Notes = []string{
		"durable: the relay's ingest path, fsync before every 202; ceiling: the same handler with a store whose Append keeps nothing",
		fmt.Sprintf("one run per point: %v warm-up, %v window; hollow marker: did not keep up (the series stops there)", b.cfg.SweepWarmup, b.cfg.SweepDuration),
		fmt.Sprintf("%s; %s", b.mach.short(), b.began.Format("2006-01-02")),
	}
	return pl
}

// reportSweep renders the sweep's section; svgLink is the plot's path as the
// markdown should link it ("" if it was not written).
func (b *bench) reportSweep(p func(string, ...any), svgLink string) {
	cfg := b.cfg
	p("\n## Latency against offered load (open loop)\n\n")
	p("The same two servers as above (a fresh child per point; durable on a fresh spool), now offered a fixed rate instead of a fixed number of clients: "+
		"request i is scheduled at start + i/rate and handed to the first free one of up to %d keep-alive connections (one request in flight each), whatever the earlier answers. "+
		"Latency runs from each request's **scheduled** time to its 202, so time spent waiting for a free connection or behind a late scheduler is counted (no coordinated omission). "+
		"Each point: %v at the rate (not counted), then a %v window (repeated once at most if other processes kept more than --max-others cores busy); latency is over the requests scheduled in the window, achieved = 202s answered inside the window per second. "+
		"Durable and ceiling alternate at each rate (the order swapped from rate to rate). A point *keeps up* when nothing failed, every request of the window was answered by %v after it, achieved ≥ %.0f%% of offered, and the median pickup delay (below) is at most %s — past that the server holds every connection and the queue in front of them grows; "+
		"a series stops after the first point that does not (that point is kept and drawn hollow: its percentiles are where queueing took over, and grow with the window's length). One run per point: noisier than the closed-loop medians above.\n\n",
		cfg.SweepConns, cfg.SweepWarmup, cfg.SweepDuration, cfg.SweepGrace, 100*keptUpShare, fmtDur(maxPickupP50))
	if svgLink != "" {
		p("![Latency (p50, p99, p99.9; log scale) against offered load, durable and ceiling](%s)\n\n", svgLink)
	}
	rates := map[float64]bool{}
	byRate := map[string]map[float64]sweepPoint{"durable": {}, "ceiling": {}}
	for m, pts := range b.sweep {
		for _, pt := range pts {
			rates[pt.Spec.Rate] = true
			byRate[m][pt.Spec.Rate] = pt
		}
	}
	p("| offered ev/s | durable achieved | p50 | p99 | p99.9 | kept up | ceiling achieved | p50 | p99 | p99.9 | kept up |\n")
	p("|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|---|\n")
	cells := func(pt sweepPoint, ok bool) string {
		switch {
		case !ok:
			return "– | – | – | – | not run"
		case pt.Err != "" || pt.Open == nil:
			return "– | – | – | – | failed"
		}
		lb := ""
		if pt.Open.Unanswered > 0 {
			lb = "≥ "
		}
		k := "yes"
		if !pt.Open.KeptUp {
			k = "**no**"
		}
		return fmt.Sprintf("%s | %s%s | %s%s | %s%s | %s", fmtInt(int64(pt.EvPerSec)), lb, fmtDur(pt.P50), lb, fmtDur(pt.P99), lb, fmtDur(pt.P999), k)
	}
	for _, r := range cfg.SweepRates {
		if !rates[r] {
			continue
		}
		d, dok := byRate["durable"][r]
		c, cok := byRate["ceiling"][r]
		p("| %s | %s | %s |\n", fmtInt(int64(r)), cells(d, dok), cells(c, cok))
	}
	p("\n")
	for _, m := range []string{"durable", "ceiling"} {
		if len(b.sweep[m]) > 0 {
			p("- %s: highest offered rate kept up: %s.\n", m, sweepKeptUp(b.sweep[m]))
		}
	}
	p("\n| # | what | offered ev/s | achieved ev/s | p50 | p99 | p99.9 | max | scheduled in window | unanswered at cutoff | pickup delay p50 / p99 / max | peak in flight / conns | conns dialled | server CPU-s / 1k ev | others' CPU | attempt |\n")
	p("|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	n := 0
	for i, r := range cfg.SweepRates {
		order := []string{"durable", "ceiling"}
		if i%2 == 1 {
			order = []string{"ceiling", "durable"}
		}
		for _, m := range order {
			pt, ok := byRate[m][r]
			if !ok {
				continue
			}
			n++
			if pt.Err != "" || pt.Open == nil {
				p("| %d | %s | %s | failed: %s |||||||||||||\n", n, m, fmtInt(int64(r)), mdCell(pt.Err))
				continue
			}
			o := pt.Open
			att := fmt.Sprint(pt.Attempt)
			if pt.Noisy {
				att += " (noisy)"
			}
			p("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s | %d / %d | %d | %.3f | %.2f | %s |\n", n, m, fmtInt(int64(r)), fmtInt(int64(pt.EvPerSec)),
				fmtDur(pt.P50), fmtDur(pt.P99), fmtDur(pt.P999), fmtDur(o.Max), fmtInt(int64(o.Scheduled)), fmtInt(int64(o.Unanswered)),
				fmtDur(o.PickupP50), fmtDur(o.PickupP99), fmtDur(o.PickupMax), o.PeakInFlight, o.Conns, pt.Dials, pt.serverCPUPer1k(), pt.othersCores(), att)
		}
	}
	p("\nPickup delay: from a request's scheduled time to a connection taking it — the scheduler's lateness (this process shares the %d cores) plus any wait for a free connection; "+
		"it is part of the latency. Peak in flight equal to the connections would mean they, not the server, limited the rate.\n", b.mach.CPUs)
}
