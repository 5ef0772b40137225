package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"
	"golang.org/x/time/rate"

	"github.com/gwenrelay/gwenrelay/spool"
)

// Sender takes messages for delivery and reports each one's fate to the
// callback it was built with. NewSegmentSenders' senders (analytics-go and
// the raw sender behind one front) are one; the dry-run sink is another.
type Sender interface {
	Enqueue(analytics.Message) error
	Close() error
}

// DrainStore is the part of the spool the drainer uses.
type DrainStore interface {
	ReadPending(after uint64, limit int) ([]spool.Record, error)
	Ack(ids []uint64) error
	Fail(ids []uint64, reason string) error
	Dead(id uint64, reason string) error
}

// DrainerConfig configures a Drainer.
type DrainerConfig struct {
	Store DrainStore
	// NewSender builds the sender for normal traffic, reporting to cb.
	NewSender func(cb analytics.Callback) (Sender, error)
	// NewIsolationSender builds a sender that puts every message in a batch
	// of its own, used to find the record that made Segment reject a batch.
	// Nil: NewSender is used (right for senders that do not batch).
	NewIsolationSender func(cb analytics.Callback) (Sender, error)
	// Rejections, when set, supplies what Segment answered when it refused
	// a record, for the dead letter's error (NewSegmentSenders fills it).
	Rejections *RejectionLog
	// Mapping returns the mapping in force (the caller may swap it at run time).
	Mapping func() *Mapping
	// MaxInFlight bounds the records handed to senders and not yet settled
	// (default DefaultMaxInFlightRecords): memory stays flat through an outage.
	MaxInFlight int
	// BackoffBase and BackoffMax shape the pause after a transient failure
	// (defaults 1s and 1m); it doubles with each failure in a row.
	BackoffBase, BackoffMax time.Duration
	// Backoff computes the pause; default is exponential with jitter.
	Backoff func(failures int, base, max time.Duration) time.Duration
	// AckBatch and AckDelay bound how deletes are grouped (defaults 250 and
	// 100ms): deletes follow delivery, in batches, so they never monopolise
	// the spool's single write lock.
	AckBatch int
	AckDelay time.Duration
	// PollInterval is how often an idle drainer looks for new records when
	// nobody calls Notify (default 1s).
	PollInterval time.Duration
	// IngestBusy, when set, reports whether webhooks are being taken right
	// now. While they are, the drainer holds itself to YieldRate events/s:
	// a backlog is safe on disk, but a sender waits for its 202, and on a
	// small machine a drainer running flat out takes the CPU ingest needs.
	IngestBusy func() bool
	// YieldRate is the drain rate while ingest is busy (default
	// DefaultYieldRate); it only ever lowers the configured --rate. When
	// IngestCount is set the drainer also keeps up with what ingest takes
	// in (a quarter above it), so yielding never lets the backlog grow.
	YieldRate float64
	// IngestCount returns how many events ingest has spooled so far.
	IngestCount func() int64
	// Observer, when set, is told of deliveries and failures (for metrics).
	Observer DrainObserver
	Logger   *slog.Logger
}

// DefaultMaxInFlightRecords is the default bound on records being delivered.
const DefaultMaxInFlightRecords = 2000

// DefaultYieldRate is how fast the drainer goes while ingest is busy: five
// times Segment's own per-workspace comfort rate; a drain held to it left
// ingest at ~100% of its idle throughput on a 2-core machine
// (go run ./bench --ingest=false --delivery mixed --mixed-rate 5000).
const DefaultYieldRate = 5000

// DrainStats are the drainer's counters since it started.
type DrainStats struct {
	Delivered, Failed, DeadLettered int64
	InFlight                        int
	MaxInFlight                     int // highest InFlight seen
	BackingOff                      bool
}

