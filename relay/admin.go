package relay

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gwenrelay/gwenrelay/spool"
)

// The spool's admin operations, as one interface with two implementations:
// Inspector works on an open spool file (the daemon's, or the CLI's own when
// the daemon is stopped) and AdminClient reaches a running daemon's
// Inspector over its Unix socket. The CLI formats what either returns with
// the same code, so its output is the same live and offline.

// SpoolAdmin inspects and repairs a spool.
type SpoolAdmin interface {
	// Stats returns the spool's counters (and the drainer's, when live).
	Stats(ctx context.Context) (StatsView, error)
	// List calls fn for the records matching q, in id order.
	List(ctx context.Context, q ListQuery, fn func(RecordView) error) error
	// Show returns one record whole, with the Segment message it maps to.
	Show(ctx context.Context, id uint64) (ShowView, error)
	// Retry moves dead records back to pending.
	Retry(ctx context.Context, req RetryRequest) (ChangeResult, error)
	// Delete removes records by id, pending or dead.
	Delete(ctx context.Context, ids []uint64) (ChangeResult, error)
	// Purge removes dead records dead-lettered more than olderThan ago
	// (every dead record when olderThan is 0).
	Purge(ctx context.Context, olderThan time.Duration) (ChangeResult, error)
	// Export calls fn with each record of the selected states as one NDJSON
	// line (newline included), each state read in one read transaction.
	Export(ctx context.Context, states []spool.State, fn func(line []byte) error) error
}

// StatsView is what `spool stats` shows.
type StatsView struct {
	Spool           string     `json:"spool"`
	Live            bool       `json:"live"`
	Pending         int64      `json:"pending"` // in-flight records included
	Dead            int64      `json:"dead"`
	Bytes           int64      `json:"bytes"`
	PendingBytes    int64      `json:"pending_bytes"`
	DeadBytes       int64      `json:"dead_bytes"`
	FileSize        int64      `json:"file_size"`
	DedupKeys       int64      `json:"dedup_keys"`
	OldestPendingAt *time.Time `json:"oldest_pending_at,omitempty"`
	// OldestPendingAgeSeconds is filled in by whoever prints the view, from
	// OldestPendingAt and its own clock (0 when nothing is pending).
	OldestPendingAgeSeconds int64           `json:"oldest_pending_age_seconds"`
	Attempts                []AttemptsCount `json:"attempts"` // pending records by failed attempts
	Delivery                *DeliveryView   `json:"delivery,omitempty"`
}

// AttemptsCount is one bucket of the attempts histogram.
type AttemptsCount struct {
	Attempts string `json:"attempts"` // "0", "1", "2-3", ... "16+"
	Records  int64  `json:"records"`
}

// DeliveryView is the running drainer's counters since it started (live only).
type DeliveryView struct {
	Delivered    int64 `json:"delivered"`
	Failed       int64 `json:"failed"`
	DeadLettered int64 `json:"dead_lettered"`
	InFlight     int   `json:"in_flight"`
	BackingOff   bool  `json:"backing_off"`
}

// SetAge fills OldestPendingAgeSeconds as of now.
func (v *StatsView) SetAge(now time.Time) {
	v.OldestPendingAgeSeconds = 0
	if v.OldestPendingAt != nil {
		v.OldestPendingAgeSeconds = max(0, int64(now.Sub(*v.OldestPendingAt)/time.Second))
	}
}

// RecordView is one record as `spool ls --json` and `spool export` write it,
// and as `spool import` reads it back. Type and UserID are read from the
// event for display; import ignores them.
type RecordView struct {
	ID            uint64          `json:"id"`
	State         string          `json:"state"` // pending or dead
	Kind          string          `json:"kind"`  // gwen or segment
	ReceivedAt    time.Time       `json:"received_at"`
	Attempts      uint32          `json:"attempts"`
	LastAttemptAt *time.Time      `json:"last_attempt_at,omitempty"`
	LastError     string          `json:"last_error"`
	MessageID     string          `json:"message_id"`
	DedupKey      string          `json:"dedup_key,omitempty"` // hex
	Type          string          `json:"type,omitempty"`
	UserID        string          `json:"user_id,omitempty"`
	Event         json.RawMessage `json:"event"`
	Unreadable    string          `json:"unreadable,omitempty"`
}

// ShowView is RecordView plus the Segment message the record is delivered
// as (or why it cannot be mapped).
type ShowView struct {
	RecordView
	Message      json.RawMessage `json:"message,omitempty"`
	MessageError string          `json:"message_error,omitempty"`
}

