// Package sqlstore implements store.Store over database/sql for both SQL
// backends. The backends (store/sqlite, store/postgres) supply a Dialect
// and their migrations; the semantics live here once, and the conformance
// suite checks that both behave the same.
package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/secretplane/secretplane/store"
)

// Dialect is what differs between the SQL backends.
type Dialect interface {
	// Name is the backend's name in errors ("sqlite", "postgres").
	Name() string
	// Rebind turns a query written with $1, $2... into the backend's form.
	Rebind(q string) string
	// NextRevision returns the next store-wide revision inside tx.
	NextRevision(ctx context.Context, tx *sql.Tx) (int64, error)
	// ForUpdate is appended to a SELECT that reads a row about to be
	// written, to lock it ("" where the transaction already serialises).
	ForUpdate() string
	// IsUniqueViolation reports whether err is a primary-key conflict.
	IsUniqueViolation(err error) bool
	// LockMigrations serialises concurrent migrators inside tx.
	LockMigrations(ctx context.Context, tx *sql.Tx) error
	// Embedded reports an in-process engine: many rows go in one prepared
	// statement executed per row (no round trips to save, and parsing a
	// long multi-row statement costs more than it saves), where a server
	// takes one multi-row statement per chunk to save round trips.
	Embedded() bool
}

// Store is a store.Store over a SQL database.
type Store struct {
	db      *sql.DB
	dialect Dialect
	now     func() time.Time
}

var _ store.Store = (*Store)(nil)

// New migrates db with the migrations in folder dir of fsys (files
// NNNN_name.sql) and returns the store. It refuses a database whose schema
// is newer than the migrations it knows. On error it closes db.
func New(ctx context.Context, db *sql.DB, d Dialect, fsys fs.FS, dir string) (*Store, error) {
	sub, err := fs.Sub(fsys, dir)
	if err == nil {
		s := &Store{db: db, dialect: d, now: time.Now}
		if err = s.migrate(ctx, sub); err == nil {
			return s, nil
		}
	}
	db.Close()
	return nil, err
}

// DB exposes the database handle (tests, backend-specific checks).
func (s *Store) DB() *sql.DB { return s.db }

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping %s store: %w", s.dialect.Name(), err)
	}
	return nil
}

// Close implements store.Store.
func (s *Store) Close() error { return s.db.Close() }

// --- migrations -------------------------------------------------------------

type migration struct {
	version int
	name    string
	sql     string
}

var migrationFile = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

func loadMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		m := migrationFile.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		v, _ := strconv.Atoi(m[1])
		raw, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		ms = append(ms, migration{version: v, name: m[2], sql: string(raw)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migrations: expected version %d, found %04d_%s", i+1, m.version, m.name)
		}
	}
	return ms, nil
}

