package e2e_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
)

// The real binary logs in to a real Vault with AppRole (role id + secret id
// file) and with TLS certificate auth over Vault's TLS listener (its SVID,
// bound to its SPIFFE ID by the role's allowed_uri_sans), then resolves for
// a granted workload; the Vault policy behind the login still limits what
// it can read.
func TestServerVaultAuthMethods(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("secretplane.test")
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(id string, hosts ...string) string {
		t.Helper()
		dir := t.TempDir()
		if _, err := ca.IssueToDir(dir, spiffeid.RequireFromString(id), time.Hour, hosts...); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	vaultTLS := issue("spiffe://secretplane.test/vault", "127.0.0.1")
	bundle := filepath.Join(vaultTLS, identity.BundleFile)
	v := testenv.StartVaultTLS(t, testenv.VaultTLS{CertFile: filepath.Join(vaultTLS, identity.SVIDCertFile), KeyFile: filepath.Join(vaultTLS, identity.SVIDKeyFile), ClientCAFile: bundle})

	root := v.RootClient(t)
	ctx := context.Background()
	for path, pw := range map[string]string{"payments/db": "auth-pw-payments", "billing/db": "auth-pw-billing"} {
		if _, err := root.KVv2("secret").Put(ctx, path, map[string]any{"password": pw}); err != nil {
			t.Fatal(err)
		}
	}
	if err := root.Sys().PutPolicyWithContext(ctx, "payments-read", `path "secret/data/payments/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	roleID, secretIDFile := v.AppRole(t, "secretplane", "payments-read", "1h")
	v.CertRole(t, "secretplane", bundle, "spiffe://secretplane.test/secretplane/server", "payments-read")
	// Vault's cert auth needs a subject common name (hashicorp/vault#6820):
	// the first DNS name becomes it, as SPIRE does.
	server := issue("spiffe://secretplane.test/secretplane/server", "secretplane.secretplane.test")

	cases := []struct {
		name string
		args []string
	}{
		{"AppRole", []string{"--vault-addr", v.Addr, "--vault-approle-role-id", roleID, "--vault-approle-secret-id-file", secretIDFile}},
		{"certificate over TLS", []string{"--vault-addr", v.TLSAddr, "--vault-ca-cert", bundle,
			"--vault-cert-file", filepath.Join(server, identity.SVIDCertFile), "--vault-key-file", filepath.Join(server, identity.SVIDKeyFile), "--vault-cert-role", "secretplane"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			startDevServer(t, dataDir, tc.args...)
			mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "vault://secret/payments/db#password")
			mustCLI(t, dataDir, "secret", "put", "billing/db", "--ref", "vault://secret/billing/db#password")
			if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: all-read\n    subject: spiffe://secretplane.test/workload/payments-api\n    verbs: [read]\n    objects: [\"*\"]\n", "policy", "apply", "-f", "-"); err != nil {
				t.Fatalf("policy: %v %s", err, errOut)
			}
			svid := filepath.Join(t.TempDir(), "svid")
			mustCLI(t, dataDir, "dev", "issue", "payments-api", "--out", svid)
			resolve := func(name string) (string, string, error) {
				return cli(t, dataDir, "--cert", filepath.Join(svid, "svid.pem"), "--key", filepath.Join(svid, "svid_key.pem"), "--bundle", filepath.Join(svid, "bundle.pem"), "resolve", name, "--raw")
			}
			if out, errOut, err := resolve("payments/db"); err != nil || out != "auth-pw-payments" {
				t.Fatalf("resolve: %q %v %s", out, err, errOut)
			}
			// Granted by secretplane, refused by Vault's policy for our login.
			if out, errOut, err := resolve("billing/db"); err == nil || !strings.Contains(errOut, "PermissionDenied") || strings.Contains(out+errOut, "auth-pw-billing") {
				t.Fatalf("outside the Vault policy: %q %v %s", out, err, errOut)
			}
		})
	}
}
