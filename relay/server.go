package relay

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Timeouts of the public server. A client that dribbles its headers or body
// is cut off instead of holding a connection and a goroutine for ever.
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 30 * time.Second
	WriteTimeout      = 30 * time.Second
	IdleTimeout       = 120 * time.Second
	MaxHeaderBytes    = 64 << 10
)

// Server is the public HTTP endpoint: POST /webhook, Segment's API under
// /v1/, and /healthz and /readyz for load balancers.
type Server struct {
	Ingest *Ingest
	http   *http.Server
}

// NewServer wires the routes and the timeouts.
func NewServer(ingest *Ingest) *Server {
	s := &Server{Ingest: ingest}
	mux := http.NewServeMux()
	mux.Handle("/webhook", ingest)
	for _, call := range SegmentCalls {
		mux.Handle("/v1/"+call, ingest.SegmentAPI(call))
	}
	mux.HandleFunc("/healthz", ingest.counted(routeHealthz, healthz))
	mux.HandleFunc("/readyz", ingest.counted(routeReadyz, readyz(ingest.Ready)))
	mux.HandleFunc("/", ingest.counted(routeOther, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(http.StatusNotFound, "no such endpoint %s: POST GWEN webhooks to /webhook, Segment API calls to /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/group, /v1/alias or /v1/batch", r.URL.Path))
	}))
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(ingest.log.Handler(), slog.LevelWarn),
	}
	return s
}

// Handler returns the routes, for tests and benchmarks that bring their own
// listener.
func (s *Server) Handler() http.Handler { return s.http.Handler }

// Serve serves on l until Shutdown; it returns nil after a clean shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// LameDuck is how long a stopping server keeps its listener open answering
// 503 (with Connection: close) before it closes: a client that sends on a
// keep-alive connection at that moment hears "shutting down, retry" rather
// than a reset connection, and load balancers see /readyz fail.
const LameDuck = 500 * time.Millisecond

// Shutdown answers 503 to every new request for LameDuck (less if ctx ends
// first), then stops accepting connections and waits (up to ctx) for
// requests in progress, including their spool commits, to finish.
func (s *Server) Shutdown(ctx context.Context) error {
	s.Ingest.Stop()
	t := time.NewTimer(LameDuck)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
	}
	return s.http.Shutdown(ctx)
}

// healthz says the process answers (the public and the admin listener).
func healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 or 503 as ready says, with its status.
func readyz(ready func() (bool, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ok, status := ready()
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]string{"status": status})
	}
}

// Ready says whether a load balancer should send webhooks here, and if not
// why: not while stopping, not while the spool is over its quota, and not
// while its commits fail. Both listeners' /readyz answer it.
func (h *Ingest) Ready() (ok bool, status string) {
	switch {
	case h.Stopping():
		return false, "stopping"
	case h.store.OverQuota():
		return false, "spool over quota"
	case h.StoreFailing():
		return false, "spool cannot commit (disk full?)"
	}
	return true, "ready"
}