func (s *Store) migrate(ctx context.Context, fsys fs.FS) error {
	ms, err := loadMigrations(fsys)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate %s store: begin: %w", s.dialect.Name(), err)
	}
	defer tx.Rollback()
	if err := s.dialect.LockMigrations(ctx, tx); err != nil {
		return fmt.Errorf("migrate %s store: lock: %w", s.dialect.Name(), err)
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY,
		name TEXT NOT NULL,
		applied_at_us BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("migrate %s store: create schema_migrations: %w", s.dialect.Name(), err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("migrate %s store: read schema version: %w", s.dialect.Name(), err)
	}
	if current > len(ms) {
		return fmt.Errorf("migrate %s store: the database schema is version %d, newer than this binary knows (%d): upgrade secretplane", s.dialect.Name(), current, len(ms))
	}
	for _, m := range ms[current:] {
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("migrate %s store: apply %04d_%s: %w", s.dialect.Name(), m.version, m.name, err)
		}
		if _, err := tx.ExecContext(ctx, s.dialect.Rebind(`INSERT INTO schema_migrations (version, name, applied_at_us) VALUES ($1, $2, $3)`),
			m.version, m.name, s.now().UnixMicro()); err != nil {
			return fmt.Errorf("migrate %s store: record %04d_%s: %w", s.dialect.Name(), m.version, m.name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate %s store: commit: %w", s.dialect.Name(), err)
	}
	return nil
}

// --- generic object plumbing --------------------------------------------------

// kind describes one table of named objects.
type kind[T any] struct {
	table   string
	noun    string   // for errors: "secret", "config"
	columns []string // data columns after name, in order
	// values returns the data column values of an object.
	values func(T) ([]any, error)
	// scan reads name, data columns, revision, create, update into a T.
	scan func(row scanner) (T, error)
	// meta sets the server-owned fields.
	meta func(*T, int64, time.Time, time.Time)
}

type scanner interface{ Scan(dest ...any) error }

// maxRetries bounds retries of a put that lost a create race.
const maxRetries = 3

func put[T any](ctx context.Context, s *Store, k kind[T], name string, obj T, pre store.Precondition) (T, error) {
	var zero T
	for attempt := 0; ; attempt++ {
		out, err := putOnce(ctx, s, k, name, obj, pre)
		if err != nil && s.dialect.IsUniqueViolation(err) {
			if pre.MustNotExist {
				return zero, fmt.Errorf("put %s %q: %w", k.noun, name, store.ErrAlreadyExists)
			}
			if attempt < maxRetries {
				continue
			}
		}
		if err != nil {
			return zero, fmt.Errorf("put %s %q: %w", k.noun, name, err)
		}
		return out, nil
	}
}

func putOnce[T any](ctx context.Context, s *Store, k kind[T], name string, obj T, pre store.Precondition) (T, error) {
	var zero T
	vals, err := k.values(obj)
	if err != nil {
		return zero, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return zero, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()

	var (
		curRev    int64
		createdUS int64
	)
	err = tx.QueryRowContext(ctx, s.dialect.Rebind(`SELECT revision, create_time_us FROM `+k.table+` WHERE name = $1`+s.dialect.ForUpdate()), name).Scan(&curRev, &createdUS)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return zero, fmt.Errorf("read current: %w", err)
	}
	if err := check(pre, exists, curRev); err != nil {
		return zero, err
	}
	rev, err := s.dialect.NextRevision(ctx, tx)
	if err != nil {
		return zero, fmt.Errorf("next revision: %w", err)
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	if exists {
		sets := make([]string, len(k.columns))
		for i, c := range k.columns {
			sets[i] = fmt.Sprintf("%s = $%d", c, i+2)
		}
		q := fmt.Sprintf(`UPDATE %s SET %s, revision = $%d, update_time_us = $%d WHERE name = $1`,
			k.table, strings.Join(sets, ", "), len(k.columns)+2, len(k.columns)+3)
		args := append(append([]any{name}, vals...), rev, now.UnixMicro())
		if _, err := tx.ExecContext(ctx, s.dialect.Rebind(q), args...); err != nil {
			return zero, fmt.Errorf("update: %w", err)
		}
	} else {
		createdUS = now.UnixMicro()
		cols := append(append([]string{"name"}, k.columns...), "revision", "create_time_us", "update_time_us")
		ph := make([]string, len(cols))
		for i := range cols {
			ph[i] = fmt.Sprintf("$%d", i+1)
		}
		q := fmt.Sprintf(`INSERT INTO %s (%s) VALUES (%s)`, k.table, strings.Join(cols, ", "), strings.Join(ph, ", "))
		args := append(append([]any{name}, vals...), rev, createdUS, createdUS)
		if _, err := tx.ExecContext(ctx, s.dialect.Rebind(q), args...); err != nil {
			return zero, err // may be a unique violation: put retries
		}
	}
	if err := tx.Commit(); err != nil {
		return zero, fmt.Errorf("commit: %w", err)
	}
	k.meta(&obj, rev, time.UnixMicro(createdUS).UTC(), now)
	return obj, nil
}

func check(pre store.Precondition, exists bool, cur int64) error {
	switch {
	case pre.MustNotExist && exists:
		return store.ErrAlreadyExists
	case pre.IfRevision != 0 && !exists:
		return store.ErrNotFound
	case pre.IfRevision != 0 && cur != pre.IfRevision:
		return store.ErrConflict
	}
	return nil
}

func (k kind[T]) selectCols() string {
	return "name, " + strings.Join(k.columns, ", ") + ", revision, create_time_us, update_time_us"
}

func get[T any](ctx context.Context, s *Store, k kind[T], name string) (T, error) {
	row := s.db.QueryRowContext(ctx, s.dialect.Rebind(`SELECT `+k.selectCols()+` FROM `+k.table+` WHERE name = $1`), name)
	obj, err := k.scan(row)
	if errors.Is(err, sql.ErrNoRows) {
		return obj, fmt.Errorf("get %s %q: %w", k.noun, name, store.ErrNotFound)
	}
	if err != nil {
		return obj, fmt.Errorf("get %s %q: %w", k.noun, name, err)
	}
	return obj, nil
}

func list[T any](ctx context.Context, s *Store, k kind[T], q store.ListQuery) ([]T, error) {
	if q.Limit <= 0 {
		return nil, fmt.Errorf("list %ss: limit must be positive", k.noun)
	}
	where := []string{"name > $1"}
	args := []any{q.After}
	if q.Prefix != "" {
		args = append(args, q.Prefix)
		where = append(where, fmt.Sprintf("name >= $%d", len(args)))
		if succ, ok := successor(q.Prefix); ok {
			args = append(args, succ)
			where = append(where, fmt.Sprintf("name < $%d", len(args)))
		}
	}
	args = append(args, q.Limit)
	query := fmt.Sprintf(`SELECT %s FROM %s WHERE %s ORDER BY name LIMIT $%d`, k.selectCols(), k.table, strings.Join(where, " AND "), len(args))
	rows, err := s.db.QueryContext(ctx, s.dialect.Rebind(query), args...)
	if err != nil {
		return nil, fmt.Errorf("list %ss: %w", k.noun, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		obj, err := k.scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list %ss: %w", k.noun, err)
		}
		out = append(out, obj)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list %ss: %w", k.noun, err)
	}
	return out, nil
}

// successor returns the smallest string greater than every string with
// prefix p (bytewise), or false when there is none (p is all 0xff).
func successor(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

func del[T any](ctx context.Context, s *Store, k kind[T], name string, pre store.Precondition) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete %s %q: begin: %w", k.noun, name, err)
	}
	defer tx.Rollback()
	var cur int64
	err = tx.QueryRowContext(ctx, s.dialect.Rebind(`SELECT revision FROM `+k.table+` WHERE name = $1`+s.dialect.ForUpdate()), name).Scan(&cur)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("delete %s %q: %w", k.noun, name, store.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete %s %q: %w", k.noun, name, err)
	}
	if err := check(store.Precondition{IfRevision: pre.IfRevision}, true, cur); err != nil {
		return fmt.Errorf("delete %s %q: %w", k.noun, name, err)
	}
	if _, err := tx.ExecContext(ctx, s.dialect.Rebind(`DELETE FROM `+k.table+` WHERE name = $1`), name); err != nil {
		return fmt.Errorf("delete %s %q: %w", k.noun, name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete %s %q: commit: %w", k.noun, name, err)
	}
	return nil
}

// --- JSON columns --------------------------------------------------------------

func encodeLabels(l map[string]string) (string, error) {
	if len(l) == 0 {
		return "{}", nil
	}
	raw, err := json.Marshal(l)
	if err != nil {
		return "", fmt.Errorf("encode labels: %w", err)
	}
	return string(raw), nil
}

// decodeLabels returns nil for no labels, so that nil and empty round-trip
// to the same value.
func decodeLabels(s string) (map[string]string, error) {
	var l map[string]string
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return nil, fmt.Errorf("decode labels: %w", err)
	}
	if len(l) == 0 {
		return nil, nil
	}
	return l, nil
}

type entryJSON struct {
	Key     string `json:"key"`
	Literal string `json:"literal,omitempty"`
	Ref     string `json:"ref,omitempty"`
}

func encodeEntries(es []store.ConfigEntry) (string, error) {
	out := make([]entryJSON, len(es))
	for i, e := range es {
		out[i] = entryJSON(e)
	}
	raw, err := json.Marshal(out)
	if err != nil {
		return "", fmt.Errorf("encode entries: %w", err)
	}
	return string(raw), nil
}

// decodeEntries returns nil for no entries.
func decodeEntries(s string) ([]store.ConfigEntry, error) {
	var in []entryJSON
	if err := json.Unmarshal([]byte(s), &in); err != nil {
		return nil, fmt.Errorf("decode entries: %w", err)
	}
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]store.ConfigEntry, len(in))
	for i, e := range in {
		out[i] = store.ConfigEntry(e)
	}
	return out, nil
}

// valuesList is "($1, ..., $n), ($n+1, ...)": the VALUES of an INSERT of
// rows rows with perRow parameters each.
func valuesList(rows, perRow int) string {
	var b strings.Builder
	for i := 0; i < rows; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := 0; j < perRow; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(i*perRow + j + 1))
		}
		b.WriteByte(')')
	}
	return b.String()
}
