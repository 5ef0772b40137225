package spool

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// openTest opens a fresh spool in a temporary directory. Its cleanup checks
// the file (bbolt's tx.Check and the counters against a full scan) before
// closing it, and fails the test on any error.
func openTest(t testing.TB, opt Options) *Spool {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "spool.db"), opt)
}

// openAt opens the spool at path with the same checked cleanup as openTest.
func openAt(t testing.TB, path string, opt Options) *Spool {
	t.Helper()
	s, err := Open(path, opt)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if isClosed(s) {
			return // the test closed it through closeChecked, or on purpose
		}
		closeChecked(t, s)
	})
	return s
}

func isClosed(s *Spool) bool {
	s.submitMu.RLock()
	defer s.submitMu.RUnlock()
	return s.closed
}

// closeChecked runs the consistency checks and closes s.
func closeChecked(t testing.TB, s *Spool) {
	t.Helper()
	if err := s.Check(); err != nil {
		t.Errorf("Check %s: %v", s.Path(), err)
	}
	assertCounters(t, s)
	if err := s.Close(); err != nil {
		t.Errorf("Close %s: %v", s.Path(), err)
	}
}

// reopen closes s (checked) and opens its file again with opt.
func reopen(t testing.TB, s *Spool, opt Options) *Spool {
	t.Helper()
	closeChecked(t, s)
	return openAt(t, s.Path(), opt)
}

