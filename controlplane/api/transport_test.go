package api_test

import (
	"crypto/tls"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/secretplane/secretplane/identity"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// Every listener is TLS 1.3 with client certificates required: plaintext,
// certificate-less, foreign-CA and TLS 1.2 clients are all refused before
// any handler runs.
func TestTransportRefusesUnauthenticatedClients(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name string
		conn func(t *testing.T) *grpc.ClientConn
	}{
		{"plaintext", func(t *testing.T) *grpc.ClientConn {
			conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			return conn
		}},
		{"TLS without client certificate", func(t *testing.T) *grpc.ClientConn {
			cfg := identity.ClientTLSConfig(e.admin, e.serverID)
			cfg.GetClientCertificate = nil
			return e.dialTLS(t, cfg)
		}},
		{"client certificate from another CA", func(t *testing.T) *grpc.ClientConn {
			// The foreign client trusts our server (so the failure is the
			// server refusing its certificate) but presents its own CA's SVID.
			cfg := identity.ClientTLSConfig(identity.NewStaticSource(mustSVID(t, e.foreign), e.ca.Bundle()), e.serverID)
			return e.dialTLS(t, cfg)
		}},
		{"TLS 1.2 client", func(t *testing.T) *grpc.ClientConn {
			cfg := identity.ClientTLSConfig(e.admin, e.serverID)
			cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return e.dialTLS(t, cfg)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := tc.conn(t)
			_, err := spv1.NewAdminServiceClient(conn).ListSecrets(ctxT(t), &spv1.ListSecretsRequest{})
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("ListSecrets: got %v, want Unavailable (handshake refused)", err)
			}
			_, err = healthpb.NewHealthClient(conn).Check(ctxT(t), &healthpb.HealthCheckRequest{})
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("Health.Check: got %v, want Unavailable", err)
			}
		})
	}
	// Refused certificates and missing ones are audited and logged alike.
	refused, err := e.audit.QueryAudit(ctxT(t), store.AuditQuery{Action: "tls.handshake", Limit: 100})
	if err != nil || len(refused) == 0 {
		t.Fatalf("refused handshakes not audited: %v %v", refused, err)
	}
	outcomes := map[string]string{}
	for _, ev := range refused {
		if ev.Decision != "deny" || !strings.HasPrefix(ev.Actor, "unverified:") {
			t.Fatalf("refused handshake record: %+v", ev)
		}
		outcomes[ev.Outcome] = ev.Actor
	}
	if outcomes["no client certificate"] != "unverified:none" || outcomes["client certificate refused"] == "" {
		t.Fatalf("refused handshakes: %v", outcomes)
	}
	// The log has a line for them, at most one a second.
	if !strings.Contains(e.logs.String(), `"msg":"TLS handshake refused","peer":"unverified:`) {
		t.Fatalf("server log has no refused handshake:\n%s", e.logs.String())
	}
	t.Run("valid admin SVID", func(t *testing.T) {
		if _, err := e.adminClient(t).ListSecrets(ctxT(t), &spv1.ListSecretsRequest{}); err != nil {
			t.Fatalf("ListSecrets: %v", err)
		}
	})
}

func mustSVID(t *testing.T, src *identity.StaticSource) *x509svid.SVID {
	t.Helper()
	s, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s
}