// Drainer forwards pending records to Segment, oldest first, and deletes
// each only after its sender reported success. Transient failures keep the
// record, count an attempt, and make the whole drainer back off; a batch that
// Segment rejects as invalid is re-sent one record a batch so that only the
// culprit is dead-lettered.
type Drainer struct {
	cfg  DrainerConfig
	log  *slog.Logger
	main Sender
	iso  Sender

	wake    chan struct{} // new records may be pending
	settled chan struct{} // an in-flight record was settled

	mu           sync.Mutex
	inflight     map[string][]flight // by messageId
	inflightIDs  map[uint64]bool
	claimedMsg   map[string]int  // in-flight records per messageId
	deferredMsg  map[string]bool // messageIds with a twin left pending
	maxSeen      int
	backoffUntil time.Time
	failuresRow  int
	resetCursor  bool
	isolate      []spool.Record
	stopping     bool
	// reading is set while the loop reads pending records; gone collects
	// the records that left the spool meanwhile, which the possibly older
	// snapshot still holds and which must not be claimed again.
	reading bool
	gone    map[uint64]bool

	beat atomic.Int64 // unix nanos of the loop's last round

	results   chan result
	resMu     sync.Mutex // guards sending on results against its close
	resClosed bool
	resDone   chan struct{}

	delivered, failed, dead atomic.Int64
}

type flight struct {
	rec      spool.Record
	isolated bool
}

type resultKind int

const (
	resAck resultKind = iota
	resFail
	resDead
	resIsolate
	resDrop // settled without a spool change (sender closed)
)

type result struct {
	kind   resultKind
	f      flight
	reason string
}

// NewDrainer builds a drainer and its senders.
func NewDrainer(cfg DrainerConfig) (*Drainer, error) {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlightRecords
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = time.Minute
	}
	if cfg.Backoff == nil {
		cfg.Backoff = jitterBackoff
	}
	if cfg.AckBatch <= 0 {
		cfg.AckBatch = 250
	}
	if cfg.AckDelay <= 0 {
		cfg.AckDelay = 100 * time.Millisecond
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.YieldRate <= 0 {
		cfg.YieldRate = DefaultYieldRate
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Drainer{
		cfg:         cfg,
		log:         cfg.Logger.With("system", "drainer"),
		wake:        make(chan struct{}, 1),
		settled:     make(chan struct{}, 1),
		inflight:    map[string][]flight{},
		inflightIDs: map[uint64]bool{},
		claimedMsg:  map[string]int{},
		deferredMsg: map[string]bool{},
		results:     make(chan result, 4*cfg.MaxInFlight),
		resDone:     make(chan struct{}),
	}
	var err error
	if d.main, err = cfg.NewSender(callback{d, false}); err != nil {
		return nil, err
	}
	newIso := cfg.NewIsolationSender
	if newIso == nil {
		newIso = cfg.NewSender
	}
	if d.iso, err = newIso(callback{d, true}); err != nil {
		_ = d.main.Close()
		return nil, err
	}
	go d.settle()
	return d, nil
}

// Notify tells the drainer that new records were spooled, so an idle
// drainer picks them up at once instead of at its next poll.
func (d *Drainer) Notify() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Alive reports whether the drainer's loop has gone round within stall:
// its waits are bounded, so a loop that has not is stuck (a deadlock, a
// call that never returns), and the service watchdog should restart the
// process. A drainer backing off from a Segment outage is alive.
func (d *Drainer) Alive(stall time.Duration) bool {
	return time.Since(time.Unix(0, d.beat.Load())) < stall
}

// Rewind makes the drainer read again from the oldest pending record: the
// admin API calls it after moving dead records back to pending, under their
// old ids, behind the drainer's read position.
func (d *Drainer) Rewind() {
	d.mu.Lock()
	d.resetCursor = true
	d.mu.Unlock()
	d.Notify()
}

// Stats returns the drainer's counters.
func (d *Drainer) Stats() DrainStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return DrainStats{
		Delivered: d.delivered.Load(), Failed: d.failed.Load(), DeadLettered: d.dead.Load(),
		InFlight: len(d.inflightIDs), MaxInFlight: d.maxSeen,
		BackingOff: time.Now().Before(d.backoffUntil),
	}
}

