package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// recordVersion is the first byte of every stored record. A reader refuses
// records of a version it does not know instead of guessing at their layout.
const recordVersion = 1

// Kind says which ingest path a record came from, and so how the drainer
// turns its event into a Segment call.
type Kind uint8

const (
	// KindGWEN is a GWEN webhook event, mapped to a Segment call when drained.
	KindGWEN Kind = 0
	// KindSegment is a message that arrived in Segment's own API shape and is
	// forwarded as it is.
	KindSegment Kind = 1
)

// Record is one spooled event as stored in the pending or dead bucket.
type Record struct {
	ID          uint64    // sequence number; FIFO order
	Kind        Kind      // which ingest path produced it
	ReceivedAt  time.Time // when the relay accepted it
	Attempts    uint32    // failed delivery attempts so far
	LastAttempt time.Time // time of the last failed attempt; zero if none
	LastError   string    // why the last attempt failed
	MessageID   string    // the Segment messageId the event is sent under
	Key         []byte    // dedup key it was admitted under (may be empty)
	Event       []byte    // the event as received (compact JSON)
	// Unreadable is set, with only ID valid, when the stored bytes could not
	// be decoded (damage, or a version this build does not know). Readers
	// get such records instead of an error so that one bad record cannot
	// stop everything behind it; Dead moves it aside as it is.
	Unreadable string
}

const recordFixed = 1 + 1 + 8 + 4 + 8

func (r *Record) encode() []byte {
	n := recordFixed + 3*binary.MaxVarintLen32 + len(r.MessageID) + len(r.LastError) + len(r.Key) + len(r.Event)
	b := make([]byte, recordFixed, n)
	b[0] = recordVersion
	b[1] = byte(r.Kind)
	binary.BigEndian.PutUint64(b[2:], uint64(unixNano(r.ReceivedAt)))
	binary.BigEndian.PutUint32(b[10:], r.Attempts)
	binary.BigEndian.PutUint64(b[14:], uint64(unixNano(r.LastAttempt)))
	b = binary.AppendUvarint(b, uint64(len(r.MessageID)))
	b = append(b, r.MessageID...)
	b = binary.AppendUvarint(b, uint64(len(r.LastError)))
	b = append(b, r.LastError...)
	b = binary.AppendUvarint(b, uint64(len(r.Key)))
	b = append(b, r.Key...)
	return append(b, r.Event...)
}

var errShortRecord = errors.New("record is truncated")

// decodeRecord parses a stored value. The returned record does not alias v,
// which is only valid for the life of the bbolt transaction.
func decodeRecord(id uint64, v []byte) (Record, error) {
	r, err := decodeInPlace(id, v)
	if err != nil {
		return Record{}, err
	}
	r.Key = append([]byte(nil), r.Key...)
	r.Event = append([]byte(nil), r.Event...)
	return r, nil
}

// readable reports whether a stored value decodes, without copying its
// event out of v.
func readable(id uint64, v []byte) bool {
	_, err := decodeInPlace(id, v)
	return err == nil
}

// decodeInPlace parses a stored value like decodeRecord, but the record's
// Key and Event alias v.
func decodeInPlace(id uint64, v []byte) (Record, error) {
	if len(v) < recordFixed {
		return Record{}, fmt.Errorf("record %d: %w", id, errShortRecord)
	}
	if v[0] != recordVersion {
		return Record{}, fmt.Errorf("record %d has format version %d; this gwenrelay reads version %d (upgrade gwenrelay)", id, v[0], recordVersion)
	}
	r := Record{
		ID:          id,
		Kind:        Kind(v[1]),
		ReceivedAt:  fromUnixNano(int64(binary.BigEndian.Uint64(v[2:]))),
		Attempts:    binary.BigEndian.Uint32(v[10:]),
		LastAttempt: fromUnixNano(int64(binary.BigEndian.Uint64(v[14:]))),
	}
	rest := v[recordFixed:]
	var fields [3][]byte
	for i := range fields {
		l, n := binary.Uvarint(rest)
		if n <= 0 || uint64(len(rest)-n) < l {
			return Record{}, fmt.Errorf("record %d: %w", id, errShortRecord)
		}
		fields[i] = rest[n : n+int(l)]
		rest = rest[n+int(l):]
	}
	r.MessageID = string(fields[0])
	r.LastError = string(fields[1])
	r.Key = fields[2]
	r.Event = rest
	return r, nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func itob(id uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	return b[:]
}

func btoi(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
