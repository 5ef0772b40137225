package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// State selects a bucket: the records waiting for delivery, or the dead
// letters.
type State uint8

const (
	StatePending State = iota // waiting for delivery (in-flight ones included)
	StateDead                 // dead letters, kept for inspection, Retry or Delete
)

// String returns "pending" or "dead".
func (s State) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateDead:
		return "dead"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

func (s State) bucket() ([]byte, error) {
	switch s {
	case StatePending:
		return bucketPending, nil
	case StateDead:
		return bucketDead, nil
	}
	return nil, fmt.Errorf("spool: unknown record state %d", uint8(s))
}

// whereChunk is how many ids one op of RetryWhere or DeleteWhere carries:
// it bounds how long the commit loop (and so every Append) waits behind one
// of their commits.
const whereChunk = 1000

// errUnchanged is the rejection of an admin op that found nothing to write,
// so that a group of only such ops is rolled back instead of fsynced.
var errUnchanged = errors.New("nothing to change")

// submitAdmin submits o and maps errUnchanged to success.
func (s *Spool) submitAdmin(o *op) error {
	if err := s.submit(o); err != nil && !errors.Is(err, errUnchanged) {
		return err
	}
	return nil
}

// Scan calls fn for the records of each of states in turn, in the order
// given: for each state, the records with id > after, in id order. It stops
// at the first false or error from fn (and returns that error). All of it
// runs in one read transaction, so fn sees one consistent snapshot across
// the states (for an export: a record retried or killed meanwhile is seen
// exactly once) while commits go on beside it; records do not alias the
// file. Unreadable records are passed with only ID and Unreadable set.
func (s *Spool) Scan(states []State, after uint64, fn func(State, Record) (bool, error)) error {
	names := make([][]byte, len(states))
	for i, st := range states {
		var err error
		if names[i], err = st.bucket(); err != nil {
			return err
		}
	}
	return s.db.View(func(tx *bolt.Tx) error {
		for i, st := range states {
			more, err := scanBucket(tx.Bucket(names[i]), after, func(r Record) (bool, error) { return fn(st, r) })
			if err != nil || !more {
				return err
			}
		}
		return nil
	})
}

// retryOne moves the dead record stored as v under k back to pending,
// unchanged: its attempts and last error stay as history, and its id puts
// it back in its original place in the FIFO order. Unreadable records are
// not moved (the drainer would only move them back): false.
func retryOne(tx *bolt.Tx, c *counters, k, v []byte) (bool, error) {
	if !readable(btoi(k), v) {
		return false, nil
	}
	v = append([]byte(nil), v...) // v belongs to the dead bucket's page
	c.countDead(v, -1)
	c.countPending(v, 1)
	if err := tx.Bucket(bucketDead).Delete(k); err != nil {
		return false, err
	}
	return true, tx.Bucket(bucketPending).Put(k, v)
}

// Retry moves dead records back to pending under the same id, so they go
// out before newer records, keeping Attempts, LastAttempt and LastError. It
// returns how many moved and the ids that were not moved: those not dead,
// and dead records that are unreadable (moving them would only make the
// drainer move them back). One commit.
func (s *Spool) Retry(ids []uint64) (moved int, missing []uint64, err error) {
	return s.byID(StateDead, ids, retryOne)
}

// byID applies act, in one commit, to each of ids that is in the bucket of
// state at that moment, and returns how many act changed and the ids it did
// not (absent, or refused by act). A commit that changes nothing is rolled
// back.
func (s *Spool) byID(state State, ids []uint64, act func(tx *bolt.Tx, c *counters, k, v []byte) (bool, error)) (changed int, missing []uint64, err error) {
	name, err := state.bucket()
	if err != nil {
		return 0, nil, err
	}
	if len(ids) == 0 {
		return 0, nil, nil
	}
	err = s.submitAdmin(&op{entries: len(ids), apply: func(tx *bolt.Tx, c *counters, _ time.Time) error {
		changed, missing = 0, nil
		b := tx.Bucket(name)
		for _, id := range ids {
			k := itob(id)
			v := b.Get(k)
			ok := false
			if v != nil {
				var err error
				if ok, err = act(tx, c, k, v); err != nil {
					return err
				}
			}
			if !ok {
				missing = append(missing, id)
				continue
			}
			changed++
		}
		if changed == 0 {
			return reject(errUnchanged)
		}
		return nil
	}})
	if err != nil {
		return 0, nil, err
	}
	return changed, missing, nil
}

