package sqlite_test

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

	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
	"github.com/secretplane/secretplane/store/storetest"
)

func TestConformance(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db", "store.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		})
	})
}

func TestFileModesAndReopen(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "store.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutSecret(ctx, store.Secret{Name: "a/b", Ref: "local://x"}, store.Precondition{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", filepath.Base(p), st.Mode().Perm())
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", st.Mode().Perm())
	}
	s.Close()
	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, err := s.GetSecret(ctx, "a/b"); err != nil || got.Ref != "local://x" {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DB().ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at_us) VALUES (999, 'future', 0)`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := sqlite.Open(ctx, path); err == nil || !strings.Contains(err.Error(), "newer than this binary") {
		t.Fatalf("want a newer-schema error, got %v", err)
	}
}

// The schema has no column where a secret value could be kept.
func TestSchemaHasNoValueColumn(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rows, err := s.DB().QueryContext(ctx, `SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var table, col string
		if err := rows.Scan(&table, &col); err != nil {
			t.Fatal(err)
		}
		n++
		if table == "counters" && col == "value" {
			continue // the revision counter
		}
		for _, bad := range []string{"value", "plaintext", "secret_data", "password"} {
			if strings.Contains(col, bad) {
				t.Errorf("column %s.%s could hold a secret value", table, col)
			}
		}
	}
	if n == 0 {
		t.Fatal("no columns read")
	}
}

// BenchmarkAppendAudit is the embedded store's cost per audit event when
// the journal's ingester moves a batch of 512 in one transaction.
func BenchmarkAppendAudit(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background()) // as the ingester's
	defer cancel()
	s, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "store.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	events := auditEvents(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for len(events) > 0 {
		batch := events[:min(512, len(events))]
		events = events[len(batch):]
		if err := s.AppendAudit(ctx, func(store.AuditChainHead) ([]store.AuditEvent, error) { return batch, nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// endsAfter is a context whose Err reports cancellation from its nth
// call on: it ends part-way through a batch, deterministically.
type endsAfter struct {
	context.Context
	calls atomic.Int64 // database/sql asks from its own goroutines too
	n     int64
}

func (c *endsAfter) Err() error {
	if c.calls.Add(1) >= c.n {
		return context.Canceled
	}
	return nil
}

// A batch whose context ends after some rows are written leaves nothing
// behind: not those rows, not a moved chain head.
func TestAppendAuditCancelledMidBatch(t *testing.T) {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := &endsAfter{Context: context.Background(), n: 150}
	err = s.AppendAudit(ctx, func(store.AuditChainHead) ([]store.AuditEvent, error) { return auditEvents(300), nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("append with a context that ended mid-batch: %v, want context.Canceled", err)
	}
	if calls := ctx.calls.Load(); calls < 100 {
		t.Fatalf("the context was consulted %d times: the batch did not get under way", calls)
	}
	got, err := s.QueryAudit(context.Background(), store.AuditQuery{Limit: 1000})
	if err != nil || len(got) != 0 {
		t.Fatalf("after the cancelled batch: %d events, %v", len(got), err)
	}
	var head store.AuditChainHead
	if err := s.AppendAudit(context.Background(), func(h store.AuditChainHead) ([]store.AuditEvent, error) { head = h; return nil, nil }); err != nil || head.Seq != 0 {
		t.Fatalf("chain head after the cancelled batch: %+v, %v", head, err)
	}
}

// auditEvents returns n chained events from the start of the log, shaped
// like a workload's Resolve (the real hash is controlplane/audit's; the
// store keeps what it is given).
func auditEvents(n int) []store.AuditEvent {
	events := make([]store.AuditEvent, n)
	prev, now := "", time.Now()
	for i := range events {
		h := fmt.Sprintf("%064x", i+1)
		events[i] = store.AuditEvent{Seq: int64(i + 1), Time: now, Actor: "spiffe://example.org/payments/api",
			Action: "SecretsService.Resolve", Target: "payments/db", Decision: "allow", Policy: "api-read",
			Outcome: "ok", RequestID: fmt.Sprintf("%024x", i+1), Ref: "local://payments/db#password", PrevHash: prev, Hash: h}
		prev = h
	}
	return events
}
