package spool

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// metaFreelist returns the freelist page id recorded in the newer of the
// file's two bbolt meta pages (bbolt format v2: after the 16-byte page
// header come magic, version, page size, flags, root bucket, freelist, …).
func metaFreelist(t *testing.T, path string) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var best, bestTx uint64
	for _, off := range []int64{0, int64(os.Getpagesize())} {
		var b [80]byte
		if _, err := f.ReadAt(b[:], off); err != nil {
			t.Fatal(err)
		}
		m := b[16:]
		ne := binary.NativeEndian
		freelist, txid := ne.Uint64(m[32:]), ne.Uint64(m[48:])
		if txid >= bestTx {
			best, bestTx = freelist, txid
		}
	}
	return best
}

const noFreelist = ^uint64(0)

func TestSpool_FreelistPersistedOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spool.db")
	sp, err := Open(path, Options{DedupWindow: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	entries := make([]Entry, 500)
	for i := range entries {
		entries[i] = Entry{Key: []byte{byte(i), byte(i >> 8)}, MessageID: "m", ReceivedAt: time.Now(), Event: make([]byte, 1024)}
	}
	res, err := sp.Append(entries)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Ack(res.IDs); err != nil { // frees pages, so the freelist is not empty
		t.Fatal(err)
	}
	if got := metaFreelist(t, path); got != noFreelist {
		t.Fatalf("while running, the meta page records freelist page %d; want none (NoFreelistSync)", got)
	}
	if err := sp.Check(); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	if got := metaFreelist(t, path); got == noFreelist {
		t.Fatal("after Close the meta page records no freelist: the next open would walk the whole file")
	}

	sp, err = Open(path, Options{DedupWindow: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Append(entries[:1]); err != nil {
		t.Fatal(err)
	}
	if got := metaFreelist(t, path); got != noFreelist {
		t.Errorf("after a commit on the reopened spool the meta page still records freelist page %d; want none", got)
	}
	if err := sp.Check(); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSpool_UnreadableRecord: a pending record whose bytes cannot be decoded
// is returned flagged instead of failing the read, Stats skips it, and Dead
// moves it aside as it is.
func TestSpool_UnreadableRecord(t *testing.T) {
	sp := openTest(t, Options{DedupWindow: time.Hour})
	entries := []Entry{
		{Key: []byte("a"), MessageID: "a", ReceivedAt: time.Unix(100, 0), Event: []byte(`{"a":1}`)},
		{Key: []byte("b"), MessageID: "b", ReceivedAt: time.Unix(200, 0), Event: []byte(`{"b":2}`)},
		{Key: []byte("c"), MessageID: "c", ReceivedAt: time.Unix(300, 0), Event: []byte(`{"c":3}`)},
	}
	res, err := sp.Append(entries)
	if err != nil {
		t.Fatal(err)
	}
	// Damage the first record's version byte, keeping its length.
	err = sp.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPending)
		v := append([]byte(nil), b.Get(itob(res.IDs[0]))...)
		v[0] = 9
		return b.Put(itob(res.IDs[0]), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := sp.ReadPending(0, 10)
	if err != nil {
		t.Fatalf("ReadPending with one unreadable record: %v", err)
	}
	if len(recs) != 3 || recs[0].Unreadable == "" || recs[1].Unreadable != "" || string(recs[2].Event) != `{"c":3}` {
		t.Fatalf("ReadPending = %+v; want the first flagged unreadable and the other two intact", recs)
	}
	if !strings.Contains(recs[0].Unreadable, "format version 9") {
		t.Errorf("Unreadable %q does not say why", recs[0].Unreadable)
	}
	st, err := sp.Stats()
	if err != nil {
		t.Fatalf("Stats with an unreadable oldest record: %v", err)
	}
	if !st.OldestPending.Equal(time.Unix(200, 0)) {
		t.Errorf("OldestPending = %v, want the oldest readable record's time", st.OldestPending)
	}
	if err := sp.Dead(res.IDs[0], "unreadable"); err != nil {
		t.Fatalf("Dead of an unreadable record: %v", err)
	}
	if err := sp.Fail([]uint64{res.IDs[1]}, "x"); err != nil {
		t.Fatal(err)
	}
	if st, _ := sp.Stats(); st.Pending != 2 || st.Dead != 1 {
		t.Errorf("after Dead: %d pending, %d dead; want 2 and 1", st.Pending, st.Dead)
	}
	// It was moved byte for byte: repair the version byte so the cleanup's
	// full scan can decode every record.
	err = sp.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDead)
		v := append([]byte(nil), b.Get(itob(res.IDs[0]))...)
		if len(v) == 0 || v[0] != 9 {
			t.Errorf("the dead letter is not the unreadable bytes as they were")
			return nil
		}
		v[0] = recordVersion
		return b.Put(itob(res.IDs[0]), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSpool_DiskFullPause: after a commit failed for want of space, appends
// are refused with ENOSPC for DiskFullPause without reaching bbolt; then
// they are tried again.
func TestSpool_DiskFullPause(t *testing.T) {
	now := time.Now()
	sp := openTest(t, Options{})
	commits := 0
	sp.SetCommitHook(func(int, int, time.Duration) { commits++ })
	sp.diskFullUntil.Store(now.Add(time.Hour).UnixNano())
	_, err := sp.Append([]Entry{{Event: []byte(`{}`), ReceivedAt: now}})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append during the pause: %v, want ENOSPC", err)
	}
	if commits != 0 {
		t.Errorf("Append during the pause reached bbolt (%d commits)", commits)
	}
	if err := sp.Ack([]uint64{1}); err != nil {
		t.Errorf("Ack during the pause (it frees space): %v", err)
	}
	sp.diskFullUntil.Store(now.Add(-time.Second).UnixNano())
	if _, err := sp.Append([]Entry{{Event: []byte(`{}`), ReceivedAt: now}}); err != nil {
		t.Fatalf("Append after the pause: %v", err)
	}
}
