package testenv

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// EnvVaultBin names a vault binary to use instead of the cached build of
// scripts/tools.sh.
const EnvVaultBin = "SECRETPLANE_VAULT_BIN"

// Vault is a HashiCorp Vault 1.19.0 dev server for a test: in-memory
// storage, unsealed, KV v2 at secret/, listening on a free loopback port.
type Vault struct {
	Addr      string // http://127.0.0.1:PORT
	TLSAddr   string // https://127.0.0.1:PORT2 when started with a TLS listener
	RootToken string
	tls       *VaultTLS
	bin       string
	cmd       *exec.Cmd
	done      chan struct{}
	logs      *lockedLog
	port      int
}

// RootClient is a Vault API client with the root token, on the plain
// loopback listener: for seeding secrets and configuring auth in tests.
func (v *Vault) RootClient(t testing.TB) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(v.RootToken)
	return c
}

// AppRole enables auth/approle (once per Vault) and creates role with the
// given token policies and TTL; it returns the role id and a file (0600)
// holding a new secret id.
func (v *Vault) AppRole(t testing.TB, role, policies, ttl string) (roleID, secretIDFile string) {
	t.Helper()
	ctx := context.Background()
	c := v.RootClient(t)
	v.enableAuth(t, c, "approle")
	if _, err := c.Logical().WriteWithContext(ctx, "auth/approle/role/"+role, map[string]any{"token_policies": policies, "token_ttl": ttl}); err != nil {
		t.Fatal(err)
	}
	rid, err := c.Logical().ReadWithContext(ctx, "auth/approle/role/"+role+"/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := c.Logical().WriteWithContext(ctx, "auth/approle/role/"+role+"/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	secretIDFile = filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(secretIDFile, []byte(sid.Data["secret_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	return rid.Data["role_id"].(string), secretIDFile
}

// CertRole enables auth/cert (once per Vault) and creates role: client
// certificates signed by the CA in caFile whose URI SAN is allowedURISAN
// log in with the given token policies.
func (v *Vault) CertRole(t testing.TB, role, caFile, allowedURISAN, policies string) {
	t.Helper()
	c := v.RootClient(t)
	v.enableAuth(t, c, "cert")
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().WriteWithContext(context.Background(), "auth/cert/certs/"+role, map[string]any{
		"certificate": string(caPEM), "allowed_uri_sans": allowedURISAN, "token_policies": policies, "token_ttl": "1h",
	}); err != nil {
		t.Fatal(err)
	}
}

func (v *Vault) enableAuth(t testing.TB, c *api.Client, method string) {
	t.Helper()
	auths, err := c.Sys().ListAuthWithContext(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := auths[method+"/"]; ok {
		return
	}
	if err := c.Sys().EnableAuthWithOptionsWithContext(context.Background(), method, &api.EnableAuthOptions{Type: method}); err != nil {
		t.Fatal(err)
	}
}

// StartVault starts a dev-mode Vault and stops it when the test ends.
func StartVault(t testing.TB) *Vault {
	t.Helper()
	bin, err := vaultBin()
	if err != nil {
		t.Fatalf("Vault binary: %v", err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	v := &Vault{Addr: fmt.Sprintf("http://127.0.0.1:%d", port), RootToken: "root-" + randomHex(8), bin: bin, logs: &lockedLog{}, port: port}
	v.Start(t)
	t.Cleanup(func() { v.Stop(t) })
	return v
}

// VaultTLS is a TLS listener to add beside the dev listener: Vault serves
// CertFile/KeyFile and asks clients for certificates signed by ClientCA
// (for auth/cert).
type VaultTLS struct {
	CertFile, KeyFile, ClientCAFile string
}

// StartVaultTLS starts a dev-mode Vault with a TLS listener as well.
func StartVaultTLS(t testing.TB, tlsCfg VaultTLS) *Vault {
	t.Helper()
	bin, err := vaultBin()
	if err != nil {
		t.Fatalf("Vault binary: %v", err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tlsPort, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	v := &Vault{Addr: fmt.Sprintf("http://127.0.0.1:%d", port), TLSAddr: fmt.Sprintf("https://127.0.0.1:%d", tlsPort),
		RootToken: "root-" + randomHex(8), bin: bin, logs: &lockedLog{}, port: port, tls: &tlsCfg}
	v.Start(t)
	t.Cleanup(func() { v.Stop(t) })
	return v
}

// Start (re)starts the server on the same address. A dev server keeps
// nothing across restarts: tests re-seed what they need.
func (v *Vault) Start(t testing.TB) {
	t.Helper()
	home, err := os.MkdirTemp("", "sp-vault-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	args := []string{"server", "-dev", "-dev-root-token-id=" + v.RootToken, fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", v.port), "-log-level=warn"}
	if v.tls != nil {
		// Dev mode merges a configuration file's listeners with its own.
		conf := fmt.Sprintf("listener \"tcp\" {\n  address = %q\n  tls_cert_file = %q\n  tls_key_file = %q\n",
			strings.TrimPrefix(v.TLSAddr, "https://"), v.tls.CertFile, v.tls.KeyFile)
		if v.tls.ClientCAFile != "" {
			conf += fmt.Sprintf("  tls_client_ca_file = %q\n", v.tls.ClientCAFile)
		}
		conf += "}\n"
		path := filepath.Join(home, "listener.hcl")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-config="+path)
	}
	cmd := exec.Command(v.bin, args...)
	// The dev server writes a token helper file to $HOME; keep it private.
	cmd.Env = append(os.Environ(), "HOME="+home, "VAULT_ADDR="+v.Addr)
	cmd.Stdout, cmd.Stderr = v.logs, v.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start vault: %v", err)
	}
	v.cmd, v.done = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(v.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(v.Addr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-v.done:
			t.Fatalf("vault exited during startup:\n%s", v.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("vault not healthy after 60s: %v\n%s", err, v.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server (idempotent).
func (v *Vault) Stop(t testing.TB) {
	if v.cmd == nil {
		return
	}
	_ = v.cmd.Process.Signal(os.Interrupt)
	select {
	case <-v.done:
	case <-time.After(15 * time.Second):
		_ = v.cmd.Process.Kill()
		<-v.done
	}
	v.cmd = nil
}

// Logs returns what the server printed.
func (v *Vault) Logs() string { return v.logs.String() }

// vaultBin finds vault: EnvVaultBin, or the cached build of scripts/tools.sh
// (built once, about 5 minutes cold).
func vaultBin() (string, error) {
	if b := os.Getenv(EnvVaultBin); b != "" {
		return b, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(root, "scripts", "tools.sh"), "vault").Output()
	if err != nil {
		return "", fmt.Errorf("scripts/tools.sh vault: %w", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "vault"), nil
}
