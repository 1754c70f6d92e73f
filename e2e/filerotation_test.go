package e2e_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/secretplane/secretplane/e2e/testenv"
	"github.com/secretplane/secretplane/identity"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// A server identified by SVID files (as spiffe-helper or cert-manager keep
// them) presents the rotated SVID on new connections once the files are
// replaced, without a restart, while an open connection keeps working.
func TestServerFollowsRotatedSVIDFiles(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("secretplane.test")
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverID := spiffeid.RequireFromString("spiffe://secretplane.test/secretplane/server")
	adminID := spiffeid.RequireFromString("spiffe://secretplane.test/ops/admin")
	serverDir, adminDir := t.TempDir(), t.TempDir()
	issue := func(dir string, id spiffeid.ID) string {
		t.Helper()
		svid, err := ca.IssueToDir(dir, id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return svid.Certificates[0].SerialNumber.String()
	}
	first := issue(serverDir, serverID)
	issue(adminDir, adminID)

	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	out := &lockedBuffer{}
	srv := exec.Command(binary, "server", "--listen", addr, "--store", "sqlite:"+filepath.Join(t.TempDir(), "store.db"), "--admin", adminID.String(),
		"--svid-cert", filepath.Join(serverDir, identity.SVIDCertFile), "--svid-key", filepath.Join(serverDir, identity.SVIDKeyFile),
		"--bundle-file", filepath.Join(serverDir, identity.BundleFile), "--log-format", "json")
	srv.Stdout, srv.Stderr = out, out
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })

	admin, err := identity.LoadDir(adminDir)
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(identity.ClientTLSConfig(admin, serverID))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	serverSerial := func(conn *grpc.ClientConn) string {
		t.Helper()
		var p peer.Peer
		if _, err := spv1.NewAdminServiceClient(conn).ListSecrets(ctx, &spv1.ListSecretsRequest{}, grpc.Peer(&p)); err != nil {
			t.Fatalf("call: %v\n%s", err, out.String())
		}
		return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].SerialNumber.String()
	}
	open := func() *grpc.ClientConn {
		t.Helper()
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	longLived := open()
	waitServer(t, ctx, spv1.NewAdminServiceClient(longLived), out)
	if got := serverSerial(longLived); got != first {
		t.Fatalf("server presents %s, want %s", got, first)
	}

	rotated := issue(serverDir, serverID)
	for {
		if got := serverSerial(open()); got == rotated {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("new connections never saw the rotated SVID\n%s", out.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got := serverSerial(longLived); got != first {
		t.Fatalf("the open connection changed server certificate: %s", got)
	}
}
