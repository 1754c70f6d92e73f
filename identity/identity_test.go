package identity_test

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/secretplane/secretplane/identity"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestCAIssuesVerifiableSVIDs(t *testing.T) {
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		id      spiffeid.ID
		ttl     time.Duration
		wantErr bool
	}{
		{"workload", spiffeid.RequireFromPath(td, "/workload/payments"), time.Minute, false},
		{"ttl capped at CA expiry", spiffeid.RequireFromPath(td, "/long"), 100 * time.Hour, false},
		{"other trust domain", spiffeid.RequireFromString("spiffe://other.org/x"), time.Minute, true},
		{"zero ttl", spiffeid.RequireFromPath(td, "/x"), 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svid, err := ca.IssueSVID(tc.id, tc.ttl)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			leaf := svid.Certificates[0]
			if leaf.NotAfter.After(ca.Certificate().NotAfter) {
				t.Fatal("SVID outlives its CA")
			}
			if leaf.IsCA || len(leaf.URIs) != 1 || leaf.URIs[0].String() != tc.id.String() {
				t.Fatalf("bad leaf: CA=%v URIs=%v", leaf.IsCA, leaf.URIs)
			}
		})
	}
}

func TestSaveLoadAndFiles(t *testing.T) {
	dir := t.TempDir()
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, "ca", "ca_key.pem"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode: %v %v", st.Mode(), err)
	}
	loaded, err := identity.LoadCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	if loaded.TrustDomain() != td || !loaded.Certificate().Equal(ca.Certificate()) {
		t.Fatal("loaded CA differs")
	}
	svid, err := loaded.IssueSVID(spiffeid.RequireFromPath(td, "/a"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteFiles(filepath.Join(dir, "a"), svid, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	src, err := identity.LoadDir(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if src.ID() != svid.ID {
		t.Fatalf("loaded ID %s", src.ID())
	}
}

func TestBootstrapDevIsIdempotentAndRefusesOtherTrustDomain(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	first, err := identity.BootstrapDev(dir, td, now)
	if err != nil {
		t.Fatal(err)
	}
	second, err := identity.BootstrapDev(dir, td, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if first.Server.ExpiresAt() != second.Server.ExpiresAt() {
		t.Fatal("fresh server SVID was re-issued")
	}
	third, err := identity.BootstrapDev(dir, td, now.Add(identity.DevSVIDTTL*2/3))
	if err != nil {
		t.Fatal(err)
	}
	if third.Server.ExpiresAt() == first.Server.ExpiresAt() {
		t.Fatal("server SVID past half-life was not re-issued")
	}
	if _, err := identity.BootstrapDev(dir, spiffeid.RequireTrustDomainFromString("other.org"), now); err == nil {
		t.Fatal("want error for a CA of another trust domain")
	}
}

// handshake runs a TLS handshake between the two configs over a pipe and
// returns the server's view of the client's ID, or the first error.
func handshake(t *testing.T, server, client *tls.Config) (spiffeid.ID, error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type result struct {
		id  spiffeid.ID
		err error
	}
	res := make(chan result, 1)
	go func() {
		a, err := lis.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer a.Close()
		s := tls.Server(a, server)
		if err := s.Handshake(); err != nil {
			res <- result{err: err}
			return
		}
		id, err := identity.PeerID(s.ConnectionState())
		res <- result{id, err}
	}()
	b, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := tls.Client(b, client)
	cerr := c.Handshake()
	r := <-res
	if cerr != nil && r.err == nil {
		return spiffeid.ID{}, cerr
	}
	return r.id, r.err
}

func TestMutualTLS(t *testing.T) {
	ca, _ := identity.NewCA(td, time.Hour)
	other, _ := identity.NewCA(td, time.Hour)
	foreignTD := spiffeid.RequireTrustDomainFromString("foreign.org")
	foreignCA, _ := identity.NewCA(foreignTD, time.Hour)
	src := func(ca *identity.CA, path string) *identity.StaticSource {
		svid, err := ca.IssueSVID(spiffeid.RequireFromPath(ca.TrustDomain(), path), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return identity.NewStaticSource(svid, ca.Bundle())
	}
	server := src(ca, "/server")
	serverCfg, err := identity.ServerTLSConfig(server, td)
	if err != nil {
		t.Fatal(err)
	}
	if serverCfg.MinVersion != tls.VersionTLS13 {
		t.Fatal("server accepts TLS below 1.3")
	}
	cases := []struct {
		name   string
		client *tls.Config
		want   string // client ID the server sees; "" = refused
	}{
		{"valid client", identity.ClientTLSConfig(src(ca, "/client"), server.ID()), "spiffe://example.org/client"},
		{"client of another CA", identity.ClientTLSConfig(identity.NewStaticSource(mustSVID(t, src(other, "/client")), ca.Bundle()), server.ID()), ""},
		{"client of a foreign trust domain", identity.ClientTLSConfig(identity.NewStaticSource(mustSVID(t, src(foreignCA, "/client")), ca.Bundle()), server.ID()), ""},
		{"client without certificate", func() *tls.Config {
			c := identity.ClientTLSConfig(src(ca, "/client"), server.ID())
			c.GetClientCertificate = nil
			return c
		}(), ""},
		{"client expecting another server ID", identity.ClientTLSConfig(src(ca, "/client"), spiffeid.RequireFromPath(td, "/not-the-server")), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := handshake(t, serverCfg, tc.client)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("handshake succeeded as %s; want refusal", id)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != tc.want {
				t.Fatalf("peer ID %s, want %s", id, tc.want)
			}
		})
	}
}

func mustSVID(t *testing.T, s *identity.StaticSource) *x509svid.SVID {
	t.Helper()
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return svid
}
