// Package audit keeps the append-only, hash-chained audit log: every access
// decision (allow and deny), every admin change and, later, every rotation
// step. Events are group-committed: callers queue them and one writer
// appends a batch at a time, computing the chain, so that audit keeps up
// with tens of thousands of calls a second while each caller still waits
// for its event to be durable (fail closed). A batch is durable once it is
// committed to the store or, for an embedded store, once it is written to
// the log's journal, from which it moves into the store behind (see
// journal.go).
package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/secretplane/secretplane/store"
)

// Decisions.
const (
	Allow = "allow"
	Deny  = "deny"
)

// ErrUnavailable is returned by Record when the event could not be made
// durable; the caller must refuse the request.
var ErrUnavailable = errors.New("audit log unavailable")

// Event is what a caller records.
type Event struct {
	Actor     string // SPIFFE ID, or "system"
	Action    string
	Target    string
	Decision  string // Allow or Deny
	Grant     string // the grant that decided
	Outcome   string // Authorized, OK, or a status code name
	RequestID string
	Ref       string // canonical refs acted on, comma-separated
	Refused   string // a denial's refused objects, comma-separated
}

// Outcomes that are not status codes.
const (
	// Authorized is a write's decision, recorded before it runs; its
	// outcome follows in an event of its own.
	Authorized = "authorized"
	// OK is a call that succeeded.
	OK = "ok"
)

// Store is where the log's events end up.
type Store interface {
	AppendAudit(ctx context.Context, fn func(store.AuditChainHead) ([]store.AuditEvent, error)) error
	QueryAudit(ctx context.Context, q store.AuditQuery) ([]store.AuditEvent, error)
}

// Options tune the log.
type Options struct {
	// Mirror, when set, receives each committed event as a JSON line.
	Mirror io.Writer
	// FailOpen lets requests proceed when the audit log cannot be written
	// (dev mode only); the failure is logged.
	FailOpen bool
	MaxBatch int           // events per batch; default 512
	MaxDelay time.Duration // without a journal, how long a batch waits for company; default 1ms
	Log      *slog.Logger

	// With a journal (OpenJournaled):
	SegmentBytes int64         // a journal segment's size before the next starts; default 8 MiB
	IngestEvery  time.Duration // how often journaled events move into the store; default 50ms
	MaxBacklog   int           // journaled events not yet in the store before Record fails; default 65,536
}

type pending struct {
	ev   Event
	at   time.Time
	done chan error
}

// Log is the audit log writer. Without a journal each batch is one store
// transaction, whose chain head the store locks, so replicas sharing a
// PostgreSQL store extend one chain. With a journal (embedded store, one
// process) the writer keeps the chain head, a batch is acknowledged once
// it is in the journal, and an ingester moves events into the store.
type Log struct {
	store    Store
	opts     Options
	queue    chan *pending
	pool     sync.Pool          // of *pending, reused once the writer has answered
	scratch  []store.AuditEvent // the journal writer's batch, reused
	mirrorMu sync.Mutex
	stopped  chan struct{} // the writer stopped: Record refuses
	done     chan struct{} // Run returned: nothing more reaches the store
	// followUps holds outcomes of calls already made that could not be
	// recorded at once (RecordOutcome); Run records them when it can.
	followUps chan Event

	failures atomic.Uint64 // events whose write failed

	journal *journal
	head    store.AuditChainHead // the writer's, with a journal
	kick    chan struct{}        // asks the ingester to run now
	ing     struct {
		sync.Mutex
		backlog   []store.AuditEvent // journaled, not yet in the store
		spare     []store.AuditEvent // the last ingested backlog, emptied, for reuse
		inflight  int                // taken from backlog by the running ingest
		oldest    time.Time          // time of the oldest event not yet in the store (zero: none)
		journaled int64              // last sequence number in the journal
		ingested  int64              // last sequence number in the store
		err       error              // the last ingest's failure
		progress  chan struct{}      // closed after every ingest
	}
}

