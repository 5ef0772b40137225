package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// sameRecord reports how a decoded record differs from the one encoded.
// Empty and nil byte fields are the same record; times compare as instants.
func sameRecord(got, want Record) error {
	switch {
	case got.ID != want.ID:
		return fmt.Errorf("id %d, want %d", got.ID, want.ID)
	case got.Kind != want.Kind:
		return fmt.Errorf("kind %d, want %d", got.Kind, want.Kind)
	case !got.ReceivedAt.Equal(want.ReceivedAt):
		return fmt.Errorf("receivedAt %v, want %v", got.ReceivedAt, want.ReceivedAt)
	case got.Attempts != want.Attempts:
		return fmt.Errorf("attempts %d, want %d", got.Attempts, want.Attempts)
	case !got.LastAttempt.Equal(want.LastAttempt):
		return fmt.Errorf("lastAttempt %v, want %v", got.LastAttempt, want.LastAttempt)
	case got.LastError != want.LastError:
		return fmt.Errorf("lastError %q, want %q", got.LastError, want.LastError)
	case got.MessageID != want.MessageID:
		return fmt.Errorf("messageId %q, want %q", got.MessageID, want.MessageID)
	case !bytes.Equal(got.Key, want.Key):
		return fmt.Errorf("key %q, want %q", got.Key, want.Key)
	case !bytes.Equal(got.Event, want.Event):
		return fmt.Errorf("event %d bytes, want %d", len(got.Event), len(want.Event))
	}
	return nil
}

func TestRecord_Encoding(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	cases := map[string]Record{
		"empty":  {ID: 1},
		"full":   {ID: 2, Kind: KindSegment, ReceivedAt: at, Attempts: 7, LastAttempt: at.Add(time.Minute), LastError: "HTTP 400", MessageID: "m-1", Key: []byte("k"), Event: []byte(`{"a":1}`)},
		"binary": {ID: 1<<64 - 1, Kind: 255, ReceivedAt: time.Unix(0, -1), Attempts: 1<<32 - 1, LastAttempt: time.Unix(0, 1<<63-1), Key: []byte{0, 0xff, 0}, Event: []byte{0, 1, 2}},
		"large": {
			ID: 3, ReceivedAt: at, MessageID: strings.Repeat("m", 300), LastError: strings.Repeat("e", 70000),
			Key: bytes.Repeat([]byte("k"), 200), Event: bytes.Repeat([]byte("v"), 1<<20),
		},
		"local time": {ID: 4, ReceivedAt: at.In(time.FixedZone("CET", 3600)), LastAttempt: time.Now()},
	}
	for name, r := range cases {
		t.Run(name, func(t *testing.T) {
			b := r.encode()
			if b[0] != recordVersion {
				t.Fatalf("version byte %d", b[0])
			}
			got, err := decodeRecord(r.ID, b)
			if err != nil {
				t.Fatal(err)
			}
			if err := sameRecord(got, r); err != nil {
				t.Fatal(err)
			}
			// The decoded record owns its bytes.
			if len(got.Event) > 0 {
				b[len(b)-1] ^= 0xff
				if got.Event[len(got.Event)-1] != r.Event[len(r.Event)-1] {
					t.Fatal("decoded event aliases the stored value")
				}
			}
		})
	}

	t.Run("wrong version", func(t *testing.T) {
		for _, v := range []byte{0, recordVersion + 1, 0xff} {
			full := cases["full"]
			b := full.encode()
			b[0] = v
			_, err := decodeRecord(2, b)
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("version %d", v)) {
				t.Fatalf("version %d: %v", v, err)
			}
		}
	})

	t.Run("truncated", func(t *testing.T) {
		r := cases["full"]
		b := r.encode()
		eventStart := len(b) - len(r.Event)
		// Anything cut before the event loses a length-prefixed field.
		for n := range eventStart {
			if _, err := decodeRecord(2, b[:n]); !errors.Is(err, errShortRecord) {
				t.Fatalf("cut to %d of %d bytes: %v, want errShortRecord", n, len(b), err)
			}
		}
		// The event runs to the end of the value and has no length of its
		// own: bbolt delimits the value, so a cut there is only a shorter
		// event (never a panic).
		for n := eventStart; n <= len(b); n++ {
			got, err := decodeRecord(2, b[:n])
			if err != nil || !bytes.Equal(got.Event, r.Event[:n-eventStart]) {
				t.Fatalf("cut to %d: %v, event %q", n, err, got.Event)
			}
		}
	})

	t.Run("field length beyond the value", func(t *testing.T) {
		b := make([]byte, recordFixed, recordFixed+20)
		b[0] = recordVersion
		for _, l := range []uint64{1, 10, 1 << 31, 1 << 62, 1<<64 - 1} {
			v := binary.AppendUvarint(b, l)
			if _, err := decodeRecord(1, v); !errors.Is(err, errShortRecord) {
				t.Fatalf("length %d: %v", l, err)
			}
		}
		// An overlong varint.
		v := append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)
		if _, err := decodeRecord(1, v); !errors.Is(err, errShortRecord) {
			t.Fatalf("overlong varint: %v", err)
		}
	})

	t.Run("counters", func(t *testing.T) {
		c := counters{1, -2, 3, 1 << 40, 5, [AttemptBuckets]int64{6, 7, -8, 9, 1 << 50, 11}}
		got, err := decodeCounters(c.encode(), FormatVersion)
		if err != nil || got != c {
			t.Fatalf("counters round trip: %+v, %v", got, err)
		}
		// Format version 1, without the histogram: read, histogram zero;
		// also in the longer form written under version 1 by the builds
		// that added the histogram before raising the version.
		noHist := counters{1, -2, 3, 1 << 40, 5, [AttemptBuckets]int64{}}
		for _, n := range []int{countersLenV1, countersLen} {
			if got, err := decodeCounters(c.encode()[:n], 1); err != nil || got != noHist {
				t.Fatalf("version-1 counters of %d bytes: %+v, %v; want %+v", n, got, err, noHist)
			}
		}
		for _, n := range []int{0, countersLenV1 - 1, countersLenV1, countersLenV1 + 1, countersLen - 1, countersLen + 1} {
			if _, err := decodeCounters(make([]byte, n), FormatVersion); err == nil {
				t.Fatalf("%d-byte counters accepted for version %d", n, FormatVersion)
			}
		}
		for _, n := range []int{0, countersLenV1 - 1, countersLenV1 + 1, countersLen - 1, countersLen + 1} {
			if _, err := decodeCounters(make([]byte, n), 1); err == nil {
				t.Fatalf("%d-byte counters accepted for version 1", n)
			}
		}
	})
}

