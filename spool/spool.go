// Package spool is gwenrelay's durable queue: one bbolt file holding the
// events that were acknowledged to a sender and not yet accepted by Segment.
//
// The contract: Append returns nil only after its records are committed and
// fsynced, so an acknowledgement given after Append survives a crash, a kill
// or a power cut. Append is all-or-nothing per call. Records are read oldest
// first and leave the pending bucket only through Ack (delivered) or Dead
// (moved to the dead-letter bucket with its error), or by an operator's
// Delete; Retry moves dead letters back under their old ids. Scan, Import
// and Compact serve export, import and offline compaction.
//
// Every write goes through one commit loop that takes whatever is queued,
// applies it in one bbolt transaction and fsyncs once. An idle spool commits
// a lone request at once (no timer), and a busy one amortises each fsync over
// everything that arrived during the previous commit.
//
// This is the only package that imports bbolt.
package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FormatVersion is the layout version of the file, kept in the meta bucket.
// Open refuses a file of a newer version rather than misreading it.
//
// Version 1 kept five counters (40 bytes); version 2 adds the attempts
// histogram (88 bytes). This build reads both, and a read-write Open
// upgrades a version-1 file to version 2 in one transaction. The builds
// that read only version 1 refuse a version-2 file by its version, saying
// to use the gwenrelay that wrote it, instead of calling it damaged.
const FormatVersion = 2

// oldestFormat is the oldest version this build reads.
const oldestFormat = 1

var (
	bucketPending  = []byte("pending")
	bucketDead     = []byte("dead")
	bucketDedup    = []byte("dedup")     // dedup key -> id(8) | admitted-at unix nanos(8)
	bucketDedupExp = []byte("dedup_exp") // admitted-at unix nanos(8) | dedup key -> empty, for pruning in time order
	bucketMeta     = []byte("meta")

	metaFormat   = []byte("format")
	metaCounters = []byte("counters")
)

// Errors callers branch on.
var (
	// ErrClosed is returned by writes after Close has begun.
	ErrClosed = errors.New("spool is closed")
	// ErrOverQuota is returned by Append when the records would take the
	// spool over Options.MaxBytes. Nothing of the call was written.
	ErrOverQuota = errors.New("spool is over its byte quota")
	// ErrLocked is returned by Open when another process holds the file.
	ErrLocked = errors.New("spool is locked by another process")
	// ErrNotFound is returned for an id that is not in the bucket asked for.
	ErrNotFound = errors.New("no such record")
	// ErrKeyTooLong is returned by Append, with nothing written, when an
	// entry's dedup key is longer than MaxKeyLen (hash such keys first).
	ErrKeyTooLong = errors.New("dedup key is too long")
)

// Options tune a spool. The zero value is usable.
type Options struct {
	// MaxBytes caps the bytes of stored records (pending and dead); Append
	// answers ErrOverQuota beyond it. Zero means no cap. The file itself is
	// larger than this (bbolt's pages and free space, about 2x at peak).
	MaxBytes int64
	// DedupWindow is how long a dedup key keeps a repeat out. Zero disables
	// deduplication.
	DedupWindow time.Duration
	// LockTimeout bounds the wait for bbolt's file lock (default 1s), so a
	// second opener fails instead of hanging.
	LockTimeout time.Duration
	// ReadOnly opens the file with a shared lock and refuses writes.
	ReadOnly bool
	// MustExist makes a read-write Open refuse a path that does not exist,
	// as a read-only one does, instead of creating it (and its directory).
	MustExist bool
	// MaxGroup caps the entries committed in one transaction (default 16384).
	MaxGroup int
	// TrimInterval is how often a read-write spool unmaps the file's pages
	// from the process (default DefaultTrimInterval; negative: never), so
	// that its resident memory is its own and not the spool file read
	// through bbolt's mapping (see trimLoop).
	TrimInterval time.Duration
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
}

