// Package audit keeps the append-only, hash-chained audit log: every access
// decision (allow and deny), every admin change and, later, every rotation
// step. Events are group-committed: callers queue them and one writer
// appends a batch per transaction, computing the chain, so that audit keeps
// up with tens of thousands of calls a second while each caller still waits
// for its event to be durable (fail closed).
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
	"strconv"
	"sync"
	"time"

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
	Outcome   string
	RequestID string
}

// Appender is the store the log appends to.
type Appender interface {
	AppendAudit(ctx context.Context, fn func(store.AuditChainHead) ([]store.AuditEvent, error)) error
}

// Options tune the log.
type Options struct {
	// Mirror, when set, receives each committed event as a JSON line.
	Mirror io.Writer
	// FailOpen lets requests proceed when the audit log cannot be written
	// (dev mode only); the failure is logged.
	FailOpen bool
	MaxBatch int           // events per transaction; default 512
	MaxDelay time.Duration // how long a batch waits for company; default 1ms
	Log      *slog.Logger
}

type pending struct {
	ev   Event
	at   time.Time
	done chan error
}

// Log is the audit log writer.
type Log struct {
	store    Appender
	opts     Options
	queue    chan *pending
	mirrorMu sync.Mutex
	stopped  chan struct{}
}

// New returns a log over s. Run must be running for Record to return.
func New(s Appender, opts Options) *Log {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = time.Millisecond
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	return &Log{store: s, opts: opts, queue: make(chan *pending, 4*opts.MaxBatch), stopped: make(chan struct{})}
}

// Record queues e and waits until its batch is committed. With FailOpen a
// failure is logged and nil returned; otherwise the error wraps
// ErrUnavailable.
func (l *Log) Record(ctx context.Context, e Event) error {
	p := &pending{ev: e, at: time.Now(), done: make(chan error, 1)}
	var err error
	select {
	case l.queue <- p:
		select {
		case err = <-p.done:
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
	if l.opts.FailOpen {
		l.opts.Log.Error("audit event not recorded (fail-open, dev mode)", "action", e.Action, "error", err)
		return nil
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Run writes batches until ctx ends.
func (l *Log) Run(ctx context.Context) {
	defer close(l.stopped)
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

func (l *Log) flush(ctx context.Context, batch []*pending) {
	var events []store.AuditEvent
	err := l.store.AppendAudit(ctx, func(head store.AuditChainHead) ([]store.AuditEvent, error) {
		events = make([]store.AuditEvent, len(batch))
		prev, seq := head.Hash, head.Seq
		for i, p := range batch {
			seq++
			ev := store.AuditEvent{
				Seq: seq, Time: p.at.UTC().Truncate(time.Microsecond),
				Actor: p.ev.Actor, Action: p.ev.Action, Target: p.ev.Target, Decision: p.ev.Decision,
				Policy: p.ev.Grant, Outcome: p.ev.Outcome, RequestID: p.ev.RequestID, PrevHash: prev,
			}
			ev.Hash = Hash(ev)
			prev = ev.Hash
			events[i] = ev
		}
		return events, nil
	})
	if err == nil && l.opts.Mirror != nil {
		l.mirror(events)
	}
	for _, p := range batch {
		p.done <- err
	}
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
	PrevHash  string    `json:"prev_hash"`
	Hash      string    `json:"hash"`
}

func jsonEvent(e store.AuditEvent) JSONEvent {
	return JSONEvent{Seq: e.Seq, Time: e.Time, Actor: e.Actor, Action: e.Action, Target: e.Target, Decision: e.Decision,
		Grant: e.Policy, Outcome: e.Outcome, RequestID: e.RequestID, PrevHash: e.PrevHash, Hash: e.Hash}
}

// Hash is the event's chain hash: SHA-256 over every field but Hash, each
// length-prefixed so that no two events encode alike, ending with PrevHash.
func Hash(e store.AuditEvent) string {
	h := sha256.New()
	for _, f := range []string{
		strconv.FormatInt(e.Seq, 10), strconv.FormatInt(e.Time.UnixMicro(), 10),
		e.Actor, e.Action, e.Target, e.Decision, e.Policy, e.Outcome, e.RequestID, e.PrevHash,
	} {
		h.Write([]byte(strconv.Itoa(len(f))))
		h.Write([]byte{':'})
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}
