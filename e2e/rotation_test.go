package e2e_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/envoysim"
)

// A manual rotation of a Vault KV secret through the real binary completes
// only after every consumer (two Watch clients through the client library,
// an Envoy over SDS) has acknowledged the new version, with no consumer
// error and the previous version kept in Vault; `rotate status` and the
// audit show every step. Then the server is killed (-9) while a rotation
// waits in verifying for a consumer that has not acknowledged yet: after
// the restart it resumes and completes, with exactly one new version in
// Vault.
func TestRotationOfAVaultSecret(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := root.KVv2("secret").Put(ctx, "payments/db", map[string]any{"password": "pw-one"}); err != nil {
		t.Fatal(err)
	}
	versions := func() int {
		t.Helper()
		md, err := root.KVv2("secret").GetMetadata(ctx, "payments/db")
		if err != nil {
			t.Fatal(err)
		}
		return md.CurrentVersion
	}
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	args := []string{"--vault-addr", v.Addr, "--vault-token-file", tokenFile, "--cache-ttl", "1h", "--rotation-deadline", "90s"}
	srv := startDevServer(t, dataDir, args...)
	mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password")
	if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: api\n    subject: spiffe://secretplane.test/workload/*\n    verbs: [read, watch]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		t.Fatalf("policy: %v %s", err, errOut)
	}
	svid := filepath.Join(t.TempDir(), "svid")
	mustCLI(t, dataDir, "dev", "issue", "payments-api", "--out", svid)
	ep := readDevEndpoint(t, dataDir)
	serverID := spiffeid.RequireFromString(ep.ServerID)
	src, err := identity.LoadFiles(filepath.Join(svid, "svid.pem"), filepath.Join(svid, "svid_key.pem"), filepath.Join(svid, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	// The second service has an identity of its own: consumers sharing
	// one are one consumer to the registry (only SDS tells Envoys apart, by
	// node id).
	svid2 := filepath.Join(t.TempDir(), "svid2")
	mustCLI(t, dataDir, "dev", "issue", "payments-worker", "--out", svid2)
	src2, err := identity.LoadFiles(filepath.Join(svid2, "svid.pem"), filepath.Join(svid2, "svid_key.pem"), filepath.Join(svid2, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	var hookErrs atomic.Int64
	watchers := make([]*client.Watcher, 2)
	for i, s := range []identity.Source{src, src2} {
		c, err := client.New(ctx, client.Config{Address: ep.Address, ServerID: serverID, Source: s})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if watchers[i], err = c.Watch(ctx, []string{"payments/db"}, func(_ context.Context, _, s client.Secret) error {
			if string(s.Value) == "" {
				hookErrs.Add(1)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		defer watchers[i].Close()
	}
	dialEnvoy := func(addr string) *grpc.ClientConn {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	envoy := envoysim.New(dialEnvoy(ep.Address), envoysim.Options{Mode: envoysim.SotW, NodeID: "gw-1"})
	defer envoy.Close()
	envoy.Subscribe(ctx, "payments/db")
	before, err := envoy.Wait(ctx, "payments/db", nil)
	if err != nil {
		t.Fatal(err)
	}

	type rot struct {
		ID, State, Detail, FromVersion, ToVersion string
	}
	status := func(args ...string) rot {
		t.Helper()
		var r rot
		if err := json.Unmarshal([]byte(mustCLI(t, dataDir, append(args, "-o", "json")...)), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := status("rotate", "start", "payments/db", "--wait", "30s")
	if r.State != "completed" || r.FromVersion != "1" || r.ToVersion != "2" {
		t.Fatalf("rotation: %+v", r)
	}
	for i, w := range watchers {
		if s, _ := w.Get("payments/db"); s.Version != "2" || string(s.Value) == "pw-one" {
			t.Fatalf("watcher %d holds version %s after completion", i, s.Version)
		}
	}
	if after, _ := envoy.Get("payments/db"); after.Version == before.Version {
		t.Fatal("the Envoy holds the old version after completion")
	}
	if _, _, nacks := envoy.Counts(); nacks != 0 || hookErrs.Load() != 0 {
		t.Fatalf("consumer errors: %d NACKs, %d hook errors", nacks, hookErrs.Load())
	}
	if old, err := root.KVv2("secret").GetVersion(ctx, "payments/db", 1); err != nil || old.Data["password"] != "pw-one" {
		t.Fatalf("the previous version is gone from Vault: %v", err)
	}
	if got := status("rotate", "status", "payments/db"); got.ID != r.ID || !strings.Contains(got.Detail, "all 3 consumers acknowledged 2") {
		t.Fatalf("status: %+v", got)
	}
	timeline := mustCLI(t, dataDir, "rotate", "status", "payments/db")
	for _, step := range []string{"timeline:", "start", "create_version", "propagating", "verifying", "completed"} {
		if !strings.Contains(timeline, step) {
			t.Fatalf("rotate status lacks %s in its timeline:\n%s", step, timeline)
		}
	}
	audit := mustCLI(t, dataDir, "audit", "tail", "-n", "100")
	for _, step := range []string{"rotation.start", "rotation.create_version", "rotation.propagating", "rotation.verifying", "rotation.completed", "RotationService.StartRotation"} {
		if !strings.Contains(audit, step) {
			t.Fatalf("the audit lacks %s:\n%s", step, audit)
		}
	}

	// A consumer seen and then gone quiet holds the next rotation in
	// verifying; the server is killed there.
	late := envoysim.New(dialEnvoy(ep.Address), envoysim.Options{Mode: envoysim.SotW, NodeID: "gw-late"})
	late.Subscribe(ctx, "payments/db")
	if _, err := late.Wait(ctx, "payments/db", nil); err != nil {
		t.Fatal(err)
	}
	late.Close()
	r2 := status("rotate", "start", "payments/db")
	for status("rotate", "status", "payments/db", "--id", r2.ID).State != "verifying" {
		if ctx.Err() != nil {
			t.Fatal("the rotation never reached verifying")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // the consumers' ACKs are flushed as verifying polls them
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-srv.done
	srv = startDevServer(t, dataDir, args...)
	ep = readDevEndpoint(t, dataDir)
	late = envoysim.New(dialEnvoy(ep.Address), envoysim.Options{Mode: envoysim.SotW, NodeID: "gw-late"})
	defer late.Close()
	late.Subscribe(ctx, "payments/db")
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := status("rotate", "status", "payments/db", "--id", r2.ID)
		if got.State == "completed" {
			break
		}
		if got.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("after the restart: %+v\n%s", got, srv.out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := versions(); n != 3 {
		t.Fatalf("Vault holds %d versions; two rotations make exactly 3", n)
	}
	if !strings.Contains(srv.out.String(), "resuming rotation") {
		t.Fatal("the restarted server did not say it resumed the rotation")
	}

	// An emergency rotation (after a leak) pushes at once and invalidates
	// the version it replaced at Vault; the audit flags it.
	em := status("rotate", "start", "payments/db", "--emergency", "--wait", "30s")
	if em.State != "completed" || em.FromVersion != "3" || em.ToVersion != "4" || !strings.Contains(em.Detail, "invalidated at the backend") {
		t.Fatalf("emergency rotation: %+v", em)
	}
	if old, err := root.KVv2("secret").GetVersion(ctx, "payments/db", 3); err == nil && old.VersionMetadata != nil && old.VersionMetadata.DeletionTime.IsZero() {
		t.Fatal("the leaked version 3 is still readable at Vault")
	}
	if audit := mustCLI(t, dataDir, "audit", "tail", "-n", "50"); !strings.Contains(audit, "(emergency)") || !strings.Contains(audit, "rotation.invalidate_previous") {
		t.Fatalf("the audit does not flag the emergency:\n%s", audit)
	}
}
