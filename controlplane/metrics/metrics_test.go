package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/inventory"
	"github.com/secretplane/secretplane/controlplane/metrics"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/store"
)

// Backend requests are counted and timed by backend and operation; a
// backend is down when it could not be reached, up again when it answers,
// and a not-found or denied answer is an answer.
func TestBackendRequests(t *testing.T) {
	m := metrics.New("test")
	m.BackendsConfigured([]string{"vault", "aws-sm"})
	unreachable := fmt.Errorf("vault: dial: %w", backend.ErrUnavailable)
	steps := []struct {
		err    error
		wantUp float64
	}{
		{nil, 1},
		{unreachable, 0},
		{fmt.Errorf("secret/x: %w", backend.ErrNotFound), 1},
		{unreachable, 0},
		{context.Canceled, 0}, // says nothing of the backend
		{fmt.Errorf("denied: %w", backend.ErrPermissionDenied), 1},
	}
	for i, s := range steps {
		m.BackendRequest("vault", "read", 3*time.Millisecond, s.err)
		if got := testutil.ToFloat64(gauge(t, m, "secretplane_backend_up", "vault")); got != s.wantUp {
			t.Fatalf("step %d (%v): backend_up = %v, want %v", i, s.err, got, s.wantUp)
		}
	}
	out := gather(t, m)
	for _, want := range []string{
		`secretplane_backend_requests_total{backend="vault",operation="read"} 6`,
		`secretplane_backend_request_errors_total{backend="vault",operation="read"} 5`,
		`secretplane_backend_request_duration_seconds_count{backend="vault",operation="read"} 6`,
		`secretplane_backend_up{backend="aws-sm"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// Per-secret figures come from the inventory's snapshot: timestamps in
// seconds, one state series for the latest rotation, required secrets
// only in the resolvable gauge; nothing before the first snapshot, and
// store_up 0 when the last refresh failed.
func TestSnapshotFigures(t *testing.T) {
	m := metrics.New("test")
	expires := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	started := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	var snap inventory.Snapshot
	have := false
	m.Read(metrics.Sources{
		Inventory: func() (inventory.Snapshot, bool) { return snap, have },
		Cache: func() resolve.Stats {
			return resolve.Stats{Entries: 2, Bytes: 64, Hits: 10, Misses: 3, StaleServes: 1}
		},
		Audit: func() audit.Stats {
			return audit.Stats{Queued: 4, Behind: 7, Oldest: time.Now().Add(-90 * time.Second)}
		},
	})
	if out := gather(t, m); strings.Contains(out, "secretplane_store_up") || strings.Contains(out, "secret_expiration") {
		t.Fatalf("figures before the first snapshot:\n%s", out)
	}
	snap = inventory.Snapshot{At: started, Secrets: []inventory.Secret{
		{Name: "payments/gw", ExpiresAt: expires, RenewAt: expires.Add(-240 * time.Hour),
			Rotation: &store.Rotation{State: "failed", CreateTime: started}, Lagging: 2},
		{Name: "billing/key", Required: true, ResolveError: "not found"},
		{Name: "plain"},
	}}
	have = true
	out := gather(t, m)
	for _, want := range []string{
		fmt.Sprintf(`secretplane_secret_expiration_timestamp_seconds{secret="payments/gw"} %g`, float64(expires.Unix())),
		`secretplane_rotation_state{secret="payments/gw",state="failed"} 1`,
		`secretplane_consumers_lagging{secret="payments/gw"} 2`,
		`secretplane_required_secret_resolvable{secret="billing/key"} 0`,
		`secretplane_store_up 1`,
		`secretplane_cache_hits_total 10`,
		`secretplane_audit_queue_depth 4`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, absent := range []string{`secretplane_required_secret_resolvable{secret="plain"}`, `secretplane_secret_expiration_timestamp_seconds{secret="plain"}`, `state="completed"`} {
		if strings.Contains(out, absent) {
			t.Errorf("metrics have %s", absent)
		}
	}
	if !strings.Contains(out, "secretplane_audit_journal_lag_seconds 89.9") && !strings.Contains(out, "secretplane_audit_journal_lag_seconds 90") { // about 90 s
		t.Errorf("journal lag not about 90s:\n%s", grep(out, "journal_lag"))
	}
	snap.Err = errors.New("store down")
	if out := gather(t, m); !strings.Contains(out, "secretplane_store_up 0") || !strings.Contains(out, `secret="payments/gw"`) {
		t.Errorf("a failed refresh should keep the figures and set store_up 0:\n%s", grep(out, "store_up"))
	}
}

// Rotation outcomes from the bus: failures counted per secret, durations
// of completed ones by method; steps within a state are not transitions.
func TestFollowCountsRotations(t *testing.T) {
	m := metrics.New("test")
	bus := events.New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Follow(ctx, bus); close(done) }()
	defer func() { cancel(); <-done }()
	started := time.Now().Add(-2 * time.Second)
	waitSubscribed(t, bus)
	bus.Publish(events.RotationStep{Secret: "a", State: "failed", Step: "failed"})
	bus.Publish(events.RotationStep{Secret: "a", State: "failed", Step: "failed"})
	bus.Publish(events.RotationStep{Secret: "b", State: "verifying", Step: "create_version"})
	bus.Publish(events.RotationStep{Secret: "b", State: "completed", Step: "completed", Method: "random", Started: started})
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := gather(t, m)
		if strings.Contains(out, `secretplane_rotation_failures_total{secret="a"} 2`) && strings.Contains(out, `secretplane_rotation_duration_seconds_count{method="random"} 1`) {
			if strings.Contains(out, `secret="b"} `) && strings.Contains(out, "rotation_failures_total{secret=\"b\"}") {
				t.Fatalf("a completed rotation counted as failed")
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation metrics not updated:\n%s", grep(out, "rotation_"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitSubscribed(t *testing.T, bus *events.Bus) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if _, ok := bus.Drops()["metrics"]; ok {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("Follow never subscribed")
}

// gather is the registry's text exposition, as a scrape sees it.
func gather(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// gauge is the backend_up gauge of a backend, through a scrape.
func gauge(t *testing.T, m *metrics.Metrics, name, backendName string) prometheus.Collector {
	t.Helper()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
	for _, line := range strings.Split(gather(t, m), "\n") {
		if strings.HasPrefix(line, name+`{backend="`+backendName+`"} `) {
			v, err := strconv.ParseFloat(strings.Fields(line)[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			g.Set(v)
			return g
		}
	}
	t.Fatalf("no %s for %s", name, backendName)
	return nil
}

func grep(out, substr string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, substr) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
