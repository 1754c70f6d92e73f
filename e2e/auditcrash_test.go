package e2e_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Every call the server answered is audited even when the server is killed
// (SIGKILL, no shutdown) under load: the embedded store's audit journal is
// replayed into the database when the server starts again, and the chain
// verifies.
func TestAuditSurvivesKill(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startDevServer(t, dataDir, "--log-level", "info")
	admin := devAdminClient(t, dataDir)

	var (
		mu    sync.Mutex
		acked []string
		wg    sync.WaitGroup
	)
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("kill-%d-%d", g, i)
				if _, err := admin.ListSecrets(metadata.AppendToOutgoingContext(ctx, "x-request-id", id), &spv1.ListSecretsRequest{}); err == nil {
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-srv.done
	stopLoad()
	wg.Wait()
	if len(acked) < 100 {
		t.Fatalf("only %d calls answered before the kill", len(acked))
	}
	inDB := countAuditRows(t, filepath.Join(dataDir, "secretplane.db"))
	t.Logf("%d calls answered before the kill; %d audit events were in the database, the rest in the journal", len(acked), inDB)

	startDevServer(t, dataDir, "--log-level", "info")
	audited := map[string]bool{}
	q := spv1.NewAuditServiceClient(adminConn(t, dataDir))
	for after := int64(0); ; {
		resp, err := q.Query(context.Background(), &spv1.AuditQueryRequest{AfterSeq: after, Action: "AdminService.ListSecrets", Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEvents() {
			audited[e.GetRequestId()] = true
			after = e.GetSeq()
		}
		if len(resp.GetEvents()) < 1000 {
			break
		}
	}
	missing := 0
	for _, id := range acked {
		if !audited[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d answered calls have no audit event after the restart", missing, len(acked))
	}
	if out := mustCLI(t, dataDir, "audit", "verify"); !strings.Contains(out, "chain intact") {
		t.Fatalf("verify after the replay: %s", out)
	}
}

func countAuditRows(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM audit_events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
