package main

// The hidden subcommands the bench re-executes itself with. Each prints
// machine-readable lines on stdout ("LISTEN addr", "STATS {json}", "RESULT
// {json}") and its errors on stderr.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gwenrelay/gwenrelay/relay"
	"github.com/gwenrelay/gwenrelay/spool"
)

// serveDedupWindow is `gwenrelay serve`'s default --dedup-window: with it,
// every Append also writes the dedup and expiry index, as in production.
const serveDedupWindow = 24 * time.Hour

// spoolOptions are the options `gwenrelay serve` opens its spool with by
// default (no quota, the default dedup window).
func spoolOptions() spool.Options {
	return spool.Options{DedupWindow: serveDedupWindow}
}

// nullStore is the in-memory ceiling: the relay's handler path with a store
// whose Append keeps nothing and returns fresh ids at once.
type nullStore struct{ next atomic.Uint64 }

func (s *nullStore) Append(entries []spool.Entry) (spool.AppendResult, error) {
	n := uint64(len(entries))
	last := s.next.Add(n)
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = last - n + uint64(i) + 1
	}
	return spool.AppendResult{IDs: ids, Duplicate: make([]bool, n)}, nil
}

func (s *nullStore) OverQuota() bool { return false }

// serverStats is what the server child reports at exit, over the window
// between its first and second SIGUSR1 (the parent's measurement window).
type serverStats struct {
	Mode           string  `json:"mode"`
	PendingAtStart int64   `json:"pending_at_start"`
	PendingAtEnd   int64   `json:"pending_at_end"`
	BytesAtEnd     int64   `json:"bytes_at_end"`
	FileSize       int64   `json:"file_size"`
	OpenSeconds    float64 `json:"open_seconds"`
	Commits        int     `json:"commits"`
	CommitEntries  int     `json:"commit_entries"`
	CommitP50Ms    float64 `json:"commit_p50_ms"`
	CommitP99Ms    float64 `json:"commit_p99_ms"`
	Error          string  `json:"error,omitempty"`
}

// commitLog records every commit's duration and size, for the window stats.
type commitLog struct {
	mu      sync.Mutex
	durs    []time.Duration
	entries []int
	marks   []int
}

func (c *commitLog) hook(_, entries int, d time.Duration) {
	c.mu.Lock()
	c.durs = append(c.durs, d)
	c.entries = append(c.entries, entries)
	c.mu.Unlock()
}

func (c *commitLog) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.marks = append(c.marks, len(c.durs))
	return len(c.marks)
}

// window returns the commits between the first two marks (or from the first
// mark to now, or everything).
func (c *commitLog) window() (durs []time.Duration, entries int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	from, to := 0, len(c.durs)
	if len(c.marks) > 0 {
		from = c.marks[0]
	}
	if len(c.marks) > 1 {
		to = c.marks[1]
	}
	durs = append([]time.Duration(nil), c.durs[from:to]...)
	for _, n := range c.entries[from:to] {
		entries += n
	}
	return durs, entries
}

