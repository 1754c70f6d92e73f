package api_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/logging"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/watch"
	"github.com/secretplane/secretplane/identity"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store/sqlite"
)

// env is a running API server over a SQLite store, with identities from a
// dev CA: an admin, a workload and one from a foreign CA.
type env struct {
	addr     string
	ca       *identity.CA
	serverID spiffeid.ID
	admin    *identity.StaticSource
	workload *identity.StaticSource
	foreign  *identity.StaticSource // another CA, same trust domain name
	logs     *syncBuffer
	dbPath   string

	serverTLS *tls.Config
	store     *sqlite.Store
	audit     *audit.Log // reads through it see every recorded event
	engine    *policy.Engine
	local     *local.Backend
	consumers *consumers.Registry
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newEnv(t testing.TB) *env { return newEnvLevel(t, slog.LevelDebug) }

// newEnvLevel starts the environment with the server logging at level.
func newEnvLevel(t testing.TB, level slog.Level) *env {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("test.example")
	ca, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *identity.CA, path string) *identity.StaticSource {
		svid, err := ca.IssueSVID(spiffeid.RequireFromPath(td, path), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return identity.NewStaticSource(svid, ca.Bundle())
	}
	other, err := identity.NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		ca:       ca,
		serverID: spiffeid.RequireFromPath(td, "/secretplane/server"),
		admin:    issue(ca, "/secretplane/admin"),
		workload: issue(ca, "/workload/payments-api"),
		foreign:  issue(other, "/secretplane/admin"),
		logs:     &syncBuffer{},
		dbPath:   filepath.Join(t.TempDir(), "store.db"),
	}
	server := issue(ca, "/secretplane/server")

	ctx := context.Background()
	st, err := sqlite.Open(ctx, e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(logging.NewHandler(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: level})))
	tlsCfg, err := identity.ServerTLSConfig(server, td)
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	e.engine = policy.NewEngine(st, []spiffeid.ID{e.admin.ID()}, log)
	if err := e.engine.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// Journaled, as the server runs it on an embedded store.
	auditLog, err := audit.OpenJournaled(ctx, st, e.dbPath+"-audit", audit.Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	e.audit = auditLog
	// Everything that runs in the background stops, and has stopped,
	// before the store closes: the consumer registry writes its last
	// sightings as it stops.
	actx, stopBackground := context.WithCancel(context.Background())
	var background sync.WaitGroup
	go auditLog.Run(actx)
	t.Cleanup(func() {
		stopBackground()
		background.Wait()
		<-auditLog.Done()
		if err := auditLog.Close(); err != nil {
			t.Error(err)
		}
	})
	e.local, err = local.New(filepath.Join(t.TempDir(), "local-secrets.json"), []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	registry := backend.NewRegistry(e.local)
	var hub *watch.Hub
	resolver, err := resolve.New(registry, resolve.Options{
		TTL: time.Second, FingerprintKey: []byte("fingerprint-key-for-tests-only!!"),
		OnChange: func(ref secretref.Ref, _, _ string) { hub.Changed(ref) },
	})
	if err != nil {
		t.Fatal(err)
	}
	cat := catalog.New(st, catalog.WithAccessCheck(registry, e.engine))
	hub = watch.NewHub(cat, resolver, watch.Options{Log: log, RetryInterval: 200 * time.Millisecond})
	e.consumers = consumers.New(st, consumers.Options{Log: log})
	background.Go(func() { hub.Run(actx) })
	background.Go(func() { e.consumers.Run(actx) })
	srv := api.NewServer(api.Config{
		TLS: tlsCfg, Log: log, Catalog: cat,
		Policies: policy.NewManager(st, e.engine), Policy: e.engine, Audit: auditLog, AuditLog: auditLog,
		Resolver: resolver, Watch: hub, Consumer: e.consumers,
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	e.addr = lis.Addr().String()
	e.serverTLS = tlsCfg
	return e
}

// dial connects with src's SVID and checks the server's ID.
func (e *env) dial(t testing.TB, src identity.Source) *grpc.ClientConn {
	t.Helper()
	return e.dialTLS(t, identity.ClientTLSConfig(src, e.serverID))
}

func (e *env) dialTLS(t testing.TB, cfg *tls.Config, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (e *env) adminClient(t testing.TB) spv1.AdminServiceClient {
	return spv1.NewAdminServiceClient(e.dial(t, e.admin))
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustID(t testing.TB, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