func jitterBackoff(failures int, base, max time.Duration) time.Duration {
	b := base
	for i := 1; i < failures && b < max; i++ {
		b *= 2
	}
	b = min(b, max)
	// Full jitter over the upper half: spread retries, keep the order of magnitude.
	return b/2 + time.Duration(rand.Int64N(int64(b/2)+1))
}

// Run delivers until ctx ends, then stops taking records and closes the
// senders: their Close (analytics-go's and the raw sender's) sends what is
// queued, waits for uploads on the wire and gives up batches that are
// waiting to retry. Run waits for that, or for drainTimeout, whichever comes
// first. Records not delivered by then stay pending and are sent again, with
// the same messageId, at the next start.
func (d *Drainer) Run(ctx context.Context, drainTimeout time.Duration) error {
	d.beat.Store(time.Now().UnixNano())
	loopDone := make(chan error, 1)
	go func() { loopDone <- d.loop(ctx) }()
	var err error
	looping := true
	select {
	case err = <-loopDone:
		looping = false
	case <-ctx.Done():
		// Let the loop see the stop before the senders close: analytics-go
		// closes the channel Enqueue sends on (and recovers the panic), so
		// a Close beside an Enqueue is a data race. A loop blocked in a
		// sender that cannot write is not waited for long.
		t := time.NewTimer(min(time.Second, drainTimeout))
		select {
		case err = <-loopDone:
			looping = false
		case <-t.C:
		}
		t.Stop()
	}
	// The deadline runs from the stop request, whatever the loop is doing
	// (it may be blocked handing a message to a sender that cannot write).
	deadline := time.NewTimer(drainTimeout)
	defer deadline.Stop()
	d.mu.Lock()
	d.stopping = true
	d.mu.Unlock()
	closed := make(chan struct{}, 2)
	for _, s := range []Sender{d.main, d.iso} {
		go func() {
			_ = s.Close()
			closed <- struct{}{}
		}()
	}
	for waiting := 2; waiting > 0 || looping; {
		select {
		case <-closed:
			waiting--
		case e := <-loopDone:
			err, looping = e, false
		case <-deadline.C:
			waiting, looping = 0, false
		}
	}
	d.resMu.Lock()
	d.resClosed = true
	close(d.results)
	d.resMu.Unlock()
	<-d.resDone
	d.mu.Lock()
	if n := len(d.inflightIDs); n > 0 {
		d.log.Warn("stopped with deliveries unsettled; those records stay pending and are sent again at the next start", "in_flight", n)
	}
	d.mu.Unlock()
	return err
}

// emit queues a verdict for settle. Verdicts that arrive after Run gave up
// waiting are dropped: their records simply stay pending.
func (d *Drainer) emit(r result) {
	d.resMu.Lock()
	defer d.resMu.Unlock()
	if !d.resClosed {
		d.results <- r
	}
}

