package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// The admin API: HTTP over a Unix socket, so that the CLI can reach a spool
// that the running daemon holds under bbolt's exclusive lock. Who may use
// it is decided by the socket's file mode (0660: the service user and its
// group), as for any local daemon socket.
//
//	GET  /v1/stats
//	GET  /v1/records?dead=1&type=T&user=U&after=ID&limit=N   NDJSON
//	GET  /v1/records/{id}
//	POST /v1/retry    {"ids":[...]} or {"all":true,"type":"..."}
//	POST /v1/delete   {"ids":[...]}
//	POST /v1/purge    {"older_than_seconds":N}
//	GET  /v1/export?state=pending|dead|all                  NDJSON
//
// Errors are {"error": "..."} with a 4xx or 5xx status.

// SocketMode is the admin socket's file mode.
const SocketMode = 0o660

// AdminHandler serves the admin API from in.
func AdminHandler(in SpoolAdmin, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	fail := func(w http.ResponseWriter, status int, err error) {
		writeJSON(w, status, map[string]string{"error": err.Error()})
	}
	failFor := func(w http.ResponseWriter, err error) {
		switch {
		case errors.Is(err, spool.ErrNotFound):
			fail(w, http.StatusNotFound, err)
		case errors.As(err, new(badRequest)):
			fail(w, http.StatusBadRequest, err)
		default:
			log.Error("admin request failed", "error", err)
			fail(w, http.StatusInternalServerError, err)
		}
	}
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		v, err := in.Stats(r.Context())
		if err != nil {
			failFor(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("GET /v1/records", func(w http.ResponseWriter, r *http.Request) {
		q, err := parseListQuery(r)
		if err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		streamNDJSON(w, log, func(emit func([]byte) error) error {
			return in.List(r.Context(), q, func(v RecordView) error {
				line, err := MarshalRecordLine(v)
				if err != nil {
					return err
				}
				return emit(line)
			})
		})
	})
	mux.HandleFunc("GET /v1/records/{id}", func(w http.ResponseWriter, r *http.Request) {
		ids, err := ParseIDs([]string{r.PathValue("id")})
		if err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		v, err := in.Show(r.Context(), ids[0])
		if err != nil {
			failFor(w, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
	mux.HandleFunc("POST /v1/retry", func(w http.ResponseWriter, r *http.Request) {
		var req RetryRequest
		if !decodeBody(w, r, &req) {
			return
		}
		res, err := in.Retry(r.Context(), req)
		if err != nil {
			failFor(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /v1/delete", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			IDs []uint64 `json:"ids"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		res, err := in.Delete(r.Context(), req.IDs)
		if err != nil {
			failFor(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /v1/purge", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			OlderThanSeconds float64 `json:"older_than_seconds"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		res, err := in.Purge(r.Context(), time.Duration(req.OlderThanSeconds*float64(time.Second)))
		if err != nil {
			failFor(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /v1/export", func(w http.ResponseWriter, r *http.Request) {
		states, err := ParseStates(r.URL.Query().Get("state"))
		if err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		streamNDJSON(w, log, func(emit func([]byte) error) error {
			return in.Export(r.Context(), states, emit)
		})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, fmt.Errorf("no admin endpoint %s %s (is the CLI newer than the daemon?)", r.Method, r.URL.Path))
	})
	return mux
}

// badRequest marks an error that is the caller's mistake (answered 400).
type badRequest struct{ error }

func (b badRequest) Unwrap() error { return b.error }

func badRequestf(format string, args ...any) error {
	return badRequest{fmt.Errorf(format, args...)}
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "request body: " + err.Error()})
		return false
	}
	return true
}

// StatesParam is the export selection as ParseStates reads it.
func StatesParam(states []spool.State) string {
	switch {
	case len(states) == 2:
		return "all"
	case len(states) == 1 && states[0] == spool.StateDead:
		return "dead"
	}
	return "pending"
}

// ParseStates reads an export selection: pending (the default), dead or all.
func ParseStates(s string) ([]spool.State, error) {
	switch s {
	case "", "pending":
		return []spool.State{spool.StatePending}, nil
	case "dead":
		return []spool.State{spool.StateDead}, nil
	case "all":
		return []spool.State{spool.StatePending, spool.StateDead}, nil
	}
	return nil, fmt.Errorf("state %q: want pending, dead or all", s)
}

func parseListQuery(r *http.Request) (ListQuery, error) {
	v := r.URL.Query()
	q := ListQuery{Dead: v.Get("dead") == "1", Type: v.Get("type"), User: v.Get("user")}
	if s := v.Get("after"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return q, fmt.Errorf("after=%q is not a record id", s)
		}
		q.After = n
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, fmt.Errorf("limit=%q is not a count", s)
		}
		q.Limit = n
	}
	return q, nil
}

// streamNDJSON writes lines as produce emits them. An error before the
// first line is an ordinary error answer; one after it can only cut the
// stream short, which the client sees as a last line that is an error
// object ({"error": ...}) instead of a record.
func streamNDJSON(w http.ResponseWriter, log *slog.Logger, produce func(emit func([]byte) error) error) {
	bw := bufio.NewWriterSize(deadlineWriter{w: w, rc: http.NewResponseController(w)}, 64<<10)
	started := false
	err := produce(func(line []byte) error {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		_, err := bw.Write(line)
		return err
	})
	if err != nil && !started {
		status := http.StatusInternalServerError
		if errors.Is(err, spool.ErrNotFound) {
			status = http.StatusNotFound
		}
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	if !started {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
	}
	if err != nil {
		log.Warn("admin stream cut short", "error", err)
		b, _ := json.Marshal(map[string]string{"error": err.Error()})
		_, _ = bw.Write(append(b, '\n'))
	}
	_ = bw.Flush()
}

// AdminSocket is the bound admin socket.
type AdminSocket struct {
	*net.UnixListener
	path string
	file os.FileInfo // the socket file as bound, to recognise it at Close
}

// streamWriteTimeout bounds each write of a streamed answer. An export or
// a listing reads in one bbolt read transaction, and while it is open bbolt
// cannot reuse pages freed by later commits, so the file grows: a client
// that stops reading (an export piped into a pager left open) is cut off
// instead of holding the transaction for ever.
var streamWriteTimeout = 30 * time.Second // a variable for tests

// deadlineWriter renews the connection's write deadline before each write.
type deadlineWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	return d.w.Write(p)
}

// ListenAdminSocket binds the admin API's Unix socket at path with mode
// SocketMode. A file already at path is replaced only if it is a socket
// that nobody answers on (left by a process that was killed); anything else
// is an error that says what to do. The socket is bound under a temporary
// name, given its mode, and renamed into place, so it is never reachable
// with a looser mode.
func ListenAdminSocket(path string) (*AdminSocket, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("admin socket %s: a file that is not a socket is in the way; remove it or choose another --admin-socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s is in use by another running gwenrelay; stop it, or give this one another --admin-socket", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("admin socket %s: cannot tell whether it is in use (%v); remove it if no gwenrelay is running", path, err)
		}
		// Stale: nobody listens on it any more; the rename below replaces it.
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("admin socket %s: directory %s does not exist (under systemd, RuntimeDirectory=gwenrelay creates /run/gwenrelay); create it or choose another --admin-socket", path, filepath.Dir(path))
		}
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("admin socket %s: cannot create it in %s: permission denied; run as the service user or choose another --admin-socket", path, filepath.Dir(path))
		}
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	err = os.Chmod(tmp, SocketMode)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = os.Lstat(path)
	}
	if err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("admin socket %s: cannot put it in place: %w", path, err)
	}
	return &AdminSocket{UnixListener: ln, path: path, file: fi}, nil
}

// Path returns where the socket is.
func (s *AdminSocket) Path() string { return s.path }

// Close stops listening and removes the socket file, unless another process
// has put its own socket there since.
func (s *AdminSocket) Close() error {
	err := s.UnixListener.Close()
	if fi, serr := os.Lstat(s.path); serr == nil && os.SameFile(fi, s.file) {
		_ = os.Remove(s.path)
	}
	return err
}

// ServeAdmin serves the admin API on ln until ctx ends; requests still
// running then (a long export) are cut off.
func ServeAdmin(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-done
	return nil
}