// ListQuery selects records for List.
type ListQuery struct {
	Dead  bool   // the dead-letter bucket instead of pending
	Type  string // only this event type (compared as NormalizeType spells it)
	User  string // only this userId (or anonymousId)
	After uint64 // ids greater than this (paging: pass the last id seen)
	Limit int    // at most this many; 0 means no limit
}

// RetryRequest names dead records to move back to pending: IDs, or All
// (optionally only those of Type).
type RetryRequest struct {
	IDs  []uint64 `json:"ids,omitempty"`
	All  bool     `json:"all,omitempty"`
	Type string   `json:"type,omitempty"`
}

// ChangeResult says what a repair did.
type ChangeResult struct {
	Changed int      `json:"changed"`
	Missing []uint64 `json:"missing,omitempty"` // ids that were not there to change
}

// AdminStore is the part of the spool the admin operations use.
type AdminStore interface {
	Path() string
	Stats() (spool.Stats, error)
	Scan(states []spool.State, after uint64, fn func(spool.State, spool.Record) (bool, error)) error
	Get(id uint64) (spool.Record, bool, error)
	Retry(ids []uint64) (int, []uint64, error)
	RetryWhere(match func(spool.Record) bool) (int, error)
	Delete(ids []uint64) (int, []uint64, error)
	DeleteWhere(state spool.State, match func(spool.Record) bool) (int, error)
}

// InspectorConfig configures an Inspector.
type InspectorConfig struct {
	Store AdminStore
	// Mapping returns the mapping in force, for Show's Segment message.
	Mapping func() *Mapping
	// Delivery, when set, reports the running drainer's counters (live).
	Delivery func() DrainStats
	// Retried, when set, is called after records moved back to pending,
	// which sit behind a running drainer's read position.
	Retried func()
	// Now is the clock for Purge (default time.Now).
	Now func() time.Time
}

// Inspector carries out the admin operations on an open spool.
type Inspector struct{ cfg InspectorConfig }

// NewInspector returns an Inspector.
func NewInspector(cfg InspectorConfig) *Inspector {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Mapping == nil {
		m := DefaultMapping("")
		cfg.Mapping = func() *Mapping { return m }
	}
	return &Inspector{cfg: cfg}
}

var _ SpoolAdmin = (*Inspector)(nil)

// Stats implements SpoolAdmin.
func (in *Inspector) Stats(ctx context.Context) (StatsView, error) {
	st, err := in.cfg.Store.Stats()
	if err != nil {
		return StatsView{}, fmt.Errorf("read spool %s: %w", in.cfg.Store.Path(), err)
	}
	v := StatsView{
		Spool: in.cfg.Store.Path(), Live: in.cfg.Delivery != nil,
		Pending: st.Pending, Dead: st.Dead, Bytes: st.Bytes, PendingBytes: st.PendingBytes, DeadBytes: st.DeadBytes,
		FileSize: st.FileSize, DedupKeys: st.DedupKeys,
	}
	if !st.OldestPending.IsZero() {
		t := st.OldestPending
		v.OldestPendingAt = &t
	}
	for i, n := range st.Attempts {
		v.Attempts = append(v.Attempts, AttemptsCount{Attempts: spool.AttemptBucketLabel(i), Records: n})
	}
	v.SetAge(in.cfg.Now())
	if in.cfg.Delivery != nil {
		d := in.cfg.Delivery()
		v.Delivery = &DeliveryView{Delivered: d.Delivered, Failed: d.Failed, DeadLettered: d.DeadLettered, InFlight: d.InFlight, BackingOff: d.BackingOff}
	}
	return v, nil
}

// eventSummary is what List reads from an event for display and filtering:
// GWEN's type and userId, or a Segment call's type and userId/anonymousId.
type eventSummary struct {
	Type        string     `json:"type"`
	UserID      idOrNumber `json:"userId"`
	AnonymousID idOrNumber `json:"anonymousId"`
}

// idOrNumber reads an id that is a string or (in a Segment message, which
// may carry one) a number, as its text.
type idOrNumber string

func (v *idOrNumber) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*v = idOrNumber(s)
		return nil
	}
	var n json.Number
	if json.Unmarshal(b, &n) == nil {
		*v = idOrNumber(n)
	}
	return nil
}

