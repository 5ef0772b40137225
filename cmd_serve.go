package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/gwenrelay/gwenrelay/relay"
	"github.com/gwenrelay/gwenrelay/spool"
)

// Stop deadlines. Both run side by side, so a stop takes at most the longer
// of the two (the systemd unit's TimeoutStopSec must be above it).
const (
	// shutdownTimeout bounds how long a stop waits for requests in progress.
	shutdownTimeout = 20 * time.Second
	// drainTimeout bounds how long a stop waits for deliveries in flight;
	// what is not settled by then stays pending for the next start.
	drainTimeout = 10 * time.Second
)

// wrapDrainStore, set only by tests, stands between the drainer and the
// spool (to wedge the drainer and see the watchdog pings stop).
var wrapDrainStore func(relay.DrainStore) relay.DrainStore

func envVar(flag string) []string {
	return []string{"GWENRELAY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

// defaultSpoolPath is $STATE_DIRECTORY/spool.db under systemd, else the
// packaged location.
func defaultSpoolPath() string {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		first, _, _ := strings.Cut(d, ":")
		return filepath.Join(first, "spool.db")
	}
	return "/var/lib/gwenrelay/spool.db"
}

func serveFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "config", Usage: "YAML file with flag values (keys are flag names) and a mapping: section", EnvVars: envVar("config")},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Value: ":8080", Usage: "address for webhooks, /healthz and /readyz", EnvVars: envVar("listen")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "spool", Value: defaultSpoolPath(), Usage: "spool file", EnvVars: envVar("spool")}),
		altsrc.NewStringFlag(adminSocketFlag()),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "admin-listen", Value: "127.0.0.1:8081", Usage: "address for /metrics (Prometheus), /healthz and /readyz (empty: none)", EnvVars: envVar("admin-listen")}),
		altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "inbound-token", Usage: "accepted sender token (repeat for rotation); prefer --inbound-token-file", EnvVars: envVar("inbound-token")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "inbound-token-file", Usage: "file with accepted sender tokens, one a line", EnvVars: envVar("inbound-token-file")}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "insecure-no-auth", Usage: "accept webhooks without a credential (trusted networks only)", EnvVars: envVar("insecure-no-auth")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "hmac-secret-file", Usage: "file with a secret; requests must then carry sha256=<hex HMAC-SHA256 of the body>", EnvVars: envVar("hmac-secret-file")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "hmac-header", Value: relay.DefaultHMACHeader, Usage: "header that carries the body signature", EnvVars: envVar("hmac-header")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "max-body", Value: "5MiB", Usage: "largest request body, after gzip (bytes or units: 1048576, 1MiB)", EnvVars: envVar("max-body")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "spool-max-bytes", Value: "0", Usage: "stored bytes at which ingest answers 503 (0: no quota; the file grows to about twice this)", EnvVars: envVar("spool-max-bytes")}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "dedup-window", Value: 24 * time.Hour, Usage: "how long a delivered event's key keeps a repeat out", EnvVars: envVar("dedup-window")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "tls-cert", Usage: "certificate (PEM, chain first) for HTTPS on --listen; re-read on SIGHUP", EnvVars: envVar("tls-cert")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "tls-key", Usage: "private key (PEM) for --tls-cert", EnvVars: envVar("tls-key")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: envVar("log-level")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json", EnvVars: envVar("log-format")}),
	}, deliveryFlags()...)
}

func serveCommand() *cli.Command {
	flags := serveFlags()
	return &cli.Command{
		Name:  "serve",
		Usage: "run the relay",
		Flags: flags,
		Before: func(c *cli.Context) error {
			if c.String("config") == "" {
				return nil
			}
			if err := altsrc.InitInputSourceWithContext(flags, altsrc.NewYamlSourceFromFlagFunc("config"))(c); err != nil {
				return usagef("--config %s: %v", c.String("config"), err)
			}
			return nil
		},
		Action: serve,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{fmt.Errorf("%w (see gwenrelay serve --help)", err)}
		},
	}
}

func newLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, usagef("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	opts := &slog.HandlerOptions{Level: level}
	// journald stamps every line itself; a second timestamp is noise.
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	switch c.String("log-format") {
	case "text":
		return slog.New(slog.NewTextHandler(c.App.ErrWriter, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(c.App.ErrWriter, opts)), nil
	}
	return nil, usagef("--log-format %q: want text or json", c.String("log-format"))
}

// readTokenFile reads one token a line; blank lines and # comments are skipped.
func readTokenFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

func buildAuth(c *cli.Context) (*relay.Auth, error) {
	tokens := append([]string(nil), c.StringSlice("inbound-token")...)
	if p := c.String("inbound-token-file"); p != "" {
		ft, err := readTokenFile(p)
		if err != nil {
			return nil, usagef("--inbound-token-file: %v", err)
		}
		if len(ft) == 0 {
			return nil, usagef("--inbound-token-file %s holds no token", p)
		}
		tokens = append(tokens, ft...)
	}
	var secret []byte
	if p := c.String("hmac-secret-file"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, usagef("--hmac-secret-file: %v", err)
		}
		secret = []byte(strings.TrimSpace(string(b)))
		if len(secret) == 0 {
			return nil, usagef("--hmac-secret-file %s is empty", p)
		}
	}
	a, err := relay.NewAuth(tokens, c.Bool("insecure-no-auth"), secret, c.String("hmac-header"))
	if err != nil {
		return nil, usageError{err}
	}
	return a, nil
}

func buildMapping(c *cli.Context) (*relay.Mapping, error) {
	p := c.String("config")
	if p == "" {
		return relay.DefaultMapping(buildVersion()), nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, usagef("--config: %v", err)
	}
	m, err := relay.ParseMappingConfig(b, buildVersion())
	if err != nil {
		return nil, usagef("--config %s: %v", p, err)
	}
	return m, nil
}

