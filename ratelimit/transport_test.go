package ratelimit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countJSONBatch counts the elements of the "batch" array of an
// analytics-go style body; 1 for anything else.
func countJSONBatch(body []byte) int {
	var b struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if err := json.Unmarshal(body, &b); err != nil || b.Batch == nil {
		return 1
	}
	return len(b.Batch)
}

// batchBody builds a body like analytics-go's with n messages, each padded
// with pad bytes of properties.
func batchBody(tag string, n, pad int) []byte {
	type msg struct {
		Type       string         `json:"type"`
		Event      string         `json:"event"`
		MessageID  string         `json:"messageId"`
		Properties map[string]any `json:"properties"`
	}
	var b struct {
		Batch  []msg  `json:"batch"`
		SentAt string `json:"sentAt"`
	}
	for i := range n {
		b.Batch = append(b.Batch, msg{
			Type: "track", Event: "Tier Reached",
			MessageID:  fmt.Sprintf("%s-%d", tag, i),
			Properties: map[string]any{"pad": strings.Repeat("x", pad), "quote": `"],[{`},
		})
	}
	b.SentAt = "2024-03-01T12:00:00Z"
	out, err := json.Marshal(b)
	if err != nil {
		panic(err)
	}
	return out
}

type observation struct {
	events, status int
	err            error
	waited, took   time.Duration
}

// observer records Transport.Observe calls.
type observer struct {
	mu  sync.Mutex
	obs []observation
}

func (o *observer) observe(events, status int, err error, waited, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.obs = append(o.obs, observation{events: events, status: status, err: err, waited: waited, took: took})
}

func (o *observer) all() []observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]observation(nil), o.obs...)
}

// arrivals records, server side, when each request reached the handler.
type arrivals struct {
	mu sync.Mutex
	at map[string]time.Time
	n  map[string]int // events per request
}

func (a *arrivals) add(seq string, at time.Time, events int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.at == nil {
		a.at, a.n = map[string]time.Time{}, map[string]int{}
	}
	a.at[seq], a.n[seq] = at, events
}

func (a *arrivals) get(seq string) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.at[seq]
	return t, ok
}

func (a *arrivals) snapshot() map[string]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[string]time.Time, len(a.at))
	for k, v := range a.at {
		m[k] = v
	}
	return m
}

func post(t *testing.T, ctx context.Context, c *http.Client, url, seq string, body []byte) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Seq", seq)
	resp, err := c.Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// waitFor receives from ch or fails the test after a generous timeout.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestTransport_Wait(t *testing.T) {
	t.Run("each request waits for the limiter", func(t *testing.T) {
		const R, B = 100.0, 10
		var arr arrivals
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			at := time.Now()
			body, _ := io.ReadAll(r.Body)
			arr.add(r.Header.Get("X-Seq"), at, countJSONBatch(body))
		}))
		defer srv.Close()
		var obs observer
		t0 := time.Now()
		tr := &Transport{Base: srv.Client().Transport, Limiter: New(R, B), Count: countJSONBatch, Observe: obs.observe}
		c := &http.Client{Transport: tr}
		const reqs = 5
		for i := range reqs {
			resp, err := post(t, context.Background(), c, srv.URL, fmt.Sprint(i), batchBody(fmt.Sprint(i), B, 10))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("request %d: %v %v", i, resp, err)
			}
		}
		// Token math: the (i+1)th batch of B events needs i*B tokens beyond
		// the burst, which the bucket cannot have before t0 + i*B/R.
		for i := range reqs {
			at, ok := arr.get(fmt.Sprint(i))
			if !ok {
				t.Fatalf("request %d never arrived", i)
			}
			if earliest := time.Duration(float64(i*B) / R * float64(time.Second)); at.Sub(t0) < earliest {
				t.Errorf("request %d arrived at t0+%v, before t0+%v", i, at.Sub(t0), earliest)
			}
		}
		if el := time.Since(t0); el > 2500*time.Millisecond {
			t.Errorf("5 batches at 100 events/s took %v", el)
		}
		o := obs.all()
		if len(o) != reqs {
			t.Fatalf("%d observations, want %d", len(o), reqs)
		}
		var waited time.Duration
		for i, x := range o {
			if x.events != B || x.status != 200 || x.err != nil {
				t.Errorf("observation %d = %+v, want %d events, 200, nil", i, x, B)
			}
			waited += x.waited
		}
		if waited <= 0 {
			t.Errorf("no request waited for the limiter: %+v", o)
		}
	})

	t.Run("a request above the burst is still sent", func(t *testing.T) {
		var got atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			got.Add(int64(countJSONBatch(body)))
		}))
		defer srv.Close()
		var obs observer
		t0 := time.Now()
		tr := &Transport{Base: srv.Client().Transport, Limiter: New(100, 10), Count: countJSONBatch, Observe: obs.observe}
		resp, err := post(t, context.Background(), &http.Client{Transport: tr}, srv.URL, "big", batchBody("big", 25, 0))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%v %v", resp, err)
		}
		if el := time.Since(t0); el < 150*time.Millisecond {
			t.Errorf("25 events at 100/s burst 10 sent after %v, before 150ms", el)
		}
		if got.Load() != 25 {
			t.Errorf("server got %d events, want 25", got.Load())
		}
		if o := obs.all(); len(o) != 1 || o[0].events != 25 {
			t.Errorf("observations %+v, want one of 25 events", o)
		}
	})

	t.Run("a request cancelled while waiting is not sent", func(t *testing.T) {
		var hits atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
		defer srv.Close()
		l := New(0, 0)
		l.Pause(MaxPause)
		var obs observer
		tr := &Transport{Base: srv.Client().Transport, Limiter: l, Count: countJSONBatch, Observe: obs.observe}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := post(t, ctx, &http.Client{Transport: tr}, srv.URL, "x", batchBody("x", 1, 0))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
		if hits.Load() != 0 {
			t.Errorf("%d requests reached the server during the pause", hits.Load())
		}
		if o := obs.all(); len(o) != 0 {
			t.Errorf("observed %+v for a request never sent", o)
		}
	})
}