// Stats are the log's figures for metrics.
type Stats struct {
	// Queued are events waiting for the writer (and outcomes waiting to
	// be recorded again).
	Queued int
	// Behind are events in the journal not yet in the store, the oldest
	// of them written at Oldest (zero when none).
	Behind int
	Oldest time.Time
	// IngestFailing says the last move from the journal into the store
	// failed.
	IngestFailing bool
	// WriteFailures counts events whose write failed (their callers were
	// refused, or, fail-open, served unaudited).
	WriteFailures uint64
}

// Stats returns the log's current figures.
func (l *Log) Stats() Stats {
	st := Stats{Queued: len(l.queue) + len(l.followUps), WriteFailures: l.failures.Load()}
	if l.journal == nil {
		return st
	}
	l.ing.Lock()
	st.Behind, st.Oldest, st.IngestFailing = len(l.ing.backlog)+l.ing.inflight, l.ing.oldest, l.ing.err != nil
	l.ing.Unlock()
	return st
}

// New returns a log that appends each batch to s in one transaction. Run
// must be running for Record to return.
func New(s Store, opts Options) *Log {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = time.Millisecond
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = 8 << 20
	}
	if opts.IngestEvery <= 0 {
		opts.IngestEvery = 50 * time.Millisecond
	}
	if opts.MaxBacklog <= 0 {
		opts.MaxBacklog = 1 << 16
	}
	opts.MaxBatch = min(opts.MaxBatch, opts.MaxBacklog) // a batch must fit
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}

	l := &Log{store: s, opts: opts, queue: make(chan *pending, 4*opts.MaxBatch),
		stopped: make(chan struct{}), done: make(chan struct{}), kick: make(chan struct{}, 1),
		followUps: make(chan Event, maxFollowUps)}
	l.ing.progress = make(chan struct{})
	return l
}

// OpenJournaled returns a log that acknowledges events once they are in
// the journal in dir and moves them into s behind it. It takes the
// journal's lock, so one process at a time; replays into s what an earlier
// process journaled but did not store; and fails if the journal is
// damaged or does not continue s's chain. Close releases the journal after
// Run has returned.
func OpenJournaled(ctx context.Context, s Store, dir string, opts Options) (*Log, error) {
	l := New(s, opts)
	j, err := openJournal(dir, l.opts.SegmentBytes)
	if err != nil {
		return nil, err
	}
	head, torn, err := recoverJournal(ctx, s, j)
	if err != nil {
		j.close()
		return nil, fmt.Errorf("audit journal %s: %w", dir, err)
	}
	if torn {
		l.opts.Log.Warn("the audit journal ended in a line cut short, as when the machine stops while writing; that line was dropped", "dir", dir)
	}
	l.journal, l.head = j, head
	l.ing.journaled, l.ing.ingested = head.Seq, head.Seq
	return l, nil
}

// recoverJournal moves into s the journaled events it lacks, then empties
// the journal.
func recoverJournal(ctx context.Context, s Store, j *journal) (store.AuditChainHead, bool, error) {
	events, torn, err := j.replay()
	if err != nil {
		return store.AuditChainHead{}, false, err
	}
	head, err := storeJournaled(ctx, s, events)
	if err != nil {
		return store.AuditChainHead{}, false, fmt.Errorf("replay into the store: %w", err)
	}
	if err := makeDurable(ctx, s); err != nil {
		return store.AuditChainHead{}, false, err
	}
	if err := j.start(head.Seq + 1); err != nil {
		return store.AuditChainHead{}, false, err
	}
	return head, torn, nil
}

