package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// compactTxMaxSize bounds each transaction of the copy, so that compacting
// a large spool does not hold all of it in memory at once.
const compactTxMaxSize = 64 << 20

// compactFault, when set by a test, is called at each step of Compact
// named by step and fails it with the error it returns.
var compactFault func(step string) error

func fault(step string) error {
	if compactFault == nil {
		return nil
	}
	return compactFault(step)
}

// Compact rewrites the spool file at path offline, to give back the space
// bbolt keeps for reuse after a large backlog was drained or deleted. It
// takes the file's lock as Open does (Options.LockTimeout, default 1s), so
// a file held by a running gwenrelay is refused with ErrLocked, and copies
// everything with bbolt's Compact into path+".compact" in the same
// directory. The copy is fsynced, given the original's mode (and owner when
// running as root), renamed over the original and the directory fsynced.
// Any failure before the rename removes the copy and leaves the original
// as it was. It returns the file's sizes before and after. The file keeps
// its format version. path is made absolute first, as by Open.
func Compact(path string, opt Options) (before, after int64, err error) {
	path, err = absPath(path)
	if err != nil {
		return 0, 0, err
	}
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = time.Second
	}
	if _, err := os.Stat(path); err != nil {
		return 0, 0, openError(path, err) // bbolt would create it
	}
	if err := checkLength(path); err != nil {
		return 0, 0, err
	}
	// Read-write for the exclusive lock, although nothing is written: with
	// NoFreelistSync bbolt writes nothing at open or close either.
	src, err := openBolt(path, &bolt.Options{
		Timeout:        opt.LockTimeout,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	}, false)
	if err != nil {
		return 0, 0, openError(path, err)
	}
	// The lock is held until the copy has replaced the file, so nothing can
	// be written to the original after it was copied.
	defer src.Close()
	err = src.View(func(tx *bolt.Tx) error {
		_, _, fresh, err := readMeta(tx, path)
		if err == nil && fresh {
			err = fmt.Errorf("spool %s is empty (not yet initialised by gwenrelay serve)", path)
		}
		return err
	})
	if err != nil {
		return 0, 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("compact spool %s: %w", path, err)
	}
	before = fi.Size()

	tmp := path + ".compact"
	// O_EXCL: a leftover copy is never taken for this one's, nor is a file
	// that happens to have that name overwritten.
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return 0, 0, fmt.Errorf("compact spool %s: %s already exists, left by a compaction that did not finish; it is not the spool: remove it and try again", path, tmp)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("compact spool %s: create %s: %w", path, tmp, err)
	}
	_ = f.Close()
	renamed := false
	defer func() {
		if !renamed {
			_ = os.Remove(tmp)
		}
	}()
	fail := func(what string, err error) (int64, int64, error) {
		return 0, 0, fmt.Errorf("compact spool %s: %s: %w (the spool was left as it was)", path, what, err)
	}

	// The copy gets a freelist on disk (bbolt's default), so that its first
	// Open reads that instead of walking every page.
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: opt.LockTimeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return fail("open the copy", err)
	}
	err = bolt.Compact(dst, src, compactTxMaxSize)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fault("copied")
	}
	if err != nil {
		return fail("copy", err)
	}
	if err := os.Chmod(tmp, fi.Mode().Perm()); err != nil {
		return fail("set the copy's mode", err)
	}
	if err := MatchOwner(tmp, fi); err != nil {
		return fail("set the copy's owner", err)
	}
	if err := syncFile(tmp); err != nil {
		return fail("sync the copy", err)
	}
	tfi, err := os.Stat(tmp)
	if err == nil {
		err = fault("synced")
	}
	if err != nil {
		return fail("stat the copy", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail("replace the spool with the copy", err)
	}
	renamed = true
	if err := syncDir(filepath.Dir(path)); err != nil {
		return 0, 0, fmt.Errorf("compact spool %s: the compacted file is in place, but syncing its directory failed (a crash now could bring the old one back): %w", path, err)
	}
	return before, tfi.Size(), nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
