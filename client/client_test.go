package client_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/store"
)

func start(t *testing.T, ttl time.Duration) *server {
	t.Helper()
	s, err := newServer(ttl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

func connect(t *testing.T, s *server, path string, cfg client.Config) *client.Client {
	t.Helper()
	src, err := s.workload(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Address, cfg.ServerID, cfg.Source = s.addr, s.serverID, src
	c, err := client.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func resolveCalls(t *testing.T, s *server) int {
	t.Helper()
	ev, err := s.store.QueryAudit(context.Background(), store.AuditQuery{Action: "SecretsService.Resolve", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(ev)
}

func TestConfigErrors(t *testing.T) {
	s := start(t, time.Minute)
	src, err := s.workload("/payments/api")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  client.Config
		want string
	}{
		{"no address", client.Config{ServerID: s.serverID, Source: src}, "Address"},
		{"no server ID", client.Config{Address: s.addr, Source: src}, "ServerID"},
		{"no identity", client.Config{Address: s.addr, ServerID: s.serverID}, "exactly one identity"},
		{"two identities", client.Config{Address: s.addr, ServerID: s.serverID, Source: src, CertFile: "x"}, "exactly one identity"},
		{"missing SVID files", client.Config{Address: s.addr, ServerID: s.serverID, CertFile: "/nonexistent/svid.pem", KeyFile: "/nonexistent/key.pem", BundleFile: "/nonexistent/bundle.pem"}, "SVID files"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.New(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// Get caches until the server's refresh time, serves the last good value
// while the server is down (until MaxStale), and recovers.
func TestGetCachesAndSurvivesOutages(t *testing.T) {
	s := start(t, 2*time.Second)
	if err := s.register("payments/db", "pw-Zq8vW3xR-1", "/payments/api", "read"); err != nil {
		t.Fatal(err)
	}
	// Identity from SVID files, as spiffe-helper writes them.
	cert, key, bundle, err := s.svidFiles("/payments/api")
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(context.Background(), client.Config{Address: s.addr, ServerID: s.serverID, CertFile: cert, KeyFile: key, BundleFile: bundle, MaxStale: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	sec, err := c.Get(ctx, "payments/db")
	if err != nil || string(sec.Value) != "pw-Zq8vW3xR-1" || sec.Stale || sec.Version == "" {
		t.Fatalf("get: %+v %v", sec, err)
	}
	sec.Value[0] = 'X' // the caller owns its copy
	calls := resolveCalls(t, s)
	for range 50 {
		if again, err := c.Get(ctx, "payments/db"); err != nil || string(again.Value) != "pw-Zq8vW3xR-1" {
			t.Fatalf("cached get: %+v %v", again, err)
		}
	}
	if n := resolveCalls(t, s); n != calls {
		t.Fatalf("%d Resolve calls for cached reads", n-calls)
	}

	s.stop()
	time.Sleep(time.Until(sec.RefreshAt) + 100*time.Millisecond)
	stale, err := c.Get(ctx, "payments/db")
	if err != nil || !stale.Stale || string(stale.Value) != "pw-Zq8vW3xR-1" {
		t.Fatalf("during the outage: %+v %v", stale, err)
	}
	time.Sleep(time.Until(sec.RefreshAt.Add(2*time.Second)) + 100*time.Millisecond)
	if _, err := c.Get(ctx, "payments/db"); status.Code(errors.Unwrap(err)) != codes.Unavailable {
		t.Fatalf("past MaxStale: %v", err)
	}
	if err := s.restart(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := c.Get(ctx, "payments/db")
		if err == nil && !got.Stale && string(got.Value) == "pw-Zq8vW3xR-1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %+v %v", got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Definitive answers are not papered over.
	for _, tc := range []struct {
		name string
		code codes.Code
	}{{"payments/unknown", codes.PermissionDenied}} {
		if _, err := c.Get(ctx, tc.name); status.Code(errors.Unwrap(err)) != tc.code {
			t.Fatalf("get %s: %v, want %v", tc.name, err, tc.code)
		}
	}
}

type hookCalls struct {
	mu    sync.Mutex
	calls [][2]string // old, new value
	fail  error
	seen  chan struct{}
}

func (h *hookCalls) hook(_ context.Context, old, new client.Secret) error {
	h.mu.Lock()
	h.calls = append(h.calls, [2]string{string(old.Value), string(new.Value)})
	fail := h.fail
	h.mu.Unlock()
	h.seen <- struct{}{}
	return fail
}

func (h *hookCalls) count() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.calls) }

func (h *hookCalls) wait(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-h.seen:
		return time.Since(start)
	case <-time.After(d):
		t.Fatalf("rotation hook not called within %v", d)
		return 0
	}
}

// The rotation hook fires exactly once per new version, across reconnects,
// and the server records each acknowledgement.
func TestWatchRotationHook(t *testing.T) {
	const ttl = time.Second
	s := start(t, ttl)
	if err := s.register("payments/db", "v1-Zq8vW3xR", "/payments/api", "read", "watch"); err != nil {
		t.Fatal(err)
	}
	c := connect(t, s, "/payments/api", client.Config{Backoff: client.Backoff{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond}})
	h := &hookCalls{seen: make(chan struct{}, 10)}
	w, err := c.Watch(context.Background(), []string{"payments/db"}, h.hook)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if cur, ok := w.Get("payments/db"); !ok || string(cur.Value) != "v1-Zq8vW3xR" {
		t.Fatalf("initial: %+v", cur)
	}
	if h.count() != 0 {
		t.Fatal("hook called for the initial value")
	}

	if err := s.write("payments/db", "v2-Zq8vW3xR"); err != nil {
		t.Fatal(err)
	}
	took := h.wait(t, 5*time.Second)
	t.Logf("new version reached the hook after %v (TTL %v; refresh at 0.75 x TTL +- 10%%)", took.Round(time.Millisecond), ttl)
	// The watcher makes the new value current once the hook has returned,
	// a moment after the hook signalled.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		cur, _ := w.Get("payments/db")
		if string(cur.Value) == "v2-Zq8vW3xR" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after rotation: %+v", cur)
		}
	}
	if got, _ := c.Get(context.Background(), "payments/db"); string(got.Value) != "v2-Zq8vW3xR" {
		t.Fatalf("Get after rotation: %+v", got)
	}
	time.Sleep(3 * ttl) // several refreshes: no second call
	if h.count() != 1 || h.calls[0] != [2]string{"v1-Zq8vW3xR", "v2-Zq8vW3xR"} {
		t.Fatalf("hook calls: %v", h.calls)
	}

	// The server restarts: the watch reconnects, gets v2 again, and does
	// not call the hook for it; v3 then calls it once more.
	if err := s.restart(ttl); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	h.mu.Lock()
	h.fail = errors.New("reload failed")
	h.mu.Unlock()
	if err := s.write("payments/db", "v3-Zq8vW3xR"); err != nil {
		t.Fatal(err)
	}
	h.wait(t, 10*time.Second)
	time.Sleep(2 * ttl)
	if h.count() != 2 || h.calls[1] != [2]string{"v2-Zq8vW3xR", "v3-Zq8vW3xR"} {
		t.Fatalf("hook calls after restart: %v", h.calls)
	}
	// The failed apply is acknowledged with its error.
	waitWatchRow(t, s, func(row store.Consumer) bool {
		return row.AckError == "reload failed" && row.AckedVersion == row.Version && row.Version != ""
	})

	// A hook error that quotes the old value (which the server no longer
	// holds to compare with) is withheld by the library.
	h.mu.Lock()
	h.fail = errors.New("pool still on v3-Zq8vW3xR")
	h.mu.Unlock()
	if err := s.write("payments/db", "v4-Zq8vW3xR"); err != nil {
		t.Fatal(err)
	}
	h.wait(t, 10*time.Second)
	waitWatchRow(t, s, func(row store.Consumer) bool {
		if strings.Contains(row.AckError, "v3-Zq8vW3xR") {
			t.Fatalf("the old value reached the consumer registry: %q", row.AckError)
		}
		return strings.Contains(row.AckError, "withheld") && row.AckedVersion == row.Version && row.Version != ""
	})
}

// waitWatchRow polls payments/db's watch consumer row until done says so.
func waitWatchRow(t *testing.T, s *server, done func(store.Consumer) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cs, err := s.store.ListConsumers(context.Background(), "payments/db")
		if err != nil {
			t.Fatal(err)
		}
		var row store.Consumer
		for _, c := range cs {
			if c.Channel == consumers.Watch {
				row = c
			}
		}
		if done(row) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer rows: %+v", cs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A watch fails closed at start: a name that is not granted or not
// registered, or an unreachable server, is an error, not an empty value.
func TestWatchFailsClosedAtStart(t *testing.T) {
	s := start(t, time.Minute)
	if err := s.register("payments/db", "v1", "/payments/api", "read"); err != nil { // no watch verb
		t.Fatal(err)
	}
	c := connect(t, s, "/payments/api", client.Config{})
	cases := []struct {
		names []string
		code  codes.Code
	}{
		{[]string{"payments/db"}, codes.PermissionDenied},
		{[]string{"payments/none"}, codes.PermissionDenied},
	}
	for _, tc := range cases {
		_, err := c.Watch(context.Background(), tc.names, nil)
		if status.Code(errors.Unwrap(err)) != tc.code {
			t.Fatalf("watch %v: %v, want %v", tc.names, err, tc.code)
		}
	}
	if _, err := c.Watch(context.Background(), nil, nil); err == nil {
		t.Fatal("watch of nothing")
	}
	s.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Watch(ctx, []string{"payments/db"}, nil); err == nil {
		t.Fatal("watch with the server down succeeded")
	}
	s.restart(time.Minute)
}
