package e2e_test

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/secretplane/secretplane/e2e/testenv"
)

// probe GETs path on the dev server's metrics listener within a bound.
func probe(t *testing.T, srv *server, path string) (int, string, time.Duration) {
	t.Helper()
	c := &http.Client{Timeout: 15 * time.Second}
	start := time.Now()
	resp, err := c.Get("http://" + srv.metricsAddr(t) + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), time.Since(start)
}

// A store outage, on the real binary over a real PostgreSQL: scrapes keep
// answering at once with the last per-secret figures and store_up 0,
// /readyz answers 503 naming the store, /healthz stays 200 (the process is
// alive: Kubernetes must not restart it for its database), and all is well
// again once PostgreSQL is back.
func TestMetricsDuringStoreOutage(t *testing.T) {
	pg := testenv.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startDevServer(t, dataDir, "--store", dsn, "--metrics-refresh", "200ms")
	if out, errOut, err := cliStdin(t, dataDir, "v4lue-of-the-outage-test", "dev", "local-put", "local://payments/db#password"); err != nil {
		t.Fatalf("local-put: %v %s %s", err, out, errOut)
	}
	mustCLI(t, dataDir, "secret", "put", "payments/db", "--ref", "local://payments/db#password", "--owner", "team-payments", "--required")
	waitFor(t, "the secret in the metrics", func() bool {
		_, body, _ := probe(t, srv, "/metrics")
		return strings.Contains(body, `secretplane_required_secret_resolvable{secret="payments/db"} 1`) && strings.Contains(body, "secretplane_store_up 1")
	})
	if code, body, _ := probe(t, srv, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the outage = %d %s", code, body)
	}

	pg.Stop(t)
	waitFor(t, "store_up 0", func() bool {
		code, body, took := probe(t, srv, "/metrics")
		if code != http.StatusOK || took > 5*time.Second {
			t.Fatalf("scrape during the outage: %d after %s", code, took)
		}
		return strings.Contains(body, "secretplane_store_up 0") && strings.Contains(body, `secretplane_required_secret_resolvable{secret="payments/db"} 1`)
	})
	code, body, took := probe(t, srv, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "store: not reachable") || took > 5*time.Second {
		t.Fatalf("/readyz during the outage = %d after %s: %s", code, took, body)
	}
	if code, _, _ := probe(t, srv, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz during the outage = %d, want 200", code)
	}

	pg.Start(t)
	waitFor(t, "ready again", func() bool {
		code, _, _ := probe(t, srv, "/readyz")
		_, body, _ := probe(t, srv, "/metrics")
		return code == http.StatusOK && strings.Contains(body, "secretplane_store_up 1")
	})
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
