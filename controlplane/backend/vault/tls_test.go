package vault_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/vault"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
)

// svidFiles issues an SVID for id (with hosts as extra SANs) and writes
// svid.pem, svid_key.pem and bundle.pem to a new directory.
func svidFiles(t *testing.T, ca *identity.CA, id string, hosts ...string) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := ca.IssueToDir(dir, spiffeid.RequireFromString(id), time.Hour, hosts...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Vault over TLS with a certificate from our dev CA, and secretplane
// logging in with its own SVID through auth/cert, restricted to its
// SPIFFE ID by allowed_uri_sans.
func TestTLSAndCertificateAuth(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("secretplane.test")
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	vaultDir := svidFiles(t, ca, "spiffe://secretplane.test/vault", "127.0.0.1", "localhost")
	bundle := filepath.Join(vaultDir, identity.BundleFile)
	v := testenv.StartVaultTLS(t, testenv.VaultTLS{
		CertFile: filepath.Join(vaultDir, identity.SVIDCertFile), KeyFile: filepath.Join(vaultDir, identity.SVIDKeyFile), ClientCAFile: bundle})
	root := v.RootClient(t)
	seed(t, root)
	ctx := context.Background()
	if err := root.Sys().PutPolicyWithContext(ctx, "payments-read", `path "secret/data/payments/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	v.CertRole(t, "secretplane", bundle, "spiffe://secretplane.test/secretplane/server", "payments-read")
	// Vault's cert auth names its identity alias after the subject common
	// name and refuses certificates without one (hashicorp/vault#6820); an
	// SVID has one when its SPIRE entry has a DNS name.
	server := svidFiles(t, ca, "spiffe://secretplane.test/secretplane/server", "secretplane.secretplane.test")
	other := svidFiles(t, ca, "spiffe://secretplane.test/workload/payments-api", "payments-api.secretplane.test")
	certAuth := func(dir string) *vault.CertAuth {
		return &vault.CertAuth{Name: "secretplane", CertFile: filepath.Join(dir, identity.SVIDCertFile), KeyFile: filepath.Join(dir, identity.SVIDKeyFile)}
	}
	log := slog.New(slog.DiscardHandler)

	b, err := vault.New(ctx, vault.Config{Address: v.TLSAddr, CACert: bundle, Cert: certAuth(server)}, log)
	if err != nil {
		t.Fatalf("%v\n%s", err, v.Logs())
	}
	val, err := b.Read(ctx, secretref.MustParse("vault://secret/payments/db#password"))
	if err != nil || string(val.Data) != "pw-v2" || val.Version != "2" {
		t.Fatalf("read over TLS with cert auth: %+v %v", val, err)
	}
	// The token's policy still limits what it reads.
	if _, err := b.Read(ctx, secretref.MustParse("vault://secret/billing/db#password")); !errors.Is(err, backend.ErrPermissionDenied) {
		t.Fatalf("outside the policy: %v", err)
	}

	otherCA, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  vault.Config
		want string
	}{
		{"another SPIFFE ID", vault.Config{Address: v.TLSAddr, CACert: bundle, Cert: certAuth(other)}, "certificate login"},
		{"a certificate from another CA", vault.Config{Address: v.TLSAddr, CACert: bundle, Cert: certAuth(svidFiles(t, otherCA, "spiffe://secretplane.test/secretplane/server", "secretplane.secretplane.test"))}, "certificate login"},
		{"Vault's certificate not trusted", vault.Config{Address: v.TLSAddr, CACert: filepath.Join(svidFiles(t, otherCA, "spiffe://secretplane.test/x"), identity.BundleFile), Cert: certAuth(server)}, "certificate"},
		// Vault answers 500 for this; its own text names the cause.
		{"a certificate without a common name", vault.Config{Address: v.TLSAddr, CACert: bundle, Cert: certAuth(svidFiles(t, ca, "spiffe://secretplane.test/secretplane/server"))}, "missing name in alias"},
		{"plain http off loopback", vault.Config{Address: "http://vault.internal:8200", Cert: certAuth(server)}, "TLS is required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vault.New(ctx, tc.cfg, log)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