// FuzzDecodeRecord checks that decodeRecord never panics on any value, that
// what it accepts re-encodes to the same record, and that records built from
// the fuzz input survive encode and decode unchanged.
func FuzzDecodeRecord(f *testing.F) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	full := Record{Kind: KindSegment, ReceivedAt: at, Attempts: 3, LastAttempt: at, LastError: "e", MessageID: "m", Key: []byte("k"), Event: []byte(`{}`)}
	f.Add(full.encode(), uint8(1), at.UnixNano(), uint32(3), int64(0), "m", "e", []byte("k"), []byte(`{}`))
	f.Add((&Record{}).encode(), uint8(0), int64(0), uint32(0), int64(-1), "", "", []byte{}, []byte(nil))
	f.Add([]byte{recordVersion}, uint8(255), int64(1<<63-1), uint32(1<<32-1), int64(-1<<63), "\xff", "\x00", []byte{0}, []byte{0xff})
	f.Add(append(make([]byte, recordFixed), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), uint8(0), int64(1), uint32(0), int64(1), "", "", []byte(nil), []byte(nil))

	f.Fuzz(func(t *testing.T, raw []byte, kind uint8, recv int64, attempts uint32, last int64, msg, lastErr string, key, event []byte) {
		// Any stored value: an error or a record, never a panic; readable
		// and the in-place decoding agree with decodeRecord.
		r, err := decodeRecord(9, raw)
		if readable(9, raw) != (err == nil) {
			t.Fatalf("readable says %v, decodeRecord %v", readable(9, raw), err)
		}
		if in, ierr := decodeInPlace(9, raw); (ierr == nil) != (err == nil) || (err == nil && sameRecord(in, r) != nil) {
			t.Fatalf("decodeInPlace %+v, %v; decodeRecord %+v, %v", in, ierr, r, err)
		}
		if err == nil {
			again, err := decodeRecord(9, r.encode())
			if err != nil {
				t.Fatalf("re-encoding an accepted record: %v", err)
			}
			if err := sameRecord(again, r); err != nil {
				t.Fatalf("decode(encode(decode(raw))) differs: %v", err)
			}
		}

		// Times are stored as unix nanoseconds, with 0 meaning "none".
		nanos := func(n int64) time.Time {
			if n == 0 {
				return time.Time{}
			}
			return time.Unix(0, n)
		}
		r = Record{
			ID: uint64(recv) ^ uint64(last), Kind: Kind(kind), ReceivedAt: nanos(recv), Attempts: attempts,
			LastAttempt: nanos(last), LastError: lastErr, MessageID: msg, Key: key, Event: event,
		}
		got, err := decodeRecord(r.ID, r.encode())
		if err != nil {
			t.Fatalf("decode(encode(r)): %v", err)
		}
		if err := sameRecord(got, r); err != nil {
			t.Fatalf("decode(encode(r)) differs: %v", err)
		}
	})
}
