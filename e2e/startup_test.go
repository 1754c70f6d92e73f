package e2e_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/secretplane/secretplane/e2e/testenv"
)

// Outside dev mode the server refuses to start on a missing or unsafe
// setting, lists every problem at once, exits non-zero, and never prints a
// secret from its configuration.
func TestStartupFailsClosed(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name   string
		args   []string
		want   []string
		secret string
	}{
		{"nothing configured", []string{"server"},
			[]string{"refusing to start", "listen: required", "identity:", "store: required", "admins: at least one"}, ""},
		{"store DSN with a password", []string{"server", "--listen", "127.0.0.1:0", "--svid-cert", "x", "--svid-key", "y", "--bundle-file", "z",
			"--store", "postgres://app:Hunter2Pw@db.example.com/app?sslmode=verify-full", "--admin", "spiffe://x.test/admin"},
			[]string{"refusing to start", "identity:"}, "Hunter2Pw"},
		{"bad admin ID", []string{"server", "--dev", "--data-dir", filepath.Join(dir, "d1"), "--admin", "not-an-id"},
			[]string{"admins:"}, ""},
		{"unknown store", []string{"server", "--dev", "--data-dir", filepath.Join(dir, "d2"), "--store", "mysql://x"},
			[]string{"store: unknown store"}, ""},
		{"workload API unreachable", []string{"server", "--listen", "127.0.0.1:0", "--workload-api", "unix://" + filepath.Join(dir, "none.sock"),
			"--workload-api-timeout", "2s", "--store", "sqlite:" + filepath.Join(dir, "s.db"), "--admin", "spiffe://x.test/admin"},
			[]string{"identity: fetch X.509-SVID from the Workload API"}, ""},
		{"unbounded cache", []string{"server", "--dev", "--data-dir", filepath.Join(dir, "d4"), "--cache-max-entries", "0"},
			[]string{"cache: max_entries and max_bytes must be positive"}, ""},
		{"JWT-SVID auth without the Workload API", []string{"server", "--dev", "--data-dir", filepath.Join(dir, "d5"), "--vault-addr", "http://127.0.0.1:1", "--vault-jwt-role", "secretplane"},
			[]string{"needs the SPIFFE Workload API"}, ""},
		{"unknown config key", []string{"server", "--config", writeFile(t, dir, "bad.yaml", "listen: 127.0.0.1:1\npasword: x\n")},
			[]string{`unknown keys "pasword"`}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, binary, tc.args...).CombinedOutput()
			if err == nil {
				t.Fatalf("server started; output:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if tc.secret != "" && strings.Contains(string(out), tc.secret) {
				t.Errorf("output repeats the secret:\n%s", out)
			}
		})
	}
	t.Run("DSN password refused even with valid identity", func(t *testing.T) {
		out, err := exec.Command(binary, "server", "--dev", "--data-dir", filepath.Join(dir, "d3"), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
			"--store", "postgres://app:Hunter2Pw@127.0.0.1:1/app?sslmode=disable").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "carries a password") || strings.Contains(string(out), "Hunter2Pw") {
			t.Fatalf("err=%v output:\n%s", err, out)
		}
	})
}

// The dev server runs on PostgreSQL as well as on the embedded SQLite.
func TestDevServerOnPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startDevServer(t, dataDir, "--store", dsn)
	mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password")
	srv.stop(t)
	startDevServer(t, dataDir, "--store", dsn)
	if out := mustCLI(t, dataDir, "secret", "get", "payments/db"); !strings.Contains(out, "vault://secret/payments/db#password") {
		t.Fatalf("after restart on PostgreSQL: %s", out)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
