package relay

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/gwenrelay/gwenrelay/spool"
)

// syncBuffer is a bytes.Buffer the test may read while the drainer writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// failingWriter fails every write until healed.
type failingWriter struct {
	mu     sync.Mutex
	healed bool
	writes int
	out    bytes.Buffer
}

func (w *failingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	if !w.healed {
		return 0, errors.New("no space left on device")
	}
	return w.out.Write(p)
}

func (w *failingWriter) heal() {
	w.mu.Lock()
	w.healed = true
	w.mu.Unlock()
}

func (w *failingWriter) lines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Split(strings.TrimSuffix(w.out.String(), "\n"), "\n")
}

func TestDryRun(t *testing.T) {
	t.Run("drains to NDJSON", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		recs := drainAppend(t, sp, readIngestExamples(t))
		recs = append(recs, drainAppend(t, sp, drainTestEvents(t, 300, nil))...)
		var out syncBuffer
		rig := startDrain(t, sp, drainRigConfig{sender: NewDryRunSender(&out, nil)})
		rig.waitDrained(10 * time.Second)
		rig.stop()

		want := drainExpected(t, rig.mapping, recs)
		sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
		sc.Buffer(nil, 1<<20)
		seen := map[string]int{}
		for sc.Scan() {
			line := sc.Bytes()
			id := ""
			for mid, exp := range want {
				if bytes.Equal(line, exp) {
					id = mid
					break
				}
			}
			if id == "" {
				t.Errorf("line is not the JSON analytics-go would send for any record: %s", line)
				continue
			}
			seen[id]++
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if seen[r.MessageID] != 1 {
				t.Errorf("record %d written %d times, want once", r.ID, seen[r.MessageID])
			}
		}
		if st := spoolStats(t, sp); st.Pending != 0 || st.Dead != 0 {
			t.Errorf("spool after the dry run: %+v; want empty", st)
		}
		if ds := rig.d.Stats(); ds.Delivered != int64(len(recs)) || ds.Failed != 0 || ds.DeadLettered != 0 {
			t.Errorf("drainer stats %+v", ds)
		}
		if len(rig.fake.Requests()) != 0 {
			t.Errorf("a dry run sent %d requests to Segment", len(rig.fake.Requests()))
		}
	})

	t.Run("oversize and invalid messages are dead letters as with Segment", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		good := drainAppend(t, sp, drainTestEvents(t, 3, nil))
		big := mustCanonical(t, fmt.Appendf(nil, `{"type":"wallet_update","userId":"big","state":{"blob":%q}}`, strings.Repeat("y", 33000)))
		bad := drainAppendRaw(t, sp,
			spool.Entry{Kind: spool.KindGWEN, MessageID: "gwenrelay-big", ReceivedAt: time.Now(), Event: big},
			spool.Entry{Kind: spool.KindGWEN, MessageID: "gwenrelay-no-user", ReceivedAt: time.Now(), Event: []byte(`{"type":"x"}`)},
		)
		var out syncBuffer
		rig := startDrain(t, sp, drainRigConfig{sender: NewDryRunSender(&out, nil)})
		waitFor(t, 10*time.Second, "the spool drained", func() bool {
			st := spoolStats(t, sp)
			return st.Pending == 0 && st.Dead == 2
		})
		rig.stop()
		dead := deadRecords(t, sp)
		if len(dead) != 2 || dead[0].ID != bad[0].ID || !strings.Contains(dead[0].LastError, "32,000") || dead[1].ID != bad[1].ID || !strings.Contains(dead[1].LastError, "userId") {
			t.Errorf("dead letters %+v", dead)
		}
		lines := strings.Split(strings.TrimSuffix(string(out.Bytes()), "\n"), "\n")
		if len(lines) != len(good) {
			t.Errorf("%d lines written, want %d (only the good records)", len(lines), len(good))
		}
	})

	t.Run("Segment messages are written as they would be sent", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		plain := rawMessage("dry-plain", `,"context":{"custom":{"k":"v"}},"properties":{}`, time.Now().Round(0))
		sent := rawMessage("dry-sentat", `,"sentAt":"2024-06-03T12:00:01.000Z"`, rawPast())
		big := rawPadded(t, "dry-big", maxStoredSegmentMessage+1)
		recs := drainAppendRaw(t, sp, spoolSegmentEntry(plain), spoolSegmentEntry(sent), spoolSegmentEntry(big))
		var out syncBuffer
		rig := startDrain(t, sp, drainRigConfig{sender: NewDryRunSender(&out, nil)})
		waitFor(t, 10*time.Second, "the spool drained", func() bool {
			st := spoolStats(t, sp)
			return st.Pending == 0 && st.Dead == 1
		})
		rig.stop()
		dead := deadRecords(t, sp)
		if len(dead) != 1 || dead[0].ID != recs[2].ID || !strings.Contains(dead[0].LastError, "too big for one upload to Segment") {
			t.Errorf("dead letters %+v, want the oversize message, too big for one upload", dead)
		}
		lines := strings.Split(strings.TrimSuffix(string(out.Bytes()), "\n"), "\n")
		if len(lines) != 2 {
			t.Fatalf("%d lines, want 2:\n%s", len(lines), out.Bytes())
		}
		for _, line := range lines {
			var f struct{ MessageID, SentAt string }
			if err := json.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("line %s: %v", line, err)
			}
			switch f.MessageID {
			case plain.ID:
				if line != string(plain.Raw) {
					t.Errorf("wrote\n%s\nwant the stored message\n%s", line, plain.Raw)
				}
			case sent.ID:
				// Its Body at the moment the line was written: the caller's
				// sentAt moved on by the hour and more spent in the relay.
				moved, err := time.Parse(time.RFC3339Nano, f.SentAt)
				orig := time.Date(2024, 6, 3, 12, 0, 1, 0, time.UTC)
				if err != nil || moved.Sub(orig) < time.Hour {
					t.Fatalf("sentAt %q, want the caller's moved on by over an hour", f.SentAt)
				}
				if want := sent.Body(sent.ReceivedAt.Add(moved.Sub(orig))); line != string(want) {
					t.Errorf("wrote\n%s\nwant\n%s", line, want)
				}
			default:
				t.Errorf("unexpected line %s", line)
			}
		}
	})

	t.Run("a failing writer keeps the records pending", func(t *testing.T) {
		t.Parallel()
		sp := openDrainSpool(t, "")
		recs := drainAppend(t, sp, drainTestEvents(t, 20, nil))
		w := &failingWriter{}
		rig := startDrain(t, sp, drainRigConfig{sender: NewDryRunSender(w, nil)})
		waitFor(t, 10*time.Second, "failed writes recorded on the records", func() bool {
			for _, r := range pendingRecords(t, sp) {
				if r.Attempts >= 2 && strings.Contains(r.LastError, "no space left on device") {
					return true
				}
			}
			return false
		})
		if st := spoolStats(t, sp); st.Pending != int64(len(recs)) || st.Dead != 0 {
			t.Fatalf("spool while the writer fails: %+v; want all %d pending", st, len(recs))
		}
		w.heal()
		rig.waitDrained(10 * time.Second)
		rig.stop()
		if got := w.lines(); len(got) != len(recs) {
			t.Errorf("%d lines once healed, want %d", len(got), len(recs))
		}
	})

	t.Run("sink", func(t *testing.T) {
		t.Parallel()
		var out bytes.Buffer
		cb := &recordingCallback{}
		s, err := NewDryRunSender(&out, nil)(cb)
		if err != nil {
			t.Fatal(err)
		}
		msg := analytics.Track{MessageId: "m-1", UserId: "u", Event: "E", Timestamp: time.Date(2024, 6, 3, 12, 0, 0, 0, time.UTC)}
		if err := s.Enqueue(msg); err != nil {
			t.Fatal(err)
		}
		want, _ := MarshalMessage(msg)
		if got := out.String(); got != string(want)+"\n" {
			t.Errorf("wrote %q, want %q", got, string(want)+"\n")
		}
		if !strings.Contains(out.String(), `"type":"track"`) {
			t.Errorf("the line lacks the type analytics-go sets: %s", out.String())
		}
		if err := s.Enqueue(analytics.Track{MessageId: "m-2", Event: "E"}); err == nil {
			t.Error("an invalid message (no userId) was accepted")
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Enqueue(msg); !errors.Is(err, analytics.ErrClosed) {
			t.Errorf("Enqueue after Close: %v, want ErrClosed", err)
		}
		if cb.success != 1 || cb.failure != 0 {
			t.Errorf("callbacks: %d successes, %d failures; want 1 success", cb.success, cb.failure)
		}
	})
}

type recordingCallback struct {
	mu               sync.Mutex
	success, failure int
	errs             []error
}

func (c *recordingCallback) Success(analytics.Message) {
	c.mu.Lock()
	c.success++
	c.mu.Unlock()
}

func (c *recordingCallback) Failure(_ analytics.Message, err error) {
	c.mu.Lock()
	c.failure++
	c.errs = append(c.errs, err)
	c.mu.Unlock()
}