func TestTransport_429RetryAfter(t *testing.T) {
	// A is answered 429 with Retry-After: 1 only once B and C are on the wire
	// (held by the server); B and C finish during the pause, and no request
	// issued after the 429 (A's next one, D0..D5) reaches the server before
	// the pause is over.
	t.Run("Retry-After pauses every sender", func(t *testing.T) {
		var (
			arr      arrivals
			mu       sync.Mutex
			t429     time.Time
			onWire   = make(chan struct{}) // B and C have arrived
			bc       atomic.Int32
			hold     = make(chan struct{}) // lets B and C answer
			finished = map[string]time.Time{}
		)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			at := time.Now()
			seq := r.Header.Get("X-Seq")
			body, _ := io.ReadAll(r.Body)
			arr.add(seq, at, countJSONBatch(body))
			switch seq {
			case "A":
				select {
				case <-onWire:
				case <-time.After(5 * time.Second):
					http.Error(w, "B and C never came", 500)
					return
				}
				mu.Lock()
				t429 = time.Now()
				mu.Unlock()
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusTooManyRequests)
				io.WriteString(w, `{"error":"slow down"}`)
			case "B", "C":
				if bc.Add(1) == 2 {
					close(onWire)
				}
				select {
				case <-hold:
				case <-time.After(5 * time.Second):
				}
				mu.Lock()
				finished[seq] = time.Now()
				mu.Unlock()
			}
		}))
		defer srv.Close()

		l := New(1000, 50)
		paused := make(chan struct{})
		var pausedOnce sync.Once
		var obs observer
		tr := &Transport{
			Base: srv.Client().Transport, Limiter: l, Count: countJSONBatch,
			Observe: func(events, status int, err error, waited, took time.Duration) {
				obs.observe(events, status, err, waited, took)
				if status == http.StatusTooManyRequests {
					pausedOnce.Do(func() { close(paused) })
				}
			},
		}
		c := &http.Client{Transport: tr}
		ctx := context.Background()
		var wg sync.WaitGroup
		status := map[string]int{}
		var stMu sync.Mutex
		send := func(seq string, events int) {
			resp, err := post(t, ctx, c, srv.URL, seq, batchBody(seq, events, 0))
			stMu.Lock()
			defer stMu.Unlock()
			if err != nil {
				t.Errorf("%s: %v", seq, err)
				return
			}
			status[seq] = resp.StatusCode
		}
		wg.Go(func() { send("B", 5) })
		wg.Go(func() { send("C", 5) })
		wg.Go(func() {
			send("A", 5)  // the 429
			send("A2", 7) // at once: must wait out the pause (7 events to tell it apart)
		})
		waitFor(t, paused, "the 429")
		end := pauseEnd(l)
		close(hold) // B and C, on the wire, finish during the pause
		for i := range 6 {
			wg.Go(func() { send(fmt.Sprintf("D%d", i), 5) })
		}
		wg.Wait()

		mu.Lock()
		at429 := t429
		mu.Unlock()
		if n := l.Pauses(); n != 1 {
			t.Fatalf("Pauses = %d, want 1", n)
		}
		if !end.After(at429.Add(time.Second)) {
			t.Errorf("the pause ends at at429+%v, want after at429+1s", end.Sub(at429))
		}
		for seq, at := range arr.snapshot() {
			switch seq {
			case "A", "B", "C": // sent before the 429
				if !at.Before(at429) {
					t.Errorf("%s arrived at at429+%v, after the 429", seq, at.Sub(at429))
				}
			default:
				if !at.Before(at429) && at.Before(at429.Add(time.Second)) {
					t.Errorf("%s reached the server at at429+%v, inside the pause", seq, at.Sub(at429))
				}
				if at.Before(end) {
					t.Errorf("%s reached the server %v before the pause ended", seq, end.Sub(at))
				}
			}
		}
		if got := len(arr.snapshot()); got != 10 {
			t.Errorf("%d requests reached the server, want 10", got)
		}
		stMu.Lock()
		for _, seq := range []string{"B", "C", "A2", "D0", "D5"} {
			if status[seq] != 200 {
				t.Errorf("%s: status %d, want 200", seq, status[seq])
			}
		}
		if status["A"] != 429 {
			t.Errorf("A: status %d, want 429", status["A"])
		}
		stMu.Unlock()
		mu.Lock()
		for _, seq := range []string{"B", "C"} {
			// Held until the 429 was observed, then let go: they finish well
			// inside the pause.
			if at := finished[seq]; !at.Before(end) {
				t.Errorf("%s on the wire finished at at429+%v, not during the pause", seq, at.Sub(at429))
			}
		}
		mu.Unlock()
		var saw429, sawA2 bool
		for _, o := range obs.all() {
			if o.events == 7 {
				sawA2 = true
				if o.waited < 500*time.Millisecond || o.waited > 2500*time.Millisecond {
					t.Errorf("the request after the 429 waited %v, want about 1s", o.waited)
				}
			}
			if o.status == 429 {
				saw429 = true
				if o.events != 5 || o.err != nil {
					t.Errorf("429 observed as %+v", o)
				}
			}
		}
		if !saw429 || !sawA2 {
			t.Errorf("observed the 429: %v, the request after it: %v", saw429, sawA2)
		}
	})

}

