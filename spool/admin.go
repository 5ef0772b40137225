package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
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

// whereChunk is how many records one op of RetryWhere or DeleteWhere looks
// at. Their match runs inside the shared write transaction, so the chunk
// bounds how long the commit loop (and so every Append) waits behind them.
const whereChunk = 5000

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

// Scan calls fn for each record of the given state with id > after, in id
// order, until fn returns false or an error (which Scan returns). All of it
// runs in one read transaction, so fn sees one consistent snapshot (for an
// export) while commits go on beside it; records do not alias the file.
// Unreadable records are passed with only ID and Unreadable set.
func (s *Spool) Scan(state State, after uint64, fn func(Record) (bool, error)) error {
	name, err := state.bucket()
	if err != nil {
		return err
	}
	if after == math.MaxUint64 {
		return nil
	}
	return s.db.View(func(tx *bolt.Tx) error {
		cur := tx.Bucket(name).Cursor()
		for k, v := cur.Seek(itob(after + 1)); k != nil; k, v = cur.Next() {
			r, err := decodeRecord(btoi(k), v)
			if err != nil {
				r = Record{ID: btoi(k), Unreadable: err.Error()}
			}
			more, err := fn(r)
			if err != nil {
				return err
			}
			if !more {
				return nil
			}
		}
		return nil
	})
}

// retryOne moves the dead record stored as v under k back to pending,
// unchanged: its attempts and last error stay as history, and its id puts
// it back in its original place in the FIFO order.
func retryOne(p, d *bolt.Bucket, c *counters, k, v []byte) error {
	v = append([]byte(nil), v...) // v belongs to the dead bucket's page
	c.countDead(v, -1)
	c.countPending(v, 1)
	if err := d.Delete(k); err != nil {
		return err
	}
	return p.Put(k, v)
}

// Retry moves dead records back to pending under the same id, so they go
// out before newer records, keeping Attempts, LastAttempt and LastError. It
// returns how many moved and the ids that were not moved: those not dead,
// and dead records that are unreadable (moving them would only make the
// drainer move them back). One commit.
func (s *Spool) Retry(ids []uint64) (moved int, missing []uint64, err error) {
	if len(ids) == 0 {
		return 0, nil, nil
	}
	err = s.submitAdmin(&op{entries: len(ids), apply: func(tx *bolt.Tx, c *counters, _ time.Time) error {
		moved, missing = 0, nil
		p, d := tx.Bucket(bucketPending), tx.Bucket(bucketDead)
		for _, id := range ids {
			k := itob(id)
			v := d.Get(k)
			if v == nil || !readable(id, v) {
				missing = append(missing, id)
				continue
			}
			if err := retryOne(p, d, c, k, v); err != nil {
				return err
			}
			moved++
		}
		if moved == 0 {
			return reject(errUnchanged)
		}
		return nil
	}})
	if err != nil {
		return 0, nil, err
	}
	return moved, missing, nil
}

func readable(id uint64, v []byte) bool {
	_, err := decodeRecord(id, v)
	return err == nil
}

// RetryWhere moves every dead record for which match returns true back to
// pending, as Retry does, and returns how many moved. It works in chunks of
// at most whereChunk records looked at, each its own commit, so ingest goes
// on between them; records that die meanwhile with higher ids are reached
// too. match==nil matches all. Unreadable records are passed to match
// (Record.Unreadable set) but stay dead. match runs inside the commit loop:
// it must be quick and must not call the spool.
func (s *Spool) RetryWhere(match func(Record) bool) (int, error) {
	return s.where(bucketDead, match, func(tx *bolt.Tx, c *counters, k, v []byte, r Record) (bool, error) {
		if r.Unreadable != "" {
			return false, nil
		}
		return true, retryOne(tx.Bucket(bucketPending), tx.Bucket(bucketDead), c, k, v)
	})
}

// DeleteWhere removes the records of the given state for which match
// returns true (unreadable ones are passed too and may be removed), in
// chunks like RetryWhere, and returns how many it removed. match==nil
// matches all. match runs inside the commit loop: it must be quick and must
// not call the spool.
func (s *Spool) DeleteWhere(state State, match func(Record) bool) (int, error) {
	name, err := state.bucket()
	if err != nil {
		return 0, err
	}
	return s.where(name, match, func(tx *bolt.Tx, c *counters, k, v []byte, _ Record) (bool, error) {
		return true, deleteOne(tx.Bucket(name), name, c, k, v)
	})
}

// where runs act on each record of bucket that match accepts, whereChunk
// records looked at per op, from the lowest id to the end of the bucket.
// act reports whether it changed the record. Decisions are made for a whole
// chunk before anything is written, so the cursor never walks a bucket it
// is changing.
func (s *Spool) where(bucket []byte, match func(Record) bool, act func(tx *bolt.Tx, c *counters, k, v []byte, r Record) (bool, error)) (int, error) {
	total := 0
	next := uint64(1) // the lowest id not yet looked at
	for {
		changed, done := 0, false
		var last uint64
		err := s.submitAdmin(&op{entries: whereChunk, apply: func(tx *bolt.Tx, c *counters, _ time.Time) error {
			changed, done, last = 0, false, 0
			type hit struct {
				k []byte
				r Record
			}
			var hits []hit
			cur := tx.Bucket(bucket).Cursor()
			seen := 0
			k, v := cur.Seek(itob(next))
			for ; k != nil && seen < whereChunk; k, v = cur.Next() {
				seen++
				id := btoi(k)
				last = id
				r, err := decodeRecord(id, v)
				if err != nil {
					r = Record{ID: id, Unreadable: err.Error()}
				}
				ok, err := safeMatch(match, r)
				if err != nil {
					return reject(err) // nothing written yet
				}
				if ok {
					hits = append(hits, hit{append([]byte(nil), k...), r})
				}
			}
			done = k == nil || last == math.MaxUint64
			b := tx.Bucket(bucket)
			for _, h := range hits {
				v := b.Get(h.k)
				if v == nil {
					continue
				}
				ok, err := act(tx, c, h.k, v, h.r)
				if err != nil {
					return err
				}
				if ok {
					changed++
				}
			}
			if changed == 0 {
				return reject(errUnchanged)
			}
			return nil
		}})
		if err != nil {
			return total, err
		}
		total += changed
		if done {
			return total, nil
		}
		next = last + 1
	}
}

// safeMatch calls match, turning a panic into an error: it runs on the
// commit loop's goroutine, where a panic would take the whole process down.
func safeMatch(match func(Record) bool, r Record) (ok bool, err error) {
	if match == nil {
		return true, nil
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("match panicked on record %d: %v", r.ID, p)
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
				if v := dedup.Get(r.Key); len(v) == 16 && now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(v[8:])))) < window {
					dup = true
				}
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
