package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/loadtest"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// BenchmarkVaultDirectReadTLS is the comparison point for Resolve: a KV v2
// read of one 1 KiB secret straight from Vault 1.19 (dev mode, in-memory)
// over TLS, 64 callers, each with its own client and connection pool.
func BenchmarkVaultDirectReadTLS(b *testing.B) {
	ca, err := identity.NewCA(spiffeid.RequireTrustDomainFromString("secretplane.test"), time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if _, err := ca.IssueToDir(dir, spiffeid.RequireFromString("spiffe://secretplane.test/vault"), time.Hour, "127.0.0.1"); err != nil {
		b.Fatal(err)
	}
	bundle := filepath.Join(dir, identity.BundleFile)
	v := testenv.StartVaultTLS(b, testenv.VaultTLS{CertFile: filepath.Join(dir, identity.SVIDCertFile), KeyFile: filepath.Join(dir, identity.SVIDKeyFile), ClientCAFile: bundle})
	clients := make([]*api.Client, loadtest.Callers)
	for i := range clients {
		cfg := api.DefaultConfig()
		cfg.Address = v.TLSAddr
		if err := cfg.ConfigureTLS(&api.TLSConfig{CACert: bundle}); err != nil {
			b.Fatal(err)
		}
		c, err := api.NewClient(cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.SetToken(v.RootToken)
		clients[i] = c
	}
	ctx := context.Background()
	if _, err := clients[0].KVv2("secret").Put(ctx, "payments/db", map[string]any{"password": strings.Repeat("x", 1024)}); err != nil {
		b.Fatal(err)
	}
	loadtest.Run(b, func(ctx context.Context, c int) error {
		s, err := clients[c].KVv2("secret").Get(ctx, "payments/db")
		if err == nil && len(s.Data["password"].(string)) != 1024 {
			err = fmt.Errorf("wrong value")
		}
		return err
	})
}

// BenchmarkServerMemory100kSecrets measures the resident memory of the
// real server (built without the race detector) holding 100,000 cached
// 1 KiB secrets resolved from Vault. Run it with -benchtime=1x.
func BenchmarkServerMemory100kSecrets(b *testing.B) {
	const n = 100_000
	bin := filepath.Join(b.TempDir(), "secretplane")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/secretplane/secretplane/cmd/secretplane").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	v := testenv.StartVault(b)
	root := v.RootClient(b)
	ctx := context.Background()
	value := strings.Repeat("v", 1024)
	parallel(b, n, 64, func(i int) error {
		_, err := root.KVv2("secret").Put(ctx, fmt.Sprintf("bulk/s%06d", i), map[string]any{"v": value})
		return err
	})
	tokenFile := filepath.Join(b.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		b.Fatal(err)
	}
	dataDir := filepath.Join(b.TempDir(), "data")
	srv := startDevServerBinary(b, bin, dataDir, "--log-level", "warn", "--vault-addr", v.Addr, "--vault-token-file", tokenFile, "--cache-ttl", "1h")
	if _, errOut, err := cliStdin(b, dataDir, "policies:\n  - name: bulk\n    subject: spiffe://secretplane.test/workload/bulk\n    verbs: [read]\n    objects: [\"bulk/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		b.Fatalf("policy: %v %s", err, errOut)
	}
	admin := devAdminClient(b, dataDir)
	parallel(b, n, 32, func(i int) error {
		name := fmt.Sprintf("bulk/s%06d", i)
		_, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: "vault://secret/" + name + "#v"}})
		return err
	})
	before := rssMiB(b, srv.cmd.Process.Pid)
	svid := filepath.Join(b.TempDir(), "svid")
	mustCLI(b, dataDir, "dev", "issue", "bulk", "--out", svid)
	wl := workloadClient(b, dataDir, svid)
	start := time.Now()
	parallel(b, n/100, 16, func(i int) error {
		names := make([]string, 100)
		for j := range names {
			names[j] = fmt.Sprintf("bulk/s%06d", i*100+j)
		}
		resp, err := wl.Resolve(ctx, &spv1.ResolveRequest{Names: names})
		if err == nil && len(resp.GetValues()) != 100 {
			err = fmt.Errorf("%d values", len(resp.GetValues()))
		}
		return err
	})
	took := time.Since(start)
	after := rssMiB(b, srv.cmd.Process.Pid)
	b.ReportMetric(float64(n), "cached-secrets")
	b.ReportMetric(before, "rss-before-MiB")
	b.ReportMetric(after, "rss-MiB")
	b.ReportMetric(float64(n)/took.Seconds(), "cold-resolves/s")
}

// parallel runs fn(0..n-1) on workers goroutines, failing on the first error.
func parallel(b *testing.B, n, workers int, fn func(i int) error) {
	b.Helper()
	next := make(chan int, n)
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					once.Do(func() { first = fmt.Errorf("item %d: %w", i, err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

func rssMiB(b *testing.B, pid int) float64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if f := strings.Fields(string(line)); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// devAdminClient dials the dev server of dataDir as its admin.
func devAdminClient(t testing.TB, dataDir string) spv1.AdminServiceClient {
	t.Helper()
	return spv1.NewAdminServiceClient(adminConn(t, dataDir))
}
