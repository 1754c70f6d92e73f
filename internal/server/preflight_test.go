package server_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

// canary is a fresh secret-looking value: any output containing it leaks.
func canary(t *testing.T) string {
	t.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "canary-" + hex.EncodeToString(b)
}

// writeMode writes a file and sets its mode exactly (whatever the umask).
func writeMode(t *testing.T, path, content string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func mkdirMode(t *testing.T, path string, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPreflight(t *testing.T) {
	const key32 = "0123456789abcdef0123456789abcdef"
	cases := []struct {
		name string
		// set changes a clean non-dev configuration whose files live in dir.
		set func(t *testing.T, c *server.Config, dir string)
		// want are the checks and subjects that must fire (none: clean).
		want []string
	}{
		{"clean", func(*testing.T, *server.Config, string) {}, nil},
		{"vault over http outside dev", func(_ *testing.T, c *server.Config, _ string) {
			c.Backends.Vault.Address = "http://127.0.0.1:8200"
		}, []string{"backend-tls backends.vault.address"}},
		{"vault over https", func(_ *testing.T, c *server.Config, _ string) {
			c.Backends.Vault.Address = "https://vault.example.com:8200"
		}, nil},
		{"vault over http on loopback in dev", func(_ *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, filepath.Join(dir, "data")
			c.Backends.Vault.Address = "http://127.0.0.1:8200"
		}, nil},
		{"vault over http off loopback in dev", func(_ *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, filepath.Join(dir, "data")
			c.Backends.Vault.Address = "http://vault.example.com:8200"
		}, []string{"backend-tls backends.vault.address"}},
		{"vault address not a URL", func(_ *testing.T, c *server.Config, _ string) {
			c.Backends.Vault.Address = "vault.example.com"
		}, []string{"backend-tls backends.vault.address"}},
		{"AWS endpoint over http outside dev", func(_ *testing.T, c *server.Config, _ string) {
			c.Backends.AWS.Region, c.Backends.AWS.Endpoint = "eu-west-1", "http://localstack:4566"
		}, []string{"backend-tls backends.aws_sm.endpoint"}},
		{"postgres without sslmode", func(_ *testing.T, c *server.Config, _ string) {
			c.Store = "postgres://app@db.example.com:5432/app"
		}, []string{"store-tls store"}},
		{"postgres with sslmode=require", func(_ *testing.T, c *server.Config, _ string) {
			c.Store = "postgres://app@db.example.com:5432/app?sslmode=require"
		}, []string{"store-tls store"}},
		{"postgres with sslmode=verify-ca", func(_ *testing.T, c *server.Config, _ string) {
			c.Store = "postgres://app@db.example.com:5432/app?sslmode=verify-ca&sslrootcert=/etc/ca.pem"
		}, []string{"store-tls store"}},
		{"postgres with sslmode=verify-full", func(_ *testing.T, c *server.Config, _ string) {
			c.Store = "postgres://app@db.example.com:5432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem"
		}, nil},
		{"postgres plaintext on loopback outside dev", func(_ *testing.T, c *server.Config, _ string) {
			c.Store = "postgres://app@127.0.0.1:5432/app?sslmode=disable"
		}, []string{"store-tls store"}},
		{"postgres plaintext on loopback in dev", func(_ *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, filepath.Join(dir, "data")
			c.Store = "postgres://app@127.0.0.1:5432/app?sslmode=disable"
		}, nil},
		{"postgres plaintext with one remote host in dev", func(_ *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, filepath.Join(dir, "data")
			c.Store = "postgres://app@127.0.0.1:5432,db.example.com:5432/app?sslmode=disable"
		}, []string{"store-tls store"}},
		{"postgres DSN with a password", func(_ *testing.T, c *server.Config, _ string) {
			c.Store = "postgres://app:Hunter2Pw@db.example.com/app?sslmode=verify-full"
		}, []string{"store-secret store"}},
		{"local key file missing", func(_ *testing.T, c *server.Config, dir string) {
			c.Backends.Local.KeyFile = filepath.Join(dir, "none.key")
		}, []string{"key-file backends.local.key_file"}},
		{"local key file readable by group", func(t *testing.T, c *server.Config, dir string) {
			c.Backends.Local.KeyFile = writeMode(t, filepath.Join(dir, "local.key"), key32, 0o640)
		}, []string{"key-file backends.local.key_file"}},
		{"local key file writable by others", func(t *testing.T, c *server.Config, dir string) {
			c.Backends.Local.KeyFile = writeMode(t, filepath.Join(dir, "local.key"), key32, 0o602)
		}, []string{"key-file backends.local.key_file"}},
		{"local key file owner only", func(t *testing.T, c *server.Config, dir string) {
			c.Backends.Local.KeyFile = writeMode(t, filepath.Join(dir, "local.key"), key32, 0o600)
		}, nil},
		{"local key file read-only for its owner", func(t *testing.T, c *server.Config, dir string) {
			c.Backends.Local.KeyFile = writeMode(t, filepath.Join(dir, "local.key"), key32, 0o400)
		}, nil},
		{"dev default key not created yet", func(_ *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, filepath.Join(dir, "data")
		}, nil},
		{"dev default key readable by others", func(t *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, mkdirMode(t, filepath.Join(dir, "data"), 0o700)
			writeMode(t, filepath.Join(c.DataDir, server.DevLocalKeyFile), key32, 0o644)
		}, []string{"key-file backends.local.key_file"}},
		{"fingerprint key readable by others", func(t *testing.T, c *server.Config, dir string) {
			c.Cache.FingerprintKeyFile = writeMode(t, filepath.Join(dir, "fp.key"), key32, 0o604)
		}, []string{"key-file cache.fingerprint_key_file"}},
		{"dev data directory owner only", func(t *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, mkdirMode(t, filepath.Join(dir, "data"), 0o700)
		}, nil},
		{"dev data directory readable by all, writable by owner", func(t *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, mkdirMode(t, filepath.Join(dir, "data"), 0o755)
		}, nil},
		{"dev data directory writable by others", func(t *testing.T, c *server.Config, dir string) {
			c.Dev, c.DataDir = true, mkdirMode(t, filepath.Join(dir, "data"), 0o777)
		}, []string{"permissions data_dir"}},
		{"audit journal directory writable by group", func(t *testing.T, c *server.Config, dir string) {
			mkdirMode(t, filepath.Join(dir, "store.db-audit"), 0o770)
		}, []string{"permissions store"}},
		{"store directory writable by others", func(t *testing.T, c *server.Config, dir string) {
			c.Store = "sqlite:" + filepath.Join(mkdirMode(t, filepath.Join(dir, "db"), 0o757), "store.db")
		}, []string{"permissions store"}},
		{"audit mirror writable by others", func(t *testing.T, c *server.Config, dir string) {
			c.Audit.File = writeMode(t, filepath.Join(dir, "audit.jsonl"), "", 0o666)
		}, []string{"permissions audit.file"}},
		{"audit mirror owner only", func(t *testing.T, c *server.Config, dir string) {
			c.Audit.File = writeMode(t, filepath.Join(dir, "audit.jsonl"), "", 0o600)
		}, nil},
		{"audit mirror not created yet", func(_ *testing.T, c *server.Config, dir string) {
			c.Audit.File = filepath.Join(dir, "audit.jsonl")
		}, nil},
		{"config file with a literal password", func(t *testing.T, c *server.Config, dir string) {
			c.ConfigFile = writeMode(t, filepath.Join(dir, "server.yaml"),
				"listen: 0.0.0.0:7443\nrotation:\n  hooks:\n    db: https://ops:"+canary(t)+"@hooks.example.com/rotate\n", 0o600)
		}, []string{"config-literal " + "server.yaml"}},
		{"config file without secrets", func(t *testing.T, c *server.Config, dir string) {
			c.ConfigFile = writeMode(t, filepath.Join(dir, "server.yaml"), strings.Join([]string{
				"listen: 0.0.0.0:7443",
				"store: postgres://secretplane@db.internal:5432/secretplane?sslmode=verify-full&sslrootcert=/etc/secretplane/db-ca.pem",
				"trust_domain: prod.example.com",
				"admins: [spiffe://prod.example.com/ops/admin]",
				"identity: {workload_api: unix:///run/spire/agent.sock, workload_api_timeout: 30s}",
				"backends:",
				"  vault: {address: https://vault.internal:8200, approle_role_id: 4f1c1a52-2a0e-4b8e-9d6e-0c1b2f3a4d5e, approle_secret_id_file: /etc/secretplane/vault-secret-id}",
				"webhook_key_file: /etc/secretplane/webhook.key",
				"webhooks: {ops: https://hooks.example.com/secretplane}",
				"cache: {ttl: 5m, max_stale: 1h}",
				"",
			}, "\n"), 0o600)
		}, nil},
		{"config file missing", func(_ *testing.T, c *server.Config, dir string) {
			c.ConfigFile = filepath.Join(dir, "none.yaml")
		}, []string{"config-literal " + "none.yaml"}},
		{"required timeout not positive", func(_ *testing.T, c *server.Config, _ string) {
			c.Startup.RequiredTimeout = 0
		}, []string{"startup startup.required_timeout"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := server.Defaults()
			cfg.Store = "sqlite:" + filepath.Join(dir, "store.db")
			tc.set(t, &cfg, dir)
			got := server.Preflight(context.Background(), cfg)
			var failures []server.Problem
			for _, p := range got {
				if p.Severity == server.Failure {
					failures = append(failures, p)
				}
				if p.Message == "" || p.Check == "" || p.Subject == "" {
					t.Errorf("incomplete problem: %+v", p)
				}
			}
			if len(tc.want) == 0 && len(failures) > 0 {
				t.Fatalf("clean configuration reported: %v", failures)
			}
			for _, w := range tc.want {
				check, subject, _ := strings.Cut(w, " ")
				found := false
				for _, p := range failures {
					found = found || p.Check == check && strings.Contains(p.Subject, subject)
				}
				if !found {
					t.Errorf("want a %s failure about %s; got %v", check, subject, failures)
				}
			}
			if len(failures) != len(tc.want) {
				t.Errorf("got %d failures, want %d: %v", len(failures), len(tc.want), failures)
			}
		})
	}
}

// Every problem is reported at once, none repeats a value, and Preflight
// changes nothing on disk.
func TestPreflightReportsEverythingWithoutValues(t *testing.T) {
	dir := t.TempDir()
	secret := canary(t)
	cfg := server.Defaults()
	cfg.Dev = true
	cfg.DataDir = mkdirMode(t, filepath.Join(dir, "data"), 0o777)
	cfg.Backends.Vault.Address = "http://vault.example.com:8200"
	cfg.Store = "postgres://app:" + secret + "@db.example.com/app?sslmode=disable"
	cfg.Backends.Local.KeyFile = writeMode(t, filepath.Join(dir, "local.key"), secret, 0o644)
	cfg.Audit.File = writeMode(t, filepath.Join(dir, "audit.jsonl"), "", 0o622)
	cfg.ConfigFile = writeMode(t, filepath.Join(dir, "server.yaml"), fmt.Sprintf(
		"store: postgres://app@db.example.com/app\nwebhooks:\n  ops: https://hooks.example.com/x?token=%s\nalerts:\n  routes:\n    %s: ops\n", secret, secret), 0o600)
	before := listTree(t, dir)

	problems := server.Preflight(context.Background(), cfg)
	checks := map[string]int{}
	var all strings.Builder
	for _, p := range problems {
		checks[p.Check]++
		fmt.Fprintf(&all, "%s %s %s %s\n", p.Check, p.Subject, p.Message, p.Severity)
	}
	for check, n := range map[string]int{server.CheckBackendTLS: 1, server.CheckStoreSecret: 1, server.CheckStoreTLS: 1,
		server.CheckKeyFile: 1, server.CheckPermissions: 2, server.CheckConfigLiteral: 2} {
		if checks[check] != n {
			t.Errorf("%d %s problems, want %d:\n%s", checks[check], check, n, all.String())
		}
	}
	if strings.Contains(all.String(), secret) || strings.Contains(all.String(), secret[len("canary-"):]) {
		t.Fatalf("a problem repeats the secret:\n%s", all.String())
	}
	if !strings.Contains(all.String(), "line 3: webhooks.ops") {
		t.Errorf("the literal is not located by line and key:\n%s", all.String())
	}
	if after := listTree(t, dir); after != before {
		t.Fatalf("Preflight changed the disk:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// A dev data directory not made yet stays unmade.
	fresh := server.Defaults()
	fresh.Dev, fresh.DataDir = true, filepath.Join(dir, "fresh")
	if ps := server.Preflight(context.Background(), fresh); len(ps) > 0 {
		t.Fatalf("fresh dev configuration: %v", ps)
	}
	if _, err := os.Stat(fresh.DataDir); !os.IsNotExist(err) {
		t.Fatalf("Preflight created the data directory: %v", err)
	}
}

func listTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d %d\n", path, info.Mode(), info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// New refuses to start on Preflight's failures, with prepare's own, all in
// one error, before opening the store.
func TestNewRefusesOnPreflightFailures(t *testing.T) {
	f := newFixture(t)
	secret := canary(t)
	f.cfg.Backends.Vault.Address = "http://vault.example.com:8200"
	f.cfg.Backends.Local.KeyFile = writeMode(t, filepath.Join(f.dir, "local.key"), "0123456789abcdef0123456789abcdef", 0o644)
	f.cfg.ConfigFile = writeMode(t, filepath.Join(f.dir, "server.yaml"), "password: "+secret+"\n", 0o600)
	f.cfg.Cache.MaxEntries = 0
	_, err := server.New(context.Background(), f.cfg)
	if err == nil {
		t.Fatal("started")
	}
	for _, want := range []string{"refusing to start", "backends.vault.address", "backends.local.key_file", "server.yaml: line 1: password holds a literal secret value", "max_entries"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), secret) {
		t.Fatalf("error repeats the secret: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "store.db")); !os.IsNotExist(err) {
		t.Fatalf("the store was opened: %v", err)
	}
}

// blackHole accepts connections and never answers: a backend that hangs.
func blackHole(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				close(done)
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String()
}

// Every secret marked required must resolve before the server serves:
// each one is tried, a hanging backend costs the bound and no more, and
// the refusal names each that failed with its ref and the kind of
// failure, never a value.
func TestNewRequiresRequiredSecrets(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	// A real AWS SDK client whose endpoint accepts and never answers.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(f.dir, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(f.dir, "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	hang, err := awssm.New(ctx, awssm.Config{Region: "eu-west-1", Endpoint: "http://" + blackHole(t)})
	if err != nil {
		t.Fatal(err)
	}
	f.cfg.Backends.Extra = []backend.Backend{f.local, hang}
	value := canary(t)
	if _, err := f.local.Write(ctx, secretref.MustParse("local://payments/db#password"), []byte(value)); err != nil {
		t.Fatal(err)
	}
	seed := func(secrets ...store.Secret) {
		t.Helper()
		st, err := sqlite.Open(ctx, filepath.Join(f.dir, "store.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		for _, s := range secrets {
			if _, err := st.PutSecret(ctx, s, store.Precondition{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	seed(
		store.Secret{Name: "payments/db", Ref: "local://payments/db#password", Required: true},
		store.Secret{Name: "payments/gone", Ref: "local://payments/gone#password", Required: true},
		store.Secret{Name: "payments/optional", Ref: "local://payments/optional#password"},
		store.Secret{Name: "maps/api-key", Ref: "aws-sm://prod/maps#key", Required: true},
		store.Secret{Name: "search/token", Ref: "vault://secret/search#token", Required: true},
	)
	f.cfg.Startup.RequiredTimeout = 2 * time.Second
	f.listen(t)
	start := time.Now()
	_, err = server.New(ctx, f.cfg)
	took := time.Since(start)
	if err == nil {
		t.Fatal("started with required secrets unresolved")
	}
	if took > 10*time.Second {
		t.Errorf("startup took %s with a 2s bound", took)
	}
	for _, want := range []string{"refusing to start",
		"required secret payments/gone: local://payments/gone#password: not found",
		"required secret maps/api-key: aws-sm://prod/maps#key: timed out",
		"required secret search/token: vault://secret/search#token: unreachable",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	for _, not := range []string{"payments/db", "payments/optional", value} {
		if strings.Contains(err.Error(), not) {
			t.Errorf("error mentions %q: %v", not, err)
		}
	}

	// Once every required secret resolves, the server starts.
	f.cfg.Backends.Extra = []backend.Backend{f.local}
	seed(
		store.Secret{Name: "payments/gone", Ref: "local://payments/gone#password"},
		store.Secret{Name: "maps/api-key", Ref: "aws-sm://prod/maps#key"},
		store.Secret{Name: "search/token", Ref: "vault://secret/search#token"},
	)
	f.listen(t)
	srv, err := server.New(ctx, f.cfg)
	if err != nil {
		t.Fatalf("with every required secret resolvable: %v", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	cancel()
	if err := srv.Run(runCtx); err != nil {
		t.Fatal(err)
	}
}
