package main

import (
	"errors"
	"flag"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	analytics "github.com/segmentio/analytics-go/v3"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"github.com/gwenrelay/gwenrelay/ratelimit"
	"github.com/gwenrelay/gwenrelay/relay"
)

func deliveryFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "write-key", Usage: "Segment write key (visible to other local users in the process list: prefer --write-key-file or $CREDENTIALS_DIRECTORY/write-key)", EnvVars: envVar("write-key")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "write-key-file", Usage: "file holding the Segment write key", EnvVars: envVar("write-key-file")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "segment-endpoint", Value: relay.DefaultSegmentEndpoint, Usage: "Segment API base URL (EU workspaces: https://events.eu1.segmentapis.com)", EnvVars: envVar("segment-endpoint")}),
		&lenientFloat64Flag{Float64Flag: altsrc.NewFloat64Flag(&cli.Float64Flag{Name: "rate", Value: 500, Usage: "events per second sent to Segment (0: no limit)", EnvVars: envVar("rate")})},
		altsrc.NewIntFlag(&cli.IntFlag{Name: "burst", Value: 100, Usage: "events that may go at once above the rate; also the largest batch", EnvVars: envVar("burst")}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "dry-run", Usage: "do not send to Segment: write each drained event as an NDJSON line to stdout or --dry-run-file, and delete it from the spool", EnvVars: envVar("dry-run")}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "dry-run-file", Usage: "with --dry-run, append the NDJSON lines to this file instead of stdout (not fsynced: a dry run is for looking)", EnvVars: envVar("dry-run-file")}),
	}
}

// writeKey finds the Segment write key: --write-key (or its environment
// variable), then --write-key-file, then the systemd credential. It says
// where it came from, never what it is.
func writeKey(c *cli.Context) (key, source string, err error) {
	if k := strings.TrimSpace(c.String("write-key")); k != "" {
		return k, "--write-key", nil
	}
	if p := c.String("write-key-file"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", "", usagef("--write-key-file: %v", err)
		}
		if k := strings.TrimSpace(string(b)); k != "" {
			return k, p, nil
		}
		return "", "", usagef("--write-key-file %s is empty", p)
	}
	if d := os.Getenv("CREDENTIALS_DIRECTORY"); d != "" {
		p := filepath.Join(d, "write-key")
		b, err := os.ReadFile(p)
		switch {
		case err == nil && strings.TrimSpace(string(b)) != "":
			return strings.TrimSpace(string(b)), p, nil
		case err == nil:
			return "", "", usagef("the systemd credential %s is empty: put the Segment write key in the file LoadCredential= names", p)
		case !errors.Is(err, fs.ErrNotExist):
			return "", "", usagef("the systemd credential %s: %v", p, err)
		}
	}
	return "", "", nil
}

// delivery is how drained events leave the relay.
type delivery struct {
	newSender, newIsolation func(analytics.Callback) (relay.Sender, error)
	rejections              *relay.RejectionLog // nil for the dry run
	limiter                 *ratelimit.Limiter
	close                   func() error
	describe                []any
}

// buildDelivery picks Segment or, with --dry-run, the NDJSON sink. Without a
// write key and without --dry-run it refuses: an operator who forgot the
// key must not see events drained somewhere and deleted.
func buildDelivery(c *cli.Context, log *slog.Logger, metrics *relay.Metrics) (*delivery, error) {
	// --rate was checked with the other reloadable settings.
	if c.Int("burst") < 1 {
		return nil, usagef("--burst %d: want 1 or more", c.Int("burst"))
	}
	limiter := ratelimit.New(c.Float64("rate"), c.Int("burst"))
	metrics.WatchLimiter(limiter)
	if c.Bool("dry-run") {
		var w io.Writer = c.App.Writer
		closeFn := func() error { return nil }
		where := "stdout"
		if p := c.String("dry-run-file"); p != "" {
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
			if err != nil {
				return nil, usagef("--dry-run-file: %v", err)
			}
			w, closeFn, where = f, f.Close, p
		}
		s := relay.NewDryRunSender(w, limiter)
		return &delivery{newSender: s, newIsolation: s, close: closeFn, limiter: limiter,
			describe: []any{"sink", "dry-run", "output", where, "rate", c.Float64("rate"), "burst", c.Int("burst")}}, nil
	}
	if c.String("dry-run-file") != "" {
		return nil, usagef("--dry-run-file needs --dry-run")
	}
	key, source, err := writeKey(c)
	if err != nil {
		return nil, err
	}
	if key == "" {
		where := "$CREDENTIALS_DIRECTORY is not set"
		if d := os.Getenv("CREDENTIALS_DIRECTORY"); d != "" {
			where = filepath.Join(d, "write-key") + " does not exist"
		}
		return nil, usagef("no Segment write key (--write-key and --write-key-file are not set, and %s): set --write-key-file, or pass --dry-run to write events to stdout instead", where)
	}
	endpoint := strings.TrimRight(c.String("segment-endpoint"), "/")
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, usagef("--segment-endpoint %q: want a URL such as https://api.segment.io", c.String("segment-endpoint"))
	}
	if u.Scheme == "http" && !isLoopback(u.Hostname()) {
		log.Warn("--segment-endpoint is plain http: the write key and every event cross the network unencrypted", "endpoint", endpoint)
	}
	rejections := relay.NewRejectionLog()
	normal, iso := relay.NewSegmentSenders(relay.SegmentConfig{
		Rejections: rejections,
		WriteKey:   key,
		Endpoint:   endpoint,
		Limiter:    limiter,
		Logger:     log,
		Observe:    metrics.ObserveUpload,
	})
	return &delivery{newSender: normal, newIsolation: iso, rejections: rejections, close: func() error { return nil }, limiter: limiter,
		describe: []any{"sink", "segment", "endpoint", endpoint, "write_key_from", source, "rate", c.Float64("rate"), "burst", c.Int("burst")}}, nil
}

// isLoopback reports whether host names this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// maxInFlight bounds the records being delivered: 2,000, or fewer when
// batches are small, so the uploads waiting for the rate limiter stay well
// under analytics-go's 1,000 concurrent requests.
func maxInFlight(burst int) int {
	return min(relay.DefaultMaxInFlightRecords, 500*max(burst, 1))
}

// lenientFloat64Flag is a float flag that also takes a whole number from
// the --config file: YAML reads "rate: 500" as an int, and altsrc would
// refuse it as a mismatched type.
type lenientFloat64Flag struct {
	*altsrc.Float64Flag
	set *flag.FlagSet
}

func (f *lenientFloat64Flag) Apply(set *flag.FlagSet) error {
	f.set = set
	return f.Float64Flag.Apply(set)
}

func (f *lenientFloat64Flag) ApplyInputSourceValue(c *cli.Context, isc altsrc.InputSourceContext) error {
	err := f.Float64Flag.ApplyInputSourceValue(c, isc)
	if err == nil {
		return nil
	}
	n, ierr := isc.Int(f.Name)
	if ierr != nil || f.set == nil {
		return err
	}
	// The command line and the environment win over the file.
	if c.IsSet(f.Name) {
		return nil
	}
	for _, e := range f.EnvVars {
		if _, ok := os.LookupEnv(e); ok {
			return nil
		}
	}
	for _, name := range f.Names() {
		_ = f.set.Set(name, strconv.Itoa(n))
	}
	return nil
}
