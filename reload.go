package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/urfave/cli/v2"

	"github.com/gwenrelay/gwenrelay/ratelimit"
	"github.com/gwenrelay/gwenrelay/relay"
)

// listen returns the public listeners: those systemd passed (socket
// activation, $LISTEN_FDS; every one is served, so a socket with several
// ListenStream= lines leaves no address unanswered) or a new one on addr.
func listen(addr string) (lns []net.Listener, inherited bool, err error) {
	passed, err := activation.Listeners()
	if err != nil {
		return nil, false, fmt.Errorf("the listening sockets passed by systemd: %w", err)
	}
	for _, l := range passed {
		if l != nil {
			lns = append(lns, l)
		}
	}
	if len(lns) > 0 {
		return lns, true, nil
	}
	if len(passed) > 0 {
		return nil, false, errors.New("systemd passed sockets ($LISTEN_FDS), but none is a stream listener; check gwenrelay.socket (ListenStream=)")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, false, fmt.Errorf("listen on %s: %w (is another process using the port? change --listen)", addr, err)
	}
	return []net.Listener{ln}, false, nil
}

// multiListener closes a set of listeners together (on the error paths
// before they are served).
type multiListener []net.Listener

func (m multiListener) Close() error {
	var errs []error
	for _, l := range m {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// certSource serves the TLS certificate, replaced in place on reload.
type certSource struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

// newCertSource loads the pair; nil, nil when TLS is not configured.
func newCertSource(certFile, keyFile string) (*certSource, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, usagef("--tls-cert and --tls-key go together")
	}
	cs := &certSource{certFile: certFile, keyFile: keyFile}
	if err := cs.load(); err != nil {
		return nil, usageError{err}
	}
	return cs, nil
}

func (cs *certSource) load() error {
	c, err := tls.LoadX509KeyPair(cs.certFile, cs.keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert %s / --tls-key %s: %w", cs.certFile, cs.keyFile, err)
	}
	cs.cert.Store(&c)
	return nil
}

// config is the server's TLS configuration: TLS 1.2 or later, with the
// certificate read at each handshake from the source.
func (cs *certSource) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cs.cert.Load(), nil
		},
	}
}

// reloadable is what a SIGHUP changes without dropping connections.
type reloadable struct {
	auth            *relay.Auth
	mapping         *relay.Mapping
	rate            float64
	burst           int
	tlsCert, tlsKey string
}

func readReloadable(c *cli.Context) (*reloadable, error) {
	auth, err := buildAuth(c)
	if err != nil {
		return nil, err
	}
	mapping, err := buildMapping(c)
	if err != nil {
		return nil, err
	}
	if c.Float64("rate") < 0 {
		return nil, usagef("--rate %v: want 0 (no limit) or more", c.Float64("rate"))
	}
	return &reloadable{auth: auth, mapping: mapping, rate: c.Float64("rate"), burst: c.Int("burst"),
		tlsCert: c.String("tls-cert"), tlsKey: c.String("tls-key")}, nil
}

// reparse reads serve's settings again from the command line the process
// was started with: the environment and the --config file as they are
// now, with the same precedence as at start.
func reparse(ctx context.Context) (*reloadable, error) {
	args, _ := ctx.Value(argsKey{}).([]string)
	if len(args) == 0 {
		return nil, errors.New("the command line is not known; restart instead")
	}
	var got *reloadable
	app := newApp(io.Discard, io.Discard)
	for _, cmd := range app.Commands {
		if cmd.Name == "serve" {
			cmd.Action = func(c *cli.Context) error {
				var err error
				got, err = readReloadable(c)
				return err
			}
		}
	}
	if err := app.RunContext(context.Background(), args); err != nil {
		return nil, err
	}
	if got == nil {
		return nil, errors.New("the command line did not run serve")
	}
	return got, nil
}

// reload applies a SIGHUP: inbound tokens, mapping overrides, the rate and
// the TLS certificate. Either all of it applies or, on any error, none.
func reload(ctx context.Context, log *slog.Logger, ingest *relay.Ingest, limiter *ratelimit.Limiter, burst0 int, certs *certSource) error {
	r, err := reparse(ctx)
	if err != nil {
		return err
	}
	if (certs == nil) != (r.tlsCert == "") {
		return errors.New("TLS cannot be turned on or off by a reload; restart for that")
	}
	var next *certSource
	if certs != nil {
		next = &certSource{certFile: r.tlsCert, keyFile: r.tlsKey}
		if err := next.load(); err != nil {
			return err
		}
	}
	if r.burst != burst0 {
		// The burst is also the batch size of the Segment clients, fixed
		// when they were made.
		log.Warn("--burst changes at the next restart; the rate changes now", "burst_now", burst0, "burst_configured", r.burst)
		r.burst = burst0
	}
	ingest.SetAuth(r.auth)
	ingest.SetMapping(r.mapping)
	limiter.SetRate(r.rate, r.burst)
	if next != nil {
		certs.cert.Store(next.cert.Load())
	}
	log.Info("reloaded", "inbound_tokens", r.auth.Tokens(), "rate", r.rate, "tls", certs != nil)
	return nil
}
