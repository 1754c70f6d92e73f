package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

type fixture struct {
	dir      string
	ca       *identity.CA
	serverID spiffeid.ID
	cfg      server.Config
	local    *local.Backend
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("test.example")
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{dir: t.TempDir(), ca: ca, serverID: spiffeid.RequireFromPath(td, "/secretplane/server")}
	svid, err := ca.IssueSVID(f.serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if f.local, err = local.New(filepath.Join(f.dir, "local.json"), []byte("0123456789abcdef0123456789abcdef")); err != nil {
		t.Fatal(err)
	}
	f.cfg = server.Defaults()
	f.cfg.Store = "sqlite:" + filepath.Join(f.dir, "store.db")
	f.cfg.Admins = []string{"spiffe://test.example/ops/admin"}
	f.cfg.Identity.Source = identity.NewStaticSource(svid, ca.Bundle())
	f.cfg.Backends.Extra = []backend.Backend{f.local}
	f.cfg.Log.Out = os.Stderr
	f.cfg.Log.Level = "warn"
	return f
}

func (f *fixture) listen(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.cfg.Listener = lis
}

func (f *fixture) dial(t *testing.T, addr, path string) *grpc.ClientConn {
	t.Helper()
	svid, err := f.ca.IssueSVID(spiffeid.RequireFromString("spiffe://test.example"+path), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(identity.NewStaticSource(svid, f.ca.Bundle()), f.serverID))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A shutdown under load: health checks answer NOT_SERVING from the start
// of the drain while calls are still served; 100 open Watch streams are
// ended rather than waited for; the whole stop takes under a second past
// the drain delay; and every call that was answered is in the audit log.
func TestShutdownDrainsInOrder(t *testing.T) {
	f := newFixture(t)
	f.listen(t)
	const delay = 300 * time.Millisecond
	f.cfg.Shutdown.Delay = delay
	srv, err := server.New(context.Background(), f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := f.local.Write(ctx, secretref.MustParse("local://payments/db#password"), []byte("pw-Zq8vW3xR")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Store().PutSecret(ctx, store.Secret{Name: "payments/db", Ref: "local://payments/db#password"}, store.Precondition{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Store().PutPolicy(ctx, store.Policy{Name: "api", Subject: "spiffe://test.example/payments/api", Verbs: []string{"read", "watch"}, Objects: []string{"payments/*"}}, store.Precondition{}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Policy().Load(ctx); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(runCtx) }()

	conns := make([]*grpc.ClientConn, 8)
	for i := range conns {
		conns[i] = f.dial(t, srv.Addr(), "/payments/api")
	}
	// 100 Watch streams, each with its first value received.
	streamEnds := make(chan error, 100)
	for i := 0; i < 100; i++ {
		st, err := spv1.NewSecretsServiceClient(conns[i%len(conns)]).Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&spv1.WatchRequest{Request: &spv1.WatchRequest_Subscribe{Subscribe: &spv1.WatchSubscribe{Names: []string{"payments/db"}}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				if _, err := st.Recv(); err != nil {
					streamEnds <- err
					return
				}
			}
		}()
	}
	// A Resolve load, each call with its own request id.
	var (
		answered sync.Map // request id -> true
		count    atomic.Int64
		load     sync.WaitGroup
		loadStop = make(chan struct{})
	)
	for w := 0; w < 16; w++ {
		c := spv1.NewSecretsServiceClient(conns[w%len(conns)])
		load.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-loadStop:
					return
				default:
				}
				id := fmt.Sprintf("drain-%d-%d", w, i)
				cctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "x-request-id", id), 5*time.Second)
				_, err := c.Resolve(cctx, &spv1.ResolveRequest{Names: []string{"payments/db"}})
				cancel()
				if err == nil {
					answered.Store(id, true)
					count.Add(1)
				} else {
					time.Sleep(20 * time.Millisecond) // clients back off; a tight retry loop would starve the server's stop
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)

	health := healthpb.NewHealthClient(conns[0])
	if r, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before the drain: %v %v", r, err)
	}
	start := time.Now()
	stop()
	// From the moment the drain starts: NOT_SERVING, and calls still
	// served during the delay.
	sawNotServing := false
	for time.Since(start) < delay/2 {
		r, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			sawNotServing = true
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !sawNotServing {
		t.Fatal("health checks did not answer NOT_SERVING in the first half of the drain delay")
	}
	before := count.Load()
	time.Sleep(delay / 4)
	if count.Load() == before {
		t.Fatal("no call was answered during the drain delay")
	}
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	close(loadStop)
	load.Wait()
	t.Logf("drain: %v (delay %v), %d calls answered", took.Round(time.Millisecond), delay, count.Load())
	if took > delay+time.Second {
		t.Fatalf("shutdown took %v: more than a second past the %v delay", took, delay)
	}
	for i := 0; i < 100; i++ {
		select {
		case err := <-streamEnds:
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("a Watch stream ended with %v, want Unavailable", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%d Watch streams still open after the shutdown", 100-i)
		}
	}

	// Every answered call is in the audit log (the store, after the stop).
	db, err := sqlite.Open(ctx, filepath.Join(f.dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	audited := map[string]bool{}
	for after := int64(0); ; {
		evs, err := db.QueryAudit(ctx, store.AuditQuery{AfterSeq: after, Action: "SecretsService.Resolve", Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Outcome == "ok" {
				audited[e.RequestID] = true
			}
			after = e.Seq
		}
		if len(evs) < 1000 {
			break
		}
	}
	missing := 0
	answered.Range(func(k, _ any) bool {
		if !audited[k.(string)] {
			missing++
		}
		return true
	})
	if missing > 0 || count.Load() == 0 {
		t.Fatalf("%d of %d answered calls are not in the audit log", missing, count.Load())
	}
}

// The configuration is checked before anything is opened, every problem
// named at once.
func TestNewRefusesABadConfiguration(t *testing.T) {
	cfg := server.Defaults()
	cfg.Cache.MaxEntries = 0
	cfg.Audit.FailOpen = true
	_, err := server.New(context.Background(), cfg)
	if err == nil {
		t.Fatal("started")
	}
	for _, want := range []string{"refusing to start", "listen: required", "store: required", "admins: at least one", "identity:", "max_entries", "fail_open"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
