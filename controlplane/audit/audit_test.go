package audit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

// modes are the two ways a log writes: a transaction per batch, or
// through a journal.
var modes = []struct {
	name    string
	journal bool
}{{"direct", false}, {"journaled", true}}

// openStore opens a SQLite store in a fresh directory, closed when the
// test ends.
func openStore(t testing.TB) (*sqlite.Store, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, dir
}

func newLog(t *testing.T, journaled bool, opts audit.Options) (*audit.Log, *sqlite.Store) {
	t.Helper()
	st, dir := openStore(t)
	l := audit.New(st, opts)
	if journaled {
		var err error
		if l, err = audit.OpenJournaled(context.Background(), st, filepath.Join(dir, "journal"), opts); err != nil {
			t.Fatal(err)
		}
	}
	run(t, l)
	return l, st
}

// run runs l until the test ends, then closes it.
func run(t *testing.T, l *audit.Log) {
	ctx, cancel := context.WithCancel(context.Background())
	go l.Run(ctx)
	t.Cleanup(func() {
		cancel()
		<-l.Done()
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
}

func record(t *testing.T, l *audit.Log, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- l.Record(context.Background(), audit.Event{Actor: "spiffe://x.test/a", Action: "AdminService.GetSecret", Target: fmt.Sprintf("s/%d", i), Decision: audit.Allow, Grant: "g", Outcome: "authorized", RequestID: "r"})
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestRecordAndVerify(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			var mirror bytes.Buffer
			l, _ := newLog(t, m.journal, audit.Options{Mirror: &syncWriter{w: &mirror}})
			record(t, l, 200)
			rep, err := audit.Verify(context.Background(), l)
			if err != nil || !rep.OK() || rep.Events != 200 {
				t.Fatalf("verify: %+v %v", rep, err)
			}
			if lines := strings.Count(mirror.String(), "\n"); lines != 200 {
				t.Fatalf("mirror has %d lines", lines)
			}
		})
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// Verify detects a modified, a deleted and a reordered record in the
// database, and a deleted newest record.
func TestVerifyDetectsTampering(t *testing.T) {
	cases := []struct {
		name   string
		tamper string
		want   string
	}{
		{"modified", `UPDATE audit_events SET target = 'other' WHERE seq = 5`, "modified"},
		{"modified decision", `UPDATE audit_events SET decision = 'allow', outcome = 'ok' WHERE seq = 7`, "modified"},
		{"deleted", `DELETE FROM audit_events WHERE seq = 4`, "deleted"},
		{"reordered", `UPDATE audit_events SET seq = -3 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 6; UPDATE audit_events SET seq = 6 WHERE seq = -3`, ""},
		{"newest deleted", `DELETE FROM audit_events WHERE seq = 10`, "chain head"},
	}
	for _, m := range modes {
		for _, tc := range cases {
			t.Run(m.name+"/"+tc.name, func(t *testing.T) {
				verifyTampered(t, m.journal, tc.tamper, tc.want)
			})
		}
	}
}

func verifyTampered(t *testing.T, journaled bool, tamper, want string) {
	l, st := newLog(t, journaled, audit.Options{})
	for i := 0; i < 10; i++ { // one event per batch: distinct times
		record(t, l, 1)
	}
	if _, err := l.ChainHead(context.Background()); err != nil { // in the store, journaled or not
		t.Fatal(err)
	}
	if _, err := st.DB().Exec(tamper); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(context.Background(), l)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatal("tampering not detected")
	}
	if want != "" && !strings.Contains(fmt.Sprint(rep.Problems), want) {
		t.Fatalf("problems %v lack %q", rep.Problems, want)
	}
}

type failingStore struct{}

func (failingStore) AppendAudit(context.Context, func(store.AuditChainHead) ([]store.AuditEvent, error)) error {
	return errors.New("disk full")
}

func (failingStore) QueryAudit(context.Context, store.AuditQuery) ([]store.AuditEvent, error) {
	return nil, errors.New("disk full")
}

func TestFailClosedAndFailOpen(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		l := audit.New(failingStore{}, audit.Options{FailOpen: failOpen})
		ctx, cancel := context.WithCancel(context.Background())
		go l.Run(ctx)
		err := l.Record(context.Background(), audit.Event{Action: "x"})
		cancel()
		if failOpen && err != nil {
			t.Fatalf("fail-open returned %v", err)
		}
		if !failOpen && !errors.Is(err, audit.ErrUnavailable) {
			t.Fatalf("fail-closed returned %v", err)
		}
	}
	// A stopped writer refuses rather than hangs.
	l := audit.New(failingStore{}, audit.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l.Run(ctx)
	if err := l.Record(context.Background(), audit.Event{}); !errors.Is(err, audit.ErrUnavailable) {
		t.Fatalf("stopped writer: %v", err)
	}
}

// An outcome that cannot be recorded when the call ends is recorded as a
// follow-up once the store takes events again, in order; RecordOutcome
// never fails the call nor waits past its bound.
func TestRecordOutcomeFollowsUp(t *testing.T) {
	st, _ := openStore(t)
	down := &outageStore{Store: st}
	l := audit.New(down, audit.Options{})
	run(t, l)
	ctx := context.Background()
	l.RecordOutcome(ctx, audit.Event{Action: "AdminService.PutSecret", Target: "a/1", Decision: audit.Allow, Outcome: audit.OK})
	down.down.Store(true)
	start := time.Now()
	for i := 2; i <= 4; i++ {
		l.RecordOutcome(ctx, audit.Event{Action: "AdminService.PutSecret", Target: fmt.Sprintf("a/%d", i), Decision: audit.Allow, Outcome: "Aborted"})
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("RecordOutcome waited %v during the outage", waited)
	}
	// A cancelled caller's outcome is recorded all the same.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	l.RecordOutcome(cancelled, audit.Event{Action: "AdminService.PutSecret", Target: "a/5", Decision: audit.Allow, Outcome: audit.OK})
	down.down.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := l.QueryAudit(ctx, store.AuditQuery{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range evs {
			got = append(got, e.Target+" "+e.Outcome)
		}
		if strings.Join(got, ",") == "a/1 ok,a/2 Aborted,a/3 Aborted,a/4 Aborted,a/5 ok" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("outcomes after the outage: %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rep, err := audit.Verify(ctx, l); err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// An outcome queued when the log stops is recorded before the writer
// stops; one offered after it stopped is refused at once.
func TestFollowUpsDrainAtStop(t *testing.T) {
	st, _ := openStore(t)
	down := &outageStore{Store: st}
	l := audit.New(down, audit.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	go l.Run(ctx)
	down.down.Store(true)
	l.RecordOutcome(context.Background(), audit.Event{Action: "AdminService.DeleteSecret", Target: "a/1", Decision: audit.Allow, Outcome: audit.OK})
	down.down.Store(false)
	cancel()
	<-l.Done()
	evs, err := st.QueryAudit(context.Background(), store.AuditQuery{Limit: 10})
	if err != nil || len(evs) != 1 || evs[0].Target != "a/1" {
		t.Fatalf("after stop: %+v %v", evs, err)
	}
	start := time.Now()
	l.RecordOutcome(context.Background(), audit.Event{Action: "x"})
	if time.Since(start) > time.Second {
		t.Fatal("RecordOutcome on a stopped log waited")
	}
}

func BenchmarkRecord(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			st, dir := openStore(b)
			l := audit.New(st, audit.Options{})
			if m.journal {
				var err error
				if l, err = audit.OpenJournaled(context.Background(), st, filepath.Join(dir, "journal"), audit.Options{}); err != nil {
					b.Fatal(err)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			go l.Run(ctx)
			defer func() { cancel(); <-l.Done(); l.Close() }()
			b.SetParallelism(32) // 64 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := l.Record(context.Background(), audit.Event{Actor: "spiffe://x.test/a", Action: "Resolve", Target: "payments/db", Decision: audit.Allow}); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
