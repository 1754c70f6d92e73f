package api_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/logging"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// env is a running server, built by the one assembly (internal/server)
// over a SQLite store, with identities from a dev CA: an admin, a workload
// and one from a foreign CA.
type env struct {
	addr     string
	ca       *identity.CA
	serverID spiffeid.ID
	admin    *identity.StaticSource
	workload *identity.StaticSource
	foreign  *identity.StaticSource // another CA, same trust domain name
	logs     *syncBuffer
	dbPath   string

	serverTLS *tls.Config // the server's, for the bare baseline of the benchmarks
	srv       *server.Server
	store     store.Store
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
func newEnvLevel(t testing.TB, level slog.Level) *env { return newEnvWith(t, level, nil) }

// newEnvWith starts the environment, with tune (when set) changing the
// server's configuration last.
func newEnvWith(t testing.TB, level slog.Level, tune func(*server.Config)) *env {
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
	dir := t.TempDir()
	e := &env{
		ca:       ca,
		serverID: spiffeid.RequireFromPath(td, "/secretplane/server"),
		admin:    issue(ca, "/secretplane/admin"),
		workload: issue(ca, "/workload/payments-api"),
		foreign:  issue(other, "/secretplane/admin"),
		logs:     &syncBuffer{},
		dbPath:   filepath.Join(dir, "store.db"),
	}
	serverID := issue(ca, "/secretplane/server")
	if e.serverTLS, err = identity.ServerTLSConfig(serverID, td); err != nil {
		t.Fatal(err)
	}
	if e.local, err = local.New(filepath.Join(dir, "local-secrets.json"), []byte("0123456789abcdef0123456789abcdef")); err != nil {
		t.Fatal(err)
	}
	fpKey := filepath.Join(dir, "fingerprint.key")
	if err := os.WriteFile(fpKey, []byte("fingerprint-key-for-tests-only!!"), 0o600); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Defaults()
	cfg.Store = "sqlite:" + e.dbPath // journaled audit, as the server runs it on an embedded store
	cfg.Admins = []string{e.admin.ID().String()}
	cfg.Identity.Source = serverID
	cfg.Backends.Extra = []backend.Backend{e.local}
	cfg.Cache.TTL, cfg.Cache.FingerprintKeyFile = time.Second, fpKey
	cfg.WatchRetry = 200 * time.Millisecond // Watch tests see a failed refresh retried within their patience
	cfg.Listener = lis
	cfg.Logger = slog.New(logging.NewHandler(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: level})))
	if tune != nil {
		tune(&cfg)
	}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	e.srv, e.addr = srv, srv.Addr()
	e.store, e.audit, e.engine, e.consumers = srv.Store(), srv.Audit(), srv.Policy(), srv.Consumers()
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