// scanCounters computes the counters from the buckets themselves (the
// attempts histogram from each decoded pending record), and checks the
// invariants the counters cannot show: every record decodes, no id is both
// pending and dead, and the dedup index and its expiry index describe the
// same keys.
func scanCounters(t testing.TB, s *Spool) counters {
	t.Helper()
	var c counters
	err := s.db.View(func(tx *bolt.Tx) error {
		pending, dead := tx.Bucket(bucketPending), tx.Bucket(bucketDead)
		for _, b := range []struct {
			bucket *bolt.Bucket
			n, sz  *int64
			hist   *[AttemptBuckets]int64
		}{{pending, &c.PendingN, &c.PendingBytes, &c.Attempts}, {dead, &c.DeadN, &c.DeadBytes, nil}} {
			err := b.bucket.ForEach(func(k, v []byte) error {
				if len(k) != 8 {
					return fmt.Errorf("record key %x is not 8 bytes", k)
				}
				r, err := decodeRecord(btoi(k), v)
				if err != nil {
					return err
				}
				*b.n++
				*b.sz += int64(len(v) + 8)
				if b.hist != nil {
					b.hist[wantAttemptBucket(r.Attempts)]++
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		err := dead.ForEach(func(k, _ []byte) error {
			if pending.Get(k) != nil {
				return fmt.Errorf("record %d is both pending and dead", btoi(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		dedup, exp := tx.Bucket(bucketDedup), tx.Bucket(bucketDedupExp)
		err = dedup.ForEach(func(k, v []byte) error {
			if len(v) != 16 {
				return fmt.Errorf("dedup value for %q is %d bytes", k, len(v))
			}
			if exp.Get(expKey(v[8:], k)) == nil {
				return fmt.Errorf("dedup key %q has no expiry index entry", k)
			}
			c.DedupN++
			return nil
		})
		if err != nil {
			return err
		}
		var nexp int64
		err = exp.ForEach(func(k, _ []byte) error {
			nexp++
			if len(k) < 9 {
				return fmt.Errorf("expiry index key %x too short", k)
			}
			if v := dedup.Get(k[8:]); v == nil || !bytes.Equal(v[8:], k[:8]) {
				return fmt.Errorf("expiry index entry %x for %q does not match the dedup entry", k[:8], k[8:])
			}
			return nil
		})
		if err != nil {
			return err
		}
		if nexp != c.DedupN {
			return fmt.Errorf("expiry index has %d entries, dedup %d", nexp, c.DedupN)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", s.Path(), err)
	}
	return c
}

// wantAttemptBucket is the Stats.Attempts bucket of n attempts, spelt out
// rather than computed as attemptBucket does.
func wantAttemptBucket(n uint32) int {
	switch {
	case n == 0:
		return 0
	case n == 1:
		return 1
	case n <= 3:
		return 2
	case n <= 7:
		return 3
	case n <= 15:
		return 4
	}
	return 5
}

// fileCounters reads the counters as committed to the meta bucket, and
// fails the test unless the file is of the current format version.
func fileCounters(t testing.TB, s *Spool) counters {
	t.Helper()
	var c counters
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if f := meta.Get(metaFormat); !bytes.Equal(f, []byte{FormatVersion}) {
			return fmt.Errorf("format version %v, want [%d]", f, FormatVersion)
		}
		var err error
		c, err = decodeCounters(meta.Get(metaCounters), FormatVersion)
		return err
	})
	if err != nil {
		t.Fatalf("read counters: %v", err)
	}
	return c
}

// assertCounters checks that the in-memory counters, the committed ones and
// Stats all agree with a full scan.
func assertCounters(t testing.TB, s *Spool) {
	t.Helper()
	truth := scanCounters(t, s)
	s.cmu.Lock()
	mem := s.counters
	s.cmu.Unlock()
	if mem != truth {
		t.Errorf("in-memory counters %+v, scan says %+v", mem, truth)
	}
	if f := fileCounters(t, s); f != truth {
		t.Errorf("committed counters %+v, scan says %+v", f, truth)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	got := counters{
		PendingN: st.Pending, PendingBytes: st.PendingBytes, DeadN: st.Dead, DeadBytes: st.DeadBytes,
		DedupN: st.DedupKeys, Attempts: st.Attempts,
	}
	if got != truth {
		t.Errorf("Stats %+v, scan says %+v", st, truth)
	}
	if st.Bytes != truth.PendingBytes+truth.DeadBytes {
		t.Errorf("Stats.Bytes = %d, want %d", st.Bytes, truth.PendingBytes+truth.DeadBytes)
	}
}

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock {
	return &clock{t: time.Date(2025, 3, 14, 9, 26, 53, 589793238, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// commitLog records every commit through the commit hook, and can park the
// commit loop inside one commit so that the ops submitted meanwhile queue up
// and are then committed as one group.
type commitLog struct {
	mu     sync.Mutex
	groups []commitGroup
	hold   chan struct{}
	held   chan struct{}
}

type commitGroup struct{ ops, entries int }

func watchCommits(s *Spool) *commitLog {
	l := &commitLog{held: make(chan struct{})}
	s.SetCommitHook(l.hook)
	return l
}

func (l *commitLog) hook(ops, entries int, _ time.Duration) {
	l.mu.Lock()
	l.groups = append(l.groups, commitGroup{ops, entries})
	h := l.hold
	l.hold = nil
	l.mu.Unlock()
	if h != nil {
		l.held <- struct{}{}
		<-h
	}
}

func (l *commitLog) n() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.groups)
}

func (l *commitLog) since(i int) []commitGroup {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]commitGroup(nil), l.groups[i:]...)
}

// holdLoop parks the commit loop inside the commit of a harmless Ack and
// returns the function that lets it go on (and checks that Ack's result).
func holdLoop(t testing.TB, s *Spool, l *commitLog) (release func()) {
	t.Helper()
	h := make(chan struct{})
	l.mu.Lock()
	l.hold = h
	l.mu.Unlock()
	errc := make(chan error, 1)
	go func() { errc <- s.Ack([]uint64{1 << 62}) }()
	<-l.held
	return func() {
		t.Helper()
		close(h)
		if err := <-errc; err != nil {
			t.Errorf("parking Ack: %v", err)
		}
	}
}

// waitQueued waits until n ops are queued for the (parked) commit loop.
func waitQueued(t testing.TB, s *Spool, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.ops) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d ops queued after 10s", len(s.ops), n)
		}
		runtime.Gosched()
	}
}

// async runs f in a goroutine; the returned channel yields its error.
func async(f func() error) <-chan error {
	c := make(chan error, 1)
	go func() { c <- f() }()
	return c
}

// await returns the error from c, failing the test if none comes within a
// generous bound (a watchdog for a lost completion, not a timing assumption).
func await(t testing.TB, c <-chan error) error {
	t.Helper()
	select {
	case err := <-c:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("operation never completed")
		return nil
	}
}

func fileSHA(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// entry builds a distinct entry numbered i.
func entry(i int, at time.Time) Entry {
	return Entry{
		Kind:       Kind(i % 2),
		Key:        []byte(fmt.Sprintf("key-%d", i)),
		MessageID:  fmt.Sprintf("msg-%d", i),
		ReceivedAt: at,
		Event:      []byte(fmt.Sprintf(`{"type":"achievement","userId":"u%d","n":%d}`, i, i)),
	}
}

func mustAppend(t testing.TB, s *Spool, es ...Entry) AppendResult {
	t.Helper()
	res, err := s.Append(es)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return res
}

func readAll(t testing.TB, s *Spool, dead bool) []Record {
	t.Helper()
	read := s.ReadPending
	if dead {
		read = s.ReadDead
	}
	rs, err := read(0, 1<<30)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return rs
}

func ids(rs []Record) []uint64 {
	out := make([]uint64, len(rs))
	for i, r := range rs {
		out[i] = r.ID
	}
	return out
}

// recordSize is what one stored record of e counts against the quota.
func recordSize(e Entry) int64 {
	r := Record{Kind: e.Kind, ReceivedAt: e.ReceivedAt, MessageID: e.MessageID, Key: e.Key, Event: e.Event}
	return int64(len(r.encode()) + 8)
}

// sameEntry reports how r differs from the entry it was appended from.
func sameEntry(r Record, e Entry) error {
	switch {
	case r.Kind != e.Kind:
		return fmt.Errorf("kind %d, want %d", r.Kind, e.Kind)
	case !r.ReceivedAt.Equal(e.ReceivedAt):
		return fmt.Errorf("receivedAt %v, want %v", r.ReceivedAt, e.ReceivedAt)
	case r.MessageID != e.MessageID:
		return fmt.Errorf("messageId %q, want %q", r.MessageID, e.MessageID)
	case !bytes.Equal(r.Key, e.Key):
		return fmt.Errorf("key %q, want %q", r.Key, e.Key)
	case !bytes.Equal(r.Event, e.Event):
		return fmt.Errorf("event %.60q (%d bytes), want %.60q (%d bytes)", r.Event, len(r.Event), e.Event, len(e.Event))
	case r.Attempts != 0 || !r.LastAttempt.IsZero() || r.LastError != "":
		return fmt.Errorf("fresh record has attempts %d, last attempt %v, error %q", r.Attempts, r.LastAttempt, r.LastError)
	}
	return nil
}

// boltUpdate edits a closed spool file with bbolt directly.
func boltUpdate(t testing.TB, path string, f func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(f); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}