func serve(c *cli.Context) error {
	if c.Args().Len() > 0 {
		return usagef("serve takes no arguments, got %q", c.Args().Slice())
	}
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	// SIGHUP is taken from the start: its default action would end the
	// process. Reloads wait until the relay is ready.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	maxBody, err := parseSize(c.String("max-body"))
	if err != nil || maxBody <= 0 {
		return usagef("--max-body %q: want a positive size such as 5MiB", c.String("max-body"))
	}
	quota, err := parseSize(c.String("spool-max-bytes"))
	if err != nil {
		return usagef("--spool-max-bytes %q: %v", c.String("spool-max-bytes"), err)
	}
	if _, _, err := net.SplitHostPort(c.String("listen")); err != nil {
		return usagef("--listen %q: want host:port, such as :8080 or 127.0.0.1:8080", c.String("listen"))
	}
	// The settings a reload replaces are read the way a reload reads them.
	initial, err := readReloadable(c)
	if err != nil {
		return err
	}
	auth, mapping := initial.auth, initial.mapping
	certs, err := newCertSource(c.String("tls-cert"), c.String("tls-key"))
	if err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.String("admin-listen")); c.String("admin-listen") != "" && err != nil {
		return usagef("--admin-listen %q: want host:port, such as 127.0.0.1:8081 (or empty for none)", c.String("admin-listen"))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := relay.NewMetrics(reg)
	dlv, err := buildDelivery(c, log, metrics)
	if err != nil {
		return err
	}
	defer func() {
		if err := dlv.close(); err != nil {
			log.Error("closing the dry-run output", "error", err)
		}
	}()
	if auth.Tokens() == 0 {
		log.Warn("accepting webhooks without a credential (--insecure-no-auth)")
	}

	sp, err := spool.Open(c.String("spool"), spool.Options{MaxBytes: quota, DedupWindow: c.Duration("dedup-window")})
	if errors.Is(err, spool.ErrLocked) {
		return fmt.Errorf("spool %s is locked by another process: another gwenrelay serving it, or a gwenrelay spool command reading it (an export in progress); stop that, or give this one another --spool", c.String("spool"))
	}
	if err != nil {
		return err
	}
	if sp.SmallMapping() {
		log.Warn("the address space is limited (ulimit -v, LimitAS=): the spool is mapped at bbolt's default size, so a long spool export can hold up commits while the file grows")
	}
	sp.SetCommitHook(metrics.ObserveCommit)
	metrics.WatchSpool(sp.Stats)
	closeSpool := func() {
		if err := sp.Close(); err != nil {
			log.Error("closing spool", "error", err)
		}
	}
	st, err := sp.Stats()
	if err != nil {
		closeSpool()
		return fmt.Errorf("read spool %s: %w", sp.Path(), err)
	}
	log.Info("spool open", "path", sp.Path(), "pending", st.Pending, "dead", st.Dead, "bytes", st.Bytes)

	lns, inherited, err := listen(c.String("listen"))
	if err != nil {
		closeSpool()
		return err
	}
	if certs != nil {
		for i := range lns {
			lns[i] = tls.NewListener(lns[i], certs.config())
		}
	}
	ln := multiListener(lns)
	var ingest *relay.Ingest
	var drainStore relay.DrainStore = sp
	if wrapDrainStore != nil {
		drainStore = wrapDrainStore(sp)
	}
	drainer, err := relay.NewDrainer(relay.DrainerConfig{
		Store:              drainStore,
		NewSender:          dlv.newSender,
		NewIsolationSender: dlv.newIsolation,
		Mapping:            func() *relay.Mapping { return ingest.Mapping() },
		MaxInFlight:        maxInFlight(c.Int("burst")),
		Rejections:         dlv.rejections,
		IngestBusy:         func() bool { return ingest.Busy() },
		IngestCount:        func() int64 { return ingest.Spooled() },
		Logger:             log,
		Observer:           metrics,
	})
	if err != nil {
		ln.Close()
		closeSpool()
		return err
	}
	ingest = relay.NewIngest(relay.IngestConfig{Store: sp, Auth: auth, Mapping: mapping, MaxBody: maxBody, Logger: log, OnSpooled: drainer.Notify, Observer: metrics})
	srv := relay.NewServer(ingest)
	adminLn, err := listenAdmin(c, log)
	if err != nil {
		ln.Close()
		closeSpool()
		return err
	}
	var adminHTTP net.Listener
	if a := c.String("admin-listen"); a != "" {
		if adminHTTP, err = net.Listen("tcp", a); err != nil {
			if c.IsSet("admin-listen") {
				if adminLn != nil {
					adminLn.Close()
				}
				ln.Close()
				closeSpool()
				return fmt.Errorf("listen on %s for /metrics: %w (change --admin-listen, or set it empty for none)", a, err)
			}
			// The default port is taken (another relay on this machine):
			// run without metrics rather than not at all.
			log.Warn("no /metrics listener; set --admin-listen to a free address", "error", err)
			adminHTTP = nil
		} else {
			log.Info("metrics", "addr", adminHTTP.Addr().String())
		}
	}
	log.Info("delivery", dlv.describe...)
	for _, l := range lns {
		log.Info("listening", "addr", l.Addr().String(), "version", buildVersion(), "inherited", inherited, "tls", certs != nil)
	}

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	notify := newNotifier(log)
	serveErr := make(chan error, len(lns))
	for _, l := range lns {
		go func() {
			if err := srv.Serve(l); err != nil {
				serveErr <- fmt.Errorf("serve %s: %w", l.Addr(), err)
			}
		}()
	}
	drainCtx, stopDrain := context.WithCancel(context.Background())
	drainDone := make(chan error, 1)
	go func() { drainDone <- drainer.Run(drainCtx, drainTimeout) }()
	adminCtx, stopAdmin := context.WithCancel(context.Background())
	adminDone := make(chan struct{})
	adminHTTPDone := make(chan struct{})
	go func() {
		defer close(adminHTTPDone)
		if adminHTTP == nil {
			return
		}
		h := relay.AdminHTTPHandler(relay.MetricsHandler(reg, log), ingest.Ready)
		if err := relay.ServeAdmin(adminCtx, adminHTTP, h, log); err != nil {
			log.Error("metrics listener stopped", "addr", adminHTTP.Addr().String(), "error", err)
		}
	}()
	go func() {
		defer close(adminDone)
		if adminLn == nil {
			return
		}
		in := relay.NewInspector(relay.InspectorConfig{
			Store: sp, Mapping: func() *relay.Mapping { return ingest.Mapping() },
			Delivery: drainer.Stats, Retried: drainer.Rewind,
		})
		if err := relay.ServeAdmin(adminCtx, adminLn, relay.AdminHandler(in, log), log); err != nil {
			log.Error("admin socket stopped", "path", adminLn.Path(), "error", err)
		}
	}()
	pruneCtx, stopPrune := context.WithCancel(context.Background())
	pruneDone := make(chan struct{})
	go func() {
		defer close(pruneDone)
		relay.PruneDedupLoop(pruneCtx, sp, time.Minute, log)
	}()

	var reloadFailed atomic.Value // string: kept in STATUS until a reload succeeds
	status := func() string {
		st, err := sp.Stats()
		if err != nil {
			return "cannot read the spool: " + err.Error()
		}
		d := drainer.Stats()
		state := fmt.Sprintf("delivering (%d delivered since start)", d.Delivered)
		if d.BackingOff {
			state = fmt.Sprintf("backing off after a failed delivery (%d delivered since start)", d.Delivered)
		}
		line := describeStatus(st.Pending, st.Dead, state)
		if f, _ := reloadFailed.Load().(string); f != "" {
			line += "; " + f
		}
		return line
	}
	alive := func(stall time.Duration) error {
		if err := sp.Ping(stall); err != nil {
			return err
		}
		// At a very low --rate one message may wait for its token longer
		// than the stall bound: allow two of those waits.
		drainStall := stall
		if r := dlv.limiter.Rate(); r > 0 {
			drainStall = max(stall, time.Duration(2/r*float64(time.Second)))
		}
		if !drainer.Alive(drainStall) {
			return fmt.Errorf("the drainer has not gone round its loop for %s", drainStall)
		}
		return nil
	}
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		notify.watchdog(watchCtx, alive, status)
	}()
	// Ready: the spool is open, the listener bound, the drainer started.
	notify.send("READY=1", "STATUS="+status())

	var runErr error
	drained := false
