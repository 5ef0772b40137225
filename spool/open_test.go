package spool

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// makeSpool writes a closed spool with n records and returns its path.
func makeSpool(t *testing.T, n int) string {
	t.Helper()
	clk := newClock()
	s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
	for i := range n {
		e := entry(i, clk.Now())
		e.Event = bytes.Repeat([]byte{'x'}, 1000)
		mustAppend(t, s, e)
	}
	closeChecked(t, s)
	return s.Path()
}

// refused opens path read-write and read-only, expects both to fail with an
// error containing each of want, and the file to be byte-for-byte the same.
func refused(t *testing.T, path string, want ...string) {
	t.Helper()
	before := fileSHA(t, path)
	for _, ro := range []bool{false, true} {
		s, err := Open(path, Options{ReadOnly: ro, LockTimeout: time.Second})
		if err == nil {
			_ = s.Close()
			t.Fatalf("Open(ReadOnly %v) of %s succeeded", ro, filepath.Base(path))
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Open(ReadOnly %v): %q does not say %q", ro, err, w)
			}
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("Open error %q does not name the file", err)
		}
		if fileSHA(t, path) != before {
			t.Fatalf("Open(ReadOnly %v) modified the file it refused", ro)
		}
	}
}

func TestSpool_Open(t *testing.T) {
	t.Run("locked", func(t *testing.T) {
		s := openTest(t, Options{})
		for _, ro := range []bool{false, true} {
			const timeout = 300 * time.Millisecond
			start := time.Now()
			s2, err := Open(s.Path(), Options{LockTimeout: timeout, ReadOnly: ro})
			took := time.Since(start)
			if err == nil {
				_ = s2.Close()
				t.Fatalf("second Open (ReadOnly %v) of a held file succeeded", ro)
			}
			if !errors.Is(err, ErrLocked) {
				t.Fatalf("second Open (ReadOnly %v): %v, want ErrLocked", ro, err)
			}
			if !strings.Contains(err.Error(), "already running") || !strings.Contains(err.Error(), "--admin-socket") {
				t.Errorf("lock error does not say what to do: %v", err)
			}
			if took < timeout-50*time.Millisecond || took > timeout+2*time.Second {
				t.Errorf("second Open gave up after %v, LockTimeout %v", took, timeout)
			}
		}
		// The holder is unaffected.
		mustAppend(t, s, entry(1, time.Now()))

		// While the holder writes and grows the file, a second opener still
		// only ever sees the lock (never, say, a file that looks truncated).
		stop := make(chan struct{})
		writer := async(func() error {
			for i := 2; ; i++ {
				select {
				case <-stop:
					return nil
				default:
				}
				e := entry(i, time.Now())
				e.Event = bytes.Repeat([]byte{'w'}, 4000)
				if _, err := s.Append([]Entry{e}); err != nil {
					return err
				}
			}
		})
		for range 30 {
			s2, err := Open(s.Path(), Options{LockTimeout: 5 * time.Millisecond, ReadOnly: true})
			if !errors.Is(err, ErrLocked) {
				if err == nil {
					_ = s2.Close()
				}
				t.Fatalf("Open beside a busy writer: %v, want ErrLocked", err)
			}
		}
		close(stop)
		if err := await(t, writer); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("garbage", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(3, 4))
		for _, size := range []int{1, 100, 4096, 5000, 8192, 65536, 200000} {
			path := filepath.Join(t.TempDir(), "spool.db")
			b := make([]byte, size)
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			refused(t, path, "not a readable bbolt file", "untouched")
		}
	})

	t.Run("zeros", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "spool.db")
		if err := os.WriteFile(path, make([]byte, 64<<10), 0o600); err != nil {
			t.Fatal(err)
		}
		refused(t, path, "not a readable bbolt file", "untouched")
	})

	t.Run("truncated", func(t *testing.T) {
		src := makeSpool(t, 300)
		orig, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		s := openAt(t, src, Options{ReadOnly: true})
		hwm := 0 // the end of the pages in use, from the meta page
		_ = s.db.View(func(tx *bolt.Tx) error { hwm = int(tx.Size()); return nil })
		closeChecked(t, s)
		if hwm > len(orig) || hwm < 64<<10 {
			t.Fatalf("high-water mark %d, file %d bytes", hwm, len(orig))
		}
		for _, size := range []int{100, 4096, 8192, 16384, 32768, hwm / 2, hwm - os.Getpagesize(), hwm - 1} {
			path := filepath.Join(t.TempDir(), "spool.db")
			if err := os.WriteFile(path, orig[:size], 0o600); err != nil {
				t.Fatal(err)
			}
			refused(t, path, "truncated", "untouched")
		}
		// Cutting only the unused tail is harmless: the data is all there.
		path := filepath.Join(t.TempDir(), "spool.db")
		if err := os.WriteFile(path, orig[:hwm], 0o600); err != nil {
			t.Fatal(err)
		}
		s = openAt(t, path, Options{})
		if st, _ := s.Stats(); st.Pending != 300 {
			t.Fatalf("spool cut at its high-water mark holds %d records", st.Pending)
		}
	})

	t.Run("a bbolt file that is not a spool", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "other.db")
		boltUpdate(t, path, func(tx *bolt.Tx) error {
			b, err := tx.CreateBucket([]byte("foo"))
			if err != nil {
				return err
			}
			return b.Put([]byte("k"), []byte("v"))
		})
		refused(t, path, "not a gwenrelay spool", "untouched")
	})

	t.Run("format version", func(t *testing.T) {
		for _, v := range []byte{FormatVersion + 1, 255} {
			path := makeSpool(t, 3)
			boltUpdate(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(metaFormat, []byte{v})
			})
			refused(t, path, fmt.Sprintf("format version %d;", v), "use the gwenrelay that wrote it", "move the file aside")
		}
		path := makeSpool(t, 3)
		boltUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaFormat, []byte{0}) })
		refused(t, path, "no readable format version", "untouched")
	})

	t.Run("damaged layout", func(t *testing.T) {
		for name, damage := range map[string]func(tx *bolt.Tx) error{
			"no format":      func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(metaFormat) },
			"missing bucket": func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketDedupExp) },
			"short counters": func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaCounters, []byte{1, 2, 3}) },
			"version-1 counters in a version-2 file": func(tx *bolt.Tx) error {
				meta := tx.Bucket(bucketMeta)
				return meta.Put(metaCounters, append([]byte(nil), meta.Get(metaCounters)[:countersLenV1]...))
			},
			"missing counter": func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Delete(metaCounters) },
		} {
			t.Run(name, func(t *testing.T) {
				path := makeSpool(t, 3)
				boltUpdate(t, path, damage)
				refused(t, path, "untouched")
			})
		}
	})

	t.Run("missing parent directory is created", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "var", "lib", "gwenrelay", "spool.db")
		s := openAt(t, path, Options{})
		mustAppend(t, s, entry(1, time.Now()))
		fi, err := os.Stat(filepath.Dir(path))
		if err != nil || !fi.IsDir() {
			t.Fatalf("parent directory: %v", err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("parent directory mode %v is open to others", fi.Mode().Perm())
		}
	})

	t.Run("read-only", func(t *testing.T) {
		clk := newClock()
		s := openTest(t, Options{DedupWindow: time.Hour, Now: clk.Now})
		var es []Entry
		for i := range 5 {
			es = append(es, entry(i, clk.Now().Add(time.Duration(i)*time.Second)))
		}
		res := mustAppend(t, s, es...)
		if err := s.Dead(res.IDs[0], "bad"); err != nil {
			t.Fatal(err)
		}
		want, _ := s.Stats()
		closeChecked(t, s)
		sha := fileSHA(t, s.Path())

		// Two readers at once: the lock is shared.
		ro := openAt(t, s.Path(), Options{ReadOnly: true})
		ro2 := openAt(t, s.Path(), Options{ReadOnly: true, LockTimeout: 200 * time.Millisecond})
		rs := readAll(t, ro, false)
		if len(rs) != 4 {
			t.Fatalf("read-only ReadPending: %d records", len(rs))
		}
		for i, r := range rs {
			if err := sameEntry(r, es[i+1]); err != nil {
				t.Fatalf("record %d: %v", r.ID, err)
			}
		}
		if d := readAll(t, ro2, true); len(d) != 1 || d[0].ID != res.IDs[0] {
			t.Fatalf("read-only ReadDead: %v", d)
		}
		st, err := ro.Stats()
		if err != nil {
			t.Fatal(err)
		}
		st.FileSize, want.FileSize = 0, 0
		if st != want {
			t.Fatalf("read-only Stats %+v, want %+v", st, want)
		}
		if _, err := ro.Append([]Entry{entry(9, clk.Now())}); err == nil {
			t.Fatal("read-only Append succeeded")
		}
		if err := ro.Ack(res.IDs); err == nil {
			t.Fatal("read-only Ack succeeded")
		}
		if err := ro.Fail(res.IDs, "x"); err == nil {
			t.Fatal("read-only Fail succeeded")
		}
		if err := ro.Dead(res.IDs[1], "x"); err == nil {
			t.Fatal("read-only Dead succeeded")
		}
		// A writer cannot get in while readers hold the file.
		if w, err := Open(s.Path(), Options{LockTimeout: 100 * time.Millisecond}); !errors.Is(err, ErrLocked) {
			if err == nil {
				_ = w.Close()
			}
			t.Fatalf("read-write Open beside readers: %v, want ErrLocked", err)
		}
		closeChecked(t, ro)
		closeChecked(t, ro2)
		if fileSHA(t, s.Path()) != sha {
			t.Fatal("read-only use modified the file")
		}
	})

	t.Run("read-only of a missing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "nope", "spool.db")
		if _, err := Open(path, Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("read-only Open of a missing file: %v", err)
		}
		if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("read-only Open created the directory: %v", err)
		}
	})
}

