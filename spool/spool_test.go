package spool

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestSpool_Append(t *testing.T) {
	t.Run("round trip across reopen", func(t *testing.T) {
		clk := newClock()
		opt := Options{DedupWindow: time.Hour, Now: clk.Now}
		s := openTest(t, opt)
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
		binKey := []byte{0, 1, 2, 0xff, 0xfe, 0}
		want := []Entry{
			entry(1, clk.Now()),
			{Kind: KindSegment, Key: binKey, MessageID: "gwen-ünïcødé-✓", ReceivedAt: time.Date(2024, 2, 29, 23, 59, 59, 999999999, time.FixedZone("x", 3600)), Event: []byte(`{"a":1}`)},
			{Kind: KindGWEN, Key: nil, MessageID: "", ReceivedAt: time.Time{}, Event: nil},
			{Kind: KindGWEN, Key: []byte("big"), MessageID: strings.Repeat("m", 99), ReceivedAt: clk.Now().Add(time.Nanosecond), Event: big},
			{Kind: Kind(200), Key: []byte{}, MessageID: "k", ReceivedAt: time.Unix(1, 1), Event: []byte{}},
			entry(2, clk.Now()),
		}
		var got []uint64
		// Several calls of different sizes, so ids must continue across commits.
		for _, part := range [][]Entry{want[:1], want[1:4], want[4:]} {
			res := mustAppend(t, s, part...)
			if res.Duplicates != 0 || slices.Contains(res.Duplicate, true) {
				t.Fatalf("fresh entries reported as duplicates: %+v", res)
			}
			if len(res.IDs) != len(part) {
				t.Fatalf("got %d ids for %d entries", len(res.IDs), len(part))
			}
			got = append(got, res.IDs...)
		}
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Fatalf("ids not strictly increasing: %v", got)
			}
		}

		s = reopen(t, s, opt)
		rs := readAll(t, s, false)
		if !slices.Equal(ids(rs), got) {
			t.Fatalf("after reopen ids %v, want %v", ids(rs), got)
		}
		for i, r := range rs {
			if err := sameEntry(r, want[i]); err != nil {
				t.Errorf("record %d: %v", r.ID, err)
			}
			g, dead, err := s.Get(r.ID)
			if err != nil || dead {
				t.Fatalf("Get(%d) = dead %v, %v", r.ID, dead, err)
			}
			if err := sameEntry(g, want[i]); err != nil {
				t.Errorf("Get(%d): %v", r.ID, err)
			}
		}

		// Ids keep increasing after a reopen, even once everything was acked.
		more := mustAppend(t, s, entry(3, clk.Now()))
		if more.IDs[0] <= got[len(got)-1] {
			t.Fatalf("id after reopen %d, last before %d", more.IDs[0], got[len(got)-1])
		}
		last := more.IDs[0]
		if err := s.Ack(ids(readAll(t, s, false))); err != nil {
			t.Fatal(err)
		}
		s = reopen(t, s, opt)
		again := mustAppend(t, s, entry(4, clk.Now()))
		if again.IDs[0] <= last {
			t.Fatalf("id after ack-all and reopen %d, last before %d", again.IDs[0], last)
		}
	})

	t.Run("empty call commits nothing", func(t *testing.T) {
		s := openTest(t, Options{})
		l := watchCommits(s)
		res, err := s.Append(nil)
		if err != nil || len(res.IDs) != 0 {
			t.Fatalf("Append(nil) = %+v, %v", res, err)
		}
		if l.n() != 0 {
			t.Fatalf("Append(nil) committed %d times", l.n())
		}
	})

	t.Run("key too long for the dedup index is refused alone", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
		l := watchCommits(s)
		long := entry(1, clk.Now())
		long.Key = bytes.Repeat([]byte("k"), MaxKeyLen+1)
		ok := entry(2, clk.Now())
		okMax := entry(3, clk.Now())
		okMax.Key = bytes.Repeat([]byte("x"), MaxKeyLen)

		release := holdLoop(t, s, l)
		n := l.n()
		var resOK, resMax AppendResult
		errOK := async(func() (err error) { resOK, err = s.Append([]Entry{ok}); return })
		waitQueued(t, s, 1)
		errMax := async(func() (err error) { resMax, err = s.Append([]Entry{okMax}); return })
		waitQueued(t, s, 2)
		// Refused at once, or (were it queued) sharing the group with the two
		// above: wait for whichever happens.
		errLongc := async(func() error { _, err := s.Append([]Entry{entry(4, clk.Now()), long}); return err })
		var errLong error
		for got := false; !got; {
			select {
			case errLong = <-errLongc:
				got = true
			default:
				if len(s.ops) == 3 {
					release()
					errLong, got = <-errLongc, true
					release = func() {}
				}
				runtime.Gosched()
			}
		}
		release()
		if !errors.Is(errLong, ErrKeyTooLong) {
			t.Errorf("Append with a %d-byte key: %v, want ErrKeyTooLong", len(long.Key), errLong)
		}
		if err := <-errOK; err != nil {
			t.Errorf("a neighbour of the long key failed: %v", err)
		}
		if err := <-errMax; err != nil {
			t.Errorf("a key of exactly MaxKeyLen failed: %v", err)
		}
		if t.Failed() {
			t.FailNow()
		}
		if g := l.since(n); len(g) != 1 || g[0].ops != 2 {
			t.Fatalf("commits %+v, want one group of the 2 good appends", g)
		}
		if rs := readAll(t, s, false); !slices.Equal(ids(rs), []uint64{resOK.IDs[0], resMax.IDs[0]}) {
			t.Fatalf("stored %v", ids(rs))
		}
		if res := mustAppend(t, s, okMax); !res.Duplicate[0] {
			t.Fatal("a MaxKeyLen key does not dedup")
		}
	})
}

