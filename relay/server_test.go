package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// wantStatusBody checks a /healthz or /readyz answer.
func serverTestWantStatus(t *testing.T, r ingestReply, status int, text string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var got map[string]string
	if err := json.Unmarshal(r.body, &got); err != nil || len(got) != 1 || got["status"] != text {
		t.Errorf("body %s (%v), want {\"status\": %q}", r.body, err, text)
	}
}

func TestServer_Routes(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})

	t.Run("healthz", func(t *testing.T) {
		serverTestWantStatus(t, e.do(t, http.MethodGet, "/healthz", nil, nil), http.StatusOK, "ok")
	})
	t.Run("readyz", func(t *testing.T) {
		serverTestWantStatus(t, e.do(t, http.MethodGet, "/readyz", nil, nil), http.StatusOK, "ready")
	})
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		t.Run("405 "+m, func(t *testing.T) {
			// Checked before the credential: no Authorization header here.
			r := e.do(t, m, "/webhook", ingestEvent(1), nil)
			wantError(t, r, http.StatusMethodNotAllowed, "method "+m+" not allowed: POST a JSON event or array of events")
			if got := r.header.Get("Allow"); got != http.MethodPost {
				t.Errorf("Allow %q, want POST", got)
			}
		})
	}
	t.Run("405 HEAD", func(t *testing.T) {
		r := e.do(t, http.MethodHead, "/webhook", nil, nil)
		if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != http.MethodPost {
			t.Errorf("HEAD: %d, Allow %q", r.status, r.header.Get("Allow"))
		}
	})
	for _, p := range []string{"/", "/webhooks", "/webhook/", "/v2/webhook", "/v1/trace", "/v1/track/"} {
		t.Run("404 "+p, func(t *testing.T) {
			r := e.do(t, http.MethodPost, p, ingestEvent(1), map[string]string{"Authorization": "Bearer " + ingestTestToken})
			wantError(t, r, http.StatusNotFound, "no such endpoint "+p+": POST GWEN webhooks to /webhook, Segment API calls to /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/group, /v1/alias or /v1/batch")
		})
	}
	t.Run("404 stores nothing", func(t *testing.T) {
		if st := spoolStats(t, e.sp); st.Pending != 0 {
			t.Errorf("%d pending", st.Pending)
		}
	})
}

func TestServer_Stop(t *testing.T) {
	e := newIngestEnv(t, ingestEnvConfig{})
	wantAccepted(t, e.post(t, ingestEvent(1), nil), http.StatusAccepted, 1, 0)

	// Shutdown on a Server that is not serving still stops the ingest: the
	// httptest server keeps delivering requests, as a listener that is
	// being drained would.
	if err := e.server.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !e.ingest.Stopping() {
		t.Fatal("Stopping() false after Shutdown")
	}
	before := spoolStats(t, e.sp)
	for _, body := range [][]byte{ingestEvent(2), ingestEvent(1)} {
		r := e.post(t, body, nil)
		wantError(t, r, http.StatusServiceUnavailable, "gwenrelay is shutting down; retry shortly")
		wantRetryAfter(t, r, "5")
	}
	wantNothingStored(t, e.sp, before)
	serverTestWantStatus(t, e.do(t, http.MethodGet, "/readyz", nil, nil), http.StatusServiceUnavailable, "stopping")
	serverTestWantStatus(t, e.do(t, http.MethodGet, "/healthz", nil, nil), http.StatusOK, "ok")
}

// TestServer_ShutdownWaitsForCommit serves on a real listener and checks that
// Shutdown lets a request that is inside its spool commit finish with 202.
func TestServer_ShutdownWaitsForCommit(t *testing.T) {
	bs := &blockingIngestStore{entered: make(chan struct{}, 1), release: make(chan struct{})}
	e := newIngestEnv(t, ingestEnvConfig{store: func(sp *spool.Spool) Store {
		bs.Spool = sp
		return bs
	}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- e.server.Serve(l) }()
	url := "http://" + l.Addr().String()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	answer := make(chan ingestReply, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url+"/webhook", bytes.NewReader(ingestEvent(1)))
		req.Header.Set("Authorization", "Bearer "+ingestTestToken)
		resp, err := client.Do(req)
		if err != nil {
			answer <- ingestReply{status: -1, body: []byte(err.Error())}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answer <- ingestReply{status: resp.StatusCode, header: resp.Header, body: b}
	}()
	<-bs.entered // the request is inside Append

	shut := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() { shut <- e.server.Shutdown(ctx) }()

	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a commit was in progress", err)
	case r := <-answer:
		t.Fatalf("request answered (%d %s) before its commit was released", r.status, r.body)
	default:
	}
	close(bs.release)
	wantAccepted(t, <-answer, http.StatusAccepted, 1, 0)
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve after Shutdown: %v", err)
	}
	if !e.ingest.Stopping() {
		t.Error("Stopping() false after Shutdown")
	}
	if recs := pendingRecords(t, e.sp); len(recs) != 1 {
		t.Errorf("%d records, want 1", len(recs))
	}
	// The listener is closed: new connections are refused.
	if resp, err := client.Get(url + "/healthz"); err == nil {
		resp.Body.Close()
		t.Error("server still answering after Shutdown")
	}
}

func TestServer_Timeouts(t *testing.T) {
	s := NewServer(NewIngest(IngestConfig{Store: &nopIngestStore{}, Auth: &Auth{insecure: true}}))
	if s.http.ReadHeaderTimeout <= 0 || s.http.ReadHeaderTimeout > 10*time.Second {
		t.Errorf("ReadHeaderTimeout %v, want (0, 10s]", s.http.ReadHeaderTimeout)
	}
	if s.http.ReadTimeout <= 0 || s.http.WriteTimeout <= 0 || s.http.IdleTimeout <= 0 {
		t.Errorf("timeouts read %v write %v idle %v: all must be set", s.http.ReadTimeout, s.http.WriteTimeout, s.http.IdleTimeout)
	}
	if s.http.MaxHeaderBytes <= 0 || s.http.MaxHeaderBytes > 1<<20 {
		t.Errorf("MaxHeaderBytes %d", s.http.MaxHeaderBytes)
	}
}