func (d *Drainer) loop(ctx context.Context) error {
	var cursor uint64
	// yield paces claims while ingest is busy; each claim takes at most 500
	// records, so a burst of 500 covers one claim.
	yield := rate.NewLimiter(rate.Limit(d.cfg.YieldRate), 500)
	var lastCount int64
	var lastAt time.Time
	poll := time.NewTicker(d.cfg.PollInterval)
	defer poll.Stop()
	// Every wait below wakes at least once a second, so that the loop's
	// heartbeat (for the service watchdog) says it is running, not stuck.
	heartbeat := time.NewTicker(time.Second)
	defer heartbeat.Stop()
	for {
		d.beat.Store(time.Now().UnixNano())
		if ctx.Err() != nil {
			return nil
		}
		d.mu.Lock()
		wait := time.Until(d.backoffUntil)
		room := d.cfg.MaxInFlight - len(d.inflightIDs)
		if d.resetCursor {
			cursor, d.resetCursor = 0, false
		}
		iso := d.isolate
		d.isolate = nil
		d.mu.Unlock()

		if len(iso) > 0 {
			for _, r := range iso {
				d.send(r, true)
			}
			continue
		}
		if wait > 0 {
			if !sleepCtx(ctx, min(wait, time.Second)) {
				return nil
			}
			continue
		}
		if room <= 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-d.settled:
			case <-heartbeat.C:
			}
			continue
		}
		claimed, last, err := d.claim(cursor, min(room, 500))
		if err != nil {
			return fmt.Errorf("read pending records: %w", err)
		}
		if last == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-d.wake:
			case <-d.settled:
			case <-poll.C:
				cursor = 0 // pick up records whose failure was settled behind the cursor
			case <-heartbeat.C:
			}
			continue
		}
		if d.cfg.IngestBusy != nil && len(claimed) > 0 && d.cfg.IngestBusy() {
			if d.cfg.IngestCount != nil {
				if now := time.Now(); now.Sub(lastAt) >= time.Second {
					n := d.cfg.IngestCount()
					if !lastAt.IsZero() {
						in := float64(n-lastCount) / now.Sub(lastAt).Seconds()
						yield.SetLimit(rate.Limit(max(d.cfg.YieldRate, 1.25*in)))
					}
					lastCount, lastAt = n, now
				}
			}
			if err := yield.WaitN(ctx, min(len(claimed), yield.Burst())); err != nil {
				d.unsent(claimed) // stopping
				return nil
			}
		}
		for i, r := range claimed {
			if ctx.Err() != nil {
				d.unsent(claimed[i:]) // stopping: Run is about to close the senders
				return nil
			}
			d.send(r, false)
		}
		cursor = last
	}
}

// unsent releases records that were claimed but never handed to a sender.
func (d *Drainer) unsent(recs []spool.Record) {
	rs := make([]result, len(recs))
	for i, r := range recs {
		rs[i] = result{f: flight{rec: r}}
	}
	d.release(rs, true)
}

// claim reads up to limit pending records after the cursor and marks those
// not already in flight as in flight; it returns them and the id of the last
// record read (0 if none). The read is a snapshot: a record delivered or
// dead-lettered after the snapshot was taken is still in it, and by the time
// it is looked at it may no longer be in flight. Such records are skipped,
// else a delivered record would be sent (and counted) again.
func (d *Drainer) claim(after uint64, limit int) ([]spool.Record, uint64, error) {
	d.mu.Lock()
	d.reading, d.gone = true, nil
	d.mu.Unlock()
	recs, err := d.cfg.Store.ReadPending(after, limit)
	d.mu.Lock()
	defer d.mu.Unlock()
	gone := d.gone
	d.reading, d.gone = false, nil
	if err != nil || len(recs) == 0 {
		return nil, 0, err
	}
	claimed := recs[:0]
	for _, r := range recs {
		if d.inflightIDs[r.ID] || gone[r.ID] {
			continue
		}
		if r.Unreadable == "" && d.claimedMsg[r.MessageID] > 0 {
			// Another pending record carries the same messageId (re-admitted
			// after the dedup window) and is in flight. Verdicts are matched
			// by messageId, so this one waits until that one settles.
			d.deferredMsg[r.MessageID] = true
			continue
		}
		d.inflightIDs[r.ID] = true
		d.claimedMsg[r.MessageID]++
		claimed = append(claimed, r)
	}
	d.maxSeen = max(d.maxSeen, len(d.inflightIDs))
	return claimed, recs[len(recs)-1].ID, nil
}