// TestSpool_OpenAbsolutePath: a spool opened by a relative path reports, and
// goes on using, the absolute one, whatever the working directory becomes;
// Compact too names the file by its absolute path.
func TestSpool_OpenAbsolutePath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	s := openAt(t, "spool.db", Options{})
	mustAppend(t, s, entry(1, time.Now()))
	fi, err := os.Stat(filepath.Join(dir, "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	if p := s.Path(); !filepath.IsAbs(p) {
		t.Fatalf("Path() = %q for a spool opened as \"spool.db\"; want it absolute", p)
	} else if pfi, err := os.Stat(p); err != nil || !os.SameFile(pfi, fi) {
		t.Fatalf("Path() = %q is not the file opened (%v)", p, err)
	}
	t.Chdir(t.TempDir())
	if st, err := s.Stats(); err != nil || st.FileSize != fi.Size() || st.FileSize == 0 {
		t.Fatalf("Stats from another directory: FileSize %d, %v; want %d", st.FileSize, err, fi.Size())
	}
	path := s.Path()
	closeChecked(t, s)

	t.Chdir(dir)
	ro, err := Open("./sub/../spool.db", Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if ro.Path() != path {
		t.Errorf("read-only Path() = %q, want %q", ro.Path(), path)
	}
	closeChecked(t, ro)
	if _, err := Open("missing.db", Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "missing.db")) {
		t.Errorf("read-only Open of a missing relative path: %v; want the absolute path named", err)
	}
	if _, _, err := Compact("spool.db", Options{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Compact("missing.db", Options{}); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "missing.db")) {
		t.Errorf("Compact of a missing relative path: %v; want the absolute path named", err)
	}
}