// storeJournaled moves into s the journaled events it lacks, once they are
// seen to continue its chain, and returns its new head. When s holds them
// all already, s's copy of the last must be the journal's: a store restored
// from another copy, or written by another process, must not swallow
// acknowledged events.
func storeJournaled(ctx context.Context, s Store, events []store.AuditEvent) (store.AuditChainHead, error) {
	var head store.AuditChainHead
	held := false
	err := s.AppendAudit(ctx, func(h store.AuditChainHead) ([]store.AuditEvent, error) {
		rest, err := continueChain(h, events)
		head, held = h, err == nil && len(events) > 0 && len(rest) == 0
		if len(rest) > 0 {
			head = store.AuditChainHead{Seq: rest[len(rest)-1].Seq, Hash: rest[len(rest)-1].Hash}
		}
		return rest, err
	})
	if err != nil || !held {
		return head, err
	}
	last := events[len(events)-1]
	got, err := s.QueryAudit(ctx, store.AuditQuery{AfterSeq: last.Seq - 1, Limit: 1})
	if err != nil {
		return head, fmt.Errorf("read the store's event %d: %w", last.Seq, err)
	}
	if len(got) != 1 || got[0].Seq != last.Seq || got[0].Hash != last.Hash {
		return head, fmt.Errorf("the store's event %d is not the journal's: was the audit log written by another process, or the store restored from another copy?", last.Seq)
	}
	return head, nil
}

// continueChain returns the events that extend the store's chain at head:
// none when the store reaches past them, an error when they do not
// continue it.
func continueChain(head store.AuditChainHead, events []store.AuditEvent) ([]store.AuditEvent, error) {
	if len(events) == 0 || head.Seq >= events[len(events)-1].Seq {
		return nil, nil
	}
	i := head.Seq - (events[0].Seq - 1)
	if i < 0 {
		return nil, fmt.Errorf("the store ends at event %d but the journal starts at event %d", head.Seq, events[0].Seq)
	}
	if events[i].PrevHash != head.Hash {
		return nil, fmt.Errorf("journaled event %d does not follow the store's event %d: was the audit log written by another process?", events[i].Seq, head.Seq)
	}
	return events[i:], nil
}

// durable is a store whose commits may wait to reach the disk (SQLite's WAL
// in synchronous=NORMAL): the journal keeps events until they have.
type durable interface {
	Checkpoint(ctx context.Context) error
}

// makeDurable makes what s has committed durable, before the journal
// drops its copy.
func makeDurable(ctx context.Context, s Store) error {
	if d, ok := s.(durable); ok {
		if err := d.Checkpoint(ctx); err != nil {
			return fmt.Errorf("make the audit store durable before dropping journal segments: %w", err)
		}
	}
	return nil
}

// Close releases the journal, if any. Call it after Run has returned.
func (l *Log) Close() error {
	if l.journal == nil {
		return nil
	}
	return l.journal.close()
}

// Done is closed when Run has returned: the store may be closed then.
func (l *Log) Done() <-chan struct{} { return l.done }

// Record queues e and waits until its batch is durable: committed to the
// store, or written to the journal. With FailOpen a failure is logged and
// nil returned; otherwise the error wraps ErrUnavailable.
func (l *Log) Record(ctx context.Context, e Event) error {
	err := l.record(ctx, e)
	if err == nil {
		return nil
	}
	if l.opts.FailOpen {
		l.opts.Log.Error("audit event not recorded (fail-open, dev mode)", "action", e.Action, "error", err)
		return nil
	}
	return err
}

