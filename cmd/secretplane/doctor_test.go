package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/store"
)

func TestDoctorCommand(t *testing.T) {
	const value = "pw-doctor-cli-Zq8vW3xR"
	ctx := context.Background()
	cases := []struct {
		name  string
		seed  func(t *testing.T, srv *server.Server, dir string)
		code  int
		table []string // in the table output
	}{
		{name: "fresh dev server", code: doctorClean, table: []string{"no problems found"}},
		{name: "unowned secret", code: doctorWarnings, seed: func(t *testing.T, srv *server.Server, dir string) {
			root := newRootCommand()
			root.SetArgs([]string{"--data-dir", dir, "dev", "local-put", "local://payments/db#password"})
			root.SetIn(strings.NewReader(value))
			root.SetOut(io.Discard)
			if err := root.ExecuteContext(ctx); err != nil {
				t.Fatal(err)
			}
			if out, err := runCLI(t, dir, "secret", "put", "payments/db", "--ref", "local://payments/db#password"); err != nil {
				t.Fatal(out, err)
			}
		}, table: []string{"CHECK", "SEVERITY", "SUBJECT", "MESSAGE", "secret-owner", "warning", "payments/db", "secret-never-read"}},
		{name: "inaccessible ref", code: doctorFailures, seed: func(t *testing.T, srv *server.Server, dir string) {
			if _, err := srv.Store().PutSecret(ctx, store.Secret{Name: "payments/gone", Ref: "local://payments/gone#password", Owner: "payments"}, store.Precondition{}); err != nil {
				t.Fatal(err)
			}
		}, table: []string{"ref-accessible", "failure", "payments/gone", "local://payments/gone#password"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, dir := startDevServer(t, nil)
			if tc.seed != nil {
				tc.seed(t, srv, dir)
			}
			out, err := runCLI(t, dir, "doctor")
			if code := exitCodeOf(err); code != tc.code {
				t.Fatalf("exit %d (%v), want %d\n%s", code, err, tc.code, out)
			}
			for _, w := range tc.table {
				if !strings.Contains(out, w) {
					t.Errorf("table lacks %q:\n%s", w, out)
				}
			}
			jout, err := runCLI(t, dir, "doctor", "-o", "json")
			if code := exitCodeOf(err); code != tc.code {
				t.Fatalf("json: exit %d, want %d", code, tc.code)
			}
			var resp struct {
				Findings []struct{ Check, Severity, Subject, Message string }
				Checks   []string
			}
			if err := json.Unmarshal([]byte(jout), &resp); err != nil {
				t.Fatalf("json output: %v\n%s", err, jout)
			}
			if (len(resp.Findings) == 0) != (tc.code == doctorClean) || len(resp.Checks) == 0 {
				t.Fatalf("json findings %+v for exit %d", resp, tc.code)
			}
			if strings.Contains(out+jout, value) {
				t.Fatal("doctor printed a value")
			}
		})
	}
}

// exitCodeOf is the exit code main gives err (0 for none).
func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	return exitCode(err)
}

// A server doctor may not ask: each a clear message, exit 2, within the
// connect timeout.
func TestDoctorCannotAsk(t *testing.T) {
	srv, dir := startDevServer(t, nil)
	// A workload of the dev CA: authenticated, not an admin.
	svid, err := srv.DevIdentities().CA.IssueSVID(spiffeid.RequireFromPath(srv.ID().TrustDomain(), "/workload/api"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wdir := filepath.Join(t.TempDir(), "workload")
	if err := identity.WriteFiles(wdir, svid, srv.DevIdentities().CA.Bundle()); err != nil {
		t.Fatal(err)
	}
	workload := []string{"--cert", filepath.Join(wdir, identity.SVIDCertFile), "--key", filepath.Join(wdir, identity.SVIDKeyFile), "--bundle", filepath.Join(wdir, identity.BundleFile)}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"not an admin", append(workload, "doctor"), `admin on "*"`},
		{"unreachable", []string{"--addr", closedAddr, "--timeout", "2s", "doctor"}, "cannot reach the server at " + closedAddr},
		{"wrong server identity", []string{"--server-id", "spiffe://secretplane.test/not-the-server", "--timeout", "2s", "doctor"}, "cannot reach the server"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := runCLI(t, dir, tc.args...)
			if exitCodeOf(err) != doctorFailures || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got exit %d: %v; want 2 and %q", exitCodeOf(err), err, tc.want)
			}
			if took := time.Since(start); took > 15*time.Second {
				t.Fatalf("took %v", took)
			}
		})
	}
}

func TestDoctorConfigFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("dev: true\nlisten: 127.0.0.1:7443\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("no_such_setting: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A production configuration with the startup checks' failures: plain
	// http to Vault, PostgreSQL without verify-full, and a literal password
	// in the file (never echoed).
	unsafe := filepath.Join(dir, "unsafe.yaml")
	if err := os.WriteFile(unsafe, []byte("listen: 0.0.0.0:7443\nstore: postgres://sp@db.internal/sp?sslmode=require\nadmins: [spiffe://example.org/ops/admin]\n"+
		"backends:\n  vault:\n    address: http://vault.internal:8200\nwebhooks:\n  ops: https://hooks.example.org/x?password=Doct0r-Canary-9f3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		file string
		code int
		want string
	}{
		{"loads", good, doctorClean, ""},
		{"startup checks", unsafe, doctorFailures, ""},
		{"unknown key", bad, doctorFailures, "no_such_setting"},
		{"missing", filepath.Join(dir, "none.yaml"), doctorFailures, "none.yaml"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// No server: the data directory is empty.
			out, err := runCLI(t, t.TempDir(), "doctor", "--config", tc.file)
			if exitCodeOf(err) != tc.code || (tc.want != "" && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("exit %d: %v (%s); want %d and %q", exitCodeOf(err), err, out, tc.code, tc.want)
			}
			if tc.file == unsafe {
				for _, want := range []string{"vault", "verify-full"} {
					if !strings.Contains(out, want) {
						t.Errorf("doctor --config does not report %q:\n%s", want, out)
					}
				}
				if strings.Contains(out, "Doct0r-Canary-9f3") || (err != nil && strings.Contains(err.Error(), "Doct0r-Canary-9f3")) {
					t.Errorf("doctor echoed a secret from the file:\n%s", out)
				}
			}
		})
	}
}

// A usage error is a failure (2), never "warnings only" (1) that CI lets
// pass.
func TestDoctorUsageErrorFails(t *testing.T) {
	_, err := runCLI(t, t.TempDir(), "doctor", "-o", "yaml")
	if exitCodeOf(err) != doctorFailures {
		t.Fatalf("exit %d: %v, want %d", exitCodeOf(err), err, doctorFailures)
	}
}
