package watch_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/watch"
	"github.com/secretplane/secretplane/store"
)

// manager is an in-memory secret manager whose values change under the
// test's control (the backends are tested against the real managers).
type manager struct {
	mu     sync.Mutex
	values map[string]string
	fail   error
	reads  atomic.Int64
}

func (m *manager) Read(_ context.Context, ref secretref.Ref) (backend.Value, error) {
	m.reads.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return backend.Value{}, m.fail
	}
	v, ok := m.values[ref.String()]
	if !ok {
		return backend.Value{}, fmt.Errorf("%s: %w", ref, backend.ErrNotFound)
	}
	return backend.Value{Data: []byte(v), Version: v}, nil
}

func (m *manager) set(ref, v string) { m.mu.Lock(); m.values[ref] = v; m.mu.Unlock() }
func (m *manager) setFail(err error) { m.mu.Lock(); m.fail = err; m.mu.Unlock() }

type catalog map[string]string

func (c catalog) LookupRef(_ context.Context, name string) (secretref.Ref, error) {
	ref, ok := c[name]
	if !ok {
		return secretref.Ref{}, fmt.Errorf("secret %s: %w", name, store.ErrNotFound)
	}
	return secretref.Parse(ref)
}

const (
	dbRef  = "vault://secret/payments/db#password"
	apiRef = "vault://secret/payments/api#key"
)

func start(t *testing.T, ttl time.Duration) (*watch.Hub, *manager, *resolve.Resolver) {
	t.Helper()
	m := &manager{values: map[string]string{dbRef: "v1", apiRef: "k1"}}
	bus := events.New()
	r, err := resolve.New(m, resolve.Options{
		TTL: ttl, FingerprintKey: []byte("0123456789abcdef0123456789abcdef"), Events: bus,
	})
	if err != nil {
		t.Fatal(err)
	}
	hub := watch.NewHub(catalog{"payments/db": dbRef, "payments/api": apiRef}, r, watch.Options{RetryInterval: 50 * time.Millisecond, Events: bus})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { hub.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return hub, m, r
}

// next waits for the subscription's next batch of updates. A wake-up with
// nothing to take is allowed (updates signalled separately may all have
// been taken at the first one) and is not a batch.
func next(t *testing.T, s *watch.Subscription, within time.Duration) []watch.Update {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case <-s.C():
			if us := s.Take(); len(us) > 0 {
				return us
			}
		case <-deadline:
			return nil
		}
	}
}

func TestChangesReachSubscribersOnce(t *testing.T) {
	hub, m, _ := start(t, 200*time.Millisecond)
	a, b := hub.Subscribe(), hub.Subscribe()
	defer a.Close()
	defer b.Close()
	a.Add("payments/db", "payments/api")
	b.Add("payments/db")

	got := map[string]string{}
	for len(got) < 2 {
		us := next(t, a, 2*time.Second)
		if us == nil {
			t.Fatalf("initial values: got %v", got)
		}
		for _, u := range us {
			got[u.Name] = string(u.Result.Data)
			a.Sent(u.Name, u.Result.Fingerprint)
		}
	}
	if got["payments/db"] != "v1" || got["payments/api"] != "k1" {
		t.Fatalf("initial values: %v", got)
	}
	us := next(t, b, 2*time.Second)
	if len(us) != 1 || string(us[0].Result.Data) != "v1" {
		t.Fatalf("b initial: %+v", us)
	}
	b.Sent("payments/db", us[0].Result.Fingerprint)

	// Unchanged values are not queued again across several refreshes.
	if us := next(t, a, 600*time.Millisecond); us != nil {
		t.Fatalf("unchanged value queued: %+v", us)
	}

	// A change in the backend reaches both, within the refresh interval
	// (0.75 x TTL +- jitter, plus a poll), once.
	m.set(dbRef, "v2")
	changed := time.Now()
	for _, s := range []*watch.Subscription{a, b} {
		us := next(t, s, 2*time.Second)
		if len(us) != 1 || us[0].Name != "payments/db" || string(us[0].Result.Data) != "v2" || us[0].Result.Version != "v2" {
			t.Fatalf("change: %+v", us)
		}
		s.Sent(us[0].Name, us[0].Result.Fingerprint)
	}
	if d := time.Since(changed); d > 400*time.Millisecond {
		t.Logf("change seen after %v", d) // informative; timing is measured by make bench
	}
	if us := next(t, b, 500*time.Millisecond); us != nil {
		t.Fatalf("change delivered twice: %+v", us)
	}
}

