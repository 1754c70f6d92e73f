package rotation_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/envoysim"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

const td = "test.example"

type fixture struct {
	t     *testing.T
	dir   string
	ca    *identity.CA
	id    spiffeid.ID
	local *local.Backend
	cfg   server.Config
	srv   *server.Server
	stop  func()
}

func newFixture(t *testing.T, tune func(*server.Config)) *fixture {
	t.Helper()
	trust := spiffeid.RequireTrustDomainFromString(td)
	ca, err := identity.NewCA(trust, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, dir: t.TempDir(), ca: ca, id: spiffeid.RequireFromPath(trust, "/secretplane/server")}
	svid, err := ca.IssueSVID(f.id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if f.local, err = local.New(filepath.Join(f.dir, "local.json"), []byte("0123456789abcdef0123456789abcdef")); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(f.dir, "fp.key")
	if err := local.EnsureKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	cfg := server.Defaults()
	cfg.Store = "sqlite:" + filepath.Join(f.dir, "store.db")
	cfg.Admins = []string{"spiffe://" + td + "/ops/admin"}
	cfg.Identity.Source = identity.NewStaticSource(svid, ca.Bundle())
	cfg.Backends.Extra = []backend.Backend{f.local}
	cfg.Cache.FingerprintKeyFile = keyFile
	cfg.Rotation.Deadline = 3 * time.Second
	cfg.Log.Out, cfg.Log.Level = os.Stderr, "error"
	if tune != nil {
		tune(&cfg)
	}
	f.cfg = cfg
	f.start()
	return f
}

// start runs a server on the fixture's store (again, after stopServer).
func (f *fixture) start() {
	f.t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.t.Fatal(err)
	}
	cfg := f.cfg
	cfg.Listener = lis
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	f.srv = srv
	stopped := false
	f.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				f.t.Error(err)
			}
		}
	}
	f.t.Cleanup(f.stop)
}

func (f *fixture) source(path string) identity.Source {
	svid, err := f.ca.IssueSVID(spiffeid.RequireFromString("spiffe://"+td+path), time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	return identity.NewStaticSource(svid, f.ca.Bundle())
}

func (f *fixture) dial(path string) *grpc.ClientConn {
	conn, err := grpc.NewClient(f.srv.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(f.source(path), f.id))))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { conn.Close() })
	return conn
}