// RetryWhere moves every dead record for which match returns true back to
// pending, as Retry does, and returns how many moved. match==nil matches
// all. Unreadable records are passed to match (Record.Unreadable set) but
// stay dead.
//
// match is called on the caller's goroutine, within one read transaction
// over the dead letters as they were when RetryWhere started (records that
// die later are not looked at), before anything is written: it may take its
// time (parse each event) without holding up ingest, but it must not wait
// for a write to this spool. A panic in match is returned as an error, with
// nothing moved. The matching ids are then moved in commits of whereChunk
// ids, so ingest goes on between them; an id that is no longer dead by then
// (retried or deleted meanwhile) is left alone.
func (s *Spool) RetryWhere(match func(Record) bool) (int, error) {
	ids, err := s.matching(StateDead, match)
	if err != nil {
		return 0, err
	}
	return s.inChunks(StateDead, ids, retryOne)
}

// DeleteWhere removes the records of the given state for which match
// returns true (unreadable ones are passed too and may be removed), and
// returns how many it removed. match==nil matches all. match runs as for
// RetryWhere: on the caller's goroutine in one read transaction, before
// anything is written. The ids are then deleted in commits of whereChunk,
// each id only if it is still in the bucket of state: a dead letter retried
// into pending meanwhile is not deleted from there.
func (s *Spool) DeleteWhere(state State, match func(Record) bool) (int, error) {
	ids, err := s.matching(state, match)
	if err != nil {
		return 0, err
	}
	return s.deleteIDs(state, ids)
}

// deleteIDs deletes those of ids that are in the bucket of state when their
// chunk commits, and returns how many it deleted.
func (s *Spool) deleteIDs(state State, ids []uint64) (int, error) {
	name, err := state.bucket()
	if err != nil {
		return 0, err
	}
	return s.inChunks(state, ids, func(tx *bolt.Tx, c *counters, k, v []byte) (bool, error) {
		return true, deleteOne(tx.Bucket(name), name, c, k, v)
	})
}

