package postgres_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/postgres"
	"github.com/secretplane/secretplane/store/storetest"
)

func TestConformance(t *testing.T) {
	pg := testenv.StartPostgres(t)
	t.Run("postgres", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			s, err := postgres.Open(context.Background(), pg.NewDatabase(t), postgres.Options{AllowInsecureLoopback: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		})
	})
}

func TestTLSRequirement(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		dsn  string
		opts postgres.Options
		want string
	}{
		{"remote host without TLS", "postgres://app@db.example.com:5432/app?sslmode=disable", postgres.Options{AllowInsecureLoopback: true}, "TLS is required for host db.example.com"},
		{"remote host with sslmode=prefer", "postgres://app@db.example.com:5432/app?sslmode=prefer", postgres.Options{AllowInsecureLoopback: true}, "TLS is required"},
		{"loopback without dev allowance", "postgres://app@127.0.0.1:5432/app?sslmode=disable", postgres.Options{}, "TLS is required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := postgres.Open(ctx, tc.dsn, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestDSNRedaction(t *testing.T) {
	cases := []struct{ dsn, want string }{
		{"postgres://app:hunter2@db:5432/app?sslmode=verify-full", "postgres://app:xxxxx@db:5432/app?sslmode=verify-full"},
		{"postgres://app@db/app?password=hunter2", "postgres://app@db/app?password=REDACTED"},
		{"host=db user=app password=hunter2 dbname=app", "host=db user=app password=REDACTED dbname=app"},
		{"postgres://app@db/app", "postgres://app@db/app"},
	}
	for _, tc := range cases {
		if got := postgres.RedactDSN(tc.dsn); got != tc.want {
			t.Errorf("RedactDSN(%q) = %q, want %q", tc.dsn, got, tc.want)
		}
		if strings.Contains(postgres.RedactDSN(tc.dsn), "hunter2") {
			t.Errorf("password survives redaction in %q", tc.dsn)
		}
		if has := postgres.HasPassword(tc.dsn); has != strings.Contains(tc.dsn, "hunter2") {
			t.Errorf("HasPassword(%q) = %v", tc.dsn, has)
		}
	}
	// A URL that does not parse is refused when it could carry a password.
	for _, dsn := range []string{"postgres://app:p%zzhunter2@db/app", "postgres://app:hunter2 x@db/app"} {
		if !postgres.HasPassword(dsn) {
			t.Errorf("HasPassword(%q) = false", dsn)
		}
	}
	// An error from a bad DSN never carries the password.
	_, err := postgres.Open(context.Background(), "postgres://app:hunter2@db:notaport/app", postgres.Options{})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error leaks the password or is nil: %v", err)
	}
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	// Replicas starting at once all migrate safely.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := postgres.Open(ctx, dsn, postgres.Options{AllowInsecureLoopback: true})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent open %d: %v", i, err)
		}
	}
	// Re-opening is idempotent and keeps data.
	s, err := postgres.Open(ctx, dsn, postgres.Options{AllowInsecureLoopback: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutSecret(ctx, store.Secret{Name: "a/b", Ref: "local://x"}, store.Precondition{}); err != nil {
		t.Fatal(err)
	}
	var columns []string
	rows, err := s.DB().QueryContext(ctx, `SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema = 'public'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			t.Fatal(err)
		}
		columns = append(columns, c)
	}
	rows.Close()
	if len(columns) == 0 {
		t.Fatal("no columns read")
	}
	for _, c := range columns {
		for _, bad := range []string{"value", "plaintext", "secret_data", "password"} {
			if strings.Contains(c, bad) {
				t.Errorf("column %s could hold a secret value", c)
			}
		}
	}
	if _, err := s.DB().ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at_us) VALUES (999, 'future', 0)`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := postgres.Open(ctx, dsn, postgres.Options{AllowInsecureLoopback: true}); err == nil || !strings.Contains(err.Error(), "newer than this binary") {
		t.Fatalf("want a newer-schema error, got %v", err)
	}
}