// serverMain is `bench server --mode durable|ceiling --spool FILE`: the relay
// as `gwenrelay serve --insecure-no-auth` builds its ingest path, on
// 127.0.0.1:0. SIGUSR1 marks the start and end of the measurement window
// (and starts/stops the CPU profile); SIGTERM stops it.
func serverMain(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	mode := fs.String("mode", "durable", "durable (real spool, fsync) or ceiling (Append does nothing)")
	path := fs.String("spool", "", "spool file (durable mode)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the measurement window here")
	dedup := fs.Duration("dedup-window", serveDedupWindow, "spool dedup window (0 disables dedup)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st := serverStats{Mode: *mode}
	var store relay.Store
	var sp *spool.Spool
	clog := &commitLog{}
	switch *mode {
	case "durable":
		if *path == "" {
			return errors.New("server: --spool is required in durable mode")
		}
		t0 := time.Now()
		var err error
		opt := spoolOptions()
		opt.DedupWindow = *dedup
		if sp, err = spool.Open(*path, opt); err != nil {
			return err
		}
		s, err := sp.Stats()
		if err != nil {
			_ = sp.Close()
			return fmt.Errorf("read spool %s: %w", *path, err)
		}
		st.OpenSeconds = time.Since(t0).Seconds()
		st.PendingAtStart = s.Pending
		sp.SetCommitHook(clog.hook)
		store = sp
	case "ceiling":
		store = &nullStore{}
	default:
		return fmt.Errorf("server: --mode %q: want durable or ceiling", *mode)
	}
	auth, err := relay.NewAuth(nil, true, nil, "")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("server: listen on 127.0.0.1:0: %w", err)
	}
	ingest := relay.NewIngest(relay.IngestConfig{Store: store, Auth: auth, Mapping: relay.DefaultMapping("dev"), Logger: log})
	srv := relay.NewServer(ingest)

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	usr := make(chan os.Signal, 4)
	signal.Notify(usr, syscall.SIGUSR1)

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	pruneCtx, stopPrune := context.WithCancel(context.Background())
	pruneDone := make(chan struct{})
	go func() {
		defer close(pruneDone)
		if sp != nil {
			relay.PruneDedupLoop(pruneCtx, sp, time.Minute, log)
		}
	}()
	fmt.Printf("LISTEN %s\n", ln.Addr())

	var profFile *os.File
	stopProfile := func() {
		if profFile != nil {
			pprof.StopCPUProfile()
			_ = profFile.Close()
			profFile = nil
		}
	}
	var runErr error
loop:
	for {
		select {
		case <-usr:
			if n := clog.mark(); n == 1 && *cpuprofile != "" {
				f, err := os.Create(*cpuprofile)
				if err != nil {
					runErr = fmt.Errorf("server: create cpu profile: %w", err)
					break loop
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					_ = f.Close()
					runErr = fmt.Errorf("server: start cpu profile: %w", err)
					break loop
				}
				profFile = f
			} else if n == 2 {
				stopProfile()
			}
		case <-term:
			break loop
		case err := <-serveErr:
			runErr = fmt.Errorf("server: serve: %w", err)
			break loop
		}
	}
	stopProfile()
	stopPrune()
	<-pruneDone
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && runErr == nil {
		runErr = fmt.Errorf("server: shutdown: %w", err)
	}
	if sp != nil {
		if s, err := sp.Stats(); err == nil {
			st.PendingAtEnd, st.BytesAtEnd, st.FileSize = s.Pending, s.Bytes, s.FileSize
		}
		if err := sp.Close(); err != nil && runErr == nil {
			runErr = fmt.Errorf("server: close spool: %w", err)
		}
	}
	durs, entries := clog.window()
	st.Commits, st.CommitEntries = len(durs), entries
	ps := percentiles(durs, 50, 99)
	st.CommitP50Ms, st.CommitP99Ms = ms(ps[0]), ms(ps[1])
	if runErr != nil {
		st.Error = runErr.Error()
	}
	b, _ := json.Marshal(st)
	fmt.Printf("STATS %s\n", b)
	return runErr
}

// openResult is what `bench open` reports.
type openResult struct {
	OpenSeconds  float64 `json:"open_seconds"`  // spool.Open
	StatsSeconds float64 `json:"stats_seconds"` // the first Stats after it
	Pending      int64   `json:"pending"`
	FileSize     int64   `json:"file_size"`
	MaxRSSKiB    int64   `json:"max_rss_kib"`
}

