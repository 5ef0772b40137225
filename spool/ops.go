package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"os"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Entry is one event to append.
type Entry struct {
	Kind       Kind
	Key        []byte // dedup key; nil means the entry is never treated as a repeat
	MessageID  string
	ReceivedAt time.Time
	Event      []byte
}

// MaxKeyLen is the longest dedup key Append accepts while deduplication is
// on: bbolt's key limit less the 8-byte time prefix of the expiry index.
const MaxKeyLen = bolt.MaxKeySize - 8

// AppendResult says what became of each entry of an Append, in order.
type AppendResult struct {
	// IDs holds each entry's record id; for a duplicate, the id under which
	// the first copy was spooled (it may have been delivered since).
	IDs []uint64
	// Duplicate marks the entries that were seen within the dedup window
	// and not stored again.
	Duplicate  []bool
	Duplicates int
}

// Append stores entries as pending records in one all-or-nothing commit and
// returns once that commit is fsynced. Entries whose dedup key was admitted
// within the dedup window (including earlier in the same call) are not
// stored again. If the new records would exceed the quota, nothing is stored
// and the error is ErrOverQuota.
func (s *Spool) Append(entries []Entry) (AppendResult, error) {
	res := AppendResult{IDs: make([]uint64, len(entries)), Duplicate: make([]bool, len(entries))}
	if len(entries) == 0 {
		return res, nil
	}
	if until := s.diskFullUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		return AppendResult{}, fmt.Errorf("spool %s: the disk was full a moment ago; not trying again yet: %w", s.path, syscall.ENOSPC)
	}
	if s.opt.DedupWindow > 0 {
		// Checked before submitting: bbolt would refuse the key inside the
		// shared transaction, failing every other op of the group with it.
		for i := range entries {
			if len(entries[i].Key) > MaxKeyLen {
				return AppendResult{}, fmt.Errorf("entry %d: %w (%d bytes, at most %d)", i, ErrKeyTooLong, len(entries[i].Key), MaxKeyLen)
			}
		}
	}
	o := &op{entries: len(entries)}
	o.apply = func(tx *bolt.Tx, c *counters, now time.Time) error {
		res.Duplicates = 0
		pending := tx.Bucket(bucketPending)
		dedup := tx.Bucket(bucketDedup)
		window := s.opt.DedupWindow
		// First pass: find the repeats, so the quota is checked against what
		// will really be written and a refusal writes nothing.
		var seen map[string]int
		var newBytes int64
		encoded := make([][]byte, len(entries))
		for i := range entries {
			e := &entries[i]
			res.Duplicate[i] = false
			if window > 0 && len(e.Key) > 0 {
				if _, ok := seen[string(e.Key)]; ok {
					res.Duplicate[i] = true // its id is set below, once the first copy has one
					res.Duplicates++
					continue
				}
				if id, ok := seenWithin(dedup, e.Key, now, window); ok {
					res.Duplicate[i] = true
					res.IDs[i] = id
					res.Duplicates++
					continue
				}
				if seen == nil {
					seen = make(map[string]int)
				}
				seen[string(e.Key)] = i
			}
			r := Record{Kind: e.Kind, ReceivedAt: e.ReceivedAt, MessageID: e.MessageID, Key: e.Key, Event: e.Event}
			encoded[i] = r.encode()
			newBytes += int64(len(encoded[i]) + 8)
		}
		if s.opt.MaxBytes > 0 && newBytes > 0 && c.PendingBytes+c.DeadBytes+newBytes > s.opt.MaxBytes {
			return reject(fmt.Errorf("%w (%d of %d bytes used)", ErrOverQuota, c.PendingBytes+c.DeadBytes, s.opt.MaxBytes))
		}
		// Second pass: write.
		exp := tx.Bucket(bucketDedupExp)
		for i := range entries {
			if res.Duplicate[i] {
				continue
			}
			id, err := pending.NextSequence()
			if err != nil {
				return err
			}
			if err := pending.Put(itob(id), encoded[i]); err != nil {
				return err
			}
			res.IDs[i] = id
			c.countPending(encoded[i], 1)
			if e := &entries[i]; window > 0 && len(e.Key) > 0 {
				if err := admit(dedup, exp, c, e.Key, id, now); err != nil {
					return err
				}
			}
		}
		// A repeat within the call takes the id its first copy got.
		for i := range entries {
			if j, ok := seen[string(entries[i].Key)]; ok && j != i {
				res.IDs[i] = res.IDs[j]
			}
		}
		return nil
	}
	if err := s.submit(o); err != nil {
		return AppendResult{}, err
	}
	return res, nil
}

// seenWithin reports whether key was admitted to the dedup index less than
// window before now, and the id of the record it was admitted for. An entry
// admitted longer ago is expired (and awaits PruneDedup): not seen.
func seenWithin(dedup *bolt.Bucket, key []byte, now time.Time, window time.Duration) (id uint64, ok bool) {
	v := dedup.Get(key)
	if len(v) != 16 {
		return 0, false
	}
	at := int64(binary.BigEndian.Uint64(v[8:]))
	if now.Sub(time.Unix(0, at)) >= window {
		return 0, false
	}
	return btoi(v[:8]), true
}

