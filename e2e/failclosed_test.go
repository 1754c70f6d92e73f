package e2e_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
)

// failClosedCanary is a fresh secret value: no output may contain it.
func failClosedCanary(t *testing.T) string {
	t.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "canary-" + hex.EncodeToString(b)
}

// runRefused runs the server with args and wants it to exit non-zero
// within limit; it returns the output.
func runRefused(t *testing.T, limit time.Duration, args ...string) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit+30*time.Second)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	took := time.Since(start)
	if err == nil {
		t.Fatalf("server exited 0; output:\n%s", out)
	}
	if ctx.Err() != nil {
		t.Fatalf("server still running after %s; output:\n%s", limit+30*time.Second, out)
	}
	if took > limit {
		t.Errorf("server took %s to refuse, want at most %s; output:\n%s", took, limit, out)
	}
	return string(out), took
}

func wantAll(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

// vaultWithSecret starts Vault holding value at secret/payments/db and
// returns it with a file holding its root token.
func vaultWithSecret(t *testing.T, value string) (*testenv.Vault, string) {
	t.Helper()
	v := testenv.StartVault(t)
	if _, err := v.RootClient(t).KVv2("secret").Put(context.Background(), "payments/db", map[string]any{"password": value}); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	return v, tokenFile
}

// A required secret that is gone from Vault at the next start stops the
// server from starting, naming the secret, its ref and why, never a value.
func TestFailClosedMissingRequiredSecret(t *testing.T) {
	value := failClosedCanary(t)
	v, tokenFile := vaultWithSecret(t, value)
	dataDir := filepath.Join(t.TempDir(), "data")
	args := []string{"--vault-addr", v.Addr, "--vault-token-file", tokenFile}
	srv := startDevServer(t, dataDir, args...)
	mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password", "--required")
	mustCLI(t, dataDir, "secret", "put", "payments/optional", "--ref", "vault://secret/payments/db#password")
	srv.stop(t)

	// It starts again while the secret is there.
	srv = startDevServer(t, dataDir, args...)
	srv.stop(t)
	if strings.Contains(srv.out.String(), value) {
		t.Fatalf("the server's output holds the value:\n%s", srv.out.String())
	}

	if err := v.RootClient(t).KVv2("secret").DeleteMetadata(context.Background(), "payments/db"); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dataDir, "dev.json")) // the last run's
	out, _ := runRefused(t, 30*time.Second, append([]string{"server", "--dev", "--data-dir", dataDir, "--listen", "127.0.0.1:0",
		"--metrics-listen", "127.0.0.1:0", "--startup-required-timeout", "10s"}, args...)...)
	wantAll(t, out, "refusing to start", "required secret payments/db: vault://secret/payments/db#password: not found")
	if strings.Contains(out, "payments/optional") || strings.Contains(out, value) {
		t.Fatalf("output names a secret not required, or the value:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "dev.json")); err == nil {
		t.Fatal("a refused server wrote its dev endpoint")
	}
}

// Outside dev mode a Vault reached over plain http (even on loopback)
// stops the server before it opens its store, with every other problem
// of the configuration in the same message.
func TestFailClosedInsecureVaultOutsideDev(t *testing.T) {
	v, tokenFile := vaultWithSecret(t, failClosedCanary(t))
	td := spiffeid.RequireTrustDomainFromString("secretplane.test")
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverDir := t.TempDir()
	if _, err := ca.IssueToDir(serverDir, spiffeid.RequireFromString("spiffe://secretplane.test/secretplane/server"), time.Hour); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "local.key")
	if err := os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	storePath := filepath.Join(dir, "store.db")
	base := []string{"server", "--listen", "127.0.0.1:0", "--store", "sqlite:" + storePath, "--admin", "spiffe://secretplane.test/ops/admin",
		"--svid-cert", filepath.Join(serverDir, identity.SVIDCertFile), "--svid-key", filepath.Join(serverDir, identity.SVIDKeyFile),
		"--bundle-file", filepath.Join(serverDir, identity.BundleFile), "--vault-addr", v.Addr, "--vault-token-file", tokenFile}

	out, _ := runRefused(t, 30*time.Second, base...)
	wantAll(t, out, "refusing to start", "backends.vault.address: Vault at "+strings.TrimPrefix(v.Addr, "http://")+" is reached over http://, not TLS")
	if _, err := os.Stat(storePath); !os.IsNotExist(err) {
		t.Fatalf("the store was opened before the refusal: %v", err)
	}

	// Every problem at once: the Vault address and a key file open to others.
	out, _ = runRefused(t, 30*time.Second, append(base, "--local-key-file", keyFile, "--local-secrets-file", filepath.Join(dir, "local.json"))...)
	wantAll(t, out, "refusing to start", "backends.vault.address:", "backends.local.key_file: the local backend's key file", "is open to group or others (mode 0644)")
}

// A required secret whose backend hangs costs the startup bound, not the
// startup: the server exits non-zero soon after --startup-required-timeout,
// naming the secret as timed out.
func TestFailClosedHangingBackend(t *testing.T) {
	value := failClosedCanary(t)
	v, tokenFile := vaultWithSecret(t, value)
	// Vault behind a proxy that, once told to, holds every KV request
	// open without an answer (logins and token checks still pass).
	target, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var hang atomic.Bool
	var held atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hang.Load() && strings.HasPrefix(r.URL.Path, "/v1/secret/") {
			held.Add(1)
			<-r.Context().Done()
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	dataDir := filepath.Join(t.TempDir(), "data")
	args := []string{"--vault-addr", front.URL, "--vault-token-file", tokenFile}
	srv := startDevServer(t, dataDir, args...)
	mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password", "--required")
	srv.stop(t)

	hang.Store(true)
	const bound = 2 * time.Second
	out, took := runRefused(t, bound+15*time.Second, append([]string{"server", "--dev", "--data-dir", dataDir, "--listen", "127.0.0.1:0",
		"--metrics-listen", "127.0.0.1:0", "--startup-required-timeout", bound.String()}, args...)...)
	wantAll(t, out, "refusing to start", "required secret payments/db: vault://secret/payments/db#password: timed out")
	if held.Load() == 0 {
		t.Fatalf("the hanging backend was never asked; output:\n%s", out)
	}
	t.Logf("refused after %s with a %s bound", took, bound)
	if took < bound {
		t.Errorf("refused after %s, before the %s bound: the backend did not hang the check", took, bound)
	}
	if strings.Contains(out, value) {
		t.Fatalf("output holds the value:\n%s", out)
	}
}
