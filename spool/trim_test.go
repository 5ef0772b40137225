//go:build linux

package spool

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// rssFile reads the process's file-backed resident memory (RssFile) in
// bytes from /proc/self/status.
func rssFile(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// TestSpool_TrimMapping: reading a backlog through bbolt's mapping leaves
// the file's pages counted in the process's resident memory; the trim
// unmaps them (on its own, every TrimInterval), and the records read back
// the same afterwards.
func TestSpool_TrimMapping(t *testing.T) {
	for _, auto := range []bool{false, true} {
		name := "by hand"
		opt := Options{TrimInterval: -1}
		if auto {
			name, opt.TrimInterval = "on its own", 50*time.Millisecond
		}
		t.Run(name, func(t *testing.T) {
			s := openTest(t, opt)
			// 64 MiB of records.
			const n, size = 32768, 2048
			at := time.Now()
			for i := 0; i < n; i += 1024 {
				batch := make([]Entry, 0, 1024)
				for j := i; j < i+1024; j++ {
					e := entry(j, at)
					e.Event = bytes.Repeat([]byte{'x'}, size)
					batch = append(batch, e)
				}
				mustAppend(t, s, batch...)
			}
			if !auto {
				s.trimMapping()
			}
			base := rssFile(t)
			var read int
			for after := uint64(0); ; {
				recs, err := s.ReadPending(after, 4096)
				if err != nil {
					t.Fatal(err)
				}
				if len(recs) == 0 {
					break
				}
				read += len(recs)
				after = recs[len(recs)-1].ID
			}
			if read != n {
				t.Fatalf("read %d records, want %d", read, n)
			}
			grown := rssFile(t) - base
			if !auto && grown < n*size/2 {
				t.Fatalf("reading %d MiB of records grew RssFile by only %d MiB: the test cannot see a trim", n*size>>20, grown>>20)
			}
			if !auto {
				s.trimMapping()
			}
			deadline := time.Now().Add(10 * time.Second)
			for rssFile(t)-base > n*size/8 {
				if !auto || time.Now().After(deadline) {
					t.Fatalf("RssFile still %d MiB above where it was before the read", (rssFile(t)-base)>>20)
				}
				time.Sleep(20 * time.Millisecond) // polling a counter the kernel keeps; the deadline bounds it
			}
			recs, err := s.ReadPending(0, 1)
			if err != nil || len(recs) != 1 || !bytes.Equal(recs[0].Event, bytes.Repeat([]byte{'x'}, size)) {
				t.Fatalf("first record after the trim: %v %v", recs, err)
			}
		})
	}
}

// TestSpool_TrimChecksTheMapping: the range trimmed is found in
// /proc/self/maps as the spool file's mapping, also after the file outgrew
// a small initial mapping and bbolt mapped it anew; a range that is not the
// file's stops the trim instead of unmapping it.
func TestSpool_TrimChecksTheMapping(t *testing.T) {
	saved := initialMmapSize
	initialMmapSize = 0 // bbolt's default: the file soon outgrows it
	t.Cleanup(func() { initialMmapSize = saved })
	s := openTest(t, Options{TrimInterval: -1})
	firstAddr := s.db.Info().Data
	s.trimMapping()
	if s.trimOff || s.trimAddr != firstAddr || s.trimEnd <= firstAddr {
		t.Fatalf("after the first trim: off %v, checked [%#x, %#x), mapping at %#x", s.trimOff, s.trimAddr, s.trimEnd, firstAddr)
	}
	at := time.Now()
	for i := 0; i < 4096; i += 512 {
		batch := make([]Entry, 0, 512)
		for j := i; j < i+512; j++ {
			e := entry(j, at)
			e.Event = bytes.Repeat([]byte{'y'}, 4096)
			batch = append(batch, e)
		}
		mustAppend(t, s, batch...)
	}
	s.trimMapping()
	if s.trimOff {
		t.Fatal("the trim stopped after a remap")
	}
	if s.trimAddr != s.db.Info().Data {
		t.Errorf("the check is of the mapping at %#x; the file is now mapped at %#x", s.trimAddr, s.db.Info().Data)
	}
	var size int64
	if err := s.db.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	if s.trimEnd-s.trimAddr < uintptr(size) || size < 16<<20 {
		t.Errorf("checked %d bytes of mapping for a %d-byte file (want the 16 MiB written, inside it)", s.trimEnd-s.trimAddr, size)
	}
	end, ok := mappingEnd(s.trimAddr, s.Path())
	if !ok || end != s.trimEnd {
		t.Errorf("mappingEnd(%#x) = %#x %v; the trim checked %#x", s.trimAddr, end, ok, s.trimEnd)
	}
	// A range that is not the spool file's: the trim stops.
	if _, ok := mappingEnd(s.trimAddr, s.Path()+".other"); ok {
		t.Error("mappingEnd matched another path")
	}
	s.path += ".other"
	s.trimAddr = 0
	s.trimMapping()
	s.path = strings.TrimSuffix(s.path, ".other")
	if !s.trimOff {
		t.Error("a mapping of another file did not stop the trim")
	}
}

// TestSpool_TrimThroughASymlink: /proc/self/maps names the file by its real
// path; a spool opened through a symlinked directory is still trimmed.
func TestSpool_TrimThroughASymlink(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(dir+"/real", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir+"/real", dir+"/link"); err != nil {
		t.Fatal(err)
	}
	s := openAt(t, dir+"/link/spool.db", Options{TrimInterval: -1})
	mustAppend(t, s, entry(1, time.Now()))
	s.trimMapping()
	if s.trimOff || s.trimEnd == 0 {
		t.Errorf("trim through a symlinked directory: off %v, checked up to %#x", s.trimOff, s.trimEnd)
	}
}
