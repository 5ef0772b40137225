package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/gwenrelay/gwenrelay/ratelimit"
	"github.com/gwenrelay/gwenrelay/relay/segmenttest"
)

func TestCountBatch(t *testing.T) {
	for _, c := range []struct {
		name string
		body string
		want int
	}{
		{"empty batch", `{"messageId":"b","sentAt":"2024-06-03T12:00:00Z","batch":[],"context":null}`, 0},
		{"one", `{"batch":[{"a":1}]}`, 1},
		{"three", `{"batch":[{"a":1},{"b":2},{"c":3}],"context":null}`, 3},
		{"commas and brackets in strings", `{"batch":[{"s":"a,b,c]},{[["},{"s":"]"},{"s":","}]}`, 3},
		{"escaped quotes", `{"batch":[{"s":"say \"hi\", ]then["},{"s":"\\"},{"s":"\\\"],"}],"context":{"x":"],["}}`, 3},
		{"backslash before the closing quote", `{"batch":[{"s":"a\\\\"},{"t":1}]}`, 2},
		{"nested arrays and objects", `{"batch":[{"u":[[1,2],[3,[4,5]]],"o":{"p":[{},{}]}},{"u":[]}]}`, 2},
		{"unicode escapes", `{"batch":[{"s":"\u005d\u002c\u0022"},{"s":"é,]"}]}`, 2},
		{"context after the batch", `{"messageId":"x","sentAt":"2024-06-03T12:00:00Z","batch":[{"a":[1]}],"context":{"library":{"name":"n","version":"1,2]"}}}`, 1},
		{"no batch key", `{"type":"track","messageId":"m"}`, 1},
		{"batch null", `{"batch":null}`, 1},
		{"not JSON", `garbage`, 1},
	} {
		if got := countBatch([]byte(c.body)); got != c.want {
			t.Errorf("%s: countBatch(%s) = %d, want %d", c.name, c.body, got, c.want)
		}
	}
}