// record queues e and waits until its batch is durable.
func (l *Log) record(ctx context.Context, e Event) error {
	p, _ := l.pool.Get().(*pending)
	if p == nil {
		p = &pending{done: make(chan error, 1)}
	}
	p.ev, p.at = e, time.Now()
	var err error
	select {
	case l.queue <- p:
		select {
		case err = <-p.done:
			// The writer is done with p: it answers last.
			p.ev = Event{}
			l.pool.Put(p)
		case <-ctx.Done():
			err = ctx.Err()
		case <-l.stopped:
			err = errors.New("audit writer stopped")
		}
	case <-ctx.Done():
		err = ctx.Err()
	case <-l.stopped:
		err = errors.New("audit writer stopped")
	}
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// maxFollowUps bounds the outcomes waiting to be recorded late.
const maxFollowUps = 4096

// RecordOutcome records what a call did once it has done it: a write whose
// decision was recorded before it ran. It never fails the call, which has
// happened: it waits for the writer's answer about the event (not for the
// caller, who may have gone: an event queued is written whatever the
// caller does, so giving up on the answer could only record it twice),
// and when the writer could not make it durable it is queued and recorded
// later, in order, as a follow-up.
func (l *Log) RecordOutcome(_ context.Context, e Event) {
	err := l.record(context.Background(), e)
	if err == nil {
		return
	}
	select {
	case <-l.stopped:
		l.opts.Log.Error("a call's outcome was not audited: the audit log has stopped", "action", e.Action, "request_id", e.RequestID, "outcome", e.Outcome)
		return
	default:
	}
	select {
	case l.followUps <- e:
		l.opts.Log.Warn("a call's outcome could not be audited yet; it will be recorded as a follow-up event", "action", e.Action, "request_id", e.RequestID, "error", err)
	default:
		l.opts.Log.Error("a call's outcome was not audited: the follow-up queue is full", "action", e.Action, "request_id", e.RequestID, "outcome", e.Outcome)
	}
}

// recordFollowUps records queued outcomes, retrying each with backoff,
// until ctx ends; then it records what is queued, with a bound (the
// writer keeps running until it returns), and logs what it could not.
func (l *Log) recordFollowUps(ctx context.Context) {
	wait := 100 * time.Millisecond
	for {
		var e Event
		select {
		case e = <-l.followUps:
		case <-ctx.Done():
			l.drainFollowUps(nil)
			return
		}
		for l.record(context.Background(), e) != nil {
			select {
			case <-time.After(wait):
				wait = min(2*wait, 5*time.Second)
			case <-ctx.Done():
				// Not back into the queue: it may have filled meanwhile.
				l.drainFollowUps(&e)
				return
			}
		}
		wait = 100 * time.Millisecond
	}
}

// drainFollowUps records first (when set) and the queued outcomes at
// shutdown while the writer still runs, stopping at the first the writer
// cannot take.
func (l *Log) drainFollowUps(first *Event) {
	for {
		var e Event
		if first != nil {
			e, first = *first, nil
		} else {
			select {
			case e = <-l.followUps:
			default:
				return
			}
		}
		if err := l.record(context.Background(), e); err != nil {
			l.opts.Log.Error("the audit log stopped with call outcomes not recorded", "events", len(l.followUps)+1, "error", err)
			return
		}
	}
}

// Run writes batches until ctx ends. With a journal it also moves
// journaled events into the store, and before returning it moves what is
// left (the journal keeps what the store refuses).
func (l *Log) Run(ctx context.Context) {
	defer close(l.done)
	// The writer stops once the follow-ups are in, after ctx ends.
	wctx, stopWriter := context.WithCancel(context.WithoutCancel(ctx))
	go func() { l.recordFollowUps(ctx); stopWriter() }()
	if l.journal == nil {
		l.writeDirect(wctx)
		close(l.stopped)
		return
	}
	ictx, stopIngest := context.WithCancel(context.WithoutCancel(ctx))
	ingested := make(chan struct{})
	go func() { l.ingestLoop(ictx); close(ingested) }()
	l.writeJournal(wctx)
	close(l.stopped)
	stopIngest()
	<-ingested
}

func (l *Log) writeDirect(ctx context.Context) {
	for {
		var first *pending
		select {
		case first = <-l.queue:
		case <-ctx.Done():
			return
		}
		// The batch closes MaxDelay after its first event was queued, not
		// after the writer took it: events queued while the last batch was
		// being written have waited already.
		batch := []*pending{first}
		timer := time.NewTimer(time.Until(first.at.Add(l.opts.MaxDelay)))
	collect:
		for len(batch) < l.opts.MaxBatch {
			select {
			case p := <-l.queue:
				batch = append(batch, p)
			case <-timer.C:
				break collect
			}
		}
		timer.Stop()
		l.flush(ctx, l.takeQueued(batch))
	}
}

// writeJournal writes what is queued whenever the last write is done: no
// window, since a journal write costs little, so batches grow with load.
func (l *Log) writeJournal(ctx context.Context) {
	for {
		select {
		case first := <-l.queue:
			l.journalBatch(l.takeQueued([]*pending{first}))
		case <-ctx.Done():
			return
		}
	}
}

// takeQueued adds what is queued already to batch, up to MaxBatch: an
// event that arrived as the window closed would wait a whole batch
// otherwise.
func (l *Log) takeQueued(batch []*pending) []*pending {
	for len(batch) < l.opts.MaxBatch {
		select {
		case p := <-l.queue:
			batch = append(batch, p)
		default:
			return batch
		}
	}
	return batch
}

// chain turns a batch into events that extend the chain at head, in
// events (reused when large enough).
func chain(events []store.AuditEvent, head store.AuditChainHead, batch []*pending) []store.AuditEvent {
	events = slices.Grow(events[:0], len(batch))[:len(batch)]
	prev, seq := head.Hash, head.Seq
	for i, p := range batch {
		seq++
		ev := store.AuditEvent{
			Seq: seq, Time: p.at.UTC().Truncate(time.Microsecond),
			Actor: text(p.ev.Actor), Action: text(p.ev.Action), Target: text(p.ev.Target), Decision: text(p.ev.Decision),
			Policy: text(p.ev.Grant), Outcome: text(p.ev.Outcome), RequestID: text(p.ev.RequestID), PrevHash: prev,
			Ref: text(p.ev.Ref), Refused: text(p.ev.Refused),
		}
		ev.Hash = Hash(ev)
		prev = ev.Hash
		events[i] = ev
	}
	return events
}

// text makes s storable as it is hashed: valid UTF-8 without NUL, which
// PostgreSQL's text and the journal's JSON keep byte for byte. What an
// event names comes from peers (a refused handshake's certificate), so
// the writer cannot assume it.
func text(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 || c >= utf8.RuneSelf {
			if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
				return s
			}
			return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
		}
	}
	return s
}

