package identity_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/identity"
)

// A federated trust domain's workloads are accepted only when the server
// holds that trust domain's bundle and accepts it; expired SVIDs never are.
func TestFederationAndExpiry(t *testing.T) {
	ca, _ := identity.NewCA(td, time.Hour)
	partnerTD := spiffeid.RequireTrustDomainFromString("partner.org")
	partner, _ := identity.NewCA(partnerTD, time.Hour)
	issue := func(ca *identity.CA, path string) *identity.StaticSource {
		svid, err := ca.IssueSVID(spiffeid.RequireFromPath(ca.TrustDomain(), path), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return identity.NewStaticSource(svid, ca.Bundle())
	}
	server := issue(ca, "/server")
	bundleFile := filepath.Join(t.TempDir(), "partner.pem")
	raw, _ := partner.Bundle().Marshal()
	if err := os.WriteFile(bundleFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := server.AddFederatedBundle(partnerTD, bundleFile); err != nil {
		t.Fatal(err)
	}
	if err := server.AddFederatedBundle(td, bundleFile); err == nil {
		t.Fatal("replacing the own trust domain's bundle was accepted")
	}
	partnerClient := func() *identity.StaticSource {
		s := issue(partner, "/billing")
		svid, _ := s.GetX509SVID()
		return identity.NewStaticSource(svid, ca.Bundle()) // trusts our server
	}
	onlyOwn, _ := identity.ServerTLSConfig(server, td)
	both, _ := identity.ServerTLSConfig(server, td, partnerTD)

	past := time.Now().Add(-3 * time.Hour)
	oldCA, _ := identity.NewCA(td, 24*time.Hour, identity.WithClock(func() time.Time { return past }))
	expired := func() *identity.StaticSource {
		svid, err := oldCA.IssueSVID(spiffeid.RequireFromPath(td, "/old"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return identity.NewStaticSource(svid, ca.Bundle())
	}()
	withOld, _ := identity.ServerTLSConfig(identity.NewStaticSource(mustSVID(t, server), oldCA.Bundle()), td)

	for _, tc := range []struct {
		name string
		err  bool
		run  func() (spiffeid.ID, error)
	}{
		{"federated client, trust domain accepted", false, func() (spiffeid.ID, error) {
			return handshake(t, both, identity.ClientTLSConfig(partnerClient(), server.ID()))
		}},
		{"federated client, trust domain not accepted", true, func() (spiffeid.ID, error) {
			return handshake(t, onlyOwn, identity.ClientTLSConfig(partnerClient(), server.ID()))
		}},
		{"expired client SVID", true, func() (spiffeid.ID, error) {
			return handshake(t, withOld, identity.ClientTLSConfig(expired, server.ID()))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.run()
			if (err != nil) != tc.err {
				t.Fatalf("handshake: id %s, err %v; want error=%v", id, err, tc.err)
			}
		})
	}
}