// TestSpool_OpenMustExist: with MustExist a read-write Open of a missing
// path is refused as a read-only one is, and creates nothing.
func TestSpool_OpenMustExist(t *testing.T) {
	root := t.TempDir()
	for _, path := range []string{
		filepath.Join(root, "spool.db"),               // the directory exists
		filepath.Join(root, "var", "lib", "spool.db"), // it does not
	} {
		_, roErr := Open(path, Options{ReadOnly: true})
		s, err := Open(path, Options{MustExist: true})
		if err == nil {
			_ = s.Close()
			t.Fatalf("Open(MustExist) of missing %s succeeded", path)
		}
		if roErr == nil || err.Error() != roErr.Error() || !strings.Contains(err.Error(), "does not exist; check --spool") {
			t.Fatalf("Open(MustExist) of a missing file: %v; read-only Open says %v", err, roErr)
		}
		if entries, _ := os.ReadDir(root); len(entries) != 0 {
			t.Fatalf("Open(MustExist) of missing %s created %v", path, entries)
		}
	}
	// An existing spool opens as usual, read-write.
	path := makeSpool(t, 2)
	s := openAt(t, path, Options{MustExist: true})
	mustAppend(t, s, entry(9, time.Now()))
	if st, _ := s.Stats(); st.Pending != 3 {
		t.Fatalf("Open(MustExist) of a spool: %d pending, want 3", st.Pending)
	}
}

