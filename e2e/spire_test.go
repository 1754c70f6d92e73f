package e2e_test

import (
	"context"
	"fmt"
	"io"
	"os"
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

// With SPIRE as the identity source, the server takes its SVID from the
// agent and the client (this test process) takes its own; with a short SVID
// lifetime both rotate during the test, and calls keep succeeding on new and
// on long-lived connections.
func TestSPIREIdentitiesRotateWithoutErrors(t *testing.T) {
	const svidTTL = 20 * time.Second
	spire := testenv.StartSPIRE(t, testenv.SPIREOptions{TrustDomain: "secretplane.test"})
	dir := t.TempDir()

	// The unix attestor tells workloads apart by binary path: the server
	// runs from its own copy, this test from the test binary.
	serverBin := filepath.Join(dir, "secretplane-server")
	copyFile(t, binary, serverBin)
	serverID := spiffeid.RequireFromString("spiffe://secretplane.test/secretplane/server")
	adminID := spiffeid.RequireFromString("spiffe://secretplane.test/ops/admin")
	spire.RegisterPath(t, serverID.String(), serverBin, svidTTL)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spire.RegisterPath(t, adminID.String(), self, svidTTL)

	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	srvOut := &lockedBuffer{}
	srv := exec.Command(serverBin, "server", "--listen", addr, "--workload-api", "unix://"+spire.AgentSocket,
		"--store", "sqlite:"+filepath.Join(dir, "store.db"), "--admin", adminID.String(), "--log-format", "json")
	srv.Stdout, srv.Stderr = srvOut, srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The registration reaches the agent asynchronously: retry until the
	// Workload API has an SVID for us.
	var src *identity.WorkloadSource
	for src == nil {
		src, err = identity.NewWorkloadSource(ctx, "unix://"+spire.AgentSocket, 5*time.Second, discardLogger())
		if err != nil && ctx.Err() != nil {
			t.Fatalf("client SVID: %v\nSPIRE logs:\n%s", err, spire.Logs())
		}
	}
	defer src.Close()
	if src.ID() != adminID {
		t.Fatalf("client SVID %s, want %s", src.ID(), adminID)
	}
	creds := credentials.NewTLS(identity.ClientTLSConfig(src, serverID))
	longLived, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer longLived.Close()

	waitServer(t, ctx, spv1.NewAdminServiceClient(longLived), srvOut)
	clientSerials, serverSerials := map[string]bool{}, map[string]bool{}
	deadline := time.Now().Add(2*svidTTL + 5*time.Second)
	calls := 0
	for time.Now().Before(deadline) || len(clientSerials) < 2 || len(serverSerials) < 2 {
		if ctx.Err() != nil {
			t.Fatalf("SVIDs did not rotate: %d client and %d server serials seen\nserver:\n%s", len(clientSerials), len(serverSerials), srvOut.String())
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		clientSerials[svid.Certificates[0].SerialNumber.String()] = true

		// A fresh connection sees the server's current SVID.
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		var p peer.Peer
		name := fmt.Sprintf("rotation/s-%d", calls)
		_, err = spv1.NewAdminServiceClient(conn).PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: "vault://secret/" + name + "#v"}}, grpc.Peer(&p))
		conn.Close()
		if err != nil {
			t.Fatalf("call %d on a new connection: %v\nserver:\n%s", calls, err, srvOut.String())
		}
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			serverSerials[info.State.PeerCertificates[0].SerialNumber.String()] = true
		}
		// The long-lived connection keeps working across rotations.
		if _, err := spv1.NewAdminServiceClient(longLived).GetSecret(ctx, &spv1.GetSecretRequest{Name: name}); err != nil {
			t.Fatalf("call %d on the long-lived connection: %v", calls, err)
		}
		calls++
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("%d calls; %d client SVIDs and %d server SVIDs seen", calls, len(clientSerials), len(serverSerials))
}

func waitServer(t *testing.T, ctx context.Context, c spv1.AdminServiceClient, out *lockedBuffer) {
	t.Helper()
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.ListSecrets(cctx, &spv1.ListSecretsRequest{})
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("server not ready: %v\n%s", err, out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