func TestSpool_GroupCommit(t *testing.T) {
	t.Run("concurrent appenders are grouped and keep their ids", func(t *testing.T) {
		const workers, each = 64, 50
		clk := newClock()
		s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
		l := watchCommits(s)
		type got struct {
			id uint64
			e  Entry
		}
		results := make([][]got, workers)
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for j := range each {
					// 1 to 3 entries a call, to mix sizes within groups.
					n := 1 + (w+j)%3
					es := make([]Entry, n)
					for k := range es {
						es[k] = entry(w*10000+j*10+k, clk.Now())
					}
					res, err := s.Append(es)
					if err != nil {
						errs <- err
						return
					}
					for k, id := range res.IDs {
						if res.Duplicate[k] {
							errs <- fmt.Errorf("worker %d: fresh entry reported duplicate", w)
							return
						}
						results[w] = append(results[w], got{id, es[k]})
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		seen := make(map[uint64]bool)
		total := 0
		for w := range results {
			for _, g := range results[w] {
				if seen[g.id] {
					t.Fatalf("id %d returned twice", g.id)
				}
				seen[g.id] = true
				total++
				r, dead, err := s.Get(g.id)
				if err != nil || dead {
					t.Fatalf("Get(%d): dead %v, %v", g.id, dead, err)
				}
				if err := sameEntry(r, g.e); err != nil {
					t.Fatalf("id %d returned to worker %d holds another record: %v", g.id, w, err)
				}
			}
		}
		st, err := s.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Pending != int64(total) || len(readAll(t, s, false)) != total {
			t.Fatalf("pending %d, want %d", st.Pending, total)
		}
		groups := l.since(0)
		ops, entries := 0, 0
		for _, g := range groups {
			ops += g.ops
			entries += g.entries
		}
		if ops != workers*each || entries != total {
			t.Fatalf("commits carried %d ops / %d entries, want %d / %d", ops, entries, workers*each, total)
		}
		if len(groups) >= workers*each {
			t.Fatalf("%d commits for %d appends: nothing was grouped", len(groups), workers*each)
		}
		t.Logf("%d appends in %d commits", workers*each, len(groups))
	})

	t.Run("a lone append commits on its own", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{Now: clk.Now})
		l := watchCommits(s)
		for i := range 20 {
			mustAppend(t, s, entry(i, clk.Now()), entry(1000+i, clk.Now()))
			// The hook runs before Append returns, so the count is exact.
			if n := l.n(); n != i+1 {
				t.Fatalf("after %d sequential appends, %d commits", i+1, n)
			}
		}
		for _, g := range l.since(0) {
			if g != (commitGroup{1, 2}) {
				t.Fatalf("sequential append committed as %+v", g)
			}
		}
	})

	t.Run("ops queued during a commit go in the next one", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{Now: clk.Now})
		l := watchCommits(s)
		release := holdLoop(t, s, l)
		n := l.n()
		var errcs []<-chan error
		for i := range 10 {
			errcs = append(errcs, async(func() error { _, err := s.Append([]Entry{entry(i, clk.Now())}); return err }))
		}
		waitQueued(t, s, 10)
		release()
		for _, c := range errcs {
			if err := <-c; err != nil {
				t.Fatal(err)
			}
		}
		if g := l.since(n); !slices.Equal(g, []commitGroup{{10, 10}}) {
			t.Fatalf("commits %+v, want one of 10 ops", g)
		}
	})

	t.Run("MaxGroup caps a group's entries", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{Now: clk.Now, MaxGroup: 10})
		l := watchCommits(s)
		release := holdLoop(t, s, l)
		n := l.n()
		sizes := []int{3, 3, 3, 25, 3}
		var errcs []<-chan error
		for i, size := range sizes {
			es := make([]Entry, size)
			for k := range es {
				es[k] = entry(i*100+k, clk.Now())
			}
			errcs = append(errcs, async(func() error { _, err := s.Append(es); return err }))
			waitQueued(t, s, i+1) // fixes the queue order
		}
		release()
		for _, c := range errcs {
			if err := <-c; err != nil {
				t.Fatal(err)
			}
		}
		// 3+3+3 fit in 10; 25 is over the cap and goes alone; then the last 3.
		want := []commitGroup{{3, 9}, {1, 25}, {1, 3}}
		if g := l.since(n); !slices.Equal(g, want) {
			t.Fatalf("commits %+v, want %+v", g, want)
		}
		if got := len(readAll(t, s, false)); got != 37 {
			t.Fatalf("%d records, want 37", got)
		}
	})
}