func TestTransport_PauseRules(t *testing.T) {
	t.Run("without a readable Retry-After it pauses DefaultPause", func(t *testing.T) {
		for _, h := range []string{"", "soon", "-3"} {
			t.Run(fmt.Sprintf("Retry-After %q", h), func(t *testing.T) {
				t.Parallel()
				var (
					arr  arrivals
					n    atomic.Int32
					t429 atomic.Int64
				)
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					at := time.Now()
					arr.add(r.Header.Get("X-Seq"), at, 1)
					if n.Add(1) == 1 {
						if h != "" {
							w.Header().Set("Retry-After", h)
						}
						t429.Store(time.Now().UnixNano())
						w.WriteHeader(http.StatusTooManyRequests)
					}
				}))
				defer srv.Close()
				l := New(0, 0)
				c := &http.Client{Transport: &Transport{Base: srv.Client().Transport, Limiter: l}}
				resp, err := post(t, context.Background(), c, srv.URL, "1", []byte(`{}`))
				if err != nil || resp.StatusCode != 429 {
					t.Fatalf("first: %v %v", resp, err)
				}
				if p, np := l.PausedFor(), l.Pauses(); np != 1 || p <= 0 || p > DefaultPause {
					t.Fatalf("after the 429: Pauses %d, PausedFor %v; want 1, (0, %v]", np, p, DefaultPause)
				}
				if _, err := post(t, context.Background(), c, srv.URL, "2", []byte(`{}`)); err != nil {
					t.Fatal(err)
				}
				at, _ := arr.get("2")
				if d := at.Sub(time.Unix(0, t429.Load())); d < DefaultPause {
					t.Errorf("next request reached the server %v after the 429, before DefaultPause %v", d, DefaultPause)
				}
			})
		}
	})

	t.Run("Retry-After: 0 imposes no pause", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
		}))
		defer srv.Close()
		l := New(0, 0)
		c := &http.Client{Transport: &Transport{Base: srv.Client().Transport, Limiter: l}}
		if _, err := post(t, context.Background(), c, srv.URL, "1", nil); err != nil {
			t.Fatal(err)
		}
		if n := l.Pauses(); n != 0 {
			t.Errorf("Pauses = %d, want 0", n)
		}
	})

	t.Run("other statuses impose no pause", func(t *testing.T) {
		for _, code := range []int{200, 400, 408, 500, 503} {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "30")
				w.WriteHeader(code)
			}))
			l := New(0, 0)
			c := &http.Client{Transport: &Transport{Base: srv.Client().Transport, Limiter: l}}
			resp, err := post(t, context.Background(), c, srv.URL, "1", nil)
			srv.Close()
			if err != nil || resp.StatusCode != code {
				t.Fatalf("%d: %v %v", code, resp, err)
			}
			if n := l.Pauses(); n != 0 {
				t.Errorf("status %d with Retry-After: Pauses = %d, want 0", code, n)
			}
		}
	})
}