// send maps a record the loop claimed (or one being isolated, still in
// flight) and hands it to a sender.
func (d *Drainer) send(r spool.Record, isolated bool) {
	// A sender may wait for the rate limiter in Enqueue (the dry-run sink
	// does): each message handed over is progress, not a stuck loop.
	d.beat.Store(time.Now().UnixNano())
	msg, err := d.message(r)
	if err != nil {
		// A record that cannot become a message never will: dead-letter it
		// with the reason rather than retrying for ever.
		d.log.Warn("record cannot be mapped to a Segment message; moved to dead letters", "id", r.ID, "error", err)
		d.emit(result{kind: resDead, f: flight{rec: r}, reason: "cannot map to a Segment message: " + err.Error()})
		return
	}
	d.mu.Lock()
	d.inflight[r.MessageID] = append(d.inflight[r.MessageID], flight{rec: r, isolated: isolated})
	d.mu.Unlock()
	s := d.main
	if isolated {
		s = d.iso
	}
	if err := s.Enqueue(msg); err != nil {
		// Enqueue validates synchronously; a closed client also lands here.
		f, ok := d.take(r.MessageID)
		if !ok {
			return
		}
		if errors.Is(err, analytics.ErrClosed) {
			d.emit(result{kind: resDrop, f: f})
			return
		}
		d.emit(result{kind: resDead, f: f, reason: "rejected by the Segment client: " + err.Error()})
	}
}

// message turns a record into the Segment call it is delivered as.
func (d *Drainer) message(r spool.Record) (analytics.Message, error) {
	return recordMessage(r, d.cfg.Mapping())
}

// recordMessage turns a record into the Segment call it is delivered as
// under mapping m.
func recordMessage(r spool.Record, m *Mapping) (analytics.Message, error) {
	if r.Unreadable != "" {
		return nil, fmt.Errorf("the stored record is unreadable: %s", r.Unreadable)
	}
	switch r.Kind {
	case spool.KindGWEN:
		ev, err := ParseEvent(r.Event, r.ReceivedAt)
		if err != nil {
			return nil, err
		}
		return m.Map(ev, r.ReceivedAt, r.MessageID)
	case spool.KindSegment:
		// Stored as Segment's own JSON: forwarded as it is.
		msg := &SegmentMessage{ID: r.MessageID, Type: segmentType(r.Event), Raw: r.Event, ReceivedAt: r.ReceivedAt}
		if err := msg.Validate(); err != nil {
			return nil, err
		}
		return msg, nil
	}
	return nil, fmt.Errorf("record kind %d is not known to this gwenrelay", r.Kind)
}

// segmentType returns the top-level "type" of a stored Segment message, or
// "" if it has none that is a string.
func segmentType(raw []byte) string {
	start, end, ok := topLevelField(raw, "type")
	if !ok {
		return ""
	}
	var typ string
	if json.Unmarshal(raw[start:end], &typ) != nil {
		return ""
	}
	return typ
}

// take removes one in-flight entry for a messageId (FIFO if a repeat of the
// same messageId is in flight too).
func (d *Drainer) take(msgID string) (flight, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fs := d.inflight[msgID]
	if len(fs) == 0 {
		return flight{}, false
	}
	f := fs[0]
	if len(fs) == 1 {
		delete(d.inflight, msgID)
	} else {
		d.inflight[msgID] = fs[1:]
	}
	return f, true
}

// callback receives the senders' verdicts. It must return quickly: it only
// classifies and queues; the spool work happens in settle.
type callback struct {
	d        *Drainer
	isolated bool
}

func (c callback) Success(m analytics.Message) {
	f, ok := c.d.take(messageID(m))
	if !ok {
		return
	}
	c.d.emit(result{kind: resAck, f: f})
}

func (c callback) Failure(m analytics.Message, err error) {
	f, ok := c.d.take(messageID(m))
	if !ok {
		return
	}
	reason := err.Error()
	switch class := classify(err); class {
	case failTooBig:
		limit := "Segment's 32,000-byte limit: "
		if _, ok := m.(*SegmentMessage); ok {
			limit = "too big for one upload to Segment: "
		}
		c.d.emit(result{kind: resDead, f: f, reason: limit + reason})
	case failRejected:
		if f.isolated {
			if why := c.d.cfg.Rejections.Reason(f.rec.MessageID); why != "" {
				reason = why
			}
			c.d.emit(result{kind: resDead, f: f, reason: "rejected by Segment: " + reason})
		} else {
			c.d.emit(result{kind: resIsolate, f: f, reason: reason})
		}
	case failClosed:
		c.d.emit(result{kind: resDrop, f: f})
	default:
		c.d.emit(result{kind: resFail, f: f, reason: reason})
	}
}