// Spool is an open spool file. Its methods are safe for concurrent use.
type Spool struct {
	db   *bolt.DB
	path string
	opt  Options

	ops      chan *op
	loopDone chan struct{}

	submitMu sync.RWMutex // held shared by submitters, exclusively by Close
	closed   bool

	cmu      sync.Mutex
	counters counters // mirrors the committed meta counters

	// diskFullUntil (unix nanos) holds appends back for a moment after a
	// commit failed for want of space: with NoFreelistSync every failed
	// commit makes bbolt rebuild its freelist by walking the whole file, so
	// retrying at the rate requests arrive would stall the spool.
	diskFullUntil atomic.Int64

	// smallMapping is set when the file is mapped at bbolt's default size
	// because the large initial mapping was refused (SmallMapping).
	smallMapping bool

	commitHook func(groupOps, groupEntries int, d time.Duration)

	trimStop, trimDone chan struct{}
	// trimAddr and trimEnd are the mapping trimMapping last checked;
	// trimOff is set when a check failed.
	trimAddr, trimEnd uintptr
	trimOff           bool
}

// Open opens (creating if absent, unless Options.MustExist or ReadOnly) the
// spool at path. A file that is locked, unreadable, corrupt or of a newer
// format is refused with an error that says so, and is not modified. path
// is made absolute first (Path, errors and Stats name that).
func Open(path string, opt Options) (*Spool, error) {
	path, err := absPath(path)
	if err != nil {
		return nil, err
	}
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = time.Second
	}
	if opt.MaxGroup <= 0 {
		opt.MaxGroup = 16384
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	create := !opt.ReadOnly && !opt.MustExist
	if create {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("create spool directory: %w", err)
		}
	} else if _, err := os.Stat(path); err != nil {
		return nil, openError(path, err)
	}
	if err := checkLength(path); err != nil {
		return nil, err
	}
	bo := &bolt.Options{
		Timeout:  opt.LockTimeout,
		ReadOnly: opt.ReadOnly,
		// A persisted freelist is rewritten on every commit; with a large
		// backlog being drained that costs megabytes per commit. bbolt
		// rebuilds it by scanning at open instead.
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: initialMmapSize,
	}
	open := func() (*bolt.DB, error) {
		if openFault != nil {
			if err := openFault(bo); err != nil {
				return nil, err
			}
		}
		return openBolt(path, bo, create)
	}
	db, err := open()
	small := false
	if err != nil && bo.InitialMmapSize > 0 && errors.Is(err, syscall.ENOMEM) {
		// The large mapping does not fit under an address-space limit
		// (ulimit -v, systemd's LimitAS=): bbolt's default one still works,
		// at the cost SmallMapping describes.
		bo.InitialMmapSize = 0
		small = true
		db, err = open()
	}
	if err != nil {
		return nil, openError(path, err)
	}
	s := &Spool{db: db, path: path, opt: opt, smallMapping: small}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if !opt.ReadOnly {
		s.ops = make(chan *op, 4096)
		s.loopDone = make(chan struct{})
		go s.loop()
		if opt.TrimInterval >= 0 {
			if opt.TrimInterval == 0 {
				opt.TrimInterval = DefaultTrimInterval
			}
			s.trimMapping() // what the open read (a freelist rebuild walks the file)
			s.trimStop, s.trimDone = make(chan struct{}), make(chan struct{})
			go s.trimLoop(opt.TrimInterval, s.trimStop, s.trimDone)
		}
	}
	return s, nil
}

// absPath makes path absolute, so that what the spool reports of itself
// (Path, Stats, errors) names the same file from any working directory.
func absPath(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("spool %s: %w", path, err)
	}
	return abs, nil
}

// openFault, when set by a test, is called before each attempt of Open to
// open the file, with the options it is about to use; an error it returns
// is taken as the attempt's.
var openFault func(o *bolt.Options) error