// checkGetBody is a Base that checks, before sending, that the request's
// body and GetBody both give want, and GetBody more than once.
type checkGetBody struct {
	t    *testing.T
	base http.RoundTripper
	want []byte
}

func (c checkGetBody) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.GetBody == nil {
		c.t.Error("GetBody is nil")
	} else {
		for i := range 2 {
			rc, err := req.GetBody()
			if err != nil {
				c.t.Fatalf("GetBody #%d: %v", i, err)
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(b, c.want) {
				c.t.Errorf("GetBody #%d gave %d bytes, want the %d sent", i, len(b), len(c.want))
			}
		}
	}
	if req.ContentLength != int64(len(c.want)) {
		c.t.Errorf("ContentLength %d, want %d", req.ContentLength, len(c.want))
	}
	return c.base.RoundTrip(req)
}

func TestTransport_Body(t *testing.T) {
	t.Run("reaches the server intact and GetBody works", func(t *testing.T) {
		body := batchBody("intact", 40, 8000) // about 320 KB
		var (
			mu    sync.Mutex
			got   []byte
			gotCL int64
		)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			defer mu.Unlock()
			got, gotCL = b, r.ContentLength
		}))
		defer srv.Close()
		var counted []byte
		var obs observer
		tr := &Transport{
			Base:    checkGetBody{t: t, base: srv.Client().Transport, want: body},
			Limiter: New(100, 50),
			Count: func(b []byte) int {
				counted = append([]byte(nil), b...)
				return countJSONBatch(b)
			},
			Observe: obs.observe,
		}
		// A body http.NewRequest knows nothing about: no GetBody of its own,
		// so the one the server's transport could use is the Transport's.
		req, err := http.NewRequest(http.MethodPost, srv.URL, io.NopCloser(bytes.NewReader(body)))
		if err != nil {
			t.Fatal(err)
		}
		if req.GetBody != nil {
			t.Fatal("the test request already has a GetBody")
		}
		req.ContentLength = int64(len(body))
		req.Header.Set("X-Seq", "intact")
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		mu.Lock()
		if !bytes.Equal(got, body) || gotCL != int64(len(body)) {
			t.Errorf("server got %d bytes (Content-Length %d), want the %d sent", len(got), gotCL, len(body))
		}
		mu.Unlock()
		if !bytes.Equal(counted, body) {
			t.Errorf("Count saw %d bytes, want the %d sent", len(counted), len(body))
		}
		if o := obs.all(); len(o) != 1 || o[0].events != 40 {
			t.Errorf("observations %+v, want one of 40 events", o)
		}
		if req.Header.Get("X-Seq") != "intact" || len(req.Header) != 1 {
			t.Errorf("the caller's request was modified: %v", req.Header)
		}
	})

	t.Run("Prepare gives the body once the limiter released it", func(t *testing.T) {
		var (
			mu    sync.Mutex
			got   []byte
			gotCL int64
		)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			defer mu.Unlock()
			got, gotCL = b, r.ContentLength
		}))
		defer srv.Close()
		type key struct{}
		original := batchBody("before", 3, 10)
		var counted []byte
		var preparedAt time.Time
		var prepared []byte
		l := New(100, 10)
		tr := &Transport{
			Base:    srv.Client().Transport,
			Limiter: l,
			Count: func(b []byte) int {
				counted = append([]byte(nil), b...)
				return countJSONBatch(b)
			},
			Prepare: func(req *http.Request, body []byte) []byte {
				preparedAt = time.Now()
				if !bytes.Equal(body, original) {
					t.Errorf("Prepare got %d bytes, want the %d the request carried", len(body), len(original))
				}
				tag, _ := req.Context().Value(key{}).(string)
				prepared = batchBody(tag, 3, 100) // longer than the original
				return prepared
			},
		}
		const hold = 200 * time.Millisecond
		start := time.Now()
		l.Pause(hold)
		req, err := http.NewRequestWithContext(context.WithValue(context.Background(), key{}, "after"), http.MethodPost, srv.URL, bytes.NewReader(original))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if preparedAt.Sub(start) < hold {
			t.Errorf("Prepare ran %v after the request, before the %v pause ended", preparedAt.Sub(start), hold)
		}
		if !bytes.Equal(counted, original) {
			t.Errorf("Count saw %d bytes, want the %d the request carried", len(counted), len(original))
		}
		mu.Lock()
		defer mu.Unlock()
		if !bytes.Equal(got, prepared) || gotCL != int64(len(prepared)) || !bytes.Contains(got, []byte("after-0")) {
			t.Errorf("server got %d bytes (Content-Length %d), want the %d Prepare built from the request's context", len(got), gotCL, len(prepared))
		}
	})

	t.Run("no body, nil Count and nil Base", func(t *testing.T) {
		var method atomic.Value
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			method.Store(r.Method)
			io.WriteString(w, "pong")
		}))
		defer srv.Close()
		var obs observer
		tr := &Transport{Limiter: New(100, 10), Observe: obs.observe} // Base: http.DefaultTransport
		req, err := http.NewRequest(http.MethodGet, srv.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "pong" || method.Load() != http.MethodGet {
			t.Errorf("got %q via %v", b, method.Load())
		}
		if o := obs.all(); len(o) != 1 || o[0].events != 1 || o[0].status != 200 {
			t.Errorf("observations %+v, want one of 1 event, 200", o)
		}
	})
}