// TestSpool_OpenSmallMapping: when the large initial mapping is refused
// with ENOMEM (an address-space limit), Open tries once more with bbolt's
// default mapping and says so through SmallMapping.
func TestSpool_OpenSmallMapping(t *testing.T) {
	if initialMmapSize == 0 {
		t.Skip("no large initial mapping on this platform")
	}
	var tries []int
	fail := func(fault func(o *bolt.Options) error) {
		tries = nil
		openFault = func(o *bolt.Options) error {
			tries = append(tries, o.InitialMmapSize)
			return fault(o)
		}
	}
	t.Cleanup(func() { openFault = nil })
	path := makeSpool(t, 5)

	fail(func(o *bolt.Options) error {
		if o.InitialMmapSize > 0 {
			return fmt.Errorf("mmap: %w", syscall.ENOMEM) // as under ulimit -v
		}
		return nil
	})
	for _, ro := range []bool{true, false} {
		s := openAt(t, path, Options{ReadOnly: ro})
		if !s.SmallMapping() || !slices.Equal(tries, []int{initialMmapSize, 0}) {
			t.Fatalf("Open(ReadOnly %v) after ENOMEM: SmallMapping %v, tried mappings %v", ro, s.SmallMapping(), tries)
		}
		if !ro {
			mustAppend(t, s, entry(100, time.Now()))
		}
		if st, _ := s.Stats(); st.Pending != 5+map[bool]int64{false: 1}[ro] {
			t.Fatalf("spool opened with the small mapping: %+v", st)
		}
		closeChecked(t, s)
		tries = nil
	}

	// Refused again: the error says why.
	fail(func(*bolt.Options) error { return syscall.ENOMEM })
	if s, err := Open(path, Options{}); err == nil {
		_ = s.Close()
		t.Fatal("Open succeeded with every mapping refused")
	} else if !errors.Is(err, syscall.ENOMEM) || !strings.Contains(err.Error(), "ulimit -v") || !strings.Contains(err.Error(), path) || len(tries) != 2 {
		t.Fatalf("Open with every mapping refused: %v after %d tries", err, len(tries))
	}
	// Any other error is not retried.
	boom := errors.New("boom")
	fail(func(*bolt.Options) error { return boom })
	if _, err := Open(path, Options{}); !errors.Is(err, boom) || len(tries) != 1 {
		t.Fatalf("Open failing otherwise: %v after %d tries", err, len(tries))
	}

	openFault = nil
	s := openAt(t, path, Options{})
	if s.SmallMapping() {
		t.Fatal("SmallMapping is set with the large mapping in place")
	}
}
