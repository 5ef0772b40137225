package spool

import (
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DefaultTrimInterval is how often a read-write spool drops the file's
// pages from its mapping (see Options.TrimInterval).
const DefaultTrimInterval = 50 * time.Millisecond

// trimLoop drops the spool file's pages from the process's mapping every
// interval until stop is closed. bbolt reads the file through a shared
// mapping, so every page a read touched (the drainer walking a backlog,
// the freelist rebuild at open) stays counted in the process's resident
// memory until the kernel reclaims it: draining a 2 GiB backlog showed
// 2 GiB of RSS, nearly all of it the file. The pages stay in the page cache
// (madvise MADV_DONTNEED on a shared file mapping only unmaps them); the
// next access maps them back from it, and bbolt writes with pwrite, never
// through the mapping, so nothing is lost.
func (s *Spool) trimLoop(interval time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.trimMapping()
		}
	}
}

// trimMapping unmaps the pages of the file's mapping. The read transaction
// holds bbolt's mmap lock, so the mapping cannot move meanwhile, and bbolt
// keeps the committed size (tx.Size) inside it. That is checked against
// /proc/self/maps whenever the mapping moved or the size outgrew what was
// checked, because MADV_DONTNEED past the mapping would zero whatever
// memory lies there: if the range is not the spool file's, the trim stops
// for good. Only the trim goroutine (and Open, before it starts) calls this.
func (s *Spool) trimMapping() {
	if s.trimOff {
		return
	}
	_ = s.db.View(func(tx *bolt.Tx) error {
		size := uintptr(max(tx.Size(), 0))
		addr := s.db.Info().Data
		if size == 0 {
			return nil
		}
		if addr != s.trimAddr || addr+size > s.trimEnd {
			path := s.path
			if real, err := filepath.EvalSymlinks(path); err == nil {
				path = real // /proc/self/maps names the file by its real path
			}
			end, ok := mappingEnd(addr, path)
			if !ok || addr+size > end {
				s.trimOff = true
				return nil
			}
			s.trimAddr, s.trimEnd = addr, end
		}
		dropMapped(addr, size)
		return nil
	})
}