// SmallMapping reports whether the file is mapped at bbolt's default size
// because the large initial mapping (see initialMmapSize) was refused for
// want of address space, as under ulimit -v or systemd's LimitAS=. The
// spool works as before, except that while a long read (an export of a
// large spool) is open, a commit that has to grow the mapping waits for it,
// and ingest with it. Worth a warning: raise the limit to avoid it.
func (s *Spool) SmallMapping() bool { return s.smallMapping }

// initialMmapSize is how much of the file bbolt maps up front. When the file
// outgrows its mapping bbolt remaps it, and for that it takes its mmap lock
// exclusively, which waits for every open read transaction to end: one long
// read (Scan exporting a large spool from a live daemon) would stop every
// commit that grows the file, and so ingest. bbolt's Options.InitialMmapSize
// doc: "Read transactions won't block write transaction if the
// InitialMmapSize is large enough to hold database mmap size." 8 GiB is
// address space, not memory: pages are read in only as they are touched,
// and the file itself is not grown to it. It does change how the file
// grows: bbolt extends it in steps of 16 MiB (its AllocSize) once the
// mapping is larger than that, so even a small spool's file is now 16 MiB
// long from its first commit (the unwritten tail is a hole, taking no disk
// space). Beyond 8 GiB bbolt remaps as before. Left at bbolt's default on
// 32-bit (too little address space) and on Windows (where bbolt grows the
// file to the mapping). Under an address-space limit too small for it, Open
// falls back to bbolt's default (see SmallMapping).
var initialMmapSize = func() int {
	if strconv.IntSize < 64 || runtime.GOOS == "windows" {
		return 0
	}
	n := uint64(8) // a variable, so that the 32-bit build compiles
	return int(n << 30)
}()

// openBolt opens path with bbolt and makes sure the file it locked is still
// the one at path. Compact replaces the file by renaming a copy over it
// while it holds the lock; an Open that was waiting for that lock meanwhile
// would get it on the old, unlinked file and run on it, and everything it
// accepted would vanish with it. So the file opened is compared with the
// file at path once the lock is held, and a replaced one is opened again.
// Unless create is set, a missing file is not created.
func openBolt(path string, o *bolt.Options, create bool) (*bolt.DB, error) {
	for attempt := 1; ; attempt++ {
		var f *os.File
		o.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
			var err error
			if !create {
				flag &^= os.O_CREATE
			}
			f, err = os.OpenFile(name, flag, perm)
			if err == nil && openedHook != nil {
				openedHook(name)
			}
			return f, err
		}
		db, err := bolt.Open(path, 0o600, o)
		if err != nil {
			return nil, err
		}
		held, err := f.Stat()
		if err != nil {
			_ = db.Close()
			return nil, err
		}
		cur, err := os.Stat(path)
		if err != nil || os.SameFile(held, cur) {
			// A file removed meanwhile is left to the caller as before: there
			// is nothing newer to open instead.
			return db, nil
		}
		_ = db.Close()
		if attempt == 3 {
			return nil, errors.New("the file was replaced (compacted) each time it was opened; try again")
		}
	}
}

// openedHook, when set by a test, is called once openBolt has opened the
// file and before bbolt waits for its lock.
var openedHook func(path string)

func openError(path string, err error) error {
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("spool %s: %w (is gwenrelay already running on it? stop the service, or reach it with --admin-socket)", path, ErrLocked)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return fmt.Errorf("spool %s is not a readable bbolt file (%v); it was left untouched for inspection: move it aside to start with an empty spool", path, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("open spool %s: permission denied; run as the user that owns it (gwenrelay) or fix its mode", path)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("spool %s does not exist; check --spool", path)
	case errors.Is(err, syscall.ENOMEM):
		return fmt.Errorf("open spool %s: %w (is the address space limited, by ulimit -v or systemd's LimitAS=?)", path, err)
	}
	return fmt.Errorf("open spool %s: %w", path, err)
}

