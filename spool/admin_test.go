package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// scanAll returns every record of state, through Scan.
func scanAll(t testing.TB, s *Spool, state State) []Record {
	t.Helper()
	var out []Record
	err := s.Scan([]State{state}, 0, func(st State, r Record) (bool, error) {
		if st != state {
			return false, fmt.Errorf("Scan of %v passed a record as %v", state, st)
		}
		out = append(out, r)
		return true, nil
	})
	if err != nil {
		t.Fatalf("Scan(%v): %v", state, err)
	}
	return out
}

type kv struct{ k, v []byte }

// rawBucket returns the stored keys and values of a bucket, in order.
func rawBucket(t testing.TB, s *Spool, bucket []byte) []kv {
	t.Helper()
	var out []kv
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			out = append(out, kv{append([]byte(nil), k...), append([]byte(nil), v...)})
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// setVersionByte overwrites the first byte of a stored record, keeping its
// length: 9 makes it unreadable, recordVersion repairs it (the checked
// cleanup needs every record readable).
func setVersionByte(t testing.TB, s *Spool, bucket []byte, id uint64, b byte) {
	t.Helper()
	err := s.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(bucket)
		v := append([]byte(nil), bk.Get(itob(id))...)
		if len(v) == 0 {
			return fmt.Errorf("record %d is not in %s", id, bucket)
		}
		v[0] = b
		return bk.Put(itob(id), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// importAll imports recs in chunks of 1,000, as `spool import` does.
func importAll(t testing.TB, s *Spool, state State, recs []Record) []uint64 {
	t.Helper()
	var out []uint64
	for len(recs) > 0 {
		n := min(len(recs), 1000)
		res, err := s.Import(state, recs[:n])
		if err != nil {
			t.Fatalf("Import: %v", err)
		}
		out = append(out, res.IDs...)
		recs = recs[n:]
	}
	return out
}

// deadRecords builds n dead-letter records with ids 1..n and varied
// attempts, for Import.
func deadRecords(n int, at time.Time) []Record {
	recs := make([]Record, n)
	for i := range recs {
		id := uint64(i + 1)
		recs[i] = Record{
			ID: id, Kind: KindSegment, ReceivedAt: at, Attempts: uint32(i % 20), LastAttempt: at.Add(time.Minute),
			LastError: "HTTP 400", MessageID: fmt.Sprintf("m%d", id), Event: []byte(`{"type":"track"}`),
		}
	}
	return recs
}

func TestSpool_Scan(t *testing.T) {
	setup := func(t *testing.T) (*Spool, []uint64) {
		clk := newClock()
		s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
		var es []Entry
		for i := range 50 {
			es = append(es, entry(i, clk.Now().Add(time.Duration(i)*time.Second)))
		}
		all := mustAppend(t, s, es...).IDs
		for _, id := range all[45:] {
			if err := s.Dead(id, "HTTP 400"); err != nil {
				t.Fatal(err)
			}
		}
		return s, all
	}

	t.Run("snapshot", func(t *testing.T) {
		s, all := setup(t)
		before := readAll(t, s, false)
		var got []Record
		err := s.Scan([]State{StatePending}, 0, func(_ State, r Record) (bool, error) {
			if len(got) == 0 {
				// Change the spool while the scan is open: these commits go
				// through (readers do not block them) but the scan goes on
				// seeing the spool as it was.
				w := async(func() error {
					if err := s.Ack(all[10:20]); err != nil {
						return err
					}
					if err := s.Fail(all[30:35], "HTTP 500"); err != nil {
						return err
					}
					if err := s.Dead(all[40], "gone"); err != nil {
						return err
					}
					_, err := s.Append([]Entry{entry(100, time.Now()), entry(101, time.Now())})
					return err
				})
				if err := await(t, w); err != nil {
					return false, err
				}
			}
			got = append(got, r)
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, before) {
			t.Fatalf("Scan saw %d records %v; the snapshot at its start had %v", len(got), ids(got), ids(before))
		}
		after := scanAll(t, s, StatePending)
		if len(after) != 45-10-1+2 || after[30-10].Attempts != 1 {
			t.Fatalf("a new Scan does not see the changes: %v", ids(after))
		}
	})

	t.Run("from an id, early stop, error", func(t *testing.T) {
		s, all := setup(t)
		var got []uint64
		err := s.Scan([]State{StatePending}, all[4], func(_ State, r Record) (bool, error) {
			got = append(got, r.ID)
			return len(got) < 3, nil
		})
		if err != nil || !slices.Equal(got, all[5:8]) {
			t.Fatalf("Scan after %d stopping at the third: %v, %v; want %v", all[4], got, err, all[5:8])
		}
		boom := errors.New("boom")
		calls := 0
		err = s.Scan([]State{StatePending}, 0, func(State, Record) (bool, error) {
			calls++
			if calls == 2 {
				return true, boom
			}
			return true, nil
		})
		if !errors.Is(err, boom) || calls != 2 {
			t.Fatalf("Scan whose fn fails on the second record: %v after %d calls", err, calls)
		}
		calls = 0
		for _, after := range []uint64{all[49], math.MaxUint64} {
			if err := s.Scan([]State{StateDead}, after, func(State, Record) (bool, error) { calls++; return true, nil }); err != nil || calls != 0 {
				t.Fatalf("Scan after %d: %d calls, %v", after, calls, err)
			}
		}
	})

	t.Run("several states, one snapshot", func(t *testing.T) {
		s, all := setup(t)
		type seen struct {
			st State
			id uint64
		}
		var want []seen
		for _, id := range all[:45] {
			want = append(want, seen{StatePending, id})
		}
		for _, id := range all[45:] {
			want = append(want, seen{StateDead, id})
		}
		var got []seen
		err := s.Scan([]State{StatePending, StateDead}, 0, func(st State, r Record) (bool, error) {
			if len(got) == 0 {
				// Once the scan is open, a dead letter is retried and a
				// record not yet reached dies: scanned state by state in
				// two transactions, the first would be missed and the
				// second seen twice.
				w := async(func() error {
					if moved, _, err := s.Retry(all[45:46]); err != nil || moved != 1 {
						return fmt.Errorf("Retry: %d moved, %v", moved, err)
					}
					return s.Dead(all[44], "gone")
				})
				if err := await(t, w); err != nil {
					return false, err
				}
			}
			got = append(got, seen{st, r.ID})
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Scan(pending, dead) saw %v,\nwant the snapshot at its start: %v", got, want)
		}

		// In the order given, after applying to each state; false stops it all.
		got = nil
		err = s.Scan([]State{StateDead, StatePending}, all[43], func(st State, r Record) (bool, error) {
			got = append(got, seen{st, r.ID})
			return true, nil
		})
		wantRev := []seen{{StateDead, all[44]}}
		for _, id := range all[46:] {
			wantRev = append(wantRev, seen{StateDead, id})
		}
		wantRev = append(wantRev, seen{StatePending, all[45]})
		if err != nil || !slices.Equal(got, wantRev) {
			t.Fatalf("Scan(dead, pending) after %d = %v, %v; want %v", all[43], got, err, wantRev)
		}
		got = nil
		err = s.Scan([]State{StatePending, StateDead}, 0, func(st State, r Record) (bool, error) {
			got = append(got, seen{st, r.ID})
			return r.ID != all[2], nil
		})
		if err != nil || len(got) != 3 || got[2] != (seen{StatePending, all[2]}) {
			t.Fatalf("Scan stopped by fn in the first state went on: %v, %v", got, err)
		}
	})

	t.Run("dead", func(t *testing.T) {
		s, all := setup(t)
		got := scanAll(t, s, StateDead)
		if !slices.Equal(ids(got), all[45:]) || got[0].LastError != "HTTP 400" || got[0].Attempts != 1 {
			t.Fatalf("Scan(dead) = %+v", got)
		}
		if !reflect.DeepEqual(got, readAll(t, s, true)) {
			t.Fatal("Scan(dead) and ReadDead disagree")
		}
	})

	t.Run("unreadable", func(t *testing.T) {
		s, all := setup(t)
		setVersionByte(t, s, bucketPending, all[2], 9)
		got := scanAll(t, s, StatePending)
		if len(got) != 45 || !reflect.DeepEqual(got[2], Record{ID: all[2], Unreadable: got[2].Unreadable}) ||
			!strings.Contains(got[2].Unreadable, "format version 9") || got[3].Unreadable != "" {
			t.Fatalf("Scan with an unreadable record: %+v", got[:4])
		}
		setVersionByte(t, s, bucketPending, all[2], recordVersion)
	})

	t.Run("state", func(t *testing.T) {
		s, _ := setup(t)
		calls := 0
		for _, states := range [][]State{{7}, {StatePending, 7}} {
			if err := s.Scan(states, 0, func(State, Record) (bool, error) { calls++; return true, nil }); err == nil || calls != 0 {
				t.Fatalf("Scan(%v) with an unknown state: %v after %d calls", states, err, calls)
			}
		}
		if err := s.Scan(nil, 0, func(State, Record) (bool, error) { calls++; return true, nil }); err != nil || calls != 0 {
			t.Fatalf("Scan of no states: %v after %d calls", err, calls)
		}
		for st, want := range map[State]string{StatePending: "pending", StateDead: "dead", 7: "State(7)"} {
			if st.String() != want {
				t.Errorf("State(%d).String() = %q, want %q", st, st.String(), want)
			}
		}
	})
}

// TestSpool_ScanDoesNotBlockCommits: while a Scan holds its read transaction
// open, appends that grow the file far beyond its size at the start still
// commit (bbolt would otherwise have to remap the file, which waits for
// every reader).
func TestSpool_ScanDoesNotBlockCommits(t *testing.T) {
	s := openTest(t, Options{})
	mustAppend(t, s, entry(0, time.Now()))
	st0, _ := s.Stats()
	dataSize := func() int64 { // bbolt's high-water mark
		var n int64
		_ = s.db.View(func(tx *bolt.Tx) error { n = tx.Size(); return nil })
		return n
	}
	data0 := dataSize()
	inside, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	letGo := func() { once.Do(func() { close(release) }) }
	defer letGo()
	scan := async(func() error {
		return s.Scan([]State{StatePending}, 0, func(State, Record) (bool, error) {
			close(inside)
			<-release
			return false, nil
		})
	})
	<-inside
	const n, size = 96, 256 << 10 // 24 MiB: past bbolt's first growth step of 16 MiB
	appends := async(func() error {
		for i := range n {
			e := entry(i+1, time.Now())
			e.Event = bytes.Repeat([]byte{'x'}, size)
			if _, err := s.Append([]Entry{e}); err != nil {
				return err
			}
		}
		return nil
	})
	select {
	case err := <-appends:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		letGo()
		<-appends
		t.Fatal("appends were held up while a Scan was open")
	}
	// Without a large initial mapping bbolt maps 32 KiB to start with and
	// must remap as the data outgrows it.
	st1, _ := s.Stats()
	if data1 := dataSize(); data1 < data0+n*size || st1.FileSize < st0.FileSize+n*size/2 {
		t.Fatalf("the data grew from %d to only %d bytes, the file from %d to %d: not enough to show anything", data0, data1, st0.FileSize, st1.FileSize)
	}
	select {
	case err := <-scan:
		t.Fatalf("the Scan ended before it was let go: %v", err)
	default:
	}
	letGo()
	if err := await(t, scan); err != nil {
		t.Fatal(err)
	}
}

func TestSpool_Retry(t *testing.T) {
	clk := newClock()
	s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
	l := watchCommits(s)
	var es []Entry
	for i := range 10 {
		es = append(es, entry(i, clk.Now()))
	}
	all := mustAppend(t, s, es...).IDs
	if err := s.Fail(all[3:4], "HTTP 500"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	for _, id := range []uint64{all[3], all[5], all[7]} {
		if err := s.Dead(id, "HTTP 400"); err != nil {
			t.Fatal(err)
		}
	}
	newer := mustAppend(t, s, entry(100, clk.Now())).IDs[0]
	was, _, err := s.Get(all[3])
	if err != nil || was.Attempts != 2 {
		t.Fatalf("dead record %+v, %v", was, err)
	}

	moved, missing, err := s.Retry([]uint64{all[3], all[5], all[0], 999, all[3]})
	if err != nil || moved != 2 || !slices.Equal(missing, []uint64{all[0], 999, all[3]}) {
		t.Fatalf("Retry = %d, %v, %v; want 2 moved, missing [%d 999 %d]", moved, missing, err, all[0], all[3])
	}
	r, dead, err := s.Get(all[3])
	if err != nil || dead || !reflect.DeepEqual(r, was) {
		t.Fatalf("retried record: dead %v, %+v, %v; want it pending as it was: %+v", dead, r, err, was)
	}
	// FIFO: the retried records go out in their old places, before newer.
	if first := ids(readPending(t, s, 0, 4)); !slices.Equal(first, all[:4]) {
		t.Fatalf("ReadPending after Retry starts %v, want %v", first, all[:4])
	}
	if p := ids(readAll(t, s, false)); p[len(p)-1] != newer || len(p) != 10 {
		t.Fatalf("pending after Retry: %v", p)
	}
	if d := ids(readAll(t, s, true)); !slices.Equal(d, all[7:8]) {
		t.Fatalf("dead after Retry: %v", d)
	}
	st, _ := s.Stats()
	if want := [AttemptBuckets]int64{8, 1, 1}; st.Attempts != want || st.Dead != 1 || st.Pending != 10 {
		t.Fatalf("Stats after Retry: %d pending, %d dead, attempts %v; want 10, 1, %v", st.Pending, st.Dead, st.Attempts, want)
	}
	assertCounters(t, s)

	n := l.n()
	for _, ids := range [][]uint64{nil, {999, all[0]}} {
		moved, missing, err := s.Retry(ids)
		if err != nil || moved != 0 || !slices.Equal(missing, ids) {
			t.Fatalf("Retry(%v) = %d, %v, %v", ids, moved, missing, err)
		}
	}
	if l.n() != n {
		t.Errorf("a Retry that moved nothing committed (%d commits)", l.n()-n)
	}

	// An unreadable dead letter stays where it is.
	setVersionByte(t, s, bucketDead, all[7], 9)
	if moved, missing, err := s.Retry([]uint64{all[7]}); err != nil || moved != 0 || !slices.Equal(missing, all[7:8]) {
		t.Fatalf("Retry of an unreadable record = %d, %v, %v", moved, missing, err)
	}
	if d := ids(readAll(t, s, true)); !slices.Equal(d, all[7:8]) {
		t.Fatalf("dead after Retry of an unreadable record: %v", d)
	}
	setVersionByte(t, s, bucketDead, all[7], recordVersion)
}

func readPending(t testing.TB, s *Spool, after uint64, limit int) []Record {
	t.Helper()
	rs, err := s.ReadPending(after, limit)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestSpool_RetryWhere(t *testing.T) {
	t.Run("chunks, ingest goes on between them", func(t *testing.T) {
		s := openTest(t, Options{})
		l := watchCommits(s)
		const n = 12000 // a third of the records match: four chunks
		importAll(t, s, StateDead, deadRecords(n, time.Now()))
		start := l.n()

		h := make(chan struct{})
		l.mu.Lock()
		l.hold = h // park the loop in the commit of the first chunk
		l.mu.Unlock()
		var looked atomic.Int64
		var moved int
		retry := async(func() error {
			var err error
			moved, err = s.RetryWhere(func(r Record) bool {
				looked.Add(1)
				return r.ID%3 == 0
			})
			return err
		})
		<-l.held
		app := async(func() error {
			_, err := s.Append([]Entry{entry(1, time.Now())})
			return err
		})
		waitQueued(t, s, 1)
		close(h)
		if err := await(t, app); err != nil {
			t.Fatal(err)
		}
		if err := await(t, retry); err != nil {
			t.Fatal(err)
		}
		if moved != n/3 || looked.Load() != n {
			t.Fatalf("RetryWhere moved %d (want %d), looked at %d (want %d)", moved, n/3, looked.Load(), n)
		}
		var chunks []int // commit indexes
		appendAt := -1
		for i, g := range l.since(start) {
			if g.entries > whereChunk+1 {
				t.Fatalf("a commit of RetryWhere carried %d entries, more than a chunk of %d: %v", g.entries, whereChunk, l.since(start))
			}
			if g.entries >= whereChunk {
				chunks = append(chunks, i)
			}
			if g.entries%whereChunk == 1 {
				appendAt = i
			}
		}
		if want := n / 3 / whereChunk; len(chunks) != want {
			t.Fatalf("RetryWhere committed %d chunks for %d matches, want %d: %v", len(chunks), n/3, want, l.since(start))
		}
		if appendAt < 0 || appendAt >= chunks[len(chunks)-1] {
			t.Fatalf("the Append committed at %d, not before the last chunk (%v): it waited for the whole RetryWhere", appendAt, chunks)
		}
		p := readAll(t, s, false)
		if len(p) != n/3+1 || p[0].ID != 3 || p[len(p)-2].ID != n || p[len(p)-1].ID != n+1 {
			t.Fatalf("pending after RetryWhere: %d records, %v...", len(p), ids(p[:3]))
		}
		for _, r := range p[:len(p)-1] {
			if r.ID%3 != 0 || r.Attempts != uint32((r.ID-1)%20) || r.LastError != "HTTP 400" {
				t.Fatalf("retried record %+v", r)
			}
		}
		if st, _ := s.Stats(); st.Dead != n-n/3 {
			t.Fatalf("%d dead, want %d", st.Dead, n-n/3)
		}
		// Nothing left to match: no commit at all.
		c := l.n()
		if moved, err := s.RetryWhere(func(r Record) bool { return r.ID%3 == 0 }); err != nil || moved != 0 {
			t.Fatalf("second RetryWhere: %d, %v", moved, err)
		}
		if l.n() != c {
			t.Errorf("a RetryWhere that moved nothing committed %d times", l.n()-c)
		}
	})

	t.Run("nil matches all, unreadable records stay", func(t *testing.T) {
		s := openTest(t, Options{})
		importAll(t, s, StateDead, deadRecords(5, time.Now()))
		setVersionByte(t, s, bucketDead, 2, 9)
		var unreadable []uint64
		moved, err := s.RetryWhere(func(r Record) bool {
			if r.Unreadable != "" {
				unreadable = append(unreadable, r.ID)
			}
			return true
		})
		if err != nil || moved != 4 || !slices.Equal(unreadable, []uint64{2}) {
			t.Fatalf("RetryWhere = %d, %v; unreadable passed: %v", moved, err, unreadable)
		}
		if d := ids(readAll(t, s, true)); !slices.Equal(d, []uint64{2}) {
			t.Fatalf("dead after RetryWhere: %v, want the unreadable one", d)
		}
		setVersionByte(t, s, bucketDead, 2, recordVersion)
		if moved, err := s.RetryWhere(nil); err != nil || moved != 1 {
			t.Fatalf("RetryWhere(nil) = %d, %v", moved, err)
		}
		if st, _ := s.Stats(); st.Dead != 0 || st.Pending != 5 {
			t.Fatalf("after RetryWhere(nil): %+v", st)
		}
	})

	t.Run("a panicking match", func(t *testing.T) {
		s := openTest(t, Options{})
		const n = 3 * whereChunk
		importAll(t, s, StateDead, deadRecords(n, time.Now()))
		recs := deadRecords(n, time.Now())
		for i := range recs {
			recs[i].ID, recs[i].MessageID = 0, recs[i].MessageID+"-p" // n+1..2n
		}
		importAll(t, s, StatePending, recs)
		l := watchCommits(s)
		moved, err := s.RetryWhere(func(r Record) bool {
			if r.ID == n-10 { // in the last chunk
				panic("boom")
			}
			return true
		})
		if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), fmt.Sprint(n-10)) || moved != 0 {
			t.Fatalf("RetryWhere with a panicking match = %d, %v", moved, err)
		}
		deleted, err := s.DeleteWhere(StatePending, func(r Record) bool {
			if r.ID == n+5 {
				panic("bang")
			}
			return true
		})
		if err == nil || !strings.Contains(err.Error(), "bang") || deleted != 0 {
			t.Fatalf("DeleteWhere with a panicking match = %d, %v", deleted, err)
		}
		if st, _ := s.Stats(); st.Dead != n || st.Pending != n || l.n() != 0 {
			t.Fatalf("a match that panicked left %d dead, %d pending (want %d each) after %d commits", st.Dead, st.Pending, n, l.n())
		}
		mustAppend(t, s, entry(1, time.Now()))
	})
}

// TestSpool_WhereMatchOutsideCommitLoop: match of RetryWhere and DeleteWhere
// runs before anything is submitted, on the caller's goroutine: a slow match
// (parsing large events) holds up no Append. What it is run over is the
// snapshot at the start, so records that arrive meanwhile are not touched.
func TestSpool_WhereMatchOutsideCommitLoop(t *testing.T) {
	for _, state := range []State{StateDead, StatePending} {
		t.Run(state.String(), func(t *testing.T) {
			clk := newClock()
			s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
			all := importAll(t, s, state, deadRecords(10, clk.Now()))
			inside, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			letGo := func() { once.Do(func() { close(release) }) }
			defer letGo()
			match := func(r Record) bool {
				if r.ID == all[0] {
					close(inside)
					<-release
				}
				return r.ID%2 == 1
			}
			var n int
			where := async(func() error {
				var err error
				if state == StateDead {
					n, err = s.RetryWhere(match)
				} else {
					n, err = s.DeleteWhere(StatePending, match)
				}
				return err
			})
			<-inside
			var late uint64
			app := async(func() error {
				res, err := s.Append([]Entry{entry(1, clk.Now())})
				late = res.IDs[0]
				if err == nil && state == StateDead {
					err = s.Dead(late, "x")
				}
				return err
			})
			select {
			case err := <-app:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				letGo()
				t.Fatal("an Append waited for match")
			}
			letGo()
			if err := await(t, where); err != nil || n != 5 {
				t.Fatalf("%v where: %d, %v; want 5", state, n, err)
			}
			if late%2 != 1 {
				t.Fatalf("the late record got even id %d: the test shows nothing", late)
			}
			if r, dead, err := s.Get(late); err != nil || dead != (state == StateDead) {
				t.Fatalf("the record that arrived while match ran: dead %v, %v", dead, err)
			} else if r.MessageID != "msg-1" {
				t.Fatalf("late record %+v", r)
			}
		})
	}
}

// TestSpool_WhereRechecksState: the ids RetryWhere and DeleteWhere
// collected are acted on only if still in the bucket of that state when
// their chunk commits. A dead letter retried meanwhile is not deleted from
// pending by DeleteWhere(StateDead).
func TestSpool_WhereRechecksState(t *testing.T) {
	s := openTest(t, Options{})
	l := watchCommits(s)
	const n = 2*whereChunk + whereChunk/2
	importAll(t, s, StateDead, deadRecords(n, time.Now()))
	got, err := s.matching(StateDead, nil)
	if err != nil || len(got) != n {
		t.Fatalf("matching: %d ids, %v", len(got), err)
	}
	retried, gone := got[whereChunk+7], got[3]
	if moved, _, err := s.Retry([]uint64{retried}); err != nil || moved != 1 {
		t.Fatalf("Retry: %d, %v", moved, err)
	}
	if deleted, _, err := s.Delete([]uint64{gone}); err != nil || deleted != 1 {
		t.Fatalf("Delete: %d, %v", deleted, err)
	}
	start := l.n()
	deleted, err := s.deleteIDs(StateDead, got)
	if err != nil || deleted != n-2 {
		t.Fatalf("deleteIDs(dead) = %d, %v; want %d", deleted, err, n-2)
	}
	if g := l.since(start); !slices.Equal(g, []commitGroup{{1, whereChunk}, {1, whereChunk}, {1, whereChunk / 2}}) {
		t.Fatalf("deleteIDs of %d ids committed %v, want chunks of %d", n, g, whereChunk)
	}
	if p := ids(readAll(t, s, false)); !slices.Equal(p, []uint64{retried}) {
		t.Fatalf("pending after deleteIDs(dead): %v; the retried record %d must survive", p, retried)
	}
	if st, _ := s.Stats(); st.Dead != 0 || st.Pending != 1 {
		t.Fatalf("Stats: %+v", st)
	}

	// And the other way: a record gone from dead is not retried (nor
	// counted), and one deleted from pending is not resurrected.
	importAll(t, s, StateDead, deadRecords(5, time.Now()))
	d := ids(readAll(t, s, true))
	if deleted, _, err := s.Delete(d[1:2]); err != nil || deleted != 1 {
		t.Fatal(deleted, err)
	}
	if moved, _, err := s.Retry(d[2:3]); err != nil || moved != 1 {
		t.Fatal(moved, err)
	}
	if err := s.Ack(d[2:3]); err != nil {
		t.Fatal(err)
	}
	moved, err := s.inChunks(StateDead, d, retryOne)
	if err != nil || moved != 3 {
		t.Fatalf("inChunks(retry) = %d, %v; want 3", moved, err)
	}
	if p := ids(readAll(t, s, false)); !slices.Equal(p, []uint64{d[0], d[3], d[4], retried}) || retried < d[4] {
		t.Fatalf("pending after the retry: %v", p)
	}
}

func TestSpool_Delete(t *testing.T) {
	clk := newClock()
	s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
	l := watchCommits(s)
	var es []Entry
	for i := range 6 {
		es = append(es, entry(i, clk.Now()))
	}
	all := mustAppend(t, s, es...).IDs
	if err := s.Fail(all[1:2], "HTTP 500"); err != nil {
		t.Fatal(err)
	}
	for _, id := range all[2:4] {
		if err := s.Dead(id, "HTTP 400"); err != nil {
			t.Fatal(err)
		}
	}
	deleted, missing, err := s.Delete([]uint64{all[1], all[2], 999, all[1]})
	if err != nil || deleted != 2 || !slices.Equal(missing, []uint64{999, all[1]}) {
		t.Fatalf("Delete = %d, %v, %v; want 2, [999 %d]", deleted, missing, err, all[1])
	}
	if p, d := ids(readAll(t, s, false)), ids(readAll(t, s, true)); !slices.Equal(p, []uint64{all[0], all[4], all[5]}) || !slices.Equal(d, all[3:4]) {
		t.Fatalf("after Delete: pending %v, dead %v", p, d)
	}
	st, _ := s.Stats()
	if want := [AttemptBuckets]int64{3}; st.Pending != 3 || st.Dead != 1 || st.Attempts != want || st.DedupKeys != 6 {
		t.Fatalf("Stats after Delete: %+v", st)
	}
	assertCounters(t, s)
	// The dedup key outlives the record.
	if res := mustAppend(t, s, es[1]); !res.Duplicate[0] {
		t.Fatal("an entry whose record was deleted is no longer a repeat")
	}
	n := l.n()
	if deleted, missing, err := s.Delete([]uint64{999}); err != nil || deleted != 0 || !slices.Equal(missing, []uint64{999}) {
		t.Fatalf("Delete of an unknown id = %d, %v, %v", deleted, missing, err)
	}
	if l.n() != n {
		t.Error("a Delete that removed nothing committed")
	}
}

func TestSpool_DeleteWhere(t *testing.T) {
	s := openTest(t, Options{})
	l := watchCommits(s)
	const n = 6000
	recs := deadRecords(n, time.Now())
	importAll(t, s, StatePending, recs)
	dead := deadRecords(10, time.Now())
	for i := range dead {
		dead[i].MessageID += "-dead" // not repeats of the pending ones; renumbered n+1..
	}
	importAll(t, s, StateDead, dead)
	start := l.n()
	deleted, err := s.DeleteWhere(StatePending, func(r Record) bool { return r.Attempts >= 3 })
	if want := n - n/20*3; err != nil || deleted != want {
		t.Fatalf("DeleteWhere(pending, attempts >= 3) = %d, %v; want %d", deleted, err, want)
	}
	var want []commitGroup
	for left := n - n/20*3; left > 0; left -= whereChunk {
		want = append(want, commitGroup{1, min(left, whereChunk)})
	}
	if g := l.since(start); !slices.Equal(g, want) {
		t.Fatalf("DeleteWhere of %d records committed %v, want chunks of %d: %v", n-n/20*3, g, whereChunk, want)
	}
	for _, r := range readAll(t, s, false) {
		if r.Attempts >= 3 {
			t.Fatalf("record %d with %d attempts is still pending", r.ID, r.Attempts)
		}
	}
	st, _ := s.Stats()
	if want := [AttemptBuckets]int64{n / 20, n / 20, n / 20}; st.Attempts != want || st.Dead != 10 {
		t.Fatalf("Stats after DeleteWhere: %+v, want attempts %v", st, want)
	}
	assertCounters(t, s)

	// Unreadable records are passed too, and may go.
	d := ids(readAll(t, s, true))
	setVersionByte(t, s, bucketDead, d[4], 9)
	if deleted, err := s.DeleteWhere(StateDead, func(r Record) bool { return r.Unreadable != "" }); err != nil || deleted != 1 {
		t.Fatalf("DeleteWhere(dead, unreadable) = %d, %v", deleted, err)
	}
	if deleted, err := s.DeleteWhere(StateDead, nil); err != nil || deleted != 9 {
		t.Fatalf("DeleteWhere(dead, nil) = %d, %v", deleted, err)
	}
	if _, err := s.DeleteWhere(State(9), nil); err == nil {
		t.Fatal("DeleteWhere of an unknown state succeeded")
	}
	if st, _ := s.Stats(); st.Dead != 0 || st.DeadBytes != 0 {
		t.Fatalf("after deleting every dead record: %+v", st)
	}
}

// exportSpool builds a spool with a bit of everything in it: gaps in the
// ids, records with and without keys, failed and dead ones.
func exportSpool(t *testing.T) *Spool {
	clk := newClock()
	s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
	var es []Entry
	for i := range 40 {
		e := entry(i, clk.Now().Add(time.Duration(i)*time.Millisecond))
		if i%5 == 0 {
			e.Key = nil
		}
		es = append(es, e)
	}
	all := mustAppend(t, s, es...).IDs
	if err := s.Ack(all[30:33]); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	for i := range 3 {
		if err := s.Fail(all[i*3:20], fmt.Sprintf("HTTP 50%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []uint64{all[1], all[7], all[22], all[39]} {
		if err := s.Dead(id, "HTTP 400"); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestSpool_Import(t *testing.T) {
	t.Run("into an empty spool exports back the same", func(t *testing.T) {
		src := exportSpool(t)
		clk := newClock()
		dst := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
		for _, state := range []State{StatePending, StateDead} {
			recs := scanAll(t, src, state)
			var got []uint64
			for i := 0; i < len(recs); i += 7 {
				res, err := dst.Import(state, recs[i:min(i+7, len(recs))])
				if err != nil || res.Duplicates != 0 || res.Imported != len(res.IDs) {
					t.Fatalf("Import(%v): %+v, %v", state, res, err)
				}
				got = append(got, res.IDs...)
			}
			if !slices.Equal(got, ids(recs)) {
				t.Fatalf("Import(%v) stored under %v, want the ids kept: %v", state, got, ids(recs))
			}
			if back := scanAll(t, dst, state); !reflect.DeepEqual(back, recs) {
				t.Fatalf("Scan(%v) of the import differs from the export:\n%+v\n%+v", state, back, recs)
			}
		}
		for _, b := range [][]byte{bucketPending, bucketDead} {
			if !reflect.DeepEqual(rawBucket(t, dst, b), rawBucket(t, src, b)) {
				t.Fatalf("the %s bucket of the import is not byte for byte the export's", b)
			}
		}
		keyed := 0
		for _, r := range append(scanAll(t, src, StatePending), scanAll(t, src, StateDead)...) {
			if len(r.Key) > 0 {
				keyed++
			}
		}
		sst, _ := src.Stats()
		dst0, _ := dst.Stats()
		if dst0.Pending != sst.Pending || dst0.Dead != sst.Dead || dst0.Bytes != sst.Bytes || dst0.Attempts != sst.Attempts ||
			!dst0.OldestPending.Equal(sst.OldestPending) || dst0.DedupKeys != int64(keyed) || keyed == 0 {
			t.Fatalf("Stats of the import %+v, of the source %+v (and %d keys)", dst0, sst, keyed)
		}
		if sst.Attempts[0] == 0 || sst.Attempts[1] == 0 || sst.Attempts[2] == 0 {
			t.Fatalf("the export does not exercise the histogram: %v", sst.Attempts)
		}
		// The sequence was raised past every id stored.
		maxID := max(slices.Max(ids(scanAll(t, src, StatePending))), slices.Max(ids(scanAll(t, src, StateDead))))
		if id := mustAppend(t, dst, entry(1000, clk.Now())).IDs[0]; id <= maxID {
			t.Fatalf("Append after Import got id %d, not above the imported %d", id, maxID)
		}
		// Importing the same export again stores nothing.
		for _, state := range []State{StatePending, StateDead} {
			recs := scanAll(t, src, state)
			res, err := dst.Import(state, recs)
			if err != nil || res.Duplicates != len(recs) || res.Imported != 0 || slices.ContainsFunc(res.IDs, func(id uint64) bool { return id != 0 }) {
				t.Fatalf("second Import(%v) = %+v, %v; want all duplicates", state, res, err)
			}
		}
	})

	t.Run("colliding ids are renumbered, the sequence raised", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{Now: clk.Now})
		all := mustAppend(t, s, entry(1, clk.Now()), entry(2, clk.Now()), entry(3, clk.Now()), entry(4, clk.Now()), entry(5, clk.Now())).IDs
		if err := s.Dead(all[3], "x"); err != nil {
			t.Fatal(err)
		}
		rec := func(id uint64, attempts uint32) Record {
			return Record{ID: id, MessageID: fmt.Sprintf("imp-%d", id), Attempts: attempts, ReceivedAt: clk.Now(), Event: []byte(`{}`)}
		}
		res, err := s.Import(StatePending, []Record{rec(all[2], 3), rec(all[3], 0), rec(50, 20), rec(0, 1)})
		if want := []uint64{6, 7, 50, 51}; err != nil || !slices.Equal(res.IDs, want) || res.Imported != 4 {
			t.Fatalf("Import = %+v, %v; want ids %v", res, err, want)
		}
		if r, _, _ := s.Get(6); r.MessageID != fmt.Sprintf("imp-%d", all[2]) || r.Attempts != 3 {
			t.Fatalf("renumbered record %+v", r)
		}
		if r, _, _ := s.Get(all[2]); r.MessageID != "msg-3" {
			t.Fatalf("the record whose id collided was overwritten: %+v", r)
		}
		if id := mustAppend(t, s, entry(6, clk.Now())).IDs[0]; id != 52 {
			t.Fatalf("Append after Import got id %d, want 52", id)
		}
		st, _ := s.Stats()
		if want := [AttemptBuckets]int64{6, 1, 1, 0, 0, 1}; st.Attempts != want || st.Pending != 9 {
			t.Fatalf("Stats after Import: %+v, want attempts %v", st, want)
		}
	})

	t.Run("dedup by key", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
		first := mustAppend(t, s, Entry{Key: []byte("k1"), MessageID: "a", ReceivedAt: clk.Now(), Event: []byte(`{}`)}).IDs[0]
		rec := func(id uint64, key string) Record {
			return Record{ID: id, Key: []byte(key), MessageID: fmt.Sprintf("m%d", id), ReceivedAt: clk.Now(), Event: []byte(`{}`)}
		}
		res, err := s.Import(StatePending, []Record{rec(100, "k1"), rec(101, "k2"), rec(102, "k2")})
		if err != nil || !slices.Equal(res.Duplicate, []bool{true, false, true}) || !slices.Equal(res.IDs, []uint64{0, 101, 0}) ||
			res.Imported != 1 || res.Duplicates != 2 {
			t.Fatalf("Import = %+v, %v", res, err)
		}
		// The imported key was admitted: an Append of it is a repeat of 101.
		if a := mustAppend(t, s, Entry{Key: []byte("k2"), MessageID: "b", ReceivedAt: clk.Now(), Event: []byte(`{}`)}); !a.Duplicate[0] || a.IDs[0] != 101 {
			t.Fatalf("Append of an imported key: %+v", a)
		}
		// Past the window the key is free again, and admitted anew.
		clk.Advance(2 * time.Hour)
		res, err = s.Import(StatePending, []Record{rec(103, "k1")})
		if err != nil || res.Imported != 1 || res.IDs[0] != 103 {
			t.Fatalf("Import of an expired key = %+v, %v", res, err)
		}
		if a := mustAppend(t, s, Entry{Key: []byte("k1"), MessageID: "c", ReceivedAt: clk.Now(), Event: []byte(`{}`)}); !a.Duplicate[0] || a.IDs[0] != 103 {
			t.Fatalf("Append of a re-admitted key: %+v (first copy was %d)", a, first)
		}
		if st, _ := s.Stats(); st.DedupKeys != 2 || st.Pending != 3 {
			t.Fatalf("Stats: %+v", st)
		}
	})

	t.Run("dedup by id and messageId", func(t *testing.T) {
		s := openTest(t, Options{}) // dedup off: keys are not looked up
		recs := []Record{
			{ID: 1, MessageID: "m1", Event: []byte(`{}`)},
			{ID: 2, MessageID: "m2", Key: []byte("k2"), Event: []byte(`{}`)},
		}
		if res, err := s.Import(StatePending, recs); err != nil || res.Imported != 2 {
			t.Fatalf("Import = %+v, %v", res, err)
		}
		if _, _, err := s.Retry(nil); err != nil {
			t.Fatal(err)
		}
		if err := s.Dead(2, "x"); err != nil {
			t.Fatal(err)
		}
		res, err := s.Import(StateDead, append(recs, Record{ID: 1, MessageID: "other", Event: []byte(`{}`)}))
		if err != nil || !slices.Equal(res.Duplicate, []bool{true, true, false}) || !slices.Equal(res.IDs, []uint64{0, 0, 3}) {
			t.Fatalf("second Import = %+v, %v; want the first two duplicates, the third renumbered", res, err)
		}
		if st, _ := s.Stats(); st.Pending != 1 || st.Dead != 2 || st.DedupKeys != 0 {
			t.Fatalf("Stats: %+v", st)
		}
	})

	t.Run("all or nothing", func(t *testing.T) {
		s := openTest(t, Options{DedupWindow: time.Hour})
		good := Record{ID: 1, MessageID: "m", Key: []byte("k"), Event: []byte(`{}`)}
		for name, bad := range map[string]Record{
			"long key":   {ID: 2, MessageID: "m2", Key: bytes.Repeat([]byte{'k'}, MaxKeyLen+1), Event: []byte(`{}`)},
			"unreadable": {ID: 3, Unreadable: "record 3 is truncated"},
		} {
			if _, err := s.Import(StatePending, []Record{good, bad}); err == nil {
				t.Fatalf("Import with a record with a %s succeeded", name)
			}
		}
		if _, err := s.Import(State(5), []Record{good}); err == nil {
			t.Fatal("Import into an unknown state succeeded")
		}
		if st, _ := s.Stats(); st.Pending != 0 || st.DedupKeys != 0 {
			t.Fatalf("a refused Import stored something: %+v", st)
		}
	})
}

func TestSpool_AttemptsHistogram(t *testing.T) {
	for n, want := range map[uint32]int{0: 0, 1: 1, 2: 2, 3: 2, 4: 3, 7: 3, 8: 4, 15: 4, 16: 5, 17: 5, 1 << 31: 5, math.MaxUint32: 5} {
		if got := attemptBucket(n); got != want {
			t.Errorf("attemptBucket(%d) = %d, want %d", n, got, want)
		}
	}
	for n := range uint32(100) {
		if attemptBucket(n) != wantAttemptBucket(n) {
			t.Fatalf("attemptBucket(%d) = %d, the test helper says %d", n, attemptBucket(n), wantAttemptBucket(n))
		}
	}
	labels := []string{"0", "1", "2-3", "4-7", "8-15", "16+"}
	for i, want := range labels {
		if AttemptBucketLabel(i) != want {
			t.Errorf("AttemptBucketLabel(%d) = %q, want %q", i, AttemptBucketLabel(i), want)
		}
	}
	if AttemptBucketLabel(-1) != "" || AttemptBucketLabel(AttemptBuckets) != "" {
		t.Error("AttemptBucketLabel out of range is not empty")
	}

	clk := newClock()
	s := openTest(t, Options{Now: clk.Now})
	model := map[uint64]uint32{} // pending id -> attempts
	check := func(step string) {
		t.Helper()
		var want [AttemptBuckets]int64
		for _, a := range model {
			want[wantAttemptBucket(a)]++
		}
		st, err := s.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Attempts != want {
			t.Fatalf("after %s: Stats.Attempts %v, want %v", step, st.Attempts, want)
		}
		assertCounters(t, s)
	}
	var es []Entry
	for i := range 6 {
		es = append(es, entry(i, clk.Now()))
	}
	all := mustAppend(t, s, es...).IDs
	for _, id := range all {
		model[id] = 0
	}
	check("Append")
	for i, fails := range []int{20, 9, 5, 2, 1, 0} {
		for range fails {
			if err := s.Fail(all[i:i+1], "HTTP 500"); err != nil {
				t.Fatal(err)
			}
			model[all[i]]++
			check(fmt.Sprintf("Fail of record %d", i))
		}
	}
	if err := s.Dead(all[2], "HTTP 400"); err != nil {
		t.Fatal(err)
	}
	delete(model, all[2])
	check("Dead")
	if moved, _, err := s.Retry(all[2:3]); err != nil || moved != 1 {
		t.Fatal(moved, err)
	}
	model[all[2]] = 6
	check("Retry")
	if err := s.Dead(all[3], "HTTP 400"); err != nil {
		t.Fatal(err)
	}
	delete(model, all[3])
	if moved, err := s.RetryWhere(nil); err != nil || moved != 1 {
		t.Fatal(moved, err)
	}
	model[all[3]] = 3
	check("RetryWhere")
	if err := s.Ack(all[0:1]); err != nil {
		t.Fatal(err)
	}
	delete(model, all[0])
	check("Ack")
	if n, _, err := s.Delete(all[1:2]); err != nil || n != 1 {
		t.Fatal(n, err)
	}
	delete(model, all[1])
	check("Delete")
	res, err := s.Import(StatePending, []Record{{MessageID: "i1", Attempts: 17, Event: []byte(`{}`)}, {MessageID: "i2", Attempts: 3, Event: []byte(`{}`)}})
	if err != nil {
		t.Fatal(err)
	}
	model[res.IDs[0]], model[res.IDs[1]] = 17, 3
	check("Import")
	if n, err := s.DeleteWhere(StatePending, func(r Record) bool { return r.Attempts == 3 }); err != nil || n != 2 {
		t.Fatal(n, err)
	}
	delete(model, res.IDs[1])
	delete(model, all[3])
	check("DeleteWhere")
	s = reopen(t, s, Options{Now: clk.Now})
	check("reopen")
}

// TestSpool_FormatUpgrade: a version-1 file (counters without the attempts
// histogram) is read by computing the histogram at open. A read-only open
// keeps it in memory and does not touch the file; a read-write open writes
// format version 2 and the new counters in one go. A version-1 file with
// the longer counters (written by the builds that added the histogram but
// kept version 1) is read the same way, its histogram computed anew.
func TestSpool_FormatUpgrade(t *testing.T) {
	for _, counterLen := range []int{countersLenV1, countersLen} {
		t.Run(fmt.Sprintf("%d-byte counters", counterLen), func(t *testing.T) {
			clk := newClock()
			s := openTest(t, Options{Now: clk.Now})
			var es []Entry
			for i := range 8 {
				es = append(es, entry(i, clk.Now()))
			}
			all := mustAppend(t, s, es...).IDs
			for i, fails := range []int{1, 2, 3, 4, 9, 16} {
				for range fails {
					if err := s.Fail(all[i:i+1], "x"); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := s.Dead(all[7], "x"); err != nil {
				t.Fatal(err)
			}
			want, _ := s.Stats()
			if w := [AttemptBuckets]int64{1, 1, 2, 1, 1, 1}; want.Attempts != w {
				t.Fatalf("histogram before the downgrade %v, want %v", want.Attempts, w)
			}
			path := s.Path()
			closeChecked(t, s)
			rawMeta := func(db *bolt.DB) (format []byte, counters []byte) {
				_ = db.View(func(tx *bolt.Tx) error {
					meta := tx.Bucket(bucketMeta)
					format = append([]byte(nil), meta.Get(metaFormat)...)
					counters = append([]byte(nil), meta.Get(metaCounters)...)
					return nil
				})
				return format, counters
			}
			boltUpdate(t, path, func(tx *bolt.Tx) error {
				meta := tx.Bucket(bucketMeta)
				old := append([]byte(nil), meta.Get(metaCounters)[:counterLen]...)
				for i := countersLenV1; i < len(old); i++ {
					old[i] = 0xa5 // a histogram that must not be believed
				}
				if err := meta.Put(metaFormat, []byte{1}); err != nil {
					return err
				}
				return meta.Put(metaCounters, old)
			})

			sum := fileSHA(t, path)
			for range 2 {
				ro, err := Open(path, Options{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				st, _ := ro.Stats()
				format, c := rawMeta(ro.db)
				if err := ro.Close(); err != nil {
					t.Fatal(err)
				}
				if st.Attempts != want.Attempts || st.Pending != want.Pending || st.Dead != want.Dead || st.Bytes != want.Bytes {
					t.Fatalf("read-only open of a version-1 file: %+v, want %+v", st, want)
				}
				if !bytes.Equal(format, []byte{1}) || len(c) != counterLen || fileSHA(t, path) != sum {
					t.Fatalf("the read-only open changed the file (format %v, counters %d bytes)", format, len(c))
				}
			}

			s = openAt(t, path, Options{Now: clk.Now})
			if format, c := rawMeta(s.db); !bytes.Equal(format, []byte{FormatVersion}) || len(c) != countersLen {
				t.Fatalf("after a read-write open the format is %v and the counters %d bytes, want [%d] and %d", format, len(c), FormatVersion, countersLen)
			}
			if st, _ := s.Stats(); st.Attempts != want.Attempts {
				t.Fatalf("read-write open of a version-1 file: histogram %v, want %v", st.Attempts, want.Attempts)
			}
			assertCounters(t, s)
			if err := s.Fail(all[:1], "x"); err != nil {
				t.Fatal(err)
			}
			assertCounters(t, s)
			s = reopen(t, s, Options{Now: clk.Now})
			assertCounters(t, s)
		})
	}
}

// TestSpool_OpenReplacedFile: an Open that was waiting for the lock of a
// file that is then replaced (as Compact does) opens the new file, not the
// old one it had open.
func TestSpool_OpenReplacedFile(t *testing.T) {
	path := makeSpool(t, 3)
	other := makeSpool(t, 7)
	holder, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan string, 4)
	openedHook = func(p string) { opened <- p }
	t.Cleanup(func() { openedHook = nil })
	type result struct {
		s   *Spool
		err error
	}
	res := make(chan result, 1)
	go func() {
		s, err := Open(path, Options{LockTimeout: 30 * time.Second})
		res <- result{s, err}
	}()
	<-opened // it holds the old file and waits for its lock
	copyFile(t, other, path+".new")
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("Open never returned")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { closeChecked(t, r.s) })
	if st, _ := r.s.Stats(); st.Pending != 7 {
		t.Fatalf("Open of a file replaced while it waited holds %d records; the new file has 7, the old 3", st.Pending)
	}
}

func copyFile(t testing.TB, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestSpool_Compact(t *testing.T) {
	t.Run("shrinks and keeps everything", func(t *testing.T) {
		clk := newClock()
		opt := Options{DedupWindow: 24 * time.Hour, Now: clk.Now}
		s := openTest(t, opt)
		const n = 4000
		var es []Entry
		var last uint64
		for i := range n {
			e := entry(i, clk.Now())
			e.Event = bytes.Repeat([]byte{'e'}, 2000)
			es = append(es, e)
			if len(es) == 200 {
				last = slices.Max(mustAppend(t, s, es...).IDs)
				es = es[:0]
			}
		}
		if err := s.Fail([]uint64{10, 20, 30}, "HTTP 500"); err != nil {
			t.Fatal(err)
		}
		if err := s.Dead(40, "HTTP 400"); err != nil {
			t.Fatal(err)
		}
		// Most of it goes, the newest record included: the sequence must
		// survive on its own.
		if _, err := s.DeleteWhere(StatePending, func(r Record) bool { return r.ID%10 != 0 || r.ID == last }); err != nil {
			t.Fatal(err)
		}
		keepP, keepD := scanAll(t, s, StatePending), scanAll(t, s, StateDead)
		st0, _ := s.Stats()
		path := s.Path()
		closeChecked(t, s)
		if err := os.Chmod(path, 0o640); err != nil {
			t.Fatal(err)
		}
		fi0, _ := os.Stat(path)

		before, after, err := Compact(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		fi1, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if before != fi0.Size() || after != fi1.Size() || after > before/4 {
			t.Fatalf("Compact: %d -> %d bytes (file was %d, is %d); want it at least 4 times smaller", before, after, fi0.Size(), fi1.Size())
		}
		if fi1.Mode().Perm() != 0o640 {
			t.Errorf("compacted file mode %v, want the original's 0640", fi1.Mode().Perm())
		}
		if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the temporary file is still there: %v", err)
		}

		s = openAt(t, path, opt)
		if !reflect.DeepEqual(scanAll(t, s, StatePending), keepP) || !reflect.DeepEqual(scanAll(t, s, StateDead), keepD) {
			t.Fatal("the compacted spool does not hold the same records")
		}
		st1, _ := s.Stats()
		st0.FileSize, st1.FileSize = 0, 0
		if st1 != st0 {
			t.Fatalf("Stats after Compact %+v, before %+v", st1, st0)
		}
		assertCounters(t, s)
		// The dedup index came along, and the sequence: a deleted record's
		// key is still a repeat, and a new record gets a new id.
		res := mustAppend(t, s, entry(5, clk.Now()), entry(n+1, clk.Now()))
		if !res.Duplicate[0] || res.IDs[0] != 6 || res.Duplicate[1] || res.IDs[1] <= last {
			t.Fatalf("Append after Compact: %+v (highest id before: %d)", res, last)
		}
	})

	t.Run("refused while the spool is open", func(t *testing.T) {
		s := openTest(t, Options{})
		mustAppend(t, s, entry(1, time.Now()))
		start := time.Now()
		_, _, err := Compact(s.Path(), Options{LockTimeout: 100 * time.Millisecond})
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("Compact of an open spool: %v, want ErrLocked", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("Compact took %v to give up", took)
		}
		if _, err := os.Stat(s.Path() + ".compact"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a refused Compact left a temporary file: %v", err)
		}
		mustAppend(t, s, entry(2, time.Now()))
	})

	t.Run("leftover temporary file", func(t *testing.T) {
		path := makeSpool(t, 20)
		junk := []byte("an earlier attempt")
		if err := os.WriteFile(path+".compact", junk, 0o600); err != nil {
			t.Fatal(err)
		}
		sum := fileSHA(t, path)
		_, _, err := Compact(path, Options{})
		if err == nil || !strings.Contains(err.Error(), path+".compact") || !strings.Contains(err.Error(), "remove it") {
			t.Fatalf("Compact beside a leftover temporary file: %v", err)
		}
		if fileSHA(t, path) != sum {
			t.Fatal("the refused Compact changed the spool")
		}
		if b, _ := os.ReadFile(path + ".compact"); !bytes.Equal(b, junk) {
			t.Fatal("the refused Compact touched the leftover file")
		}
	})

	t.Run("a failure leaves the original", func(t *testing.T) {
		path := makeSpool(t, 50)
		sum := fileSHA(t, path)
		boom := errors.New("boom")
		t.Cleanup(func() { compactFault = nil })
		for _, step := range []string{"copied", "synced"} {
			compactFault = func(s string) error {
				if s == step {
					return boom
				}
				return nil
			}
			if _, _, err := Compact(path, Options{}); !errors.Is(err, boom) || !strings.Contains(err.Error(), path) {
				t.Fatalf("Compact failing at %q: %v", step, err)
			}
			if fileSHA(t, path) != sum {
				t.Fatalf("Compact failing at %q changed the spool", step)
			}
			if _, err := os.Stat(path + ".compact"); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("Compact failing at %q left its temporary file: %v", step, err)
			}
		}
		compactFault = nil
		if _, _, err := Compact(path, Options{}); err != nil {
			t.Fatalf("Compact after the failures: %v", err)
		}
		s := openAt(t, path, Options{})
		if st, _ := s.Stats(); st.Pending != 50 {
			t.Fatalf("%d records after Compact, want 50", st.Pending)
		}
	})

	t.Run("not a spool", func(t *testing.T) {
		dir := t.TempDir()
		missing := filepath.Join(dir, "missing.db")
		if _, _, err := Compact(missing, Options{}); err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("Compact of a missing file: %v", err)
		}
		if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("Compact of a missing file created it")
		}
		other := filepath.Join(dir, "other.db")
		boltUpdate(t, other, func(tx *bolt.Tx) error {
			_, err := tx.CreateBucket([]byte("foo"))
			return err
		})
		sum := fileSHA(t, other)
		if _, _, err := Compact(other, Options{}); err == nil || !strings.Contains(err.Error(), "not a gwenrelay spool") {
			t.Fatalf("Compact of a bbolt file that is not a spool: %v", err)
		}
		if fileSHA(t, other) != sum {
			t.Fatal("Compact changed a file that is not a spool")
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Fatalf("Compact left files behind: %v", entries)
		}
	})
}

func TestSpool_Ping(t *testing.T) {
	s := openTest(t, Options{})
	l := watchCommits(s)
	if err := s.Ping(5 * time.Second); err != nil {
		t.Fatalf("Ping of an idle spool: %v", err)
	}
	if n := l.n(); n != 0 {
		t.Errorf("a ping committed %d groups, want none (nothing to write)", n)
	}
	// A commit loop that is held does not answer.
	release := holdLoop(t, s, l)
	start := time.Now()
	err := s.Ping(200 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "has not answered") {
		t.Errorf("Ping of a held commit loop: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Ping gave up after %s, want about 200ms", took)
	}
	release()
	if err := s.Ping(5 * time.Second); err != nil {
		t.Errorf("Ping after the loop was released: %v", err)
	}
	// A ping that shares its group with a commit that fails (a full disk)
	// still says the loop goes round: the watchdog must not kill a relay
	// that answers 503 on a full disk.
	release = holdLoop(t, s, l)
	failed := async(func() error {
		return s.submit(&op{entries: 1, apply: func(*bolt.Tx, *counters, time.Time) error {
			return fmt.Errorf("write: %w", syscall.ENOSPC)
		}})
	})
	waitQueued(t, s, 1)
	pinged := async(func() error { return s.Ping(5 * time.Second) })
	waitQueued(t, s, 2)
	release()
	if err := await(t, failed); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("the failing op: %v, want ENOSPC", err)
	}
	if err := await(t, pinged); err != nil {
		t.Errorf("Ping in a group whose commit failed: %v, want nil", err)
	}
	s.Close()
	if err := s.Ping(time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("Ping of a closed spool: %v, want ErrClosed", err)
	}
}