func expKey(at []byte, key []byte) []byte {
	k := make([]byte, 0, 8+len(key))
	k = append(k, at...)
	return append(k, key...)
}

// Ack deletes delivered records from the pending bucket in one commit. Ids
// that are no longer pending are ignored, so a repeated Ack is harmless.
func (s *Spool) Ack(ids []uint64) error {
	if len(ids) == 0 {
		return nil
	}
	return s.submit(&op{entries: len(ids), apply: func(tx *bolt.Tx, c *counters, _ time.Time) error {
		b := tx.Bucket(bucketPending)
		for _, id := range ids {
			k := itob(id)
			v := b.Get(k)
			if v == nil {
				continue
			}
			// Counted from the stored header (attempts at a fixed
			// offset): an Ack of thousands must not decode each event.
			c.countPending(v, -1)
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}})
}

// Fail records a failed delivery attempt on each pending record: attempts is
// incremented and the error kept. The records stay pending.
func (s *Spool) Fail(ids []uint64, reason string) error {
	if len(ids) == 0 {
		return nil
	}
	return s.submit(&op{entries: len(ids), apply: func(tx *bolt.Tx, c *counters, now time.Time) error {
		b := tx.Bucket(bucketPending)
		for _, id := range ids {
			k := itob(id)
			v := b.Get(k)
			if v == nil {
				continue
			}
			r, err := decodeRecord(id, v)
			if err != nil {
				// Unreadable: leave it as it is rather than fail the whole
				// group; Dead can still move it aside.
				continue
			}
			r.Attempts++
			r.LastAttempt = now
			r.LastError = reason
			nv := r.encode()
			c.countPending(v, -1)
			c.countPending(nv, 1)
			if err := b.Put(k, nv); err != nil {
				return err
			}
		}
		return nil
	}})
}

// Dead moves a pending record to the dead-letter bucket with the reason it
// cannot be delivered. It returns ErrNotFound if the record is not pending.
func (s *Spool) Dead(id uint64, reason string) error {
	return s.submit(&op{entries: 1, apply: func(tx *bolt.Tx, c *counters, now time.Time) error {
		p, d := tx.Bucket(bucketPending), tx.Bucket(bucketDead)
		k := itob(id)
		v := p.Get(k)
		if v == nil {
			return reject(fmt.Errorf("record %d: %w", id, ErrNotFound))
		}
		// An unreadable record is moved as it is, for inspection.
		nv := append([]byte(nil), v...)
		if r, err := decodeRecord(id, v); err == nil {
			r.Attempts++
			r.LastAttempt = now
			r.LastError = reason
			nv = r.encode()
		}
		c.countPending(v, -1)
		c.countDead(nv, 1)
		if err := p.Delete(k); err != nil {
			return err
		}
		return d.Put(k, nv)
	}})
}

// PruneDedup forgets up to max dedup keys admitted longer ago than the dedup
// window, oldest first, in one small commit so ingest is not stalled behind
// it. It returns how many it removed; call it again while that equals max.
func (s *Spool) PruneDedup(max int) (int, error) {
	if s.opt.DedupWindow <= 0 {
		return 0, nil
	}
	removed := 0
	err := s.submit(&op{entries: max, apply: func(tx *bolt.Tx, c *counters, now time.Time) error {
		removed = 0
		exp, dedup := tx.Bucket(bucketDedupExp), tx.Bucket(bucketDedup)
		var limit [8]byte
		binary.BigEndian.PutUint64(limit[:], uint64(now.Add(-s.opt.DedupWindow).UnixNano()))
		cur := exp.Cursor()
		var doomed [][]byte
		for k, _ := cur.First(); k != nil && len(doomed) < max; k, _ = cur.Next() {
			if bytes.Compare(k[:8], limit[:]) >= 0 {
				break
			}
			doomed = append(doomed, append([]byte(nil), k...))
		}
		for _, k := range doomed {
			if err := exp.Delete(k); err != nil {
				return err
			}
			key := k[8:]
			// The dedup entry may have been re-admitted since; only drop it if
			// it still carries this admission time.
			if v := dedup.Get(key); len(v) == 16 && bytes.Equal(v[8:], k[:8]) {
				if err := dedup.Delete(key); err != nil {
					return err
				}
				c.DedupN--
			}
			removed++
		}
		return nil
	}})
	return removed, err
}

// ReadPending returns up to limit pending records with ids greater than
// after, oldest first. Pass 0 to start at the oldest.
func (s *Spool) ReadPending(after uint64, limit int) ([]Record, error) {
	return s.read(StatePending, after, limit)
}

// ReadDead returns up to limit dead-letter records with ids greater than
// after, in id order.
func (s *Spool) ReadDead(after uint64, limit int) ([]Record, error) {
	return s.read(StateDead, after, limit)
}

func (s *Spool) read(state State, after uint64, limit int) ([]Record, error) {
	if limit <= 0 {
		return nil, nil
	}
	var out []Record
	err := s.Scan([]State{state}, after, func(_ State, r Record) (bool, error) {
		out = append(out, r)
		return len(out) < limit, nil
	})
	return out, err
}

// scanBucket calls fn for each record of b with id > after, in id order,
// until fn returns false or an error. The records are decoded (they do not
// alias the file); an unreadable one is passed with only ID and Unreadable
// set. more is false when fn stopped the scan.
func scanBucket(b *bolt.Bucket, after uint64, fn func(Record) (bool, error)) (more bool, err error) {
	if after == math.MaxUint64 {
		return true, nil // no id is greater (and after+1 would wrap to 0)
	}
	cur := b.Cursor()
	for k, v := cur.Seek(itob(after + 1)); k != nil; k, v = cur.Next() {
		id := btoi(k)
		r, err := decodeRecord(id, v)
		if err != nil {
			r = Record{ID: id, Unreadable: err.Error()}
		}
		if more, err := fn(r); err != nil || !more {
			return false, err
		}
	}
	return true, nil
}

// Get returns one record and whether it is dead.
func (s *Spool) Get(id uint64) (Record, bool, error) {
	var r Record
	var dead bool
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketPending).Get(itob(id))
		if v == nil {
			v = tx.Bucket(bucketDead).Get(itob(id))
			dead = true
		}
		if v == nil {
			return fmt.Errorf("record %d: %w", id, ErrNotFound)
		}
		var err error
		r, err = decodeRecord(id, v)
		return err
	})
	return r, dead, err
}