// checkLength refuses a file that is shorter than its bbolt meta page says
// (a truncated copy, a restore cut short by a full disk). bbolt trusts the
// meta page and maps the file: reading past its end is a SIGBUS or an
// assertion panic inside bolt.Open, which kills the process instead of
// returning an error. Only the two meta pages are read (bbolt's on-disk
// format v2: page header 16 bytes, then magic, version, page size, flags,
// root bucket, freelist, high-water mark, txid, FNV-64a checksum, in native
// byte order); anything else is left to bolt.Open to judge.
func checkLength(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return nil // absent (created by Open) or unreadable: bolt.Open reports it
	}
	defer f.Close()
	size := func() int64 {
		fi, err := f.Stat()
		if err != nil {
			return -1
		}
		return fi.Size()
	}
	if size() <= 0 {
		return nil // a new file: bolt.Open lays it out
	}
	meta := func(off int64) (pageSize, hwm int64, ok bool) {
		var b [80]byte
		if _, err := f.ReadAt(b[:], off); err != nil {
			return 0, 0, false
		}
		m := b[16:]
		ne := binary.NativeEndian
		h := fnv.New64a()
		_, _ = h.Write(m[:56])
		if ne.Uint32(m[0:]) != 0xED0CDAED || ne.Uint32(m[4:]) != 2 || ne.Uint64(m[56:]) != h.Sum64() {
			return 0, 0, false
		}
		return int64(ne.Uint32(m[8:])), int64(ne.Uint64(m[40:])), true
	}
	pageSize, need, ok0 := meta(0)
	if !ok0 {
		// bbolt then takes the OS page size, and looks for the second meta
		// page at that offset.
		pageSize = int64(os.Getpagesize())
	}
	ps, hwm, ok1 := meta(pageSize)
	ok1 = ok1 && ps == pageSize
	if ok1 {
		need = max(need, hwm)
	}
	// The size is taken after the meta pages were read: a live writer grows
	// the file before it writes a meta page that needs the room.
	n := size()
	if !ok0 && !ok1 {
		// Not bbolt at all. bbolt refuses a short one too, but only says
		// "file size too small".
		if n >= 0 && n < 2*pageSize {
			return fmt.Errorf("spool %s is not a readable bbolt file (%d bytes, too short); it was left untouched for inspection: move it aside to start with an empty spool", path, n)
		}
		return nil // bolt.Open refuses it with ErrInvalid
	}
	if need < 2 {
		need = 2
	}
	if n >= 0 && need*pageSize > n {
		return fmt.Errorf("spool %s is truncated (%d bytes, its header needs %d); it was left untouched for inspection: restore it, or move it aside to start with an empty spool", path, n, need*pageSize)
	}
	return nil
}

// init checks the format of an existing file, upgrades a version-1 one, or
// lays out a new one. It reads before it writes, so a foreign or newer file
// is never modified, and a read-only spool never writes.
func (s *Spool) init() error {
	var fresh bool
	var version byte
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		s.counters, version, fresh, err = readMeta(tx, s.path)
		return err
	})
	if err != nil {
		return err
	}
	if !fresh {
		if version == FormatVersion || s.opt.ReadOnly {
			return nil // a read-only spool keeps the computed histogram in memory
		}
		// Version 1: its histogram was computed above. The counters in the
		// new form and the new version go in one transaction, so the file
		// is never version 2 with old counters nor the reverse, and the
		// scan is paid once.
		err := s.db.Update(func(tx *bolt.Tx) error {
			meta := tx.Bucket(bucketMeta)
			if err := meta.Put(metaCounters, s.counters.encode()); err != nil {
				return err
			}
			return meta.Put(metaFormat, []byte{FormatVersion})
		})
		if err != nil {
			return fmt.Errorf("upgrade spool %s from format version %d to %d: %w", s.path, version, FormatVersion, err)
		}
		return nil
	}
	if s.opt.ReadOnly {
		return fmt.Errorf("spool %s is empty (not yet initialised by gwenrelay serve)", s.path)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPending, bucketDead, bucketDedup, bucketDedupExp, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(metaFormat, []byte{FormatVersion}); err != nil {
			return err
		}
		return meta.Put(metaCounters, counters{}.encode())
	})
}