func TestTransport_Observe(t *testing.T) {
	t.Run("events, status, waited and took", func(t *testing.T) {
		const lag = 50 * time.Millisecond
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-time.After(lag) // the server's own latency, for took
			if r.Header.Get("X-Seq") == "second" {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}))
		defer srv.Close()
		var obs observer
		// Burst 5 at 10/s: the first 5 events go at once, the next 5 need
		// 500ms more tokens.
		tr := &Transport{Base: srv.Client().Transport, Limiter: New(10, 5), Count: countJSONBatch, Observe: obs.observe}
		c := &http.Client{Transport: tr}
		for _, seq := range []string{"first", "second"} {
			if _, err := post(t, context.Background(), c, srv.URL, seq, batchBody(seq, 5, 0)); err != nil {
				t.Fatal(err)
			}
		}
		o := obs.all()
		if len(o) != 2 {
			t.Fatalf("observations %+v, want 2", o)
		}
		first, second := o[0], o[1]
		if first.events != 5 || first.status != 200 || first.err != nil {
			t.Errorf("first = %+v, want 5 events, 200, nil", first)
		}
		if second.events != 5 || second.status != 503 || second.err != nil {
			t.Errorf("second = %+v, want 5 events, 503, nil", second)
		}
		if first.waited > time.Second {
			t.Errorf("first waited %v with a full bucket", first.waited)
		}
		// The second needed 500ms of tokens from the first's release; the
		// first exchange took about lag of it.
		if second.waited < 250*time.Millisecond || second.waited > 2500*time.Millisecond {
			t.Errorf("second waited %v, want about %v", second.waited, 500*time.Millisecond-lag)
		}
		for _, x := range o {
			if x.took < lag || x.took > 3*time.Second {
				t.Errorf("took %v, want at least the server's %v", x.took, lag)
			}
		}
	})

	t.Run("a transport error is reported with status 0 and returned", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		url := srv.URL
		base := srv.Client().Transport
		srv.Close()
		var obs observer
		tr := &Transport{Base: base, Limiter: New(100, 10), Count: countJSONBatch, Observe: obs.observe}
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(batchBody("gone", 3, 0)))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
			t.Fatal("RoundTrip to a closed server succeeded")
		}
		o := obs.all()
		if len(o) != 1 {
			t.Fatalf("observations %+v, want 1", o)
		}
		if o[0].status != 0 || o[0].events != 3 || o[0].err != err {
			t.Errorf("observed %+v; want status 0, 3 events and the returned error %v", o[0], err)
		}

		// Through an http.Client the same error comes back wrapped.
		_, cerr := post(t, context.Background(), &http.Client{Transport: tr}, url, "gone", batchBody("gone", 2, 0))
		o = obs.all()
		if cerr == nil || len(o) != 2 || o[1].status != 0 || !errors.Is(cerr, o[1].err) {
			t.Errorf("client err %v, observed %+v", cerr, o)
		}
	})
}
