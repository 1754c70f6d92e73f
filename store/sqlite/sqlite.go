// Package sqlite is the embedded default store: SQLite (pure Go, no cgo) in
// one file, for dev mode and single-replica installations.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/secretplane/secretplane/store/internal/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is the SQLite store.
type Store struct {
	*sqlstore.Store
}

// Open opens (creating it 0600, in a 0700 directory, if absent) the SQLite
// database at path and migrates it.
func Open(ctx context.Context, path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open sqlite store: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open sqlite store: %w", err)
	}
	f.Close()
	q := url.Values{}
	q.Set("_txlock", "immediate") // writers queue at BEGIN instead of failing at COMMIT
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(ON)")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite store: %w", err)
	}
	s, err := sqlstore.New(ctx, db, dialect{}, migrations, "migrations")
	if err != nil {
		return nil, err
	}
	// WAL and shared-memory files are created by SQLite with the process
	// umask; keep them private like the database.
	for _, suffix := range []string{"-wal", "-shm"} {
		_ = os.Chmod(path+suffix, 0o600)
	}
	return &Store{Store: s}, nil
}

type dialect struct{}

func (dialect) Name() string { return "sqlite" }

var placeholder = regexp.MustCompile(`\$(\d+)`)

// Rebind turns $N into ?N, SQLite's numbered parameter.
func (dialect) Rebind(q string) string { return placeholder.ReplaceAllString(q, "?$1") }

func (dialect) NextRevision(ctx context.Context, tx *sql.Tx) (int64, error) {
	var v int64
	err := tx.QueryRowContext(ctx, `UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value`).Scan(&v)
	return v, err
}

// ForUpdate is empty: write transactions start with BEGIN IMMEDIATE and so
// are serialised already.
func (dialect) ForUpdate() string { return "" }

func (dialect) IsUniqueViolation(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
	}
	return strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// LockMigrations is a no-op: BEGIN IMMEDIATE holds the write lock.
func (dialect) LockMigrations(context.Context, *sql.Tx) error { return nil }