func TestFailuresKeepTheValueAndRecover(t *testing.T) {
	hub, m, _ := start(t, 100*time.Millisecond)
	s := hub.Subscribe()
	defer s.Close()
	s.Add("payments/db")
	us := next(t, s, 2*time.Second)
	if len(us) != 1 {
		t.Fatalf("initial: %+v", us)
	}
	s.Sent("payments/db", us[0].Result.Fingerprint)

	m.setFail(fmt.Errorf("connection refused: %w", backend.ErrUnavailable))
	if us := next(t, s, 500*time.Millisecond); us != nil {
		t.Fatalf("a failing backend produced an update: %+v", us)
	}
	m.set(dbRef, "v2")
	m.setFail(nil)
	us = next(t, s, 2*time.Second)
	if len(us) != 1 || string(us[0].Result.Data) != "v2" {
		t.Fatalf("after recovery: %+v", us)
	}
}

func TestUnwatchedNamesStopBeingPolled(t *testing.T) {
	hub, m, _ := start(t, 100*time.Millisecond)
	s := hub.Subscribe()
	s.Add("payments/db", "payments/unknown")
	// A name that is not registered ends (Gone), as a deleted one does.
	got := map[string]watch.Update{}
	for deadline := time.Now().Add(2 * time.Second); len(got) < 2 && time.Now().Before(deadline); {
		for _, u := range next(t, s, 100*time.Millisecond) {
			got[u.Name] = u
		}
	}
	if len(got) != 2 || string(got["payments/db"].Result.Data) != "v1" || !got["payments/unknown"].Gone {
		t.Fatalf("initial: %+v", got)
	}
	if !s.Watching("payments/db") || s.Watching("payments/api") || s.Watching("payments/unknown") {
		t.Fatal("Watching")
	}
	s.Close()
	deadline := time.Now().Add(2 * time.Second)
	for {
		if n, subs := hub.Watched(); n == 0 && subs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("names still watched after Close")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := m.reads.Load()
	time.Sleep(300 * time.Millisecond)
	if after := m.reads.Load(); after != before {
		t.Fatalf("%d backend reads after every watcher left", after-before)
	}
}

// A subscriber that joins a watched name gets the current value even when
// it changed before it joined (level-triggered), and the join costs no
// backend read when the cached value is fresh.
func TestLateSubscriberConverges(t *testing.T) {
	hub, m, _ := start(t, time.Hour)
	a := hub.Subscribe()
	defer a.Close()
	a.Add("payments/db")
	if us := next(t, a, 2*time.Second); len(us) != 1 {
		t.Fatalf("a: %+v", us)
	}
	reads := m.reads.Load()
	b := hub.Subscribe()
	defer b.Close()
	b.Add("payments/db")
	us := next(t, b, 2*time.Second)
	if len(us) != 1 || string(us[0].Result.Data) != "v1" {
		t.Fatalf("b: %+v", us)
	}
	if m.reads.Load() != reads {
		t.Fatal("a join read the backend while the value was fresh")
	}
}

// A subscriber that never takes its updates delays nobody: every new
// version reaches the others while its own queue holds just the latest.
func TestStuckSubscriberDelaysNobody(t *testing.T) {
	hub, m, r := start(t, time.Hour)
	stuck, live := hub.Subscribe(), hub.Subscribe()
	defer stuck.Close()
	defer live.Close()
	stuck.Add("payments/db")
	live.Add("payments/db")
	if us := next(t, live, 2*time.Second); len(us) != 1 {
		t.Fatalf("initial: %+v", us)
	} else {
		live.Sent("payments/db", us[0].Result.Fingerprint)
	}
	ctx := context.Background()
	for i := 2; i <= 50; i++ {
		v := fmt.Sprintf("v%d", i)
		m.set(dbRef, v)
		if _, err := r.RefreshNow(ctx, secretref.MustParse(dbRef)); err != nil { // a new version seen by the cache
			t.Fatal(err)
		}
		us := next(t, live, 2*time.Second)
		if len(us) != 1 || string(us[0].Result.Data) != v {
			t.Fatalf("version %d: %+v", i, us)
		}
		live.Sent("payments/db", us[0].Result.Fingerprint)
	}
	// The stuck one converges on the latest when it finally reads.
	if us := stuck.Take(); len(us) != 1 || string(us[0].Result.Data) != "v50" {
		t.Fatalf("stuck subscriber's queue: %+v", us)
	}
}