// TestCountBatch_AnalyticsGoBodies counts the bodies analytics-go really
// sends, for messages whose JSON is full of the characters a naive counter
// would trip on.
func TestCountBatch_AnalyticsGoBodies(t *testing.T) {
	t.Parallel()
	fake := segmenttest.New(drainTestWriteKey)
	t.Cleanup(fake.Close)
	wire := newWireLog(true)
	var mu sync.Mutex
	var observed []int
	normal, iso := NewSegmentSenders(SegmentConfig{
		WriteKey:      drainTestWriteKey,
		Endpoint:      fake.URL,
		Limiter:       ratelimit.New(0, 0),
		Base:          wire,
		FlushInterval: 20 * time.Millisecond,
		Observe: func(events, status int, err error, waited, took time.Duration) {
			mu.Lock()
			observed = append(observed, events)
			mu.Unlock()
		},
		Logger: drainQuietLog,
	})
	cb := &recordingCallback{}
	var msgs []analytics.Message
	m := DefaultMapping(drainTestVersion)
	for i, raw := range drainTestEvents(t, 30, func(i int) string {
		return fmt.Sprintf(`user "%d", [x] {y} \ ,`, i)
	}) {
		ev, err := ParseEvent(raw, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ev.Extra = map[string]json.RawMessage{
			"nested": json.RawMessage(`[[1,[2,3]],{"a":[",","]"]},"\"],["]`),
			"tricky": json.RawMessage(fmt.Sprintf(`"\\\",%d]"`, i)),
		}
		msg, err := m.Map(ev, time.Now(), fmt.Sprintf("mid-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, msg)
	}
	for _, c := range []struct {
		name string
		new  func(analytics.Callback) (Sender, error)
	}{{"normal", normal}, {"isolation", iso}} {
		s, err := c.new(cb)
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range msgs {
			if err := s.Enqueue(msg); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil { // flushes and waits for the uploads
			t.Fatalf("%s: Close: %v", c.name, err)
		}
	}
	if cb.success != 2*len(msgs) || cb.failure != 0 {
		t.Fatalf("%d successes, %d failures; want %d successes", cb.success, cb.failure, 2*len(msgs))
	}
	total := 0
	for _, x := range wire.all() {
		var b struct{ Batch []json.RawMessage }
		if err := json.Unmarshal(x.body, &b); err != nil {
			t.Fatalf("body is not JSON: %v", err)
		}
		if got := countBatch(x.body); got != len(b.Batch) {
			t.Errorf("countBatch = %d for a body of %d messages:\n%s", got, len(b.Batch), x.body)
		}
		total += len(b.Batch)
	}
	if total != 2*len(msgs) {
		t.Errorf("bodies carried %d messages, want %d", total, 2*len(msgs))
	}
	mu.Lock()
	defer mu.Unlock()
	sum := 0
	for _, n := range observed {
		sum += n
	}
	if sum != total || len(observed) != len(wire.all()) {
		t.Errorf("Observe saw %d events in %d requests; the wire carried %d in %d", sum, len(observed), total, len(wire.all()))
	}
	wantNoProblems(t, fake)
}

func TestSegmentSenders(t *testing.T) {
	t.Run("batch sizes", func(t *testing.T) {
		t.Parallel()
		for _, c := range []struct {
			rate             float64
			burst, normalMax int
		}{
			{rate: 1000, burst: 7, normalMax: 7}, // never more than a burst in one request
			{rate: 1000, burst: 400, normalMax: maxBatch},
			{rate: 0, burst: 0, normalMax: maxBatch}, // no rate limit
		} {
			fake := segmenttest.New(drainTestWriteKey)
			normal, iso := NewSegmentSenders(SegmentConfig{
				WriteKey: drainTestWriteKey, Endpoint: fake.URL, Limiter: ratelimit.New(c.rate, c.burst),
				FlushInterval: time.Hour, // batches leave when full (or on Close)
				Logger:        drainQuietLog,
			})
			send := func(newSender func(analytics.Callback) (Sender, error), n int) []segmenttest.Request {
				before := len(fake.Requests())
				cb := &recordingCallback{}
				s, err := newSender(cb)
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < n; i++ {
					if err := s.Enqueue(analytics.Track{MessageId: fmt.Sprintf("m-%d-%d", before, i), UserId: "u", Event: "E"}); err != nil {
						t.Fatal(err)
					}
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				if cb.success != n {
					t.Errorf("burst %d: %d of %d delivered", c.burst, cb.success, n)
				}
				return fake.Requests()[before:]
			}
			biggest := 0
			for _, q := range send(normal, 600) {
				biggest = max(biggest, q.Events)
			}
			if biggest != c.normalMax {
				t.Errorf("rate %v burst %d: largest batch %d, want %d", c.rate, c.burst, biggest, c.normalMax)
			}
			for _, q := range send(iso, 5) {
				if q.Events != 1 {
					t.Errorf("the isolation sender put %d messages in one request", q.Events)
				}
			}
			wantNoProblems(t, fake)
			fake.Close()
		}
	})

	t.Run("request timeout", func(t *testing.T) {
		t.Parallel()
		fake := segmenttest.New(drainTestWriteKey)
		t.Cleanup(fake.Close)
		fake.Script(segmenttest.Step{Hang: 3 * time.Second})
		c := &http.Client{Transport: segmentTransport(SegmentConfig{
			Limiter: ratelimit.New(0, 0), Base: http.DefaultTransport, RequestTimeout: 200 * time.Millisecond,
		})}
		start := time.Now()
		req, _ := http.NewRequest(http.MethodPost, fake.URL+"/v1/batch", bytes.NewReader(segmentTestBody("hang")))
		req.SetBasicAuth(drainTestWriteKey, "")
		_, err := c.Do(req)
		if err == nil || time.Since(start) > 2*time.Second {
			t.Errorf("a hung exchange: error %v after %v; want a timeout after about 200ms", err, time.Since(start))
		}
		if n := len(fake.Requests()); n != 1 {
			t.Errorf("%d requests reached the fake, want the hung one", n)
		}
		// A normal answer stays readable: the timeout is released when the
		// body is closed, not when the headers arrive. (No credentials: the
		// fake answers 401 with a body.)
		resp, err := c.Post(fake.URL+"/v1/batch", "application/json", bytes.NewReader(segmentTestBody("ok")))
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 401 || !strings.Contains(buf.String(), "unauthorized") {
			t.Errorf("answer %d %q %v", resp.StatusCode, buf.String(), err)
		}
	})

	t.Run("queued in the limiter beyond the client timeout", func(t *testing.T) {
		// analytics-go's http.Client has a fixed 10 s timeout; a request
		// waiting its turn in the limiter (a deep backlog at a low rate, a
		// long Retry-After) must not fail for it. Scaled down: a 300ms client
		// timeout and a 700ms pause.
		t.Parallel()
		fake := segmenttest.New(drainTestWriteKey)
		t.Cleanup(fake.Close)
		lim := ratelimit.New(0, 0)
		c := &http.Client{Timeout: 300 * time.Millisecond, Transport: segmentTransport(SegmentConfig{
			Limiter: lim, Base: http.DefaultTransport, RequestTimeout: 2 * time.Second,
		})}
		lim.Pause(700 * time.Millisecond)
		start := time.Now()
		req, _ := http.NewRequest(http.MethodPost, fake.URL+"/v1/batch", bytes.NewReader(segmentTestBody("queued")))
		req.SetBasicAuth(drainTestWriteKey, "")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("a request held by the limiter failed: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || time.Since(start) < 600*time.Millisecond {
			t.Errorf("answer %d after %v; want 200 after the pause", resp.StatusCode, time.Since(start))
		}
		if d := fake.Delivered(); d["queued"] != 1 {
			t.Errorf("delivered %v", d)
		}
	})
}

func segmentTestBody(id string) []byte {
	return fmt.Appendf(nil, `{"messageId":"b","sentAt":"2024-06-03T12:00:01Z","batch":[{"type":"track","messageId":%q,"userId":"u","event":"E","timestamp":"2024-06-03T12:00:00Z"}]}`, id)
}

// Segment dates each event by the batch's sentAt (receivedAt - (sentAt -
// timestamp)): it must be the moment the upload really leaves, after the
// rate limiter held it and at every retry, not when analytics-go built it.
func TestSegmentSenders_SentAtWhenSent(t *testing.T) {
	fake := segmenttest.New(drainTestWriteKey)
	t.Cleanup(fake.Close)
	// The first upload fails once, so its retry goes out later with the
	// same body; the others queue in the limiter (2/s, one at a time).
	fake.Script(segmenttest.Step{Status: http.StatusInternalServerError})
	normal, _ := NewSegmentSenders(SegmentConfig{
		WriteKey: drainTestWriteKey, Endpoint: fake.URL, Limiter: ratelimit.New(2, 1),
		FlushInterval: 10 * time.Millisecond, RetryBase: 300 * time.Millisecond, RetryMax: time.Second, Logger: drainQuietLog,
	})
	cb := &recordingCallback{}
	s, err := normal(cb)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if err := s.Enqueue(analytics.Track{MessageId: fmt.Sprintf("sent-%d", i), UserId: "u", Event: "E"}); err != nil {
			t.Fatal(err)
		}
	}
	if !fake.WaitDelivered(4, 20*time.Second) {
		t.Fatalf("delivered %d of 4", len(fake.Delivered()))
	}
	s.Close()
	msgs := fake.Messages()
	var lastArrival time.Time
	for _, m := range msgs {
		if lag := m.At.Sub(m.SentAt); lag < -time.Second || lag > 250*time.Millisecond {
			t.Errorf("%s: arrived %s after its sentAt (%s), want it stamped as it was sent", m.MessageID, lag, m.SentAt.Format(time.RFC3339Nano))
		}
		lastArrival = m.At
	}
	if first := msgs[0].At; lastArrival.Sub(first) < time.Second {
		t.Fatalf("the uploads arrived within %s: the limiter did not hold any, so this shows nothing", lastArrival.Sub(first))
	}
}

func TestRestampSentAt(t *testing.T) {
	body := []byte(`{"messageId":"b","sentAt":"2020-01-01T00:00:00Z","batch":[{"sentAt":"x"}]}`)
	out := restampSentAt(body)
	var env struct {
		SentAt time.Time         `json:"sentAt"`
		Batch  []json.RawMessage `json:"batch"`
	}
	if err := json.Unmarshal(out, &env); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if time.Since(env.SentAt) > time.Minute || string(env.Batch[0]) != `{"sentAt":"x"}` {
		t.Errorf("restamped %s", out)
	}
	// A body whose first sentAt is inside the batch is left alone.
	other := []byte(`{"batch":[{"sentAt":"x"}]}`)
	if got := restampSentAt(other); string(got) != string(other) {
		t.Errorf("changed %s into %s", other, got)
	}
}
