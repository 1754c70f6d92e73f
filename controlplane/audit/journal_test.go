package audit_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

// outageStore is a real SQLite store whose appends fail while down is set,
// as when its disk is full.
type outageStore struct {
	*sqlite.Store
	down atomic.Bool
}

func (s *outageStore) AppendAudit(ctx context.Context, fn func(store.AuditChainHead) ([]store.AuditEvent, error)) error {
	if s.down.Load() {
		return errors.New("disk I/O error")
	}
	return s.Store.AppendAudit(ctx, fn)
}

type journalEnv struct {
	dir, journal string
	st           *outageStore
}

func newJournalEnv(t *testing.T) *journalEnv {
	t.Helper()
	st, dir := openStore(t)
	return &journalEnv{dir: dir, journal: filepath.Join(dir, "journal"), st: &outageStore{Store: st}}
}

// open opens the journaled log; stop ends its Run and closes it, as a
// server does when it shuts down.
func (e *journalEnv) open(t *testing.T, opts audit.Options) (l *audit.Log, stop func()) {
	t.Helper()
	l, err := audit.OpenJournaled(context.Background(), e.st, e.journal, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go l.Run(ctx)
	var once atomic.Bool
	stop = func() {
		if once.Swap(true) {
			return
		}
		cancel()
		<-l.Done()
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	return l, stop
}

// storeEvents counts the events in the store itself, not through the log.
// journalOnly leaves n acknowledged events in the journal and none in the
// store: the store refuses them until the log has stopped, as when a
// process dies before moving them.
func (e *journalEnv) journalOnly(t *testing.T, n int) {
	t.Helper()
	l, stop := e.open(t, audit.Options{IngestEvery: time.Hour})
	e.st.down.Store(true)
	record(t, l, n)
	stop()
	e.st.down.Store(false)
}

func (e *journalEnv) storeEvents(t *testing.T) int {
	t.Helper()
	evs, err := e.st.QueryAudit(context.Background(), store.AuditQuery{Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	return len(evs)
}

func (e *journalEnv) segments(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(e.journal, "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

func verifyLog(t *testing.T, l *audit.Log, want int64) {
	t.Helper()
	rep, err := audit.Verify(context.Background(), l)
	if err != nil || !rep.OK() || rep.Events != want {
		t.Fatalf("verify: %+v %v, want %d events", rep, err, want)
	}
}

// An acknowledged event survives its process: events journaled while the
// store refused them, or while the process stopped before moving them,
// reach the store when the next process opens the journal.
func TestJournalReplaysWhatTheStoreLacks(t *testing.T) {
	e := newJournalEnv(t)
	l, stop := e.open(t, audit.Options{IngestEvery: time.Hour, SegmentBytes: 1024})
	record(t, l, 5)
	verifyLog(t, l, 5) // reading moves them into the store
	e.st.down.Store(true)
	for i := 0; i < 7; i++ { // acknowledged: in the journal only, over several segments
		record(t, l, 1)
	}
	if n := len(e.segments(t)); n < 3 {
		t.Fatalf("7 events in 1 KiB segments made %d segments", n)
	}
	stop() // the last move fails too
	if n := e.storeEvents(t); n != 5 {
		t.Fatalf("store has %d events before the replay, want 5", n)
	}
	e.st.down.Store(false)
	l, _ = e.open(t, audit.Options{})
	if n := e.storeEvents(t); n != 12 {
		t.Fatalf("store has %d events after the replay, want 12", n)
	}
	verifyLog(t, l, 12)
	record(t, l, 3) // the chain goes on from the replayed events
	verifyLog(t, l, 15)
	if segs := e.segments(t); len(segs) != 1 {
		t.Fatalf("journal keeps %d segments after the replay, want the current one: %v", len(segs), segs)
	}
}

// A clean stop moves every journaled event into the store, and the next
// open does not add them twice.
func TestJournalStopMovesEverything(t *testing.T) {
	e := newJournalEnv(t)
	l, stop := e.open(t, audit.Options{IngestEvery: time.Hour})
	record(t, l, 40)
	stop()
	if n := e.storeEvents(t); n != 40 {
		t.Fatalf("store has %d events after a clean stop, want 40", n)
	}
	done := make(chan error, 1)
	go func() { done <- l.Record(context.Background(), audit.Event{Action: "x"}) }()
	select {
	case err := <-done:
		if !errors.Is(err, audit.ErrUnavailable) {
			t.Fatalf("Record after the log stopped: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Record after the log stopped hangs")
	}
	l, _ = e.open(t, audit.Options{})
	verifyLog(t, l, 40)
}

// Reads see every event recorded before them, however long the ingester
// would wait.
func TestJournalReadsSeeRecordedEvents(t *testing.T) {
	e := newJournalEnv(t)
	l, _ := e.open(t, audit.Options{IngestEvery: time.Hour})
	for i := 1; i <= 3; i++ {
		record(t, l, 1)
		evs, err := l.QueryAudit(context.Background(), store.AuditQuery{Limit: 10})
		if err != nil || len(evs) != i {
			t.Fatalf("after %d events the query sees %d (%v)", i, len(evs), err)
		}
	}
}

// A damaged journal stops the server from starting, with an error that
// says where; a line cut short at the very end (a machine crash while
// writing) is dropped.
func TestJournalDamage(t *testing.T) {
	cases := []struct {
		name    string
		damage  func(t *testing.T, seg string)
		want    string // in the error; "" when the journal opens
		entries int64  // with "": events after the replay
	}{
		{"last line cut short", func(t *testing.T, seg string) { appendTo(t, seg, `{"seq":7,"time":"2026-`) }, "", 6},
		{"event modified", func(t *testing.T, seg string) { rewrite(t, seg, `"target":"s/`, `"target":"x/`) }, "was modified", 0},
		{"event removed", func(t *testing.T, seg string) { dropLine(t, seg, 2) }, "does not follow event", 0},
		{"not an event", func(t *testing.T, seg string) { appendTo(t, seg, "garbage\n") }, "not an audit event", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newJournalEnv(t)
			e.journalOnly(t, 6)
			segs := e.segments(t)
			tc.damage(t, segs[len(segs)-1])
			l, err := audit.OpenJournaled(context.Background(), e.st, e.journal, audit.Options{})
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), e.journal) {
					l.Close()
					t.Fatalf("got %v, want an error naming the journal and saying %q", err, tc.want)
				}
				if n := e.storeEvents(t); n != 0 {
					t.Fatalf("a damaged journal put %d events in the store", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			run(t, l)
			verifyLog(t, l, tc.entries)
		})
	}
}

// A journal that does not continue the store's chain (another process
// wrote the store, or the store was restored from another copy) is
// refused, and the store is left as it was: whether the store stops short
// of the journal's end or reaches past it.
func TestJournalMustContinueTheStore(t *testing.T) {
	cases := []struct {
		storeEvents int
		want        string
	}{
		{2, "does not follow the store's event 2"},
		{4, "the store's event 4 is not the journal's"},
		{6, "the store's event 4 is not the journal's"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.storeEvents), func(t *testing.T) {
			e := newJournalEnv(t)
			e.journalOnly(t, 4)
			other := audit.New(e.st, audit.Options{}) // writes the store directly
			run(t, other)
			for i := 0; i < tc.storeEvents; i++ {
				record(t, other, 1)
			}
			_, err := audit.OpenJournaled(context.Background(), e.st, e.journal, audit.Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if n := e.storeEvents(t); n != tc.storeEvents {
				t.Fatalf("store has %d events, want the %d it had", n, tc.storeEvents)
			}
			if len(e.segments(t)) == 0 {
				t.Fatal("the refused journal was removed")
			}
		})
	}
}

// One process at a time: the writer keeps the chain head in memory.
func TestJournalIsLocked(t *testing.T) {
	e := newJournalEnv(t)
	e.open(t, audit.Options{})
	_, err := audit.OpenJournaled(context.Background(), e.st, e.journal, audit.Options{})
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("a second open: %v", err)
	}
}

// When the store refuses events for long, the backlog is bounded: Record
// fails closed, then works again once the store is back.
func TestJournalBacklogFailsClosed(t *testing.T) {
	e := newJournalEnv(t)
	l, _ := e.open(t, audit.Options{MaxBacklog: 10, IngestEvery: 10 * time.Millisecond})
	e.st.down.Store(true)
	for i := 0; i < 10; i++ {
		record(t, l, 1)
	}
	if _, err := l.QueryAudit(context.Background(), store.AuditQuery{}); err == nil || !strings.Contains(err.Error(), "not yet in the store") {
		t.Fatalf("a read while the store is down: %v", err)
	}
	err := l.Record(context.Background(), audit.Event{Action: "x"})
	if !errors.Is(err, audit.ErrUnavailable) || !strings.Contains(err.Error(), "10 events behind") || !strings.Contains(err.Error(), "disk I/O error") {
		t.Fatalf("the 11th event: %v", err)
	}
	e.st.down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for l.Record(context.Background(), audit.Event{Action: "x"}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("Record still fails after the store came back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	verifyLog(t, l, 11)
}

// Full segments are removed once their events are in the store; files are
// private to the server's user.
func TestJournalSegments(t *testing.T) {
	e := newJournalEnv(t)
	l, _ := e.open(t, audit.Options{SegmentBytes: 1024, IngestEvery: time.Hour})
	e.st.down.Store(true)
	for i := 0; i < 30; i++ {
		record(t, l, 1)
	}
	if n := len(e.segments(t)); n < 5 {
		t.Fatalf("30 events in 1 KiB segments made %d segments", n)
	}
	e.st.down.Store(false)
	verifyLog(t, l, 30)
	segs := e.segments(t)
	if len(segs) != 1 {
		t.Fatalf("after the move %d segments remain, want the current one", len(segs))
	}
	for _, p := range append(segs, e.journal) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s has mode %v", p, fi.Mode().Perm())
		}
	}
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func rewrite(t *testing.T, path, old, new string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), old) {
		t.Fatalf("%s lacks %q", path, old)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(raw), old, new, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

func dropLine(t *testing.T, path string, n int) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(raw), "\n")
	lines = append(lines[:n-1], lines[n:]...)
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Recording, reading, moving into the store and rotating segments all at
// once (run with -race): every event arrives once and the chain verifies.
func TestJournalConcurrentUse(t *testing.T) {
	e := newJournalEnv(t)
	l, _ := e.open(t, audit.Options{SegmentBytes: 2048, IngestEvery: time.Millisecond})
	ctx, stopReading := context.WithCancel(context.Background())
	readers := make(chan error, 2)
	for r := 0; r < 2; r++ {
		go func() {
			for ctx.Err() == nil {
				if _, err := l.QueryAudit(ctx, store.AuditQuery{Limit: 5, Newest: true}); err != nil && ctx.Err() == nil {
					readers <- err
					return
				}
				if _, err := l.ChainHead(ctx); err != nil && ctx.Err() == nil {
					readers <- err
					return
				}
			}
			readers <- nil
		}()
	}
	for i := 0; i < 8; i++ {
		record(t, l, 50)
	}
	stopReading()
	for r := 0; r < 2; r++ {
		if err := <-readers; err != nil {
			t.Fatal(err)
		}
	}
	verifyLog(t, l, 400)
	if n := len(e.segments(t)); n > 2 {
		t.Fatalf("%d segments remain after everything is in the store", n)
	}
}