func (l *Log) flush(ctx context.Context, batch []*pending) {
	var events []store.AuditEvent
	err := l.store.AppendAudit(ctx, func(head store.AuditChainHead) ([]store.AuditEvent, error) {
		events = chain(nil, head, batch)
		return events, nil
	})
	if err == nil && l.opts.Mirror != nil {
		l.mirror(events)
	}
	if err != nil {
		l.failures.Add(uint64(len(batch)))
	}
	for _, p := range batch {
		p.done <- err
	}
}

// journalBatch writes a batch to the journal and hands it to the ingester.
// When the store has fallen MaxBacklog events behind, the batch is refused
// (fail closed) rather than held in memory without bound.
func (l *Log) journalBatch(batch []*pending) {
	l.ing.Lock()
	behind, ingestErr := len(l.ing.backlog)+l.ing.inflight, l.ing.err
	l.ing.Unlock()
	var err error
	var events []store.AuditEvent
	switch {
	case behind+len(batch) > l.opts.MaxBacklog && ingestErr != nil:
		err = fmt.Errorf("the audit store is %d events behind the journal: %w", behind, ingestErr)
	case behind+len(batch) > l.opts.MaxBacklog:
		err = fmt.Errorf("the audit store is %d events behind the journal", behind)
	default:
		// The batch is copied into the backlog below, so the writer's
		// scratch slice can take the next one.
		events = chain(l.scratch, l.head, batch)
		l.scratch = events
		err = l.journal.append(events)
	}
	if err == nil {
		last := events[len(events)-1]
		l.head = store.AuditChainHead{Seq: last.Seq, Hash: last.Hash}
		l.ing.Lock()
		if len(l.ing.backlog) == 0 && l.ing.inflight == 0 {
			l.ing.oldest = events[0].Time
		}
		l.ing.backlog = append(l.ing.backlog, events...)
		l.ing.journaled = last.Seq
		behind = len(l.ing.backlog)
		l.ing.Unlock()
		if behind >= l.opts.MaxBacklog/8 {
			l.poke()
		}
		if l.opts.Mirror != nil {
			l.mirror(events)
		}
	}
	if err != nil {
		l.failures.Add(uint64(len(batch)))
	}
	for _, p := range batch {
		p.done <- err
	}
}