wait:
	for {
		select {
		case <-hup:
			notify.send("RELOADING=1", daemon.SdNotifyMonotonicUsec())
			if err := reload(c.Context, log, ingest, dlv.limiter, c.Int("burst"), certs); err != nil {
				log.Error("reload failed; the previous settings stay in force", "error", err)
				reloadFailed.Store("reload failed at " + time.Now().UTC().Format(time.TimeOnly) + ": " + strings.ReplaceAll(err.Error(), "\n", " "))
				notify.send("READY=1", "STATUS="+status())
				continue
			}
			reloadFailed.Store("")
			notify.send("READY=1", "STATUS="+status())
		case <-ctx.Done():
			log.Info("stopping: finishing requests in progress")
			break wait
		case err := <-serveErr:
			runErr = err
			break wait
		case err := <-drainDone:
			drained = true
			runErr = fmt.Errorf("drainer stopped: %w", err)
			break wait
		}
	}
	notify.send("STOPPING=1", "STATUS=stopping")
	stopWatch()
	<-watchDone
	// Ingest and delivery stop side by side, each within its own deadline;
	// the spool closes only after both, so every acknowledged event and
	// every delivery verdict is committed first.
	stopPrune()
	stopDrain()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("requests still in progress at the shutdown deadline", "error", err)
	}
	if !drained {
		if err := <-drainDone; err != nil && runErr == nil {
			runErr = fmt.Errorf("drainer: %w", err)
		}
	}
	<-pruneDone
	// The admin API goes last but one: an operator can look at the spool
	// while the rest stops, and nothing touches it after it is closed.
	stopAdmin()
	<-adminDone
	<-adminHTTPDone
	if adminLn != nil {
		adminLn.Close()
	}
	if err := sp.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("close spool: %w", err)
	}
	if runErr == nil {
		log.Info("stopped cleanly")
	}
	return runErr
}

// listenAdmin binds the admin socket. One that was asked for (by flag,
// environment or config) must work; the default is skipped with a warning
// where it cannot be made (a run outside systemd, without /run/gwenrelay).
func listenAdmin(c *cli.Context, log *slog.Logger) (*relay.AdminSocket, error) {
	path := c.String("admin-socket")
	if path == "" {
		log.Info("no admin socket (--admin-socket is empty); spool commands need the service stopped")
		return nil, nil
	}
	ln, err := relay.ListenAdminSocket(path)
	if err != nil {
		if !c.IsSet("admin-socket") {
			log.Warn("no admin socket; spool commands need the service stopped (set --admin-socket to a writable path)", "error", err)
			return nil, nil
		}
		return nil, err
	}
	log.Info("admin socket", "path", ln.Path())
	return ln, nil
}