// Stats is a snapshot of the spool's size.
type Stats struct {
	Pending       int64     // records waiting for delivery (in-flight ones included)
	Dead          int64     // records in the dead-letter bucket
	PendingBytes  int64     // stored bytes of pending records
	DeadBytes     int64     // stored bytes of dead records
	Bytes         int64     // PendingBytes + DeadBytes: what the quota counts
	DedupKeys     int64     // dedup keys remembered
	OldestPending time.Time // receive time of the oldest pending record; zero if none
	FileSize      int64     // size of the bbolt file on disk
	// Attempts counts pending records by failed delivery attempts, in the
	// buckets labelled by AttemptBucketLabel. A record too short to be
	// read is counted in none (Pending still counts it).
	Attempts [AttemptBuckets]int64
}

// AttemptBuckets is the number of buckets of Stats.Attempts.
const AttemptBuckets = 6

var attemptLabels = [AttemptBuckets]string{"0", "1", "2-3", "4-7", "8-15", "16+"}

// AttemptBucketLabel names bucket i of Stats.Attempts: "0", "1", "2-3",
// "4-7", "8-15", "16+"; "" outside 0..AttemptBuckets-1.
func AttemptBucketLabel(i int) string {
	if i < 0 || i >= AttemptBuckets {
		return ""
	}
	return attemptLabels[i]
}

// attemptBucket is the Stats.Attempts bucket of a record with n failed
// attempts: powers of two, so the last buckets separate the records that
// keep failing from the ones that failed a few times.
func attemptBucket(n uint32) int {
	return min(bits.Len32(n), AttemptBuckets-1)
}

// histAttempts returns the attempts under which a stored pending value is
// counted in the histogram: the field at its fixed offset, read without
// decoding the rest. Only a value too short to hold the fixed header is
// counted nowhere (false). A value that is long enough but otherwise
// unreadable (a flipped version byte, a bad length) is counted by that
// field all the same: records only become unreadable by damage after they
// were counted, and a rule that depended on the rest of the bytes would
// make the histogram drift at that moment, while this one stays exact
// under any damage that keeps the value's length and these four bytes.
func histAttempts(v []byte) (uint32, bool) {
	if len(v) < recordFixed {
		return 0, false
	}
	return binary.BigEndian.Uint32(v[10:14]), true
}

// Stats reads the counters (kept in step with every commit) and the oldest
// pending record: constant work whatever the spool holds (plus one step
// for each unreadable record at the head, until the drainer moves it aside).
func (s *Spool) Stats() (Stats, error) {
	s.cmu.Lock()
	c := s.counters
	s.cmu.Unlock()
	st := Stats{
		Pending: c.PendingN, Dead: c.DeadN,
		PendingBytes: c.PendingBytes, DeadBytes: c.DeadBytes, Bytes: c.PendingBytes + c.DeadBytes,
		DedupKeys: c.DedupN, Attempts: c.Attempts,
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		// The oldest readable record: an unreadable one must not make the
		// spool's size unknowable (the drainer moves it aside).
		cur := tx.Bucket(bucketPending).Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if r, err := decodeRecord(btoi(k), v); err == nil {
				st.OldestPending = r.ReceivedAt
				break
			}
		}
		return nil
	})
	if fi, ferr := os.Stat(s.path); ferr == nil {
		st.FileSize = fi.Size()
	}
	return st, err
}

// OverQuota reports whether the stored bytes have reached the quota.
func (s *Spool) OverQuota() bool {
	if s.opt.MaxBytes <= 0 {
		return false
	}
	s.cmu.Lock()
	defer s.cmu.Unlock()
	return s.counters.PendingBytes+s.counters.DeadBytes >= s.opt.MaxBytes
}
