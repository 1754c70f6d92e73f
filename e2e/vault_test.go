package e2e_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/secretplane/secretplane/e2e/testenv"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Resolve through the real binary from a real Vault: by version, with the
// cache serving while Vault is down until max-stale, then UNAVAILABLE, and
// recovery once Vault is back, without restarting secretplane.
func TestResolveFromVaultThroughOutage(t *testing.T) {
	v := testenv.StartVault(t)
	seedVault := func() {
		c := v.RootClient(t)
		for _, pw := range []string{"pw-one", "pw-two"} {
			if _, err := c.KVv2("secret").Put(context.Background(), "payments/db", map[string]any{"password": pw}); err != nil {
				t.Fatal(err)
			}
		}
	}
	seedVault()
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	startDevServer(t, dataDir, "--vault-addr", v.Addr, "--vault-token-file", tokenFile, "--cache-ttl", "1s", "--max-stale", "4s")
	mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password")
	mustCLI(t, dataDir, "secret", "put", "payments/db-v1", "--ref", "vault://secret/payments/db?version=1#password")
	mustCLI(t, dataDir, "dev", "issue", "payments-api", "--out", filepath.Join(dataDir, "..", "svid"))
	if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: api-read\n    subject: spiffe://secretplane.test/workload/payments-api\n    verbs: [read]\n    objects: [\"payments/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		t.Fatalf("policy: %v %s", err, errOut)
	}
	svid := filepath.Join(dataDir, "..", "svid")
	resolve := func(name string) (string, string, error) {
		return cli(t, dataDir, "--cert", filepath.Join(svid, "svid.pem"), "--key", filepath.Join(svid, "svid_key.pem"), "--bundle", filepath.Join(svid, "bundle.pem"), "resolve", name, "--raw")
	}
	if out, errOut, err := resolve("payments/db"); err != nil || out != "pw-two" {
		t.Fatalf("latest: %q %v %s", out, err, errOut)
	}
	if out, errOut, err := resolve("payments/db-v1"); err != nil || out != "pw-one" {
		t.Fatalf("version 1: %q %v %s", out, err, errOut)
	}

	v.Stop(t)
	time.Sleep(1500 * time.Millisecond) // past the TTL: served stale
	if out, errOut, err := resolve("payments/db"); err != nil || out != "pw-two" {
		t.Fatalf("while Vault is down, within max-stale: %q %v %s", out, err, errOut)
	}
	time.Sleep(4 * time.Second) // past max-stale: fail closed
	if _, errOut, err := resolve("payments/db"); err == nil || !strings.Contains(errOut, "Unavailable") {
		t.Fatalf("past max-stale: err=%v stderr=%s", err, errOut)
	}

	v.Start(t)
	seedVault()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, errOut, err := resolve("payments/db")
		if err == nil && out == "pw-two" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after Vault restart: %q %v %s", out, err, errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// 1,000 concurrent Resolves of one uncached ref make exactly one read at
// Vault, counted by Vault's own file audit device.
func TestMissStormIsOneVaultRead(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	ctx := context.Background()
	if _, err := root.KVv2("secret").Put(ctx, "storm/db", map[string]any{"password": "storm-pw"}); err != nil {
		t.Fatal(err)
	}
	auditFile := filepath.Join(t.TempDir(), "vault-audit.log")
	if err := root.Sys().EnableAuditWithOptionsWithContext(ctx, "file", &api.EnableAuditOptions{Type: "file", Options: map[string]string{"file_path": auditFile}}); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	startDevServer(t, dataDir, "--vault-addr", v.Addr, "--vault-token-file", tokenFile)
	mustCLI(t, dataDir, "secret", "put", "storm/db", "--ref", "vault://secret/storm/db#password")
	if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: storm\n    subject: spiffe://secretplane.test/workload/storm\n    verbs: [read]\n    objects: [\"storm/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		t.Fatalf("policy: %v %s", err, errOut)
	}
	svid := filepath.Join(t.TempDir(), "svid")
	mustCLI(t, dataDir, "dev", "issue", "storm", "--out", svid)
	client := workloadClient(t, dataDir, svid)

	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for i := 0; i < 1000; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Resolve(ctx, &spv1.ResolveRequest{Names: []string{"storm/db"}})
			if err == nil && string(resp.GetValues()[0].GetValue()) != "storm-pw" {
				err = errors.New("wrong value")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	reads := 0
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, `"type":"request"`) && strings.Contains(line, `"path":"secret/data/storm/db"`) && strings.Contains(line, `"operation":"read"`) {
			reads++
		}
	}
	if reads != 1 {
		t.Fatalf("Vault saw %d reads of secret/data/storm/db, want exactly 1", reads)
	}
}

// workloadClient dials the dev server of dataDir with the SVID in dir.
func workloadClient(t testing.TB, dataDir, dir string) spv1.SecretsServiceClient {
	t.Helper()
	return spv1.NewSecretsServiceClient(devConn(t, dataDir, dir))
}
