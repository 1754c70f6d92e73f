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
	"strconv"
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
	// Keep the connections that concurrent readers open: database/sql's
	// default of two idle ones would close and reopen SQLite connections
	// (file, schema, pragmas) under load. Writers are serialised by BEGIN
	// IMMEDIATE either way.
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
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

// Checkpoint makes every committed transaction durable. In WAL mode with
// synchronous=NORMAL a commit reaches the disk at the next checkpoint; a
// full one copies the WAL into the database and syncs it. The audit journal
// calls it before it drops events that the store now holds.
func (s *Store) Checkpoint(ctx context.Context) error {
	var busy, logFrames, done int
	if err := s.DB().QueryRowContext(ctx, `PRAGMA wal_checkpoint(FULL)`).Scan(&busy, &logFrames, &done); err != nil {
		return fmt.Errorf("sqlite checkpoint: %w", err)
	}
	if busy != 0 {
		return errors.New("sqlite checkpoint: did not complete (the database was busy)")
	}
	return nil
}

// maxConns bounds the pool: readers beyond it queue for a connection.
const maxConns = 16

type dialect struct{}

func (dialect) Name() string { return "sqlite" }

// Rebind turns the store's $N parameters into SQLite's: anonymous "?" when
// they appear as $1, $2, ... in order, each once (the common case, and the
// cheap one: SQLite binds anonymous parameters without a name lookup,
// which matters for multi-row inserts with hundreds of them), otherwise
// numbered "?N". Text inside single quotes is left alone.
func (dialect) Rebind(q string) string {
	var b strings.Builder
	b.Grow(len(q))
	sequential, next := true, 1
	type param struct{ start, end, n int }
	var params []param
	quoted := false
	for i := 0; i < len(q); i++ {
		switch c := q[i]; {
		case c == '\'':
			quoted = !quoted
		case c == '$' && !quoted:
			j := i + 1
			for j < len(q) && q[j] >= '0' && q[j] <= '9' {
				j++
			}
			if j == i+1 {
				continue
			}
			n, _ := strconv.Atoi(q[i+1 : j])
			if n != next {
				sequential = false
			}
			next++
			params = append(params, param{i, j, n})
			i = j - 1
		}
	}
	last := 0
	for _, p := range params {
		b.WriteString(q[last:p.start])
		b.WriteByte('?')
		if !sequential {
			b.WriteString(q[p.start+1 : p.end])
		}
		last = p.end
	}
	b.WriteString(q[last:])
	return b.String()
}

func (dialect) NextRevision(ctx context.Context, tx *sql.Tx) (int64, error) {
	var v int64
	err := tx.QueryRowContext(ctx, `UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value`).Scan(&v)
	return v, err
}

// ForUpdate is empty: write transactions start with BEGIN IMMEDIATE and so
// are serialised already.
func (dialect) ForUpdate() string { return "" }

func (dialect) Embedded() bool { return true }

func (dialect) IsUniqueViolation(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE
	}
	return strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// LockMigrations is a no-op: BEGIN IMMEDIATE holds the write lock.
func (dialect) LockMigrations(context.Context, *sql.Tx) error { return nil }