type failClass int

const (
	failTransient failClass = iota
	failRejected            // Segment refused the batch as invalid: find the culprit
	failTooBig
	failClosed
)

// classify reads a sender's error, shaped as analytics-go's (the raw sender
// follows it). For a non-2xx answer it is "<status> <status text>";
// anything else is a transport problem.
func classify(err error) failClass {
	switch {
	case errors.Is(err, analytics.ErrMessageTooBig):
		return failTooBig
	case errors.Is(err, analytics.ErrClosed):
		return failClosed
	}
	code, _, _ := strings.Cut(err.Error(), " ")
	status, convErr := strconv.Atoi(code)
	if convErr != nil {
		return failTransient
	}
	return classifyStatus(status)
}

// classifyStatus says what an HTTP status from Segment means for the
// records of the batch.
func classifyStatus(status int) failClass {
	switch status {
	case 400, 413, 422:
		// What Segment answers for content it refuses (bad JSON, too big):
		// some record of the batch is at fault.
		return failRejected
	}
	// 5xx, 408 and 429 are Segment's trouble. Any other 4xx (401, 403, 404,
	// 407...) is not about the records either: a wrong endpoint, a proxy,
	// a refused key. Treating it as a rejection would dead-letter the whole
	// backlog one record at a time; keep the records and back off until the
	// operator fixes it.
	return failTransient
}

func messageID(m analytics.Message) string {
	switch v := m.(type) {
	case analytics.Track:
		return v.MessageId
	case analytics.Identify:
		return v.MessageId
	case analytics.Group:
		return v.MessageId
	case analytics.Page:
		return v.MessageId
	case analytics.Screen:
		return v.MessageId
	case analytics.Alias:
		return v.MessageId
	case *analytics.Track:
		return v.MessageId
	case *analytics.Identify:
		return v.MessageId
	case *analytics.Group:
		return v.MessageId
	case *analytics.Page:
		return v.MessageId
	case *analytics.Screen:
		return v.MessageId
	case *analytics.Alias:
		return v.MessageId
	case *SegmentMessage:
		return v.ID
	}
	return ""
}