// matching returns, in id order, the ids of the records of state that match
// accepts (all of them for nil), from one read transaction. Unreadable
// records are passed to match with Record.Unreadable set.
func (s *Spool) matching(state State, match func(Record) bool) ([]uint64, error) {
	var ids []uint64
	err := s.Scan([]State{state}, 0, func(_ State, r Record) (bool, error) {
		ok, err := safeMatch(match, r)
		if ok {
			ids = append(ids, r.ID)
		}
		return err == nil, err
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// inChunks runs byID over ids, whereChunk at a time, and returns how many
// act changed in all. On an error it returns the count of the chunks
// committed before it.
func (s *Spool) inChunks(state State, ids []uint64, act func(tx *bolt.Tx, c *counters, k, v []byte) (bool, error)) (int, error) {
	total := 0
	for len(ids) > 0 {
		n := min(len(ids), whereChunk)
		changed, _, err := s.byID(state, ids[:n], act)
		if err != nil {
			return total, err
		}
		total += changed
		ids = ids[n:]
	}
	return total, nil
}

// safeMatch calls match, turning a panic into an error: match is given by
// the caller (a filter over arbitrary stored JSON, run for the admin API),
// and one bad record must not take the whole daemon down.
func safeMatch(match func(Record) bool, r Record) (ok bool, err error) {
	if match == nil {
		return true, nil
	}
	defer func() {
		if p := recover(); p != nil {
			ok, err = false, fmt.Errorf("match panicked on record %d: %v", r.ID, p)
		}
	}()
	return match(r), nil
}

func deleteOne(b *bolt.Bucket, name []byte, c *counters, k, v []byte) error {
	if string(name) == string(bucketPending) {
		c.countPending(v, -1)
	} else {
		c.countDead(v, -1)
	}
	return b.Delete(k)
}

// Delete removes records by id, from pending or dead wherever each is, in
// one commit. It returns how many it removed and the ids found in neither.
// Their dedup keys stay: a repeat of a deleted event is still a repeat.
func (s *Spool) Delete(ids []uint64) (deleted int, missing []uint64, err error) {
	if len(ids) == 0 {
		return 0, nil, nil
	}
	err = s.submitAdmin(&op{entries: len(ids), apply: func(tx *bolt.Tx, c *counters, _ time.Time) error {
		deleted, missing = 0, nil
		p, d := tx.Bucket(bucketPending), tx.Bucket(bucketDead)
		for _, id := range ids {
			k := itob(id)
			b, name := p, bucketPending
			v := p.Get(k)
			if v == nil {
				b, name = d, bucketDead
				v = d.Get(k)
			}
			if v == nil {
				missing = append(missing, id)
				continue
			}
			if err := deleteOne(b, name, c, k, v); err != nil {
				return err
			}
			deleted++
		}
		if deleted == 0 {
			return reject(errUnchanged)
		}
		return nil
	}})
	if err != nil {
		return 0, nil, err
	}
	return deleted, missing, nil
}

// ImportResult says what became of each record of an Import, in order.
type ImportResult struct {
	IDs                  []uint64 // id each record was stored under (for duplicates: 0)
	Duplicate            []bool
	Imported, Duplicates int
}

// maxKeptID bounds the ids Import keeps: a larger one (only a crafted
// export has one) is renumbered, since raising the sequence to near 2^64
// would leave Append no ids.
const maxKeptID = 1 << 62

// Import stores records as they are given (all fields but Unreadable) in
// the bucket of state, for `spool import` of an export, in one all-or-nothing
// commit; callers pass chunks of about a thousand. The quota is not applied.
//
// A record keeps its ID when that id is free in both buckets, so an export
// imported into an empty spool exports back the same; otherwise (and for ID
// 0) it gets the next id of the pending sequence. Either way the sequence is
// raised to at least every id stored, so later Appends never collide.
//
// Repeats are not stored: a record whose Key was admitted within the dedup
// window, an earlier record of the same call with that Key, and any record
// (with a Key or not) whose ID holds a record with the same MessageID in
// either bucket, as after importing the same export twice. Stored records
// with a Key are admitted to the dedup index, as by Append, when dedup is
// on.
func (s *Spool) Import(state State, recs []Record) (ImportResult, error) {
	res := ImportResult{IDs: make([]uint64, len(recs)), Duplicate: make([]bool, len(recs))}
	name, err := state.bucket()
	if err != nil {
		return ImportResult{}, err
	}
	if len(recs) == 0 {
		return res, nil
	}
	for i := range recs {
		// Refused before submitting: bbolt would refuse a long key inside
		// the shared transaction, failing every other op of the group.
		if recs[i].Unreadable != "" {
			return ImportResult{}, fmt.Errorf("record %d (id %d) is marked unreadable; it has no contents to import", i, recs[i].ID)
		}
		if s.opt.DedupWindow > 0 && len(recs[i].Key) > MaxKeyLen {
			return ImportResult{}, fmt.Errorf("record %d (id %d): %w (%d bytes, at most %d)", i, recs[i].ID, ErrKeyTooLong, len(recs[i].Key), MaxKeyLen)
		}
	}
	o := &op{entries: len(recs)}
	o.apply = func(tx *bolt.Tx, c *counters, now time.Time) error {
		res.Imported, res.Duplicates = 0, 0
		p, d := tx.Bucket(bucketPending), tx.Bucket(bucketDead)
		dst := tx.Bucket(name)
		dedup, exp := tx.Bucket(bucketDedup), tx.Bucket(bucketDedupExp)
		window := s.opt.DedupWindow
		free := func(k []byte) bool { return p.Get(k) == nil && d.Get(k) == nil }
		for i := range recs {
			r := &recs[i]
			res.IDs[i], res.Duplicate[i] = 0, false
			keyed := window > 0 && len(r.Key) > 0
			dup := false
			if keyed {
				// The index also holds the keys stored earlier in this call.
				_, dup = seenWithin(dedup, r.Key, now, window)
			}
			if !dup && r.ID != 0 {
				k := itob(r.ID)
				v := p.Get(k)
				if v == nil {
					v = d.Get(k)
				}
				if mid, ok := storedMessageID(v); ok && mid == r.MessageID {
					dup = true
				}
			}
			if dup {
				res.Duplicate[i] = true
				res.Duplicates++
				continue
			}
			id := r.ID
			if id == 0 || id > maxKeptID || !free(itob(id)) {
				for {
					var err error
					if id, err = p.NextSequence(); err != nil {
						return err
					}
					// The sequence is above every id stored unless the file
					// was built otherwise; never overwrite a record.
					if free(itob(id)) {
						break
					}
				}
			}
			if id > p.Sequence() {
				if err := p.SetSequence(id); err != nil {
					return err
				}
			}
			stored := Record{Kind: r.Kind, ReceivedAt: r.ReceivedAt, Attempts: r.Attempts, LastAttempt: r.LastAttempt,
				LastError: r.LastError, MessageID: r.MessageID, Key: r.Key, Event: r.Event}
			v := stored.encode()
			k := itob(id)
			if err := dst.Put(k, v); err != nil {
				return err
			}
			if state == StatePending {
				c.countPending(v, 1)
			} else {
				c.countDead(v, 1)
			}
			res.IDs[i] = id
			res.Imported++
			if keyed {
				if err := admit(dedup, exp, c, r.Key, id, now); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := s.submit(o); err != nil {
		return ImportResult{}, err
	}
	return res, nil
}

// storedMessageID reads the MessageID of a stored record without decoding
// the rest; false for nil or unreadable bytes.
func storedMessageID(v []byte) (string, bool) {
	if len(v) < recordFixed || v[0] != recordVersion {
		return "", false
	}
	rest := v[recordFixed:]
	l, n := binary.Uvarint(rest)
	if n <= 0 || uint64(len(rest)-n) < l {
		return "", false
	}
	return string(rest[n : n+int(l)]), true
}

// admit records key in the dedup index as admitted now for record id. An
// entry already there is an expired one not yet pruned: it is replaced.
func admit(dedup, exp *bolt.Bucket, c *counters, key []byte, id uint64, now time.Time) error {
	if old := dedup.Get(key); len(old) == 16 {
		if err := exp.Delete(expKey(old[8:], key)); err != nil {
			return err
		}
	} else {
		c.DedupN++
	}
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v, id)
	binary.BigEndian.PutUint64(v[8:], uint64(now.UnixNano()))
	if err := dedup.Put(key, v); err != nil {
		return err
	}
	return exp.Put(expKey(v[8:], key), nil)
}

// Ping sends an empty operation through the commit loop and waits up to
// timeout for it to come back: the daemon's watchdog check that the loop is
// going round (a failed commit, on a full disk say, still counts: the
// relay then answers 503 and must stay up). It writes nothing (the op is refused, so a group of only
// pings is rolled back without an fsync).
func (s *Spool) Ping(timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		done <- s.submitAdmin(&op{apply: func(*bolt.Tx, *counters, time.Time) error { return reject(errUnchanged) }})
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if errors.Is(err, ErrClosed) {
			return err
		}
		// Any other answer, even a commit that failed for want of disk
		// (its group shared with appends), shows the loop is going round.
		return nil
	case <-t.C:
		return fmt.Errorf("spool %s: the commit loop has not answered for %s", s.path, timeout)
	}
}
