package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// ErrNoDaemon means nothing listens on the admin socket: no daemon is
// running there, so the spool file may be opened directly.
var ErrNoDaemon = errors.New("no gwenrelay is listening on the admin socket")

// AdminDialTimeout bounds connecting to the admin socket and the daemon's
// first answer: a stopped or wedged daemon gives an error, not a hang.
const AdminDialTimeout = 3 * time.Second

// AdminClient is the SpoolAdmin of a running daemon, reached over its admin
// socket. Every spool command uses it when the daemon is up.
type AdminClient struct {
	socket string
	hc     *http.Client
	// SpoolPath is the spool the daemon serves, as it reported it.
	SpoolPath string
}

var _ SpoolAdmin = (*AdminClient)(nil)

// DialAdmin connects to the daemon on socket and asks for its spool's path.
// It returns an error wrapping ErrNoDaemon when no daemon listens there.
func DialAdmin(ctx context.Context, socket string) (*AdminClient, error) {
	c, err := net.DialTimeout("unix", socket, AdminDialTimeout)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("admin socket %s: %w", socket, ErrNoDaemon)
		case errors.Is(err, fs.ErrPermission):
			return nil, fmt.Errorf("admin socket %s: permission denied; run as root or as a member of the socket's group (sudo usermod -aG gwenrelay $USER, then log in again)", socket)
		}
		return nil, fmt.Errorf("admin socket %s: %w", socket, err)
	}
	c.Close()
	ac := &AdminClient{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 2,
	}}}
	pctx, cancel := context.WithTimeout(ctx, AdminDialTimeout)
	defer cancel()
	st, err := ac.Stats(pctx)
	if err != nil {
		if pctx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("admin socket %s: the daemon did not answer within %s (is it stopped or wedged? see systemctl status gwenrelay)", socket, AdminDialTimeout)
		}
		return nil, err
	}
	ac.SpoolPath = st.Spool
	return ac, nil
}

func (c *AdminClient) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://gwenrelay"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return nil, &remoteError{msg: fmt.Sprintf("gwenrelay at %s: %s", c.socket, e.Error), notFound: resp.StatusCode == http.StatusNotFound}
	}
	return resp, nil
}

// remoteError is the daemon's answer to a request it refused.
type remoteError struct {
	msg      string
	notFound bool
}

func (e *remoteError) Error() string { return e.msg }

// Is makes a 404 match spool.ErrNotFound, as the Inspector's error does.
func (e *remoteError) Is(target error) bool { return e.notFound && target == spool.ErrNotFound }

func (c *AdminClient) getJSON(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("gwenrelay at %s: unreadable answer: %w", c.socket, err)
	}
	return nil
}

// streamLines calls fn with each line of an NDJSON answer. A last line
// that is an error object (the daemon failed mid-stream) becomes the error.
func (c *AdminClient) streamLines(ctx context.Context, path string, fn func([]byte) error) error {
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if line[len(line)-1] != '\n' {
				return fmt.Errorf("gwenrelay at %s: the answer was cut short", c.socket)
			}
			if bytes.HasPrefix(line, []byte(`{"error":`)) {
				var e struct {
					Error string `json:"error"`
				}
				if json.Unmarshal(line, &e) == nil {
					return fmt.Errorf("gwenrelay at %s: %s", c.socket, e.Error)
				}
			}
			if ferr := fn(line); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("gwenrelay at %s: %w", c.socket, err)
		}
	}
}

// Stats implements SpoolAdmin.
func (c *AdminClient) Stats(ctx context.Context) (StatsView, error) {
	var v StatsView
	err := c.getJSON(ctx, http.MethodGet, "/v1/stats", nil, &v)
	return v, err
}

// List implements SpoolAdmin.
func (c *AdminClient) List(ctx context.Context, q ListQuery, fn func(RecordView) error) error {
	v := url.Values{}
	if q.Dead {
		v.Set("dead", "1")
	}
	if q.Type != "" {
		v.Set("type", q.Type)
	}
	if q.User != "" {
		v.Set("user", q.User)
	}
	if q.After > 0 {
		v.Set("after", strconv.FormatUint(q.After, 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return c.streamLines(ctx, "/v1/records?"+v.Encode(), func(line []byte) error {
		var rv RecordView
		if err := json.Unmarshal(line, &rv); err != nil {
			return fmt.Errorf("gwenrelay at %s: unreadable record: %w", c.socket, err)
		}
		return fn(rv)
	})
}

// Show implements SpoolAdmin.
func (c *AdminClient) Show(ctx context.Context, id uint64) (ShowView, error) {
	var v ShowView
	err := c.getJSON(ctx, http.MethodGet, "/v1/records/"+strconv.FormatUint(id, 10), nil, &v)
	return v, err
}

// Retry implements SpoolAdmin.
func (c *AdminClient) Retry(ctx context.Context, req RetryRequest) (ChangeResult, error) {
	var res ChangeResult
	err := c.getJSON(ctx, http.MethodPost, "/v1/retry", req, &res)
	return res, err
}

// Delete implements SpoolAdmin.
func (c *AdminClient) Delete(ctx context.Context, ids []uint64) (ChangeResult, error) {
	var res ChangeResult
	err := c.getJSON(ctx, http.MethodPost, "/v1/delete", map[string][]uint64{"ids": ids}, &res)
	return res, err
}

// Purge implements SpoolAdmin.
func (c *AdminClient) Purge(ctx context.Context, olderThan time.Duration) (ChangeResult, error) {
	var res ChangeResult
	err := c.getJSON(ctx, http.MethodPost, "/v1/purge", map[string]float64{"older_than_seconds": olderThan.Seconds()}, &res)
	return res, err
}

// Export implements SpoolAdmin.
func (c *AdminClient) Export(ctx context.Context, states []spool.State, fn func([]byte) error) error {
	return c.streamLines(ctx, "/v1/export?state="+StatesParam(states), fn)
}
