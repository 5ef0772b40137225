package spool

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"
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
