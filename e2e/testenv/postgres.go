// Package testenv starts the real components that tests need, on loopback
// and free ports, and removes them afterwards. It is imported by tests only.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvPostgresDSN names a PostgreSQL server to use instead of starting one
// (its user must be allowed to create databases).
const EnvPostgresDSN = "SECRETPLANE_TEST_POSTGRES_DSN"

// Postgres is a PostgreSQL server for tests: a throwaway cluster this
// package started, or the server named by EnvPostgresDSN.
type Postgres struct {
	adminDSN string // connects to the maintenance database
	// stop and start the throwaway cluster (nil for EnvPostgresDSN's).
	stop, start func() error
}

// Stop stops the cluster (an outage) until Start; a server named by
// EnvPostgresDSN cannot be stopped, and the test fails.
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	if p.stop == nil {
		t.Fatalf("%s names a server this test cannot stop", EnvPostgresDSN)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("pg_ctl stop: %v", err)
	}
}

// Start starts a cluster Stop stopped, on the same port.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	if err := p.start(); err != nil {
		t.Fatalf("pg_ctl start: %v", err)
	}
}

// StartPostgres starts a throwaway PostgreSQL 15 cluster (Debian's
// postgresql-15) on a free loopback port and stops and removes it when the
// test ends. It fails the test, naming the install command, when PostgreSQL
// is not installed.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	if dsn := os.Getenv(EnvPostgresDSN); dsn != "" {
		return &Postgres{adminDSN: dsn}
	}
	bindir, err := postgresBindir()
	if err != nil {
		t.Fatalf("PostgreSQL 15 is needed: %v (install it: apt-get install -y postgresql-15)", err)
	}
	dir, err := os.MkdirTemp("", "secretplane-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// initdb and pg_ctl refuse to run as root: run them as the package's
	// postgres user, which must be able to reach the directory.
	asUser := func(name string, args ...string) *exec.Cmd { return exec.Command(name, args...) }
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres user of Debian's postgresql package: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		asUser = func(name string, args ...string) *exec.Cmd {
			return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := asUser(filepath.Join(bindir, "initdb"), "-D", data, "-U", "app", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200", port, dir)
	start := func() error {
		if out, err := asUser(filepath.Join(bindir, "pg_ctl"), "-w", "-t", "60", "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts, "start").CombinedOutput(); err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			return fmt.Errorf("%w\n%s\n%s", err, out, log)
		}
		return nil
	}
	stop := func() error {
		if out, err := asUser(filepath.Join(bindir, "pg_ctl"), "-w", "-D", data, "-m", "immediate", "stop").CombinedOutput(); err != nil {
			return fmt.Errorf("%w\n%s", err, out)
		}
		return nil
	}
	if err := start(); err != nil {
		t.Fatalf("pg_ctl start: %v", err)
	}
	t.Cleanup(func() { _ = stop() })
	return &Postgres{adminDSN: fmt.Sprintf("postgres://app@127.0.0.1:%d/postgres?sslmode=disable", port), stop: stop, start: start}
}

// NewDatabase creates a fresh database and returns its DSN (loopback, no
// TLS: stores must be opened with AllowInsecureLoopback). The database is
// dropped when the test ends.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	name := "sp_" + randomHex(6)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.adminDSN)
	if err != nil {
		t.Fatalf("connect to test PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, p.adminDSN); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	u, err := url.Parse(p.adminDSN)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("%s must be a postgres:// URL", EnvPostgresDSN)
	}
	u.Path = "/" + name
	return u.String()
}

func postgresBindir() (string, error) {
	for _, d := range []string{"/usr/lib/postgresql/15/bin"} {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("initdb not found in /usr/lib/postgresql/15/bin or pg_config --bindir")
}

// FreePort asks the kernel for a free loopback port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