// NewRecordView describes r, which is in the dead bucket when dead.
func NewRecordView(r spool.Record, dead bool) RecordView {
	v := RecordView{
		ID: r.ID, State: spool.StatePending.String(), Kind: "gwen",
		ReceivedAt: r.ReceivedAt, Attempts: r.Attempts, LastError: r.LastError, MessageID: r.MessageID,
		Event: r.Event, Unreadable: r.Unreadable,
	}
	if dead {
		v.State = spool.StateDead.String()
	}
	if r.Kind == spool.KindSegment {
		v.Kind = "segment"
	}
	if !r.LastAttempt.IsZero() {
		t := r.LastAttempt
		v.LastAttemptAt = &t
	}
	if len(r.Key) > 0 {
		v.DedupKey = hex.EncodeToString(r.Key)
	}
	if r.Unreadable != "" {
		v.Event = json.RawMessage("null")
		return v
	}
	var s eventSummary
	if json.Unmarshal(r.Event, &s) == nil {
		// Unmarshal checked the whole event is valid JSON.
		v.Type, v.UserID = s.Type, string(s.UserID)
		if v.UserID == "" {
			v.UserID = string(s.AnonymousID)
		}
	} else if !json.Valid(v.Event) {
		// Never write an export line that cannot be read back.
		v.Event = json.RawMessage("null")
		v.Unreadable = "the stored event is not valid JSON"
	}
	return v
}

