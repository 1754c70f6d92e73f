package inventory_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/inventory"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

// Over a real store, cache and local backend: consumers not on the
// current version are counted (those past the horizon are not), a
// required secret that does not resolve says why, rotations give the
// latest state and last success, and a store that fails keeps the last
// figures with the error.
func TestSnapshot(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	lb, err := local.New(filepath.Join(dir, "local.json"), []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := resolve.New(backend.NewRegistry([]backend.Backend{lb}), resolve.Options{FingerprintKey: []byte("fingerprint-key-for-tests-only!!")})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	deps := consumers.New(st, consumers.Options{})
	v, err := lb.Write(ctx, secretref.MustParse("local://payments/db#password"), []byte("pw-Inventory-1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []store.Secret{
		{Name: "payments/db", Ref: "local://payments/db#password", Owner: "team-payments"},
		{Name: "billing/key", Ref: "local://billing/key#value", Required: true},
	} {
		if _, err := st.PutSecret(ctx, s, store.Precondition{}); err != nil {
			t.Fatal(err)
		}
	}
	deps.Seen("spiffe://t/a", "payments/db", consumers.Resolve, v)     // on the current version
	deps.Seen("spiffe://t/b", "payments/db", consumers.Resolve, "old") // lagging
	deps.Acked("spiffe://t/c", "payments/db", consumers.Watch, v, "")
	deps.Seen("spiffe://t/c", "payments/db", consumers.Watch, v) // acknowledged: not lagging
	if err := deps.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := st.CreateRotation(ctx, store.Rotation{ID: "r1", Secret: "payments/db", Ref: "local://payments/db#password", Method: "random", State: "pending", Actor: "system", Trigger: "manual", Deadline: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	r.State = "completed"
	if _, err := st.UpdateRotation(ctx, r, "pending"); err != nil {
		t.Fatal(err)
	}
	inv := inventory.New(st, catalog.New(st), deps, res, inventory.Options{Horizon: time.Hour})
	snap := inv.Refresh(ctx)
	if snap.Err != nil {
		t.Fatal(snap.Err)
	}
	byName := map[string]inventory.Secret{}
	for _, s := range snap.Secrets {
		byName[s.Name] = s
	}
	db, key := byName["payments/db"], byName["billing/key"]
	if db.Lagging != 1 || db.Rotation == nil || db.Rotation.State != "completed" || db.LastSuccess.IsZero() || db.Owner != "team-payments" {
		t.Fatalf("payments/db = %+v", db)
	}
	if !key.Required || key.Resolvable || key.ResolveError != "not found" {
		t.Fatalf("billing/key = %+v", key)
	}
	if db.Resolvable || db.ResolveError != "" {
		t.Fatalf("resolvability is reported for required secrets only: %+v", db)
	}

	st.Close()
	again := inv.Refresh(ctx)
	if again.Err == nil || len(again.Secrets) != 2 {
		t.Fatalf("after the store closed: err %v, %d secrets (want the last figures kept)", again.Err, len(again.Secrets))
	}
	if got, ok := inv.Snapshot(); !ok || got.Err == nil {
		t.Fatalf("Snapshot = %+v, %v", got, ok)
	}
}

// A backend that accepts connections and never answers (a real AWS SDK
// client pointed at it) delays only its own secrets' figures: the refresh
// ends within the bounds, the store is not reported failing, and each of
// those required secrets says it timed out.
func TestHangingBackendFailsOnlyItsSecrets(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	defer func() {
		lis.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	hang, err := awssm.New(ctx, awssm.Config{Region: "eu-west-1", Endpoint: "http://" + lis.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	res, err := resolve.New(backend.NewRegistry([]backend.Backend{hang}), resolve.Options{FingerprintKey: []byte("fingerprint-key-for-tests-only!!"), FetchTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := 0; i < n; i++ {
		s := store.Secret{Name: fmt.Sprintf("payments/key-%02d", i), Ref: fmt.Sprintf("aws-sm://payments/key-%02d#value", i), Required: true}
		if _, err := st.PutSecret(ctx, s, store.Precondition{}); err != nil {
			t.Fatal(err)
		}
	}
	inv := inventory.New(st, catalog.New(st), consumers.New(st, consumers.Options{}), res,
		inventory.Options{Timeout: time.Second, ResolveTimeout: 300 * time.Millisecond})
	start := time.Now()
	snap := inv.Refresh(ctx)
	took := time.Since(start)
	if snap.Err != nil {
		t.Fatalf("a hanging backend failed the refresh as a store failure: %v", snap.Err)
	}
	// 20 reads, 8 at a time, 300 ms each: about a second, never the 5 s
	// of the backend read itself.
	if took > 3*time.Second {
		t.Fatalf("the refresh took %s", took)
	}
	if len(snap.Secrets) != n {
		t.Fatalf("%d secrets, want %d", len(snap.Secrets), n)
	}
	for _, s := range snap.Secrets {
		if s.Resolvable || s.ResolveError != "timed out" {
			t.Fatalf("%s: resolvable %v, error %q; want timed out", s.Name, s.Resolvable, s.ResolveError)
		}
	}
}
