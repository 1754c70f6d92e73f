package e2e_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/envoysim"
)

// A gateway certificate issued by Vault PKI (pki/issue/<role>) and kept in
// Vault KV is re-issued by the real binary's schedule at its renewal point
// (2/3 of its lifetime by default) and the Envoy-faithful client receives
// the new certificate over SDS, ACKs it, and the rotation completes with
// trigger expiry, started by system; the new certificate is Vault's, with
// the lifetime the policy asks.
func TestVaultPKICertificateReissuedAtRenewal(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := root.Sys().MountWithContext(ctx, "pki", &api.MountInput{Type: "pki", Config: api.MountConfigInput{MaxLeaseTTL: "87600h"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "pki/root/generate/internal", map[string]any{"common_name": "secretplane test root", "ttl": "8760h"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "pki/roles/gateway", map[string]any{
		"allowed_domains": "secretplane.test", "allow_subdomains": true, "max_ttl": "72h", "key_type": "ec", "key_bits": 256}); err != nil {
		t.Fatal(err)
	}
	// The first certificate: short-lived, so its renewal point (2/3 of 24s,
	// less up to 5% jitter) comes within the test.
	first, err := root.Logical().WriteWithContext(ctx, "pki/issue/gateway", map[string]any{"common_name": "gw.secretplane.test", "ttl": "24s"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.KVv2("secret").Put(ctx, "gateway/tls", map[string]any{
		"certificate": first.Data["certificate"], "private_key": first.Data["private_key"]}); err != nil {
		t.Fatal(err)
	}
	firstSerial, _ := first.Data["serial_number"].(string)

	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	startDevServer(t, dataDir, "--vault-addr", v.Addr, "--vault-token-file", tokenFile, "--cache-ttl", "1h", "--rotation-check-interval", "1s")
	mustCLI(t, dataDir, "secret", "put", "gateway/tls", "--ref", "vault://secret/gateway/tls", "--kind", "tls_certificate")
	if _, errOut, err := cliStdin(t, dataDir, "policies:\n  - name: gateways\n    subject: spiffe://secretplane.test/workload/*\n    verbs: [read]\n    objects: [\"gateway/*\"]\n", "policy", "apply", "-f", "-"); err != nil {
		t.Fatalf("policy: %v %s", err, errOut)
	}
	svid := filepath.Join(t.TempDir(), "svid")
	mustCLI(t, dataDir, "dev", "issue", "edge-gateway", "--out", svid)
	ep := readDevEndpoint(t, dataDir)
	src, err := identity.LoadFiles(filepath.Join(svid, "svid.pem"), filepath.Join(svid, "svid_key.pem"), filepath.Join(svid, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(ep.Address, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, spiffeid.RequireFromString(ep.ServerID)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	envoy := envoysim.New(conn, envoysim.Options{Mode: envoysim.Delta, NodeID: "edge-1"})
	defer envoy.Close()
	envoy.Subscribe(ctx, "gateway/tls")
	before, err := envoy.Wait(ctx, "gateway/tls", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := serialOf(t, before); got != firstSerial {
		t.Fatalf("the Envoy got serial %s, Vault issued %s", got, firstSerial)
	}
	mustCLI(t, dataDir, "rotate", "policy", "set", "gateway/tls", "--method", "certificate",
		"--param", "issuer=vault", "--param", "path=pki/issue/gateway", "--param", "common_name=gw.secretplane.test", "--param", "ttl=48h")

	after, err := envoy.Wait(ctx, "gateway/tls", func(a envoysim.Applied) bool { return a.Version != before.Version })
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafOfApplied(t, after)
	if serial := serialOf(t, after); serial == firstSerial || leaf.Subject.CommonName != "gw.secretplane.test" || leaf.NotAfter.Sub(leaf.NotBefore) < 47*time.Hour {
		t.Fatalf("re-issued: serial %s (first %s), CN %s, valid %s", serial, firstSerial, leaf.Subject.CommonName, leaf.NotAfter.Sub(leaf.NotBefore))
	}
	if leaf.Issuer.CommonName != "secretplane test root" {
		t.Fatalf("issued by %s, not Vault's root", leaf.Issuer.CommonName)
	}
	var r struct{ ID, State, Trigger, Actor, Method, Detail string }
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := json.Unmarshal([]byte(mustCLI(t, dataDir, "rotate", "status", "gateway/tls", "-o", "json")), &r); err != nil {
			t.Fatal(err)
		}
		if r.State == "completed" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.State != "completed" || r.Trigger != "expiry" || r.Actor != "system" || r.Method != "certificate" || !strings.Contains(r.Detail, "acknowledged") {
		t.Fatalf("rotation: %+v", r)
	}
	if _, _, nacks := envoy.Counts(); nacks != 0 {
		t.Fatalf("the Envoy NACKed %d times", nacks)
	}
	// Vault KV holds the re-issued certificate as its newest version, the
	// first one kept for rollback.
	md, err := root.KVv2("secret").GetMetadata(ctx, "gateway/tls")
	if err != nil || md.CurrentVersion != 2 {
		t.Fatalf("Vault KV versions: %v %v", md, err)
	}
	audit := mustCLI(t, dataDir, "audit", "tail", "-n", "200")
	if !strings.Contains(audit, "rotation.start") || !strings.Contains(audit, "system") {
		t.Fatalf("the audit lacks the scheduled start:\n%s", audit)
	}
}

func leafOfApplied(t *testing.T, a envoysim.Applied) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(a.Secret.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if block == nil {
		t.Fatal("no certificate in the SDS secret")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serialOf is the leaf's serial as Vault writes it: hex bytes joined by ":".
func serialOf(t *testing.T, a envoysim.Applied) string {
	b := leafOfApplied(t, a).SerialNumber.Bytes()
	parts := make([]string, len(b))
	for i, x := range b {
		parts[i] = fmt.Sprintf("%02x", x)
	}
	return strings.Join(parts, ":")
}
