package e2e_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/envoysim"
	"github.com/secretplane/secretplane/internal/testcert"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// The real binary, identified by a real SPIRE, serves an Envoy (the
// Envoy-faithful client, holding its SVID from the same SPIRE) a
// certificate kept in a real Vault, over SotW, Delta and ADS: the granted
// certificate is served and a rotation in Vault reaches every stream
// within the refresh interval, an ungranted one is refused, an invalid
// certificate written to Vault is never sent, and the trust bundle is
// served as spiffe://secretplane.test and pushed again when SPIRE's
// short-lived CA rotates.
func TestSDSWithSPIREAndVault(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("secretplane.test")
	// A 90s CA: SPIRE prepares the next one, and adds it to the bundle, at 45s.
	spire := testenv.StartSPIRE(t, testenv.SPIREOptions{TrustDomain: td.Name(), CATTL: 90 * time.Second, SVIDTTL: 30 * time.Second})
	dir := t.TempDir()
	serverBin := filepath.Join(dir, "secretplane-server")
	copyFile(t, binary, serverBin)
	serverID := spiffeid.RequireFromPath(td, "/secretplane/server")
	adminID := spiffeid.RequireFromPath(td, "/ops/admin")
	gatewayID := spiffeid.RequireFromPath(td, "/gateway/edge")
	spire.RegisterPath(t, serverID.String(), serverBin, 0)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// This process is both the admin and the Envoy: two entries, and a
	// source for each that picks its SVID by ID.
	spire.RegisterPath(t, adminID.String(), self, 0)
	spire.RegisterPath(t, gatewayID.String(), self, 0)
	socket := "unix://" + spire.AgentSocket
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	source := func(id spiffeid.ID) *workloadapi.X509Source {
		for {
			src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(socket)),
				workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
					for _, s := range svids {
						if s.ID == id {
							return s
						}
					}
					return svids[0]
				}))
			if err == nil {
				if svid, err := src.GetX509SVID(); err == nil && svid.ID == id {
					t.Cleanup(func() { src.Close() })
					return src
				}
				src.Close()
			}
			if ctx.Err() != nil {
				t.Fatalf("SVID %s: %v\nSPIRE logs:\n%s", id, err, spire.Logs())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	adminSrc, gatewaySrc := source(adminID), source(gatewayID)

	// Vault over TLS, holding the gateway's certificate.
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	vaultDir := t.TempDir()
	if _, err := ca.IssueToDir(vaultDir, spiffeid.RequireFromPath(td, "/vault"), time.Hour, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	v := testenv.StartVaultTLS(t, testenv.VaultTLS{CertFile: filepath.Join(vaultDir, identity.SVIDCertFile), KeyFile: filepath.Join(vaultDir, identity.SVIDKeyFile)})
	root := v.RootClient(t)
	putCert := func(value string) {
		t.Helper()
		if _, err := root.KVv2("secret").Put(ctx, "gateway/tls", map[string]any{"pem": value}); err != nil {
			t.Fatal(err)
		}
	}
	putCert(string(pemCert(t, 1)))
	if _, err := root.KVv2("secret").Put(ctx, "billing/tls", map[string]any{"pem": string(pemCert(t, 50))}); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.RootToken), 0o600); err != nil {
		t.Fatal(err)
	}

	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	srvOut := &lockedBuffer{}
	srv := exec.Command(serverBin, "server", "--listen", addr, "--workload-api", socket,
		"--store", "sqlite:"+filepath.Join(dir, "store.db"), "--admin", adminID.String(), "--log-format", "json",
		"--vault-addr", v.TLSAddr, "--vault-ca-cert", filepath.Join(vaultDir, identity.BundleFile), "--vault-token-file", tokenFile,
		"--cache-ttl", "4s", "--sds-bundle-refresh", "1s")
	srv.Stdout, srv.Stderr = srvOut, srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	adminConn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(adminSrc, serverID))))
	if err != nil {
		t.Fatal(err)
	}
	defer adminConn.Close()
	admin := spv1.NewAdminServiceClient(adminConn)
	waitServer(t, ctx, admin, srvOut)
	for _, name := range []string{"gateway/tls", "billing/tls"} {
		if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: "vault://secret/" + name + "#pem", Kind: "tls_certificate"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := spv1.NewPolicyServiceClient(adminConn).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{Name: "gateway", Subject: gatewayID.String(), Verbs: []string{"read"}, Objects: []string{"gateway/*"}}}); err != nil {
		t.Fatal(err)
	}

	gwConn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(gatewaySrc, serverID))))
	if err != nil {
		t.Fatal(err)
	}
	defer gwConn.Close()
	bundleName := "spiffe://" + td.Name()
	clients := map[envoysim.Mode]*envoysim.Client{}
	for _, mode := range envoysim.Modes {
		c := envoysim.New(gwConn, envoysim.Options{Mode: mode, NodeID: "edge-" + mode.String(), Cluster: "edge"})
		defer c.Close()
		c.Subscribe(ctx, "gateway/tls", "billing/tls", bundleName)
		clients[mode] = c
	}
	serial := func(a envoysim.Applied) int64 {
		leaf, err := envoysim.Leaf(a.Secret)
		if err != nil {
			return -1
		}
		return leaf.SerialNumber.Int64()
	}
	firstBundle := map[envoysim.Mode]string{}
	for mode, c := range clients {
		a, err := c.Wait(ctx, "gateway/tls", func(a envoysim.Applied) bool { return serial(a) == 1 })
		if err != nil {
			t.Fatalf("%s: %v\nserver:\n%s", mode, err, srvOut.String())
		}
		_ = a
		b, err := c.Wait(ctx, bundleName, nil)
		if err != nil {
			t.Fatalf("%s bundle: %v", mode, err)
		}
		firstBundle[mode] = string(b.Secret.GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().GetValue())
		if _, ok := c.Get("billing/tls"); ok {
			t.Fatalf("%s: the ungranted certificate was served", mode)
		}
	}
	if err := clients[envoysim.SotW].StreamErr("billing/tls"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("SotW stream of the ungranted name: %v", err)
	}

	// Rotation in Vault: every stream has the new certificate within the
	// refresh interval (3s of a 4s TTL, plus jitter).
	changed := time.Now()
	putCert(string(pemCert(t, 2)))
	for mode, c := range clients {
		if _, err := c.Wait(ctx, "gateway/tls", func(a envoysim.Applied) bool { return serial(a) == 2 }); err != nil {
			t.Fatalf("%s after rotation: %v", mode, err)
		}
	}
	t.Logf("rotation reached all four streams in %v", time.Since(changed).Round(time.Millisecond))
	// An invalid certificate in Vault is never sent.
	putCert("-----BEGIN CERTIFICATE-----\nMIIBroken\n-----END CERTIFICATE-----\n")
	time.Sleep(6 * time.Second)
	for mode, c := range clients {
		if a, _ := c.Get("gateway/tls"); serial(a) != 2 {
			t.Fatalf("%s: after an invalid write the Envoy holds serial %d", mode, serial(a))
		}
		if _, _, nacks := c.Counts(); nacks != 0 {
			t.Fatalf("%s: %d NACKs", mode, nacks)
		}
	}
	if !strings.Contains(srvOut.String(), "secret content failed its check") {
		t.Fatalf("the invalid certificate was not logged:\n%s", srvOut.String())
	}
	// The ACKs, with the node ids, are in the consumer registry.
	resp, err := admin.ListConsumers(ctx, &spv1.ListConsumersRequest{Name: "gateway/tls"})
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]bool{}
	for _, c := range resp.GetConsumers() {
		if c.GetChannel() == "sds" && c.GetIdentity() == gatewayID.String() && c.GetAckedVersion() != "" {
			nodes[c.GetNode()] = true
		}
	}
	if len(nodes) != len(envoysim.Modes) {
		t.Fatalf("SDS ACKs from nodes %v, want one per mode: %v", nodes, resp.GetConsumers())
	}

	// SPIRE's CA rotates: the new bundle reaches every stream.
	for mode, c := range clients {
		if _, err := c.Wait(ctx, bundleName, func(a envoysim.Applied) bool {
			return string(a.Secret.GetValidationContext().GetCustomValidatorConfig().GetTypedConfig().GetValue()) != firstBundle[mode]
		}); err != nil {
			t.Fatalf("%s: the rotated trust bundle was not pushed: %v\nserver:\n%s", mode, err, srvOut.String())
		}
	}
	if out := srvOut.String(); strings.Contains(out, "BEGIN PRIVATE KEY") || strings.Contains(out, "MIIBroken") {
		t.Fatalf("the server log holds certificate material:\n%s", out)
	}
}

// pemCert is a PEM bundle (certificate and key) for the gateway.
func pemCert(t *testing.T, serial int64) []byte {
	return testcert.New(t, testcert.Options{CommonName: "gw.example.org", Serial: serial}).Bundle()
}