// The times a record may carry: the spool stores them as Unix nanoseconds.
var (
	minRecordTime = time.Unix(0, 1).UTC()
	maxRecordTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

func isJSONObject(b []byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && json.Valid(b)
}

// Record turns a view read back from an export into a record to import.
func (v RecordView) Record() (spool.Record, spool.State, error) {
	var st spool.State
	switch v.State {
	case "pending", "":
		st = spool.StatePending
	case "dead":
		st = spool.StateDead
	default:
		return spool.Record{}, 0, fmt.Errorf("record %d: state %q is neither pending nor dead", v.ID, v.State)
	}
	if v.Unreadable != "" {
		return spool.Record{}, 0, fmt.Errorf("record %d was unreadable when exported (%s); it cannot be imported", v.ID, v.Unreadable)
	}
	r := spool.Record{
		ID: v.ID, ReceivedAt: v.ReceivedAt.UTC(), Attempts: v.Attempts, LastError: v.LastError, MessageID: v.MessageID,
		Event: []byte(v.Event),
	}
	switch v.Kind {
	case "gwen", "":
		r.Kind = spool.KindGWEN
	case "segment":
		r.Kind = spool.KindSegment
	default:
		return spool.Record{}, 0, fmt.Errorf("record %d: kind %q is neither gwen nor segment", v.ID, v.Kind)
	}
	if v.LastAttemptAt != nil {
		r.LastAttempt = v.LastAttemptAt.UTC()
	}
	if v.DedupKey != "" {
		k, err := hex.DecodeString(v.DedupKey)
		if err != nil {
			return spool.Record{}, 0, fmt.Errorf("record %d: dedup_key is not hex: %v", v.ID, err)
		}
		r.Key = k
	}
	if !isJSONObject(v.Event) {
		return spool.Record{}, 0, fmt.Errorf("record %d: event must be a JSON object", v.ID)
	}
	if v.MessageID == "" {
		// The drainer matches Segment's verdicts by messageId; analytics-go
		// would give an empty one a random id, and the record would never
		// leave the spool.
		return spool.Record{}, 0, fmt.Errorf("record %d: message_id is missing", v.ID)
	}
	if len(r.Key) > spool.MaxKeyLen {
		return spool.Record{}, 0, fmt.Errorf("record %d: dedup_key is %d bytes, at most %d", v.ID, len(r.Key), spool.MaxKeyLen)
	}
	for name, t := range map[string]time.Time{"received_at": r.ReceivedAt, "last_attempt_at": r.LastAttempt} {
		if t.IsZero() && name == "last_attempt_at" {
			continue
		}
		if t.Before(minRecordTime) || t.After(maxRecordTime) {
			return spool.Record{}, 0, fmt.Errorf("record %d: %s %s is missing or out of range (1970 to 2200)", v.ID, name, t.Format(time.RFC3339))
		}
	}
	return r, st, nil
}

func (q ListQuery) match(v RecordView) bool {
	if q.Type != "" && NormalizeType(v.Type) != NormalizeType(q.Type) {
		return false
	}
	if q.User != "" && v.UserID != q.User {
		return false
	}
	return true
}

// List implements SpoolAdmin. It reads in one read transaction, from the
// id after q.After, and stops at q.Limit matches.
func (in *Inspector) List(ctx context.Context, q ListQuery, fn func(RecordView) error) error {
	state := spool.StatePending
	if q.Dead {
		state = spool.StateDead
	}
	n := 0
	return in.cfg.Store.Scan([]spool.State{state}, q.After, func(_ spool.State, r spool.Record) (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		v := NewRecordView(r, q.Dead)
		if !q.match(v) {
			return true, nil
		}
		if err := fn(v); err != nil {
			return false, err
		}
		n++
		return q.Limit <= 0 || n < q.Limit, nil
	})
}

// Show implements SpoolAdmin.
func (in *Inspector) Show(ctx context.Context, id uint64) (ShowView, error) {
	r, dead, err := in.cfg.Store.Get(id)
	if err != nil {
		if errors.Is(err, spool.ErrNotFound) {
			return ShowView{}, fmt.Errorf("record %d is neither pending nor dead (delivered, deleted, or never spooled): %w", id, spool.ErrNotFound)
		}
		return ShowView{}, err
	}
	v := ShowView{RecordView: NewRecordView(r, dead)}
	msg, err := recordMessage(r, in.cfg.Mapping())
	if err == nil {
		v.Message, err = MarshalMessage(msg)
	}
	if err != nil {
		v.MessageError = err.Error()
	}
	return v, nil
}

// Retry implements SpoolAdmin.
func (in *Inspector) Retry(ctx context.Context, req RetryRequest) (ChangeResult, error) {
	var res ChangeResult
	var err error
	switch {
	case req.All:
		var match func(spool.Record) bool // all
		if req.Type != "" {
			q := ListQuery{Type: req.Type}
			match = func(r spool.Record) bool { return q.match(NewRecordView(r, true)) }
		}
		res.Changed, err = in.cfg.Store.RetryWhere(match)
	case len(req.IDs) > 0:
		if req.Type != "" {
			return res, badRequestf("a type filter goes with --all, not with ids")
		}
		res.Changed, res.Missing, err = in.cfg.Store.Retry(req.IDs)
	default:
		return res, badRequestf("name the records to retry, or ask for all of them")
	}
	if res.Changed > 0 && in.cfg.Retried != nil {
		in.cfg.Retried()
	}
	return res, err
}

// Delete implements SpoolAdmin.
func (in *Inspector) Delete(ctx context.Context, ids []uint64) (ChangeResult, error) {
	if len(ids) == 0 {
		return ChangeResult{}, badRequestf("name the records to delete")
	}
	var res ChangeResult
	var err error
	res.Changed, res.Missing, err = in.cfg.Store.Delete(ids)
	return res, err
}

// Purge implements SpoolAdmin. A dead record's age is counted from when it
// was dead-lettered (its last attempt), or from its receipt if it has none.
func (in *Inspector) Purge(ctx context.Context, olderThan time.Duration) (ChangeResult, error) {
	if olderThan < 0 {
		return ChangeResult{}, badRequestf("older-than %s is negative", olderThan)
	}
	cutoff := in.cfg.Now().Add(-olderThan)
	n, err := in.cfg.Store.DeleteWhere(spool.StateDead, func(r spool.Record) bool {
		if olderThan == 0 || r.Unreadable != "" {
			return olderThan == 0
		}
		at := r.LastAttempt
		if at.IsZero() {
			at = r.ReceivedAt
		}
		return at.Before(cutoff)
	})
	return ChangeResult{Changed: n}, err
}

// Export implements SpoolAdmin: all the states in one read transaction, a
// consistent snapshot even while records move between them.
func (in *Inspector) Export(ctx context.Context, states []spool.State, fn func([]byte) error) error {
	return in.cfg.Store.Scan(states, 0, func(st spool.State, r spool.Record) (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		line, err := MarshalRecordLine(NewRecordView(r, st == spool.StateDead))
		if err != nil {
			return false, err
		}
		return true, fn(line)
	})
}

// MarshalRecordLine encodes v as one NDJSON line (newline included). The
// event's bytes are kept as stored (no HTML escaping), so an export
// imported and exported again is byte for byte the same.
func MarshalRecordLine(v RecordView) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("record %d: %w", v.ID, err)
	}
	return b.Bytes(), nil
}

// ParseIDs reads record ids as the CLI and the admin API take them.
func ParseIDs(args []string) ([]uint64, error) {
	var ids []uint64
	for _, a := range args {
		id, err := strconv.ParseUint(strings.TrimSpace(a), 10, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("%q is not a record id (ids are positive integers, as spool ls shows them)", a)
		}
		ids = append(ids, id)
	}
	return ids, nil
}