func (l *Log) poke() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// ingestLoop moves journaled events into the store every IngestEvery, or
// sooner when asked; when ctx ends it moves what is left, with a bound.
func (l *Log) ingestLoop(ctx context.Context) {
	t := time.NewTicker(l.opts.IngestEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-l.kick:
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			l.ingest(final)
			cancel()
			return
		}
		l.ingest(ctx)
	}
}

func (l *Log) ingest(ctx context.Context) {
	l.ing.Lock()
	events := l.ing.backlog
	if len(events) > 0 {
		l.ing.backlog, l.ing.spare = l.ing.spare, nil
	}
	l.ing.inflight = len(events)
	if len(events) > 0 {
		l.ing.oldest = events[0].Time
	}
	l.ing.Unlock()
	var err error
	if len(events) > 0 {
		_, err = storeJournaled(ctx, l.store, events)
	}
	if err == nil && len(events) > 0 && l.journal.releasable(events[len(events)-1].Seq) {
		// Full segments go once what they hold is durable in the store.
		if makeDurable(ctx, l.store) == nil {
			l.journal.release(events[len(events)-1].Seq)
		}
	}
	l.ing.Lock()
	wasFailing := l.ing.err != nil
	if err != nil {
		l.ing.backlog = append(events, l.ing.backlog...)
	} else if len(events) > 0 {
		l.ing.ingested = events[len(events)-1].Seq
		if cap(events) <= 4*l.opts.MaxBatch {
			// The next ingest's backlog fills this slice rather than
			// growing a new one from nothing. One grown by an outage's
			// backlog is let go instead of being kept for good.
			clear(events)
			l.ing.spare = events[:0]
		}
	}
	l.ing.inflight = 0
	l.ing.oldest = time.Time{}
	if len(l.ing.backlog) > 0 {
		l.ing.oldest = l.ing.backlog[0].Time
	}
	l.ing.err = err
	close(l.ing.progress)
	l.ing.progress = make(chan struct{})
	l.ing.Unlock()
	switch {
	case err != nil && ctx.Err() != nil:
		// Stopping: the final move follows.
	case err != nil && !wasFailing:
		l.opts.Log.Error("audit events could not be moved from the journal into the store; retrying", "events", len(events), "error", err)
	case err == nil && wasFailing:
		l.opts.Log.Info("audit events are moving from the journal into the store again")
	}
}

// sync waits until every event journaled before the call is in the store,
// so that reads see it.
func (l *Log) sync(ctx context.Context) error {
	if l.journal == nil {
		return nil
	}
	l.ing.Lock()
	target := l.ing.journaled
	l.ing.Unlock()
	for {
		l.ing.Lock()
		ingested, progress := l.ing.ingested, l.ing.progress
		l.ing.Unlock()
		if ingested >= target {
			return nil
		}
		l.poke()
		select {
		case <-progress:
		case <-l.done:
			return errors.New("audit log stopped before its journal reached the store")
		case <-ctx.Done():
			return ctx.Err()
		}
		l.ing.Lock()
		err := l.ing.err
		l.ing.Unlock()
		if err != nil {
			return fmt.Errorf("audit events are journaled but not yet in the store: %w", err)
		}
	}
}