func TestSpool_Quota(t *testing.T) {
	ev := func(i, size int, at time.Time) Entry {
		e := entry(i, at)
		e.Event = bytes.Repeat([]byte{'x'}, size)
		return e
	}
	clk := newClock()
	one := recordSize(ev(0, 1000, clk.Now())) // all ev(i<10, 1000) have this size

	t.Run("over quota writes nothing", func(t *testing.T) {
		s := openTest(t, Options{MaxBytes: 5 * one, DedupWindow: time.Hour, Now: clk.Now})
		first := mustAppend(t, s, ev(0, 1000, clk.Now()), ev(1, 1000, clk.Now()), ev(2, 1000, clk.Now()))
		before := scanCounters(t, s)
		if s.OverQuota() {
			t.Fatal("OverQuota at 3/5")
		}
		// Three more: the first two would fit, the third not; none is written.
		over := []Entry{ev(3, 1000, clk.Now()), ev(4, 1000, clk.Now()), ev(5, 1000, clk.Now())}
		res, err := s.Append(over)
		if !errors.Is(err, ErrOverQuota) {
			t.Fatalf("Append over quota: %v, want ErrOverQuota", err)
		}
		if len(res.IDs) != 0 {
			t.Fatalf("refused Append returned ids %v", res.IDs)
		}
		if after := scanCounters(t, s); after != before {
			t.Fatalf("refused Append changed the contents: %+v -> %+v", before, after)
		}
		if !slices.Equal(ids(readAll(t, s, false)), first.IDs) {
			t.Fatal("refused Append changed the pending records")
		}
		assertCounters(t, s)

		// Its dedup keys were not admitted either.
		if err := s.Ack(first.IDs[:1]); err != nil {
			t.Fatal(err)
		}
		res = mustAppend(t, s, over...)
		if res.Duplicates != 0 {
			t.Fatalf("keys of a refused Append were remembered: %+v", res)
		}
		if !s.OverQuota() {
			t.Fatal("OverQuota false at 5/5")
		}
		st, _ := s.Stats()
		if st.Bytes != 5*one {
			t.Fatalf("Bytes = %d, want %d", st.Bytes, 5*one)
		}

		// At the quota, an Append of nothing new (all duplicates) still succeeds.
		dup := mustAppend(t, s, over[0], over[2])
		if dup.Duplicates != 2 {
			t.Fatalf("duplicates at quota: %+v", dup)
		}
		if _, err := s.Append([]Entry{ev(6, 1, clk.Now())}); !errors.Is(err, ErrOverQuota) {
			t.Fatalf("1 byte over quota: %v", err)
		}
		// Dead records count against the quota too.
		if err := s.Dead(first.IDs[1], "poison"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Append([]Entry{ev(7, 1000, clk.Now())}); !errors.Is(err, ErrOverQuota) {
			t.Fatalf("Append at quota after Dead: %v", err)
		}
		if err := s.Ack(append(first.IDs[2:], res.IDs[0])); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Append([]Entry{ev(7, 1000, clk.Now())}); err != nil {
			t.Fatalf("Append after Ack freed room: %v", err)
		}
		if st, _ := s.Stats(); st.Dead != 1 || st.Pending != 3 {
			t.Fatalf("stats %+v", st)
		}
	})

	t.Run("a refusal in a group leaves the other ops alone", func(t *testing.T) {
		s := openTest(t, Options{MaxBytes: 3 * one, DedupWindow: time.Hour, Now: clk.Now})
		l := watchCommits(s)
		base := mustAppend(t, s, ev(0, 1000, clk.Now()))
		release := holdLoop(t, s, l)
		n := l.n()
		var resA, resC, resE AppendResult
		var errA, errB, errC, errD, errE <-chan error
		errA = async(func() (err error) { resA, err = s.Append([]Entry{ev(1, 1000, clk.Now())}); return })
		waitQueued(t, s, 1)
		errB = async(func() error { _, err := s.Append([]Entry{ev(10, 5000, clk.Now())}); return err })
		waitQueued(t, s, 2)
		errD = async(func() error { return s.Dead(999, "no such record") })
		waitQueued(t, s, 3)
		errC = async(func() (err error) { resC, err = s.Append([]Entry{ev(2, 1000, clk.Now())}); return })
		waitQueued(t, s, 4)
		// Would fit alone, but not after A and C in the same group.
		errE = async(func() (err error) { resE, err = s.Append([]Entry{ev(3, 1000, clk.Now())}); return })
		waitQueued(t, s, 5)
		release()
		if err := <-errA; err != nil {
			t.Errorf("A: %v", err)
		}
		if err := <-errB; !errors.Is(err, ErrOverQuota) {
			t.Errorf("B (too big): %v, want ErrOverQuota", err)
		}
		if err := <-errD; !errors.Is(err, ErrNotFound) {
			t.Errorf("D (Dead of unknown id): %v, want ErrNotFound", err)
		}
		if err := <-errC; err != nil {
			t.Errorf("C: %v", err)
		}
		if err := <-errE; !errors.Is(err, ErrOverQuota) {
			t.Errorf("E (over quota after A and C): %v, want ErrOverQuota", err)
		}
		if g := l.since(n); !slices.Equal(g, []commitGroup{{5, 5}}) {
			t.Fatalf("commits %+v, want one group of 5 ops", g)
		}
		want := []uint64{base.IDs[0], resA.IDs[0], resC.IDs[0]}
		if got := ids(readAll(t, s, false)); !slices.Equal(got, want) || len(resE.IDs) != 0 {
			t.Fatalf("pending %v, want %v", got, want)
		}
		// E's key was not admitted: it can be appended once there is room.
		if err := s.Ack(base.IDs); err != nil {
			t.Fatal(err)
		}
		if res := mustAppend(t, s, ev(3, 1000, clk.Now())); res.Duplicates != 0 {
			t.Fatal("key of a refused op was admitted")
		}
	})

	t.Run("no quota", func(t *testing.T) {
		s := openTest(t, Options{})
		mustAppend(t, s, ev(0, 1<<20, clk.Now()))
		if s.OverQuota() {
			t.Fatal("OverQuota without a quota")
		}
	})
}

func TestSpool_Dedup(t *testing.T) {
	const window = 24 * time.Hour
	setup := func(t *testing.T) (*Spool, *clock) {
		clk := newClock()
		return openTest(t, Options{DedupWindow: window, Now: clk.Now}), clk
	}
	withEvent := func(e Entry, ev string) Entry { e.Event = []byte(ev); return e }

	t.Run("second copy is a duplicate of the first", func(t *testing.T) {
		s, clk := setup(t)
		e := entry(1, clk.Now())
		first := mustAppend(t, s, e)
		clk.Advance(time.Minute)
		again := mustAppend(t, s, withEvent(e, `{"other":"body"}`))
		if !again.Duplicate[0] || again.Duplicates != 1 || again.IDs[0] != first.IDs[0] {
			t.Fatalf("second copy: %+v, want duplicate of %d", again, first.IDs[0])
		}
		rs := readAll(t, s, false)
		if len(rs) != 1 || sameEntry(rs[0], e) != nil {
			t.Fatalf("stored %d records, first %v", len(rs), rs)
		}
		if st, _ := s.Stats(); st.DedupKeys != 1 {
			t.Fatalf("DedupKeys = %d", st.DedupKeys)
		}
	})

	t.Run("repeats within one call", func(t *testing.T) {
		s, clk := setup(t)
		a, b := entry(1, clk.Now()), entry(2, clk.Now())
		res := mustAppend(t, s, a, b, withEvent(a, `{}`), a, b)
		if !slices.Equal(res.Duplicate, []bool{false, false, true, true, true}) || res.Duplicates != 3 {
			t.Fatalf("duplicates %v (%d)", res.Duplicate, res.Duplicates)
		}
		if res.IDs[2] != res.IDs[0] || res.IDs[3] != res.IDs[0] || res.IDs[4] != res.IDs[1] || res.IDs[0] == res.IDs[1] {
			t.Fatalf("ids %v", res.IDs)
		}
		if got := ids(readAll(t, s, false)); !slices.Equal(got, res.IDs[:2]) {
			t.Fatalf("stored %v", got)
		}
		// Mixed: one seen before, one new.
		c := entry(3, clk.Now())
		mix := mustAppend(t, s, b, c)
		if !slices.Equal(mix.Duplicate, []bool{true, false}) || mix.IDs[0] != res.IDs[1] || mix.IDs[1] <= res.IDs[1] {
			t.Fatalf("mixed call: %+v", mix)
		}
	})

	t.Run("window", func(t *testing.T) {
		s, clk := setup(t)
		e := entry(1, clk.Now())
		first := mustAppend(t, s, e)
		clk.Advance(window - time.Nanosecond)
		if res := mustAppend(t, s, e); !res.Duplicate[0] || res.IDs[0] != first.IDs[0] {
			t.Fatalf("just inside the window: %+v", res)
		}
		clk.Advance(2 * time.Nanosecond)
		res := mustAppend(t, s, e)
		if res.Duplicate[0] || res.IDs[0] <= first.IDs[0] {
			t.Fatalf("past the window: %+v, want a new record", res)
		}
		// Re-admitted: the key counts once, and dedups against the new copy.
		if st, _ := s.Stats(); st.DedupKeys != 1 || st.Pending != 2 {
			t.Fatalf("stats after re-admission: %+v", st)
		}
		clk.Advance(window - time.Second)
		if again := mustAppend(t, s, e); !again.Duplicate[0] || again.IDs[0] != res.IDs[0] {
			t.Fatalf("within the window of the re-admission: %+v", again)
		}
	})

	t.Run("a delivered record still dedups", func(t *testing.T) {
		s, clk := setup(t)
		e := entry(1, clk.Now())
		first := mustAppend(t, s, e)
		if err := s.Ack(first.IDs); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Hour)
		s = reopen(t, s, Options{DedupWindow: window, Now: clk.Now})
		res := mustAppend(t, s, e)
		if !res.Duplicate[0] || res.IDs[0] != first.IDs[0] {
			t.Fatalf("after ack: %+v, want duplicate of %d", res, first.IDs[0])
		}
		if st, _ := s.Stats(); st.Pending != 0 {
			t.Fatalf("pending %d after a duplicate of a delivered record", st.Pending)
		}
	})

	t.Run("no key, no dedup", func(t *testing.T) {
		s, clk := setup(t)
		e := entry(1, clk.Now())
		e.Key = nil
		f := e
		f.Key = []byte{}
		res := mustAppend(t, s, e, e, f, f)
		if res.Duplicates != 0 || len(readAll(t, s, false)) != 4 {
			t.Fatalf("keyless entries deduplicated: %+v", res)
		}
		if st, _ := s.Stats(); st.DedupKeys != 0 {
			t.Fatalf("DedupKeys = %d", st.DedupKeys)
		}
	})

	t.Run("window 0 disables dedup", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{Now: clk.Now})
		e := entry(1, clk.Now())
		a := mustAppend(t, s, e, e)
		b := mustAppend(t, s, e)
		if a.Duplicates != 0 || b.Duplicates != 0 || len(readAll(t, s, false)) != 3 {
			t.Fatalf("deduplicated with window 0: %+v %+v", a, b)
		}
		if r, _, _ := s.Get(b.IDs[0]); !bytes.Equal(r.Key, e.Key) {
			t.Fatal("key not kept on the record")
		}
		if st, _ := s.Stats(); st.DedupKeys != 0 {
			t.Fatalf("DedupKeys = %d", st.DedupKeys)
		}
		if n, err := s.PruneDedup(100); n != 0 || err != nil {
			t.Fatalf("PruneDedup = %d, %v", n, err)
		}
	})

	t.Run("PruneDedup removes only expired keys, oldest first, max at a time", func(t *testing.T) {
		s, clk := setup(t)
		start := clk.Now()
		var old, young []Entry
		for i := range 10 {
			e := entry(i, clk.Now())
			old = append(old, e)
			mustAppend(t, s, e)
			clk.Advance(time.Second)
		}
		clk.Advance(time.Hour)
		for i := range 5 {
			e := entry(100+i, clk.Now())
			young = append(young, e)
			mustAppend(t, s, e)
		}
		// The old keys are expired, the young ones are not.
		clk.Set(start.Add(window + 30*time.Minute))
		remembered := func() (keys []string) {
			for _, e := range append(slices.Clone(old), young...) {
				var v []byte
				_ = s.db.View(func(tx *bolt.Tx) error { v = tx.Bucket(bucketDedup).Get(e.Key); return nil })
				if v != nil {
					keys = append(keys, string(e.Key))
				}
			}
			return keys
		}
		for i, want := range []int{4, 4, 2, 0, 0} {
			n, err := s.PruneDedup(4)
			if err != nil || n != want {
				t.Fatalf("PruneDedup #%d = %d, %v; want %d", i, n, err, want)
			}
			if i == 0 {
				// The four oldest went first.
				var want []string
				for _, e := range old[4:] {
					want = append(want, string(e.Key))
				}
				for _, e := range young {
					want = append(want, string(e.Key))
				}
				if got := remembered(); !slices.Equal(got, want) {
					t.Fatalf("after the first prune, remembered %v, want %v", got, want)
				}
			}
			assertCounters(t, s)
		}
		if st, _ := s.Stats(); st.DedupKeys != 5 {
			t.Fatalf("DedupKeys = %d, want 5", st.DedupKeys)
		}
		for _, e := range young {
			if res := mustAppend(t, s, e); !res.Duplicate[0] {
				t.Fatalf("young key %s forgotten by PruneDedup", e.Key)
			}
		}
		for _, e := range old[:2] {
			if res := mustAppend(t, s, e); res.Duplicate[0] {
				t.Fatalf("pruned key %s still dedups", e.Key)
			}
		}
	})

	t.Run("a re-admitted key is not pruned by its old admission", func(t *testing.T) {
		s, clk := setup(t)
		e := entry(1, clk.Now())
		t0 := clk.Now()
		mustAppend(t, s, e)
		clk.Advance(window + time.Minute) // expired, not pruned
		second := mustAppend(t, s, e)
		if second.Duplicate[0] {
			t.Fatal("expired key still dedups")
		}
		// The old admission's index entry is gone...
		assertCounters(t, s)
		// ...but even a stale one left behind (as a crash of an older writer,
		// or a bug, could leave) must not drop the new admission.
		err := s.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketDedupExp).Put(expKey(u64(uint64(t0.UnixNano())), e.Key), nil)
		})
		if err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Hour) // the stale entry is long expired, the new admission is not
		n, err := s.PruneDedup(100)
		if err != nil || n != 1 {
			t.Fatalf("PruneDedup = %d, %v; want the 1 stale entry", n, err)
		}
		if res := mustAppend(t, s, e); !res.Duplicate[0] || res.IDs[0] != second.IDs[0] {
			t.Fatalf("re-admitted key was dropped by a stale index entry: %+v", res)
		}
		if st, _ := s.Stats(); st.DedupKeys != 1 {
			t.Fatalf("DedupKeys = %d, want 1", st.DedupKeys)
		}
	})
}

