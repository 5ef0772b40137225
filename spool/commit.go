package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// counters are kept in the meta bucket and updated in the same transaction
// as the records they count, so Stats never has to scan.
type counters struct {
	PendingN, PendingBytes int64
	DeadN, DeadBytes       int64
	DedupN                 int64
	// Attempts counts pending records by failed attempts, in the buckets
	// of attemptBucket. A record is counted by the attempts field of its
	// fixed header (histAttempts), so the ops can keep this without
	// decoding whole records.
	Attempts [AttemptBuckets]int64
}

const (
	// countersLenV1 is the counters value of format version 1, without the
	// attempts histogram.
	countersLenV1 = 5 * 8
	// countersLen is the counters value of format version 2.
	countersLen = countersLenV1 + AttemptBuckets*8
)

func (c counters) encode() []byte {
	b := make([]byte, countersLen)
	vs := append([]int64{c.PendingN, c.PendingBytes, c.DeadN, c.DeadBytes, c.DedupN}, c.Attempts[:]...)
	for i, v := range vs {
		binary.BigEndian.PutUint64(b[i*8:], uint64(v))
	}
	return b
}

// decodeCounters reads the counters value of a file of the given format
// version. For version 1 Attempts is zero: the caller computes it.
//
// Version 1 also takes the longer value: the builds that added the
// histogram before the version was raised wrote it under version 1. Its
// histogram is ignored and computed again like a version-1 file's.
func decodeCounters(b []byte, version byte) (c counters, err error) {
	switch {
	case version >= 2 && len(b) != countersLen:
		return counters{}, fmt.Errorf("counters are %d bytes, want %d for format version %d", len(b), countersLen, version)
	case version < 2 && len(b) != countersLenV1 && len(b) != countersLen:
		return counters{}, fmt.Errorf("counters are %d bytes, want %d for format version %d", len(b), countersLenV1, version)
	}
	v := func(i int) int64 { return int64(binary.BigEndian.Uint64(b[i*8:])) }
	c = counters{PendingN: v(0), PendingBytes: v(1), DeadN: v(2), DeadBytes: v(3), DedupN: v(4)}
	if version < 2 {
		return c, nil
	}
	for i := range c.Attempts {
		c.Attempts[i] = v(5 + i)
	}
	return c, nil
}

// countPending adds n (+1 or -1) pending records stored as v to the
// counters, histogram included.
func (c *counters) countPending(v []byte, n int64) {
	c.PendingN += n
	c.PendingBytes += n * int64(len(v)+8)
	if a, ok := histAttempts(v); ok {
		c.Attempts[attemptBucket(a)] += n
	}
}

// countDead adds n (+1 or -1) dead records stored as v to the counters.
func (c *counters) countDead(v []byte, n int64) {
	c.DeadN += n
	c.DeadBytes += n * int64(len(v)+8)
}

// op is one unit of work for the commit loop. apply runs inside the shared
// write transaction. It either makes all of its writes or, when it returns a
// *rejection, none of them; any other error aborts the whole group.
type op struct {
	apply   func(tx *bolt.Tx, c *counters, now time.Time) error
	entries int
	done    chan error
}

// rejection is an op-level refusal made before the op wrote anything.
type rejection struct{ err error }

func (r *rejection) Error() string { return r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

func reject(err error) error { return &rejection{err} }

// DiskFullPause is how long appends are refused, without trying, after a
// commit failed for want of disk space. Acks, which free space, still run.
const DiskFullPause = time.Second

// errNothingToCommit rolls back a group in which every op was refused.
var errNothingToCommit = errors.New("nothing to commit")

// submit queues o for the commit loop and waits until its transaction is
// committed (and fsynced) or has failed.
func (s *Spool) submit(o *op) error {
	if s.opt.ReadOnly {
		return errors.New("spool is open read-only")
	}
	o.done = make(chan error, 1)
	s.submitMu.RLock()
	if s.closed {
		s.submitMu.RUnlock()
		return ErrClosed
	}
	s.ops <- o
	s.submitMu.RUnlock()
	return <-o.done
}

// loop is the leader of group commit: it blocks for one op, takes every op
// that queued up meanwhile (up to MaxGroup entries), and commits them in one
// transaction. There is no timer: an idle spool commits at once.
func (s *Spool) loop() {
	defer close(s.loopDone)
	var carry *op
	for {
		first := carry
		carry = nil
		if first == nil {
			var ok bool
			if first, ok = <-s.ops; !ok {
				return
			}
		}
		group := []*op{first}
		entries := first.entries
	collect:
		for entries < s.opt.MaxGroup {
			select {
			case o, ok := <-s.ops:
				if !ok {
					break collect
				}
				if entries+o.entries > s.opt.MaxGroup {
					carry = o
					break collect
				}
				group = append(group, o)
				entries += o.entries
			default:
				break collect
			}
		}
		s.commit(group, entries)
	}
}

func (s *Spool) commit(group []*op, entries int) {
	start := time.Now()
	now := s.opt.Now()
	results := make([]error, len(group))
	s.cmu.Lock()
	c := s.counters
	s.cmu.Unlock()
	err := s.db.Update(func(tx *bolt.Tx) error {
		rejected := 0
		for i, o := range group {
			if err := o.apply(tx, &c, now); err != nil {
				var r *rejection
				if errors.As(err, &r) {
					results[i] = r.err
					rejected++
					continue
				}
				return err
			}
		}
		if rejected == len(group) {
			// Nothing was written: roll back instead of paying an fsync.
			return errNothingToCommit
		}
		return tx.Bucket(bucketMeta).Put(metaCounters, c.encode())
	})
	if errors.Is(err, errNothingToCommit) {
		for i, o := range group {
			o.done <- results[i]
		}
		return
	}
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			s.diskFullUntil.Store(time.Now().Add(DiskFullPause).UnixNano())
		}
		err = fmt.Errorf("commit spool %s: %w", s.path, err)
		for _, o := range group {
			o.done <- err
		}
		return
	}
	s.cmu.Lock()
	s.counters = c
	s.cmu.Unlock()
	if s.commitHook != nil {
		s.commitHook(len(group), entries, time.Since(start))
	}
	for i, o := range group {
		o.done <- results[i]
	}
}
