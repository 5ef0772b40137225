package spool

import (
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
// holds bbolt's mmap lock, so the mapping cannot move meanwhile, and covers
// at least the file's used size.
func (s *Spool) trimMapping() {
	_ = s.db.View(func(tx *bolt.Tx) error {
		if size := tx.Size(); size > 0 {
			dropMapped(s.db.Info().Data, uintptr(size))
		}
		return nil
	})
}