func TestSpool_Ack(t *testing.T) {
	clk := newClock()
	s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
	l := watchCommits(s)
	var es []Entry
	for i := range 10 {
		es = append(es, entry(i, clk.Now()))
	}
	all := mustAppend(t, s, es...).IDs

	t.Run("batched", func(t *testing.T) {
		n := l.n()
		if err := s.Ack([]uint64{all[1], all[3], all[5], all[7], all[9]}); err != nil {
			t.Fatal(err)
		}
		if l.n() != n+1 {
			t.Fatalf("one Ack took %d commits", l.n()-n)
		}
		want := []uint64{all[0], all[2], all[4], all[6], all[8]}
		if got := ids(readAll(t, s, false)); !slices.Equal(got, want) {
			t.Fatalf("pending %v, want %v", got, want)
		}
		if _, _, err := s.Get(all[1]); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get of acked record: %v", err)
		}
		assertCounters(t, s)
	})
	t.Run("idempotent, unknown ids ignored", func(t *testing.T) {
		before := scanCounters(t, s)
		if err := s.Ack([]uint64{all[1], all[3], 0, 1 << 40, all[1]}); err != nil {
			t.Fatal(err)
		}
		if after := scanCounters(t, s); after != before {
			t.Fatalf("repeated Ack changed %+v -> %+v", before, after)
		}
		if err := s.Ack([]uint64{all[0], all[0], 77777}); err != nil {
			t.Fatal(err)
		}
		if st, _ := s.Stats(); st.Pending != 4 {
			t.Fatalf("pending %d, want 4", st.Pending)
		}
		if err := s.Ack(nil); err != nil {
			t.Fatal(err)
		}
		assertCounters(t, s)
	})
	t.Run("leaves dead records alone", func(t *testing.T) {
		if err := s.Dead(all[2], "bad"); err != nil {
			t.Fatal(err)
		}
		if err := s.Ack([]uint64{all[2]}); err != nil {
			t.Fatal(err)
		}
		if _, dead, err := s.Get(all[2]); err != nil || !dead {
			t.Fatalf("dead record after Ack: dead %v, %v", dead, err)
		}
		assertCounters(t, s)
	})
}