// settle applies the verdicts to the spool: acks and failures in batches,
// dead letters one by one. A record stays counted as in flight until its
// verdict is committed, so a cursor reset never sends it twice at once.
func (d *Drainer) settle() {
	defer close(d.resDone)
	var acks, fails []result
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	flush := func() {
		if len(acks) > 0 {
			ids := make([]uint64, len(acks))
			for i, r := range acks {
				ids[i] = r.f.rec.ID
			}
			rewind := false
			if err := d.cfg.Store.Ack(ids); err != nil {
				d.log.Error("deleting delivered records; they stay pending and will be sent again", "count", len(ids), "error", err)
				rewind = true
				d.backoff("the spool could not delete delivered records: " + err.Error())
			} else {
				d.delivered.Add(int64(len(ids)))
				if d.cfg.Observer != nil {
					d.cfg.Observer.Delivered(len(ids))
				}
			}
			d.release(acks, rewind)
			acks = acks[:0]
		}
		if len(fails) > 0 {
			byReason := map[string][]uint64{}
			for _, r := range fails {
				byReason[r.reason] = append(byReason[r.reason], r.f.rec.ID)
			}
			for reason, ids := range byReason {
				if err := d.cfg.Store.Fail(ids, reason); err != nil {
					d.log.Error("recording failed delivery attempts", "count", len(ids), "error", err)
				}
			}
			d.failed.Add(int64(len(fails)))
			if d.cfg.Observer != nil {
				d.cfg.Observer.DeliveryFailed(failureTransient, len(fails))
			}
			// They stay pending, likely behind the cursor: the loop must
			// go back for them before it takes newer records.
			d.release(fails, true)
			fails = fails[:0]
		}
		armed = false
	}
	for {
		var tc <-chan time.Time
		if armed {
			tc = timer.C
		}
		select {
		case r, ok := <-d.results:
			if !ok {
				flush()
				return
			}
			switch r.kind {
			case resAck:
				acks = append(acks, r)
				d.mu.Lock()
				d.failuresRow = 0
				d.mu.Unlock()
			case resFail:
				fails = append(fails, r)
				d.backoff(r.reason)
			case resDead:
				stillPending := false
				if err := d.cfg.Store.Dead(r.f.rec.ID, r.reason); err != nil && !errors.Is(err, spool.ErrNotFound) {
					d.log.Error("moving a record to dead letters", "id", r.f.rec.ID, "error", err)
					stillPending = true
					// The spool is failing (a full disk?): trying again at
					// once would only spin.
					d.backoff("the spool could not move a record to dead letters: " + err.Error())
				} else if err == nil {
					d.dead.Add(1)
					if d.cfg.Observer != nil {
						d.cfg.Observer.DeliveryFailed(failureDeadLettered, 1)
					}
					d.log.Warn("record moved to dead letters", "id", r.f.rec.ID, "reason", r.reason)
				}
				d.release([]result{r}, stillPending)
			case resIsolate:
				d.mu.Lock()
				// It stays in flight (ours) until its isolated send settles.
				d.isolate = append(d.isolate, r.f.rec)
				d.mu.Unlock()
				if d.cfg.Observer != nil {
					d.cfg.Observer.DeliveryFailed(failureRejected, 1)
				}
				d.log.Info("Segment rejected a batch; re-sending its records one a batch to find the culprit", "id", r.f.rec.ID, "reason", r.reason)
				d.signal()
			case resDrop:
				d.release([]result{r}, true) // still pending
			}
			if len(acks)+len(fails) >= d.cfg.AckBatch {
				flush()
			} else if len(acks)+len(fails) > 0 && !armed {
				timer.Reset(d.cfg.AckDelay)
				armed = true
			}
		case <-tc:
			flush()
		}
	}
}

// backoff makes the whole drainer pause after a transient failure: Segment
// or the network is in trouble, and hammering it helps nobody.
func (d *Drainer) backoff(reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return // a batch given up by Close: nothing to pace any more
	}
	if time.Now().Before(d.backoffUntil) {
		return // one failed batch reports each of its records: count it once
	}
	d.failuresRow++
	wait := d.cfg.Backoff(d.failuresRow, d.cfg.BackoffBase, d.cfg.BackoffMax)
	d.backoffUntil = time.Now().Add(wait)
	d.resetCursor = true
	d.log.Warn("delivery failed; backing off, records stay pending", "wait", wait.Round(time.Millisecond), "failures_in_a_row", d.failuresRow, "error", reason)
}

// release ends the records' time in flight. rewind is for records that
// stay pending: it makes the loop read again from the oldest pending record,
// in the same critical section, so that the loop cannot see the slots freed
// without also going back for the records that freed them (else it would
// take newer records and leave these behind its cursor until it next runs
// dry). Records that left the spool are noted for a read in progress (see
// claim).
func (d *Drainer) release(rs []result, rewind bool) {
	d.mu.Lock()
	reset := rewind
	for _, r := range rs {
		if d.inflightIDs[r.f.rec.ID] {
			delete(d.inflightIDs, r.f.rec.ID)
			id := r.f.rec.MessageID
			if d.claimedMsg[id]--; d.claimedMsg[id] <= 0 {
				delete(d.claimedMsg, id)
			}
			if d.deferredMsg[id] {
				delete(d.deferredMsg, id)
				reset = true // its twin may go now
			}
		}
		// A record that left the spool must not be claimed from a read
		// that began before it left; one that stays pending may be.
		if d.reading && !rewind {
			if d.gone == nil {
				d.gone = map[uint64]bool{}
			}
			d.gone[r.f.rec.ID] = true
		}
	}
	if reset {
		d.resetCursor = true
	}
	d.mu.Unlock()
	d.signal()
}

func (d *Drainer) signal() {
	select {
	case d.settled <- struct{}{}:
	default:
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