// openMain is `bench open --spool FILE`: time spool.Open and the first Stats
// as `gwenrelay serve` does at start, then close.
func openMain(args []string) error {
	fs := flag.NewFlagSet("open", flag.ContinueOnError)
	path := fs.String("spool", "", "spool file")
	crash := fs.Bool("crash", false, "commit once and exit without closing, as a killed relay leaves the file (no freelist on disk)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := os.Stat(*path); err != nil {
		return fmt.Errorf("open: %w", err)
	}
	t0 := time.Now()
	sp, err := spool.Open(*path, spoolOptions())
	if err != nil {
		return err
	}
	if *crash {
		// An ack of an id that does not exist changes nothing but still
		// commits, and a running spool's commits leave no freelist on disk.
		if err := sp.Ack([]uint64{0}); err != nil {
			return err
		}
		os.Exit(0)
	}
	t1 := time.Now()
	st, err := sp.Stats()
	t2 := time.Now()
	if cerr := sp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	b, _ := json.Marshal(openResult{
		OpenSeconds: t1.Sub(t0).Seconds(), StatsSeconds: t2.Sub(t1).Seconds(),
		Pending: st.Pending, FileSize: st.FileSize, MaxRSSKiB: ru.Maxrss,
	})
	fmt.Printf("RESULT %s\n", b)
	return nil
}

// prefillResult is what `bench prefill` reports.
type prefillResult struct {
	Seconds  float64 `json:"seconds"`
	Pending  int64   `json:"pending"`
	Bytes    int64   `json:"bytes"`
	FileSize int64   `json:"file_size"`
}

// prefillMain is `bench prefill --spool FILE --count N`: append N unique
// events, shaped as the relay stores them (canonical JSON, dedup key and
// messageId derived as relay/idempotency.go does), in groups of --group per
// Append from --workers goroutines.
func prefillMain(args []string) error {
	fs := flag.NewFlagSet("prefill", flag.ContinueOnError)
	path := fs.String("spool", "", "spool file to create")
	count := fs.Int("count", 1_000_000, "events to append")
	size := fs.Int("size", eventSize, "bytes per event body")
	workers := fs.Int("workers", 4, "concurrent appenders")
	group := fs.Int("group", 5000, "entries per Append")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *count <= 0 || *workers <= 0 || *group <= 0 {
		return errors.New("prefill: --count, --workers and --group must be positive")
	}
	tmpl, err := newEventBody(*size, time.Now())
	if err != nil {
		return err
	}
	sp, err := spool.Open(*path, spoolOptions())
	if err != nil {
		return err
	}
	t0 := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, *workers)
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := next.Add(int64(*group)) - int64(*group)
				if start >= int64(*count) {
					return
				}
				n := min(int64(*group), int64(*count)-start)
				entries := make([]spool.Entry, n)
				now := time.Now()
				for i := range entries {
					// Nonce 0xb5b5b5b5 and worker 0xffff never occur in load
					// runs (worker ids there are below 0xffff).
					raw := tmpl.build(0xb5b5b5b5, 0xffff, uint64(start)+uint64(i))
					e, err := relay.GWENEntry(raw, "", 0, now)
					if err != nil {
						errs[w] = err
						return
					}
					entries[i] = e
				}
				res, err := sp.Append(entries)
				if err != nil {
					errs[w] = fmt.Errorf("prefill: append: %w", err)
					return
				}
				if res.Duplicates > 0 {
					errs[w] = fmt.Errorf("prefill: %d of %d events were taken as duplicates", res.Duplicates, n)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if err := errors.Join(errs...); err != nil {
		_ = sp.Close()
		return err
	}
	st, err := sp.Stats()
	if cerr := sp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	b, _ := json.Marshal(prefillResult{Seconds: elapsed.Seconds(), Pending: st.Pending, Bytes: st.Bytes, FileSize: st.FileSize})
	fmt.Printf("RESULT %s\n", b)
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// childMain runs a hidden subcommand if args name one.
func childMain(args []string, stderr io.Writer) (handled bool, code int) {
	if len(args) == 0 {
		return false, 0
	}
	var err error
	switch args[0] {
	case "server":
		err = serverMain(args[1:])
	case "open":
		err = openMain(args[1:])
	case "prefill":
		err = prefillMain(args[1:])
	default:
		return false, 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench %s: %v\n", args[0], err)
		return true, 1
	}
	return true, 0
}