func (f *fixture) seed(name, value string) {
	f.t.Helper()
	ctx := context.Background()
	ref := "local://" + name + "#v"
	if _, err := f.local.Write(ctx, secretref.MustParse(ref), []byte(value)); err != nil {
		f.t.Fatal(err)
	}
	admin := spv1.NewAdminServiceClient(f.dial("/ops/admin"))
	if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: ref}}); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.srv.Store().PutPolicy(ctx, store.Policy{Name: "apps", Subject: "spiffe://" + td + "/app/*", Verbs: []string{"read", "watch"}, Objects: []string{"payments/*"}}, store.Precondition{}); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		f.t.Fatal(err)
	}
	if err := f.srv.Policy().Load(ctx); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) watcher(ctx context.Context, path, name string, applied *atomic.Int64) (*client.Client, *client.Watcher) {
	f.t.Helper()
	c, err := client.New(ctx, client.Config{Address: f.srv.Addr(), ServerID: f.id, Source: f.source(path)})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	w, err := c.Watch(ctx, []string{name}, func(context.Context, client.Secret, client.Secret) error {
		applied.Add(1)
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(w.Close)
	return c, w
}

func wait(t *testing.T, m *rotation.Manager, id string, final ...string) store.Rotation {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := m.Get(context.Background(), id)
		if err == nil && (len(final) == 0 && (r.State == rotation.Completed || r.State == rotation.Failed || r.State == rotation.RolledBack) || len(final) > 0 && r.State == final[0]) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation %s: %+v %v", id, r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A rotation completes only once every consumer (two Watch clients through
// the client library, an Envoy over SDS) has acknowledged the new version;
// each consumer applied it once, and a second start while it runs is
// refused naming it.
func TestRotationCompletesWhenEveryConsumerAcked(t *testing.T) {
	f := newFixture(t, nil)
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	var applied1, applied2 atomic.Int64
	_, w1 := f.watcher(ctx, "/app/one", "payments/db", &applied1)
	_, w2 := f.watcher(ctx, "/app/two", "payments/db", &applied2)
	env := envoysim.New(f.dial("/app/gateway"), envoysim.Options{Mode: envoysim.SotW, NodeID: "gw-1"})
	defer env.Close()
	env.Subscribe(ctx, "payments/db")
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	first, err := env.Wait(wctx, "payments/db", nil)
	if err != nil {
		t.Fatal(err)
	}
	m := f.srv.Rotations()
	r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Actor: "spiffe://" + td + "/ops/admin"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db"}); !errors.Is(err, rotation.ErrRunning) || !strings.Contains(err.Error(), r.ID) {
		t.Fatalf("second start: %v", err)
	}
	done := wait(t, m, r.ID)
	if done.State != rotation.Completed || done.ToVersion == "" || done.ToVersion == done.FromVersion {
		t.Fatalf("rotation: %+v", done)
	}
	got1, _ := w1.Get("payments/db")
	got2, _ := w2.Get("payments/db")
	now, _ := env.Get("payments/db")
	if got1.Version != done.ToVersion || got2.Version != done.ToVersion || now.Version == first.Version {
		t.Fatalf("consumers after completion: %s %s, envoy %s (was %s)", got1.Version, got2.Version, now.Version, first.Version)
	}
	if applied1.Load() != 1 || applied2.Load() != 1 {
		t.Fatalf("hooks ran %d and %d times", applied1.Load(), applied2.Load())
	}
	// The previous version is still in the backend, for rollback.
	old, err := f.local.Read(ctx, secretref.MustParse("local://payments/db?version="+done.FromVersion+"#v"))
	if err != nil || string(old.Data) != "initial-value" {
		t.Fatalf("previous version: %q %v", old.Data, err)
	}
	// Every step is audited (the last one just after it is recorded in
	// the store, which is what wait saw).
	want := "rotation.start rotation.create_version rotation.propagating rotation.verifying rotation.completed"
	for deadline := time.Now().Add(5 * time.Second); ; {
		evs, err := f.srv.Audit().QueryAudit(ctx, store.AuditQuery{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		var steps []string
		for _, e := range evs {
			if strings.HasPrefix(e.Action, "rotation.") && strings.Contains(e.Target, r.ID) {
				steps = append(steps, e.Action)
			}
		}
		if strings.Join(steps, " ") == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audited steps %v, want %s", steps, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A consumer that never acknowledges makes the rotation fail at the
// deadline, naming it; with auto-rollback every consumer is back on the
// previous value (written back as the newest version, as Vault's kv
// rollback does).
func TestRotationFailsAtTheDeadlineAndRollsBack(t *testing.T) {
	f := newFixture(t, func(c *server.Config) { c.Rotation.AutoRollback = true })
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	var applied atomic.Int64
	_, w := f.watcher(ctx, "/app/one", "payments/db", &applied)
	stuck := envoysim.New(f.dial("/app/stuck"), envoysim.Options{Mode: envoysim.SotW, NodeID: "stuck-1", Reject: nil})
	defer stuck.Close()
	stuck.Subscribe(ctx, "payments/db")
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	before, err := stuck.Wait(wctx, "payments/db", nil)
	if err != nil {
		t.Fatal(err)
	}
	start, _ := w.Get("payments/db")
	stuck.Close() // seen, never acknowledges what follows
	r, err := f.srv.Rotations().Start(ctx, rotation.StartRequest{Secret: "payments/db"})
	if err != nil {
		t.Fatal(err)
	}
	done := wait(t, f.srv.Rotations(), r.ID, rotation.RolledBack)
	if done.State != rotation.RolledBack || !strings.Contains(done.Detail, "spiffe://"+td+"/app/stuck (sds, node stuck-1)") {
		t.Fatalf("rotation: %+v", done)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// It applied the new value, then the previous one again (whose
		// version it reports may be the one it first had: same content).
		if got, _ := w.Get("payments/db"); applied.Load() >= 2 && string(got.Value) == "initial-value" {
			break
		}
		if time.Now().After(deadline) {
			got, _ := w.Get("payments/db")
			t.Fatalf("after rollback the watcher holds version %s %q (started at %s), not the previous value; rotation %+v", got.Version, got.Value, start.Version, done)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = before
}

// A server stopped in the middle of a rotation resumes it at start and
// completes it with exactly one new backend version.
func TestRotationResumesAfterRestart(t *testing.T) {
	f := newFixture(t, nil)
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	cur, err := f.local.Read(ctx, secretref.MustParse("local://payments/db#v"))
	if err != nil {
		t.Fatal(err)
	}
	// As a crash in pending would leave it, after the write but before it
	// was recorded: the new version exists, the record does not name it.
	if _, err := f.srv.Store().CreateRotation(ctx, store.Rotation{ID: "rot-resume", Secret: "payments/db", Ref: "local://payments/db#v", Method: "random", State: rotation.Pending, FromVersion: cur.Version}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.local.Write(ctx, secretref.MustParse("local://payments/db#v"), []byte("written-before-the-crash")); err != nil {
		t.Fatal(err)
	}
	f.stop()
	f.start()
	done := wait(t, f.srv.Rotations(), "rot-resume")
	if done.State != rotation.Completed {
		t.Fatalf("resumed rotation: %+v", done)
	}
	latest, err := f.local.Read(ctx, secretref.MustParse("local://payments/db#v"))
	if err != nil || string(latest.Data) != "written-before-the-crash" || latest.Version != done.ToVersion {
		t.Fatalf("a second version was written: latest %s %q, rotation to %s", latest.Version, latest.Data, done.ToVersion)
	}
}

// Under a steady Resolve and Watch load through the client library, a
// rotation makes no request fail at any consumer.
func TestRotationUnderLoadFailsNoRequest(t *testing.T) {
	f := newFixture(t, nil)
	f.seed("payments/db", "initial-value")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var applied atomic.Int64
	readers := make([]*client.Client, 4)
	for i := range readers {
		readers[i], _ = f.watcher(ctx, "/app/reader", "payments/db", &applied)
	}
	resolvers := make([]spv1.SecretsServiceClient, len(readers))
	for i := range resolvers {
		resolvers[i] = spv1.NewSecretsServiceClient(f.dial("/app/reader"))
	}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	done := make(chan struct{})
	for i := range readers {
		go func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				// Get reads through the library's cache; Resolve goes to
				// the server every time.
				var err error
				if i%2 == 0 {
					_, err = readers[i].Get(ctx, "payments/db")
				} else {
					_, err = resolvers[i].Resolve(ctx, &spv1.ResolveRequest{Names: []string{"payments/db"}})
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	m := f.srv.Rotations()
	for i := 0; i < 3; i++ {
		r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db"})
		if err != nil {
			t.Fatal(err)
		}
		if got := wait(t, m, r.ID); got.State != rotation.Completed {
			t.Fatalf("rotation %d: %+v", i, got)
		}
	}
	close(done)
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("%d requests failed (first: %v), %d succeeded", failed.Load(), firstErr.Load(), ok.Load())
	}
	t.Logf("%d requests during 3 rotations, none failed; %d hook runs", ok.Load(), applied.Load())
}

// A webhook receiver gets every step of a rotation as a signed CloudEvent;
// the first delivery it fails is delivered again on retry.
func TestWebhooksGetEveryStepSigned(t *testing.T) {
	key := []byte("webhook-signing-key-for-tests!!")
	var (
		mu       sync.Mutex
		types    []string
		failures int
		badSig   int
	)
	recv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sig := r.Header.Get(notify.Signature)
		ts := strings.TrimPrefix(strings.Split(sig, ",")[0], "t=")
		sec, _ := strconv.ParseInt(ts, 10, 64)
		mu.Lock()
		defer mu.Unlock()
		if notify.Sign(key, time.Unix(sec, 0), body) != sig || r.Header.Get("Content-Type") != "application/cloudevents+json" {
			badSig++
		}
		if failures == 0 { // the first one fails: it must come again
			failures++
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var ev struct {
			SpecVersion string `json:"specversion"`
			Type        string `json:"type"`
			Subject     string `json:"subject"`
		}
		if json.Unmarshal(body, &ev) != nil || ev.SpecVersion != "1.0" || ev.Subject != "payments/db" {
			badSig++
		}
		types = append(types, ev.Type)
	}))
	defer recv.Close()
	dir := t.TempDir()
	keyFile, caFile := filepath.Join(dir, "hook.key"), filepath.Join(dir, "hook-ca.pem")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: recv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *server.Config) {
		c.Webhooks = map[string]string{"ops": recv.URL}
		c.WebhookKeyFile, c.WebhookCAFile = keyFile, caFile
	})
	f.seed("payments/db", "initial-value")
	r, err := f.srv.Rotations().Start(context.Background(), rotation.StartRequest{Secret: "payments/db"})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, f.srv.Rotations(), r.ID)
	want := []string{"start", "create_version", "propagating", "verifying", "completed"}
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		got := slices.Clone(types)
		bad := badSig
		mu.Unlock()
		if bad > 0 {
			t.Fatalf("%d deliveries badly signed or shaped", bad)
		}
		seen := 0
		for _, w := range want {
			if slices.Contains(got, notify.EventType(w)) {
				seen++
			}
		}
		if seen == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver got %v, want every one of %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ds, err := f.srv.Store().ListDeliveries(context.Background(), "ops", 100)
	if err != nil {
		t.Fatal(err)
	}
	retried := false
	for _, d := range ds {
		if d.State == "delivered" && d.Attempts == 2 {
			retried = true
		}
		if strings.Contains(string(d.Body), "initial-value") {
			t.Fatal("a webhook body holds the secret's value")
		}
	}
	if !retried {
		t.Fatalf("no delivery was delivered on its second attempt: %+v", ds)
	}
}