func TestSpool_Fail(t *testing.T) {
	clk := newClock()
	s := openTest(t, Options{Now: clk.Now})
	es := []Entry{entry(1, clk.Now()), entry(2, clk.Now()), entry(3, clk.Now())}
	all := mustAppend(t, s, es...).IDs

	clk.Advance(time.Minute)
	t1 := clk.Now()
	if err := s.Fail([]uint64{all[0], all[2], 9999}, "HTTP 503"); err != nil {
		t.Fatal(err)
	}
	assertCounters(t, s)
	clk.Advance(time.Minute)
	long := "Post \"https://api.segment.io/v1/batch\": " + strings.Repeat("dial tcp: timeout; ", 20)
	if err := s.Fail([]uint64{all[0]}, long); err != nil {
		t.Fatal(err)
	}
	assertCounters(t, s)

	want := []struct {
		attempts uint32
		at       time.Time
		err      string
	}{{2, clk.Now(), long}, {0, time.Time{}, ""}, {1, t1, "HTTP 503"}}
	rs := readAll(t, s, false)
	if !slices.Equal(ids(rs), all) {
		t.Fatalf("failed records left pending order: %v", ids(rs))
	}
	for i, r := range rs {
		w := want[i]
		if r.Attempts != w.attempts || !r.LastAttempt.Equal(w.at) || r.LastError != w.err {
			t.Errorf("record %d: attempts %d at %v error %q; want %d at %v %q", r.ID, r.Attempts, r.LastAttempt, r.LastError, w.attempts, w.at, w.err)
		}
		r.Attempts, r.LastAttempt, r.LastError = 0, time.Time{}, ""
		if err := sameEntry(r, es[i]); err != nil {
			t.Errorf("record %d: Fail changed the event: %v", r.ID, err)
		}
	}
	// A shorter reason shrinks the record, and the byte counter follows.
	before, _ := s.Stats()
	if err := s.Fail([]uint64{all[0]}, ""); err != nil {
		t.Fatal(err)
	}
	after, _ := s.Stats()
	// The reason's bytes, and its length prefix shrinks from 2 bytes to 1.
	if drop := int64(len(long) + 1); after.PendingBytes != before.PendingBytes-drop {
		t.Fatalf("PendingBytes %d -> %d, want a drop of %d", before.PendingBytes, after.PendingBytes, drop)
	}
	if err := s.Fail(nil, "x"); err != nil {
		t.Fatal(err)
	}
	assertCounters(t, s)
}