// QueryAudit implements Reader: it sees every event recorded before it.
func (l *Log) QueryAudit(ctx context.Context, q store.AuditQuery) ([]store.AuditEvent, error) {
	if err := l.sync(ctx); err != nil {
		return nil, err
	}
	return l.store.QueryAudit(ctx, q)
}

// ChainHead implements Reader: the store's chain head, once every event
// recorded before the call is in the store.
func (l *Log) ChainHead(ctx context.Context) (store.AuditChainHead, error) {
	if err := l.sync(ctx); err != nil {
		return store.AuditChainHead{}, err
	}
	var head store.AuditChainHead
	err := l.store.AppendAudit(ctx, func(h store.AuditChainHead) ([]store.AuditEvent, error) { head = h; return nil, nil })
	return head, err
}

func (l *Log) mirror(events []store.AuditEvent) {
	l.mirrorMu.Lock()
	defer l.mirrorMu.Unlock()
	for _, e := range events {
		raw, err := json.Marshal(jsonEvent(e))
		if err == nil {
			_, err = l.opts.Mirror.Write(append(raw, '\n'))
		}
		if err != nil {
			l.opts.Log.Error("audit mirror write failed", "error", err)
			return
		}
	}
}

// JSONEvent is the JSON form of an event (mirror file, CLI output).
type JSONEvent struct {
	Seq       int64     `json:"seq"`
	Time      time.Time `json:"time"`
	Actor     string    `json:"actor"`
	Action    string    `json:"action"`
	Target    string    `json:"target"`
	Decision  string    `json:"decision"`
	Grant     string    `json:"grant,omitempty"`
	Outcome   string    `json:"outcome"`
	RequestID string    `json:"request_id,omitempty"`
	Ref       string    `json:"ref,omitempty"`
	Refused   string    `json:"refused,omitempty"`
	PrevHash  string    `json:"prev_hash"`
	Hash      string    `json:"hash"`
}

func storeEvent(e JSONEvent) store.AuditEvent {
	return store.AuditEvent{Seq: e.Seq, Time: e.Time, Actor: e.Actor, Action: e.Action, Target: e.Target, Decision: e.Decision,
		Policy: e.Grant, Outcome: e.Outcome, RequestID: e.RequestID, Ref: e.Ref, Refused: e.Refused, PrevHash: e.PrevHash, Hash: e.Hash}
}

func jsonEvent(e store.AuditEvent) JSONEvent {
	return JSONEvent{Seq: e.Seq, Time: e.Time, Actor: e.Actor, Action: e.Action, Target: e.Target, Decision: e.Decision,
		Grant: e.Policy, Outcome: e.Outcome, RequestID: e.RequestID, Ref: e.Ref, Refused: e.Refused, PrevHash: e.PrevHash, Hash: e.Hash}
}

// Hash is the event's chain hash: SHA-256 over every field but Hash, each
// length-prefixed so that no two events encode alike: the fields every
// event has, ending with PrevHash, then Ref and Refused when either is set.
// An event without them encodes as events did before they existed, so
// stored chains verify unchanged; one with them has two more fields, and
// length prefixes keep the two forms apart.
func Hash(e store.AuditEvent) string {
	var stack [512]byte
	b := stack[:0]
	field := func(f string) {
		b = strconv.AppendInt(b, int64(len(f)), 10)
		b = append(append(b, ':'), f...)
	}
	var num [20]byte
	field(string(strconv.AppendInt(num[:0], e.Seq, 10)))
	field(string(strconv.AppendInt(num[:0], e.Time.UnixMicro(), 10)))
	for _, f := range [...]string{e.Actor, e.Action, e.Target, e.Decision, e.Policy, e.Outcome, e.RequestID, e.PrevHash} {
		field(f)
	}
	if e.Ref != "" || e.Refused != "" {
		field(e.Ref)
		field(e.Refused)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
