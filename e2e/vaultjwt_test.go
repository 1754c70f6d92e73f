package e2e_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// The server, identified by SPIRE, logs in to a real Vault (TLS) with a
// JWT-SVID from its agent: Vault's JWT auth trusts SPIRE's JWT signing keys
// and binds the role to the server's SPIFFE ID and the "vault" audience.
// A role bound to another SPIFFE ID refuses the server, which then fails
// to start; no JWT ever reaches the server's logs.
func TestVaultJWTSVIDAuthWithSPIRE(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("secretplane.test")
	spire := testenv.StartSPIRE(t, testenv.SPIREOptions{TrustDomain: td.Name()})
	dir := t.TempDir()
	serverBin := filepath.Join(dir, "secretplane-server")
	copyFile(t, binary, serverBin)
	serverID := spiffeid.RequireFromString("spiffe://secretplane.test/secretplane/server")
	adminID := spiffeid.RequireFromString("spiffe://secretplane.test/ops/admin")
	spire.RegisterPath(t, serverID.String(), serverBin, 0)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spire.RegisterPath(t, adminID.String(), self, 0)
	socket := "unix://" + spire.AgentSocket

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var src *identity.WorkloadSource
	for src == nil {
		src, err = identity.NewWorkloadSource(ctx, socket, 5*time.Second, discardLogger())
		if err != nil && ctx.Err() != nil {
			t.Fatalf("test SVID: %v\nSPIRE logs:\n%s", err, spire.Logs())
		}
	}
	defer src.Close()

	// Vault over TLS with a certificate from a throwaway CA.
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	vaultDir := t.TempDir()
	if _, err := ca.IssueToDir(vaultDir, spiffeid.RequireFromString("spiffe://secretplane.test/vault"), time.Hour, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	vaultCA := filepath.Join(vaultDir, identity.BundleFile)
	v := testenv.StartVaultTLS(t, testenv.VaultTLS{CertFile: filepath.Join(vaultDir, identity.SVIDCertFile), KeyFile: filepath.Join(vaultDir, identity.SVIDKeyFile)})
	root := v.RootClient(t)
	for path, pw := range map[string]string{"payments/db": "jwt-pw-payments", "billing/db": "jwt-pw-billing"} {
		if _, err := root.KVv2("secret").Put(ctx, path, map[string]any{"password": pw}); err != nil {
			t.Fatal(err)
		}
	}
	if err := root.Sys().PutPolicyWithContext(ctx, "payments-read", `path "secret/data/payments/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}

	// Vault's JWT auth trusts the trust domain's JWT signing keys, as the
	// agent hands them out (production would point oidc_discovery_url at
	// SPIRE's OIDC discovery provider, which follows key rotation).
	bundles, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr(socket))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := bundles.GetJWTBundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, k := range bundle.JWTAuthorities() {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	}
	if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, "jwt", &api.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "auth/jwt/config", map[string]any{"jwt_validation_pubkeys": keys}); err != nil {
		t.Fatal(err)
	}
	for role, subject := range map[string]string{"secretplane": serverID.String(), "someone-else": "spiffe://secretplane.test/workload/other"} {
		if _, err := root.Logical().WriteWithContext(ctx, "auth/jwt/role/"+role, map[string]any{
			"role_type": "jwt", "bound_audiences": "vault", "user_claim": "sub", "bound_subject": subject,
			"token_policies": "payments-read", "token_ttl": "1h",
		}); err != nil {
			t.Fatal(err)
		}
	}

	startServer := func(role string) (*exec.Cmd, string, *lockedBuffer) {
		port, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		out := &lockedBuffer{}
		cmd := exec.Command(serverBin, "server", "--listen", addr, "--workload-api", socket,
			"--store", "sqlite:"+filepath.Join(t.TempDir(), "store.db"), "--admin", adminID.String(), "--log-format", "json",
			"--vault-addr", v.TLSAddr, "--vault-ca-cert", vaultCA, "--vault-jwt-role", role)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd, addr, out
	}

	t.Run("role bound to another SPIFFE ID", func(t *testing.T) {
		cmd, _, out := startServer("someone-else")
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(out.String(), "JWT-SVID login") {
				t.Fatalf("exit %v; output:\n%s", err, out.String())
			}
		case <-time.After(time.Minute):
			t.Fatalf("server kept running with a Vault login that should fail:\n%s", out.String())
		}
	})

	_, addr, out := startServer("secretplane")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	admin := spv1.NewAdminServiceClient(conn)
	waitServer(t, ctx, admin, out)
	for _, name := range []string{"payments/db", "billing/db"} {
		if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: "vault://secret/" + name + "#password"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := spv1.NewPolicyServiceClient(conn).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{
		Name: "admin-reads", Subject: adminID.String(), Verbs: []string{"read"}, Objects: []string{"*"}}}); err != nil {
		t.Fatal(err)
	}
	secrets := spv1.NewSecretsServiceClient(conn)
	resp, err := secrets.Resolve(ctx, &spv1.ResolveRequest{Names: []string{"payments/db"}})
	if err != nil || len(resp.GetValues()) != 1 || string(resp.GetValues()[0].GetValue()) != "jwt-pw-payments" {
		t.Fatalf("resolve through the JWT-SVID login: %v\n%s", err, out.String())
	}
	// Granted by secretplane, refused by the Vault policy of the login.
	if _, err := secrets.Resolve(ctx, &spv1.ResolveRequest{Names: []string{"billing/db"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("outside the Vault policy: %v", err)
	}
	if strings.Contains(out.String(), "eyJ") {
		t.Fatalf("a JWT reached the server's output:\n%s", out.String())
	}
}