// readMeta checks that tx holds a spool this build can read and returns its
// format version and counters. fresh is set for an empty bbolt file (no
// buckets at all), which Open lays out. For a version-1 file the attempts
// histogram, which it does not keep, has been computed here by one scan of
// the pending bucket.
func readMeta(tx *bolt.Tx, path string) (c counters, version byte, fresh bool, err error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		empty := true
		_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
		if !empty {
			return c, 0, false, fmt.Errorf("spool %s is a bbolt file but not a gwenrelay spool (no meta bucket); it was left untouched: check --spool", path)
		}
		return c, 0, true, nil
	}
	f := meta.Get(metaFormat)
	if len(f) != 1 || f[0] < oldestFormat {
		return c, 0, false, fmt.Errorf("spool %s has no readable format version; it was left untouched for inspection", path)
	}
	version = f[0]
	if version > FormatVersion {
		return c, 0, false, fmt.Errorf("spool %s has format version %d; this gwenrelay reads versions %d to %d: use the gwenrelay that wrote it, or move the file aside", path, version, oldestFormat, FormatVersion)
	}
	for _, b := range [][]byte{bucketPending, bucketDead, bucketDedup, bucketDedupExp} {
		if tx.Bucket(b) == nil {
			return c, 0, false, fmt.Errorf("spool %s is damaged: bucket %q is missing; it was left untouched for inspection", path, b)
		}
	}
	c, err = decodeCounters(meta.Get(metaCounters), version)
	if err != nil {
		return c, 0, false, fmt.Errorf("spool %s is damaged: %v; it was left untouched for inspection", path, err)
	}
	if version < 2 {
		err = tx.Bucket(bucketPending).ForEach(func(_, v []byte) error {
			if a, ok := histAttempts(v); ok {
				c.Attempts[attemptBucket(a)]++
			}
			return nil
		})
	}
	return c, version, false, err
}

// Path returns the file the spool was opened from.
func (s *Spool) Path() string { return s.path }

// Close stops taking writes, commits everything already submitted, and closes
// the file. It is safe to call more than once.
func (s *Spool) Close() error {
	s.submitMu.Lock()
	already := s.closed
	s.closed = true
	if !already && s.ops != nil {
		close(s.ops)
	}
	s.submitMu.Unlock()
	if already {
		return nil
	}
	if s.loopDone != nil {
		<-s.loopDone
	}
	if s.trimStop != nil {
		close(s.trimStop)
		<-s.trimDone
	}
	if !s.opt.ReadOnly {
		s.persistFreelist()
	}
	return s.db.Close()
}

// persistFreelist writes bbolt's freelist in one last commit. The spool runs
// with NoFreelistSync, so bbolt rebuilds the freelist at open by walking
// every page: on a large spool that is not in the page cache (after a
// reboot) that reads the whole file, tens of seconds for gigabytes. With the
// freelist on disk the next open reads it instead; its first commit drops it
// again. After a crash there is no such commit and the walk is the fallback.
// A failure (a full disk) only costs the next open that walk.
func (s *Spool) persistFreelist() {
	s.db.NoFreelistSync = false
	_ = s.db.Update(func(*bolt.Tx) error { return nil })
	s.db.NoFreelistSync = true
}

// Check runs bbolt's consistency check over the whole file.
func (s *Spool) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
}

// SetCommitHook installs a function called after each commit with the number
// of operations and entries it carried and how long it took (for metrics).
// Call it before the spool is used.
func (s *Spool) SetCommitHook(f func(groupOps, groupEntries int, d time.Duration)) {
	s.commitHook = f
}
