package e2e_test

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/failpoint"
)

// The server is killed (-9) in pending (before and after the new version
// is written to Vault, the latter before the step is recorded) and in
// propagating: after a restart on the same address the rotation resumes
// and completes, both Watch clients (which reconnect on their own) end on
// the new version, and Vault holds exactly one new version. Verifying is
// killed in TestRotationOfAVaultSecret. The kill points are failpoints,
// compiled into a build of its own (-tags failpoints); the restarted
// server is the normal binary.
func TestRotationResumesAfterKillInEveryState(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	fpBinary := filepath.Join(t.TempDir(), "secretplane-failpoints")
	build := exec.Command("go", "build", "-race", "-tags", "failpoints", "-o", fpBinary, "github.com/secretplane/secretplane/cmd/secretplane")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build with failpoints: %v\n%s", err, out)
	}
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ point, state string }{
		{"rotation/pending-before-write", "pending"},
		{"rotation/pending-after-write", "pending"},
		{"rotation/propagating", "propagating"},
	} {
		t.Run(strings.TrimPrefix(tc.point, "rotation/"), func(t *testing.T) {
			path := "kill/" + strings.TrimPrefix(tc.point, "rotation/")
			if _, err := root.KVv2("secret").Put(ctx, path, map[string]any{"password": "before-" + tc.state}); err != nil {
				t.Fatal(err)
			}
			versions := func() int {
				t.Helper()
				md, err := root.KVv2("secret").GetMetadata(ctx, path)
				if err != nil {
					t.Fatal(err)
				}
				return md.CurrentVersion
			}
			addr := freeLoopbackAddr(t)
			dataDir := filepath.Join(t.TempDir(), "data")
			args := []string{"--listen", addr, "--vault-addr", v.Addr, "--vault-token-file", tokenFile, "--cache-ttl", "1h", "--rotation-deadline", "60s"}
			t.Setenv(failpoint.Env, tc.point)
			srv := startDevServerBinary(t, fpBinary, dataDir, args...)
			mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/"+path+"#password")
			if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: api\n    subject: spiffe://secretplane.test/workload/*\n    verbs: [read, watch]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
				t.Fatalf("policy: %v %s", err, errOut)
			}
			ep := readDevEndpoint(t, dataDir)
			serverID := spiffeid.RequireFromString(ep.ServerID)
			watchers := make([]*client.Watcher, 2)
			for i, name := range []string{"payments-api", "payments-worker"} {
				dir := filepath.Join(t.TempDir(), name)
				mustCLI(t, dataDir, "dev", "issue", name, "--out", dir)
				src, err := identity.LoadFiles(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid_key.pem"), filepath.Join(dir, "bundle.pem"))
				if err != nil {
					t.Fatal(err)
				}
				c, err := client.New(ctx, client.Config{Address: ep.Address, ServerID: serverID, Source: src,
					Backoff: client.Backoff{Min: 100 * time.Millisecond, Max: 500 * time.Millisecond}})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				if watchers[i], err = c.Watch(ctx, []string{"payments/db"}, func(context.Context, client.Secret, client.Secret) error { return nil }); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { watchers[i].Close() })
			}
			var r struct{ ID, State, Detail, FromVersion, ToVersion string }
			if err := json.Unmarshal([]byte(mustCLI(t, dataDir, "rotate", "start", "payments/db", "-o", "json")), &r); err != nil {
				t.Fatal(err)
			}
			for !strings.Contains(srv.out.String(), "failpoint "+tc.point+" reached") {
				if ctx.Err() != nil {
					t.Fatalf("the failpoint was never reached:\n%s", srv.out.String())
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err := json.Unmarshal([]byte(mustCLI(t, dataDir, "rotate", "status", "payments/db", "-o", "json")), &r); err != nil || r.State != tc.state {
				t.Fatalf("held at %s, the rotation is %+v (%v)", tc.point, r, err)
			}
			for i, w := range watchers {
				if s, _ := w.Get("payments/db"); s.Version != "1" {
					t.Fatalf("watcher %d got version %s before propagating", i, s.Version)
				}
			}
			if err := srv.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-srv.done
			t.Setenv(failpoint.Env, "")
			srv = startDevServer(t, dataDir, args...)
			deadline := time.Now().Add(60 * time.Second)
			for {
				if err := json.Unmarshal([]byte(mustCLI(t, dataDir, "rotate", "status", "payments/db", "--id", r.ID, "-o", "json")), &r); err != nil {
					t.Fatal(err)
				}
				if r.State == "completed" {
					break
				}
				if r.State == "failed" || r.State == "rolled_back" || time.Now().After(deadline) {
					t.Fatalf("after the restart: %+v\n%s", r, srv.out.String())
				}
				time.Sleep(200 * time.Millisecond)
			}
			if n := versions(); n != 2 || r.FromVersion != "1" || r.ToVersion != "2" {
				t.Fatalf("Vault holds %d versions and the rotation went %s -> %s; one rotation makes exactly one new version", n, r.FromVersion, r.ToVersion)
			}
			if !strings.Contains(r.Detail, "all 2 consumers acknowledged 2") {
				t.Fatalf("detail: %s", r.Detail)
			}
			for i, w := range watchers {
				if s, _ := w.Get("payments/db"); s.Version != "2" {
					t.Fatalf("watcher %d holds version %s after completion", i, s.Version)
				}
			}
			if !strings.Contains(srv.out.String(), "resuming rotation") {
				t.Fatal("the restarted server did not say it resumed the rotation")
			}
		})
	}
}

// freeLoopbackAddr returns a loopback address with a port free now, for a
// server that must come back on the same address after a restart.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