func TestSpool_Dead(t *testing.T) {
	clk := newClock()
	s := openTest(t, Options{Now: clk.Now})
	es := []Entry{entry(1, clk.Now()), entry(2, clk.Now().Add(time.Second)), entry(3, clk.Now())}
	all := mustAppend(t, s, es...).IDs
	if err := s.Fail(all[:1], "HTTP 500"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if err := s.Dead(all[0], "HTTP 400: bad message"); err != nil {
		t.Fatal(err)
	}
	r, dead, err := s.Get(all[0])
	if err != nil || !dead {
		t.Fatalf("Get of dead record: dead %v, %v", dead, err)
	}
	if r.LastError != "HTTP 400: bad message" || r.Attempts != 2 || !r.LastAttempt.Equal(clk.Now()) {
		t.Fatalf("dead record: %+v", r)
	}
	if d := readAll(t, s, true); len(d) != 1 || d[0].ID != all[0] || !bytes.Equal(d[0].Event, es[0].Event) {
		t.Fatalf("ReadDead = %v", d)
	}
	if p := ids(readAll(t, s, false)); !slices.Equal(p, all[1:]) {
		t.Fatalf("pending %v", p)
	}
	st, _ := s.Stats()
	if st.Pending != 2 || st.Dead != 1 || !st.OldestPending.Equal(es[1].ReceivedAt) {
		t.Fatalf("stats %+v", st)
	}
	for _, id := range []uint64{all[0], 0, 12345} {
		if err := s.Dead(id, "again"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Dead(%d) of a non-pending id: %v, want ErrNotFound", id, err)
		}
	}
	if r2, _, _ := s.Get(all[0]); r2.LastError != r.LastError || r2.Attempts != r.Attempts {
		t.Fatal("a refused Dead changed the dead record")
	}
	assertCounters(t, s)
}

func TestSpool_Read(t *testing.T) {
	clk := newClock()
	s := openTest(t, Options{Now: clk.Now})
	var all []uint64
	for i := 0; i < 237; {
		n := 1 + i%7
		var es []Entry
		for range n {
			es = append(es, entry(i, clk.Now()))
			i++
		}
		all = append(all, mustAppend(t, s, es...).IDs...)
	}
	page := func(dead bool, limit int) []uint64 {
		read := s.ReadPending
		if dead {
			read = s.ReadDead
		}
		var out []uint64
		var after uint64
		for range len(all) + 2 {
			rs, err := read(after, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) > limit {
				t.Fatalf("read %d records with limit %d", len(rs), limit)
			}
			if len(rs) == 0 {
				return out
			}
			out = append(out, ids(rs)...)
			after = rs[len(rs)-1].ID
		}
		t.Fatalf("paging with limit %d does not end", limit)
		return nil
	}
	t.Run("ReadPending pages over everything", func(t *testing.T) {
		for _, limit := range []int{1, 10, 236, 237, 1000} {
			if got := page(false, limit); !slices.Equal(got, all) {
				t.Fatalf("limit %d: paged %d ids, want %d in order", limit, len(got), len(all))
			}
		}
		if rs, _ := s.ReadPending(0, 0); len(rs) != 0 {
			t.Fatal("limit 0 returned records")
		}
		if rs, _ := s.ReadPending(all[len(all)-1], 10); len(rs) != 0 {
			t.Fatal("read after the last id returned records")
		}
		if rs, _ := s.ReadPending(all[99], 3); !slices.Equal(ids(rs), all[100:103]) {
			t.Fatalf("ReadPending(after %d) = %v", all[99], ids(rs))
		}
	})
	t.Run("gaps and dead records are skipped", func(t *testing.T) {
		var acked, deads []uint64
		for i, id := range all {
			switch i % 5 {
			case 1:
				acked = append(acked, id)
			case 3:
				deads = append(deads, id)
			}
		}
		if err := s.Ack(acked); err != nil {
			t.Fatal(err)
		}
		for _, id := range deads {
			if err := s.Dead(id, "poison"); err != nil {
				t.Fatal(err)
			}
		}
		var want []uint64
		for _, id := range all {
			if !slices.Contains(acked, id) && !slices.Contains(deads, id) {
				want = append(want, id)
			}
		}
		for _, limit := range []int{1, 7, 500} {
			if got := page(false, limit); !slices.Equal(got, want) {
				t.Fatalf("pending limit %d: %v, want %v", limit, got, want)
			}
			if got := page(true, limit); !slices.Equal(got, deads) {
				t.Fatalf("dead limit %d: %v, want %v", limit, got, deads)
			}
		}
		// A cursor that points at an acked id continues after it.
		if rs, _ := s.ReadPending(acked[3], 1); len(rs) != 1 || rs[0].ID != acked[3]+1 {
			t.Fatalf("ReadPending(after acked %d) = %v", acked[3], ids(rs))
		}
		assertCounters(t, s)
	})
}

func TestSpool_Get(t *testing.T) {
	clk := newClock()
	s := openTest(t, Options{Now: clk.Now})
	e1, e2 := entry(1, clk.Now()), entry(2, clk.Now())
	res := mustAppend(t, s, e1, e2)
	if err := s.Dead(res.IDs[1], "x"); err != nil {
		t.Fatal(err)
	}
	r, dead, err := s.Get(res.IDs[0])
	if err != nil || dead || r.ID != res.IDs[0] || sameEntry(r, e1) != nil {
		t.Fatalf("Get pending = %+v, %v, %v", r, dead, err)
	}
	r, dead, err = s.Get(res.IDs[1])
	if err != nil || !dead || r.ID != res.IDs[1] || !bytes.Equal(r.Event, e2.Event) {
		t.Fatalf("Get dead = %+v, %v, %v", r, dead, err)
	}
	for _, id := range []uint64{0, res.IDs[1] + 1, 1<<64 - 1} {
		if _, _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(%d) = %v, want ErrNotFound", id, err)
		}
	}
}

func TestSpool_Stats(t *testing.T) {
	t.Run("empty", func(t *testing.T) {
		s := openTest(t, Options{})
		st, err := s.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.Pending != 0 || st.Bytes != 0 || !st.OldestPending.IsZero() || st.FileSize <= 0 {
			t.Fatalf("empty stats %+v", st)
		}
	})
}

// TestSpool_RandomMix runs randomMix with a quota (appends refused now and
// then) and without one.
func TestSpool_RandomMix(t *testing.T) {
	t.Run("quota", func(t *testing.T) {
		randomMix(t, mixConfig{
			seed: [2]uint64{1, 2}, steps: 400, reopenEvery: 40, maxEvent: 2000,
			opt: Options{DedupWindow: time.Hour, MaxBytes: 24 << 10},
		})
	})
	t.Run("no quota", func(t *testing.T) {
		randomMix(t, mixConfig{
			seed: [2]uint64{7, 8}, steps: 300, reopenEvery: 50, maxEvent: 500,
			opt: Options{DedupWindow: time.Hour},
		})
	})
}

// mixConfig is one run of randomMix.
type mixConfig struct {
	seed        [2]uint64
	steps       int
	reopenEvery int
	maxEvent    int     // events appended are shorter than this
	opt         Options // Now is set by randomMix
}

