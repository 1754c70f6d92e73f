// Package postgres is the PostgreSQL store, through pgx/v5, for
// multi-replica installations. TLS to the database is required except on
// loopback in dev mode.
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/secretplane/secretplane/store/internal/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Options tune Open.
type Options struct {
	// AllowInsecureLoopback allows a connection without TLS when the host is
	// a loopback address or a unix socket (dev mode and tests).
	AllowInsecureLoopback bool
	// MaxConns bounds the connection pool (default 16).
	MaxConns int
}

// Store is the PostgreSQL store.
type Store struct {
	*sqlstore.Store
}

// migrationLockKey is the advisory lock key that serialises replicas
// migrating the same database ("secretpl" in ASCII).
const migrationLockKey = 0x736563726574706c

// Open connects to the database named by dsn (a postgres:// URL or
// keyword/value string), checks its TLS settings and migrates it.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres store %s: %s", RedactDSN(dsn), redactErr(err, dsn))
	}
	if err := checkTLS(cfg.Config, opts.AllowInsecureLoopback); err != nil {
		return nil, fmt.Errorf("open postgres store %s: %w", RedactDSN(dsn), err)
	}
	db := stdlib.OpenDB(*cfg)
	maxConns := opts.MaxConns
	if maxConns <= 0 {
		maxConns = 16
	}
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open postgres store %s: %s", RedactDSN(dsn), redactErr(err, dsn))
	}
	s, err := sqlstore.New(ctx, db, dialect{}, migrations, "migrations")
	if err != nil {
		return nil, err
	}
	return &Store{Store: s}, nil
}

// checkTLS refuses a connection without TLS unless allowed on loopback; a
// fallback to plaintext (sslmode=prefer/allow) counts as without TLS.
func checkTLS(cfg pgconn.Config, allowLoopback bool) error {
	hosts := []string{cfg.Host}
	plaintextPossible := cfg.TLSConfig == nil
	for _, fb := range cfg.Fallbacks {
		hosts = append(hosts, fb.Host)
		if fb.TLSConfig == nil {
			plaintextPossible = true
		}
	}
	if !plaintextPossible {
		return nil
	}
	if !allowLoopback {
		return errors.New("TLS is required: set sslmode=verify-full (or verify-ca) with sslrootcert")
	}
	for _, h := range hosts {
		if !isLoopback(h) {
			return fmt.Errorf("TLS is required for host %s: plaintext is allowed only on loopback in dev mode", h)
		}
	}
	return nil
}

func isLoopback(host string) bool {
	if strings.HasPrefix(host, "/") {
		return true // unix socket
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// HasPassword reports whether a DSN carries a password (URL userinfo, a
// password query parameter, or a password= keyword).
func HasPassword(dsn string) bool {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if _, set := u.User.Password(); set {
			return true
		}
		return u.Query().Has("password")
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		// A URL that does not parse (a stray "%", a space) may still carry
		// user:password@: refuse rather than guess.
		if at := strings.LastIndexByte(dsn, '@'); at > 0 && strings.Contains(dsn[:at], ":") {
			return true
		}
	}
	for _, f := range strings.Fields(dsn) {
		if strings.HasPrefix(f, "password=") {
			return true
		}
	}
	return false
}

// RedactDSN renders a DSN without its password.
func RedactDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if _, set := u.User.Password(); set {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "REDACTED")
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	if scheme, rest, ok := strings.Cut(dsn, "://"); ok {
		// Unparseable URL: drop any userinfo password by hand.
		auth, tail, _ := strings.Cut(rest, "/")
		if at := strings.LastIndexByte(auth, '@'); at >= 0 {
			if user, _, hasPw := strings.Cut(auth[:at], ":"); hasPw {
				auth = user + ":xxxxx" + auth[at:]
			}
		}
		return scheme + "://" + auth + "/" + tail
	}
	fields := strings.Fields(dsn)
	for i, f := range fields {
		if strings.HasPrefix(f, "password=") {
			fields[i] = "password=REDACTED"
		}
	}
	return strings.Join(fields, " ")
}

// redactErr renders err with any password of dsn removed (drivers quote
// connection strings in some errors).
func redactErr(err error, dsn string) string {
	msg := err.Error()
	if u, perr := url.Parse(dsn); perr == nil && u.User != nil {
		if pw, set := u.User.Password(); set && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "REDACTED")
		}
	}
	for _, f := range strings.Fields(dsn) {
		if pw, ok := strings.CutPrefix(f, "password="); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "REDACTED")
		}
	}
	return msg
}

type dialect struct{}

func (dialect) Name() string           { return "postgres" }
func (dialect) Rebind(q string) string { return q }

func (dialect) NextRevision(ctx context.Context, tx *sql.Tx) (int64, error) {
	var v int64
	err := tx.QueryRowContext(ctx, `SELECT nextval('revision_seq')`).Scan(&v)
	return v, err
}

func (dialect) ForUpdate() string { return " FOR UPDATE" }

func (dialect) Embedded() bool { return false }

func (dialect) IsUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func (dialect) LockMigrations(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLockKey))
	return err
}
