package notify_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/inventory"
	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/store/sqlite"
)

// Expiry alerts: one per secret, expiry and lead time, whatever the
// number of refreshes, and only for the tightest lead crossed; each goes
// to the webhook of its owner's route, or the default route, or none.
func TestExpiryAlertsOncePerLeadTime(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var mu sync.Mutex
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	n := notify.New(st, nil, notify.Options{
		Webhooks: []notify.Webhook{{Name: "payments", URL: "https://127.0.0.1:1/p"}, {Name: "platform", URL: "https://127.0.0.1:1/o"}},
		Now:      clock,
		Alerts: notify.Alerts{LeadTimes: []time.Duration{30 * 24 * time.Hour, 7 * 24 * time.Hour, 24 * time.Hour},
			Routes: map[string]string{"team-payments": "payments"}, DefaultRoute: "platform"},
	})
	expires := now.Add(40 * 24 * time.Hour)
	secrets := []inventory.Secret{
		{Name: "payments/gw", Owner: "team-payments", ExpiresAt: expires},
		{Name: "shared/gw", Owner: "team-nobody-routes", ExpiresAt: expires},
		{Name: "no-expiry"},
	}
	steps := []struct {
		at   time.Duration // since the start
		want map[string]int
	}{
		{0, map[string]int{}}, // 40 days left: no lead crossed
		{11 * 24 * time.Hour, map[string]int{"payments": 1, "platform": 1}},           // 29 days: the 30-day lead
		{12 * 24 * time.Hour, map[string]int{"payments": 1, "platform": 1}},           // again: nothing new
		{33*24*time.Hour + time.Hour, map[string]int{"payments": 2, "platform": 2}},   // under 7 days
		{39*24*time.Hour + time.Hour, map[string]int{"payments": 3, "platform": 3}},   // under a day
		{39*24*time.Hour + 2*time.Hour, map[string]int{"payments": 3, "platform": 3}}, // again: nothing new
		{41 * 24 * time.Hour, map[string]int{"payments": 3, "platform": 3}},           // expired: the 1-day lead was told
	}
	start := now
	for _, s := range steps {
		mu.Lock()
		now = start.Add(s.at)
		mu.Unlock()
		n.Expiring(ctx, secrets)
		for hook, want := range s.want {
			ds, err := st.ListDeliveries(ctx, hook, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(ds) != want {
				t.Fatalf("at +%s: %d deliveries to %s, want %d", s.at, len(ds), hook, want)
			}
			for _, d := range ds {
				if d.EventType != notify.AlertSecretExpiring {
					t.Fatalf("delivery type %s", d.EventType)
				}
			}
		}
	}
	// A server started a day before expiry tells the 1-day lead only.
	mu.Lock()
	now = start
	mu.Unlock()
	late := []inventory.Secret{{Name: "payments/late", Owner: "team-payments", ExpiresAt: start.Add(12 * time.Hour)}}
	before, _ := st.ListDeliveries(ctx, "payments", 100)
	n.Expiring(ctx, late)
	after, _ := st.ListDeliveries(ctx, "payments", 100)
	if len(after) != len(before)+1 {
		t.Fatalf("%d new deliveries for a secret 12h from expiry, want 1", len(after)-len(before))
	}
}