// randomMix runs a random mix of every write (Append, Ack, Fail, Dead,
// PruneDedup, Retry, RetryWhere, Delete, DeleteWhere, Import) and moves of
// the clock against a model of the ids pending and dead, reopening the
// spool now and then. After each step it checks the counters (histogram
// included) against a full scan, the pending and dead records and a
// two-state Scan against the model, OldestPending and OverQuota; at the
// end, that every kind of step was exercised.
func randomMix(t *testing.T, cfg mixConfig) {
	t.Helper()
	clk := newClock()
	opt := cfg.opt
	opt.Now = clk.Now
	s := openTest(t, opt)
	rng := rand.New(rand.NewPCG(cfg.seed[0], cfg.seed[1]))
	pending, dead := map[uint64]bool{}, map[uint64]bool{}
	pick := func(ms ...map[uint64]bool) []uint64 {
		var out []uint64
		for _, m := range ms {
			for id := range m {
				if rng.IntN(3) == 0 {
					out = append(out, id)
				}
			}
		}
		if rng.IntN(4) == 0 {
			out = append(out, 1<<50+uint64(rng.IntN(10))) // unknown
		}
		return out
	}
	counts := map[string]int{}
	for step := range cfg.steps {
		switch op := rng.IntN(15); {
		case op < 4:
			var es []Entry
			for range 1 + rng.IntN(5) {
				e := entry(rng.IntN(300), clk.Now().Add(-time.Duration(rng.IntN(1000))*time.Millisecond))
				e.Event = bytes.Repeat([]byte{'e'}, rng.IntN(cfg.maxEvent))
				if rng.IntN(8) == 0 {
					e.Key = nil
				}
				es = append(es, e)
			}
			res, err := s.Append(es)
			if errors.Is(err, ErrOverQuota) && opt.MaxBytes > 0 {
				counts["over quota"]++
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			for i, id := range res.IDs {
				if res.Duplicate[i] {
					counts["duplicate"]++
				} else {
					pending[id] = true
				}
			}
			counts["append"]++
		case op < 6:
			a := pick(pending)
			if err := s.Ack(a); err != nil {
				t.Fatal(err)
			}
			for _, id := range a {
				delete(pending, id)
			}
			counts["ack"]++
		case op < 7:
			if err := s.Fail(pick(pending), strings.Repeat("f", rng.IntN(300))); err != nil {
				t.Fatal(err)
			}
			counts["fail"]++
		case op < 8:
			for _, id := range pick(pending) {
				err := s.Dead(id, strings.Repeat("d", rng.IntN(100)))
				if pending[id] != (err == nil) {
					t.Fatalf("Dead(%d) pending=%v: %v", id, pending[id], err)
				}
				if err == nil {
					delete(pending, id)
					dead[id] = true
				}
			}
			counts["dead"]++
		case op < 9:
			if _, err := s.PruneDedup(1 + rng.IntN(20)); err != nil {
				t.Fatal(err)
			}
			counts["prune"]++
		case op < 10:
			ids := pick(dead)
			moved, missing, err := s.Retry(ids)
			if err != nil {
				t.Fatal(err)
			}
			var want []uint64
			for _, id := range ids {
				if dead[id] {
					delete(dead, id)
					pending[id] = true
				} else {
					want = append(want, id)
				}
			}
			if moved != len(ids)-len(want) || !slices.Equal(missing, want) {
				t.Fatalf("Retry(%v) = %d, %v; model: %d moved, %v missing", ids, moved, missing, len(ids)-len(want), want)
			}
			counts["retry"] += moved
		case op < 11:
			m := uint64(1 + rng.IntN(3))
			moved, err := s.RetryWhere(func(r Record) bool { return r.ID%m == 0 })
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			for id := range dead {
				if id%m == 0 {
					want++
					delete(dead, id)
					pending[id] = true
				}
			}
			if moved != want {
				t.Fatalf("RetryWhere moved %d, model %d", moved, want)
			}
			counts["retry where"]++
		case op < 12:
			ids := pick(pending, dead)
			n, missing, err := s.Delete(ids)
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			for _, id := range ids {
				if pending[id] || dead[id] {
					want++
				}
				delete(pending, id)
				delete(dead, id)
			}
			if n != want || n+len(missing) != len(ids) {
				t.Fatalf("Delete of %d ids: %d deleted, %d missing; model %d deleted", len(ids), n, len(missing), want)
			}
			counts["delete"]++
		case op < 13:
			state, m := State(rng.IntN(2)), uint64(2+rng.IntN(3))
			n, err := s.DeleteWhere(state, func(r Record) bool { return r.ID%m == 1 })
			if err != nil {
				t.Fatal(err)
			}
			model := map[State]map[uint64]bool{StatePending: pending, StateDead: dead}[state]
			want := 0
			for id := range model {
				if id%m == 1 {
					want++
					delete(model, id)
				}
			}
			if n != want {
				t.Fatalf("DeleteWhere(%v) deleted %d, model %d", state, n, want)
			}
			counts["delete where"]++
		case op < 14:
			var recs []Record
			for range 1 + rng.IntN(6) {
				r := Record{
					ID: uint64(rng.IntN(400)), MessageID: fmt.Sprintf("i%d", rng.IntN(50)), Attempts: uint32(rng.IntN(40)),
					LastError: "imported", ReceivedAt: clk.Now(), Event: bytes.Repeat([]byte{'i'}, rng.IntN(300)),
				}
				if rng.IntN(2) == 0 {
					r.Key = []byte(fmt.Sprintf("key-%d", rng.IntN(400)))
				}
				recs = append(recs, r)
			}
			if stored := readAll(t, s, rng.IntN(2) == 0); len(stored) > 0 && rng.IntN(2) == 0 {
				recs = append(recs, stored[rng.IntN(len(stored))]) // a repeat, as from an export imported twice
			}
			state := State(rng.IntN(2))
			res, err := s.Import(state, recs)
			if err != nil {
				t.Fatal(err)
			}
			for i, id := range res.IDs {
				if res.Duplicate[i] {
					continue
				}
				if pending[id] || dead[id] {
					t.Fatalf("Import stored record %d over an existing one", id)
				}
				if state == StatePending {
					pending[id] = true
				} else {
					dead[id] = true
				}
			}
			counts["import"] += res.Imported
			counts["import duplicate"] += res.Duplicates
		default:
			clk.Advance(time.Duration(rng.IntN(30)) * time.Minute)
		}
		if step%cfg.reopenEvery == cfg.reopenEvery-1 {
			s = reopen(t, s, opt)
		}
		assertCounters(t, s)
		p, d := readAll(t, s, false), readAll(t, s, true)
		for _, c := range []struct {
			name  string
			got   []uint64
			model map[uint64]bool
		}{{"pending", ids(p), pending}, {"dead", ids(d), dead}} {
			if len(c.got) != len(c.model) || !slices.IsSorted(c.got) {
				t.Fatalf("step %d: %s %v, model has %d", step, c.name, c.got, len(c.model))
			}
			for _, id := range c.got {
				if !c.model[id] {
					t.Fatalf("step %d: %d %s, not in the model", step, id, c.name)
				}
			}
		}
		var scanned []Record
		err := s.Scan([]State{StatePending, StateDead}, 0, func(_ State, r Record) (bool, error) {
			scanned = append(scanned, r)
			return true, nil
		})
		if err != nil || !reflect.DeepEqual(scanned, append(p, d...)) {
			t.Fatalf("step %d: Scan(pending, dead) = %d records, %v; ReadPending and ReadDead %d", step, len(scanned), err, len(p)+len(d))
		}
		st, _ := s.Stats()
		if len(p) > 0 {
			if !st.OldestPending.Equal(p[0].ReceivedAt) {
				t.Fatalf("OldestPending %v, oldest record received %v", st.OldestPending, p[0].ReceivedAt)
			}
		} else if !st.OldestPending.IsZero() {
			t.Fatalf("OldestPending %v with nothing pending", st.OldestPending)
		}
		if s.OverQuota() != (opt.MaxBytes > 0 && st.Bytes >= opt.MaxBytes) {
			t.Fatalf("OverQuota %v at %d of %d bytes", s.OverQuota(), st.Bytes, opt.MaxBytes)
		}
	}
	t.Logf("operations: %v", counts)
	want := []string{"append", "duplicate", "ack", "fail", "dead", "prune", "retry", "retry where", "delete", "delete where", "import", "import duplicate"}
	if opt.MaxBytes > 0 {
		want = append(want, "over quota")
	}
	for _, k := range want {
		if counts[k] == 0 {
			t.Errorf("the random mix never exercised %q", k)
		}
	}
	if st, _ := s.Stats(); st.FileSize <= 0 {
		t.Fatalf("FileSize = %d", st.FileSize)
	}
}

func TestSpool_Close(t *testing.T) {
	t.Run("writes after close", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
		id := mustAppend(t, s, entry(1, clk.Now())).IDs[0]
		closeChecked(t, s)
		if _, err := s.Append([]Entry{entry(2, clk.Now())}); !errors.Is(err, ErrClosed) {
			t.Errorf("Append after Close: %v", err)
		}
		if err := s.Ack([]uint64{id}); !errors.Is(err, ErrClosed) {
			t.Errorf("Ack after Close: %v", err)
		}
		if err := s.Fail([]uint64{id}, "x"); !errors.Is(err, ErrClosed) {
			t.Errorf("Fail after Close: %v", err)
		}
		if err := s.Dead(id, "x"); !errors.Is(err, ErrClosed) {
			t.Errorf("Dead after Close: %v", err)
		}
		if _, err := s.PruneDedup(10); !errors.Is(err, ErrClosed) {
			t.Errorf("PruneDedup after Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	t.Run("close commits what was queued", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{Now: clk.Now})
		l := watchCommits(s)
		release := holdLoop(t, s, l)
		var errcs []<-chan error
		var mu sync.Mutex
		var got []uint64
		for i := range 5 {
			errcs = append(errcs, async(func() error {
				res, err := s.Append([]Entry{entry(i, clk.Now())})
				mu.Lock()
				got = append(got, res.IDs...)
				mu.Unlock()
				return err
			}))
		}
		waitQueued(t, s, 5)
		closed := async(s.Close)
		for !isClosed(s) {
			// Close has taken the queue; wait for it before letting the loop go.
			runtime.Gosched()
		}
		release()
		if err := await(t, closed); err != nil {
			t.Fatal(err)
		}
		for _, c := range errcs {
			if err := await(t, c); err != nil {
				t.Fatalf("Append queued before Close: %v", err)
			}
		}
		s = openAt(t, s.Path(), Options{})
		slices.Sort(got)
		if stored := ids(readAll(t, s, false)); !slices.Equal(stored, got) || len(got) != 5 {
			t.Fatalf("after reopen %v, acknowledged %v", stored, got)
		}
	})

	t.Run("appends racing close are durable or refused", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
		var ok atomic.Int64
		type acked struct {
			id uint64
			e  Entry
		}
		results := make([][]acked, 16)
		var wg sync.WaitGroup
		errs := make(chan error, len(results))
		for w := range results {
			wg.Go(func() {
				for j := 0; ; j++ {
					e := entry(w*1_000_000+j, clk.Now())
					res, err := s.Append([]Entry{e})
					if errors.Is(err, ErrClosed) {
						return
					}
					if err != nil {
						errs <- err
						return
					}
					results[w] = append(results[w], acked{res.IDs[0], e})
					ok.Add(1)
				}
			})
		}
		for ok.Load() < 200 {
			runtime.Gosched()
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		_ = await(t, async(func() error { wg.Wait(); return nil }))
		close(errs)
		for err := range errs {
			t.Fatalf("Append racing Close: %v (want success or ErrClosed)", err)
		}
		s = openAt(t, s.Path(), Options{})
		n := 0
		for _, rs := range results {
			for _, a := range rs {
				r, _, err := s.Get(a.id)
				if err != nil {
					t.Fatalf("acknowledged record %d lost: %v", a.id, err)
				}
				if err := sameEntry(r, a.e); err != nil {
					t.Fatalf("record %d: %v", a.id, err)
				}
				n++
			}
		}
		if st, _ := s.Stats(); st.Pending != int64(n) {
			t.Fatalf("%d records in the file, %d acknowledged", st.Pending, n)
		}
	})
}

// TestSpool_SeenWithin: the dedup-window check shared by Append and Import.
func TestSpool_SeenWithin(t *testing.T) {
	s := openTest(t, Options{})
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	err := s.db.Update(func(tx *bolt.Tx) error {
		dedup := tx.Bucket(bucketDedup)
		v := append(u64(42), u64(uint64(at.UnixNano()))...)
		if err := dedup.Put([]byte("k"), v); err != nil {
			return err
		}
		if err := dedup.Put([]byte("short"), v[:15]); err != nil {
			return err
		}
		for _, c := range []struct {
			key    string
			now    time.Time
			window time.Duration
			id     uint64
			ok     bool
		}{
			{"k", at, time.Hour, 42, true},
			{"k", at.Add(time.Hour - 1), time.Hour, 42, true},
			{"k", at.Add(time.Hour), time.Hour, 0, false}, // expired at the window's end
			{"k", at.Add(-time.Minute), time.Hour, 42, true},
			{"missing", at, time.Hour, 0, false},
			{"short", at, time.Hour, 0, false},
		} {
			if id, ok := seenWithin(dedup, []byte(c.key), c.now, c.window); id != c.id || ok != c.ok {
				t.Errorf("seenWithin(%q, at%+v, %v) = %d, %v; want %d, %v", c.key, c.now.Sub(at), c.window, id, ok, c.id, c.ok)
			}
		}
		// Gone again: the checked cleanup wants the index to match the counters.
		if err := dedup.Delete([]byte("short")); err != nil {
			return err
		}
		return dedup.Delete([]byte("k"))
	})
	if err != nil {
		t.Fatal(err)
	}
}
