package client_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/logging"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/identity"
	spserver "github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/store"
)

// server is a real secretplane server in-process, built by the one
// assembly (internal/server): SQLite store, local backend, dev CA. For the
// library's tests and runnable examples. It can be stopped and started
// again on the same address.
type server struct {
	dir      string
	ca       *identity.CA
	serverID spiffeid.ID
	addr     string
	local    *local.Backend
	store    store.Store    // of the running server
	engine   *policy.Engine // of the running server

	stop func()
}

const td = "example.org"

func newServer(ttl time.Duration) (*server, error) {
	dir, err := os.MkdirTemp("", "secretplane-client-test-")
	if err != nil {
		return nil, err
	}
	ca, err := identity.NewCA(spiffeid.RequireTrustDomainFromString(td), time.Hour)
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, ca: ca, serverID: spiffeid.RequireFromString("spiffe://" + td + "/secretplane/server")}
	if s.local, err = local.New(filepath.Join(dir, "local.json"), []byte("0123456789abcdef0123456789abcdef")); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "fingerprint.key"), []byte("fingerprint-key-for-tests-only!!"), 0o600); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = lis.Addr().String()
	return s, s.start(lis, ttl)
}

func (s *server) start(lis net.Listener, ttl time.Duration) error {
	svid, err := s.ca.IssueSVID(s.serverID, time.Hour)
	if err != nil {
		lis.Close()
		return err
	}
	cfg := spserver.Defaults()
	cfg.Store = "sqlite:" + filepath.Join(s.dir, "store.db")
	cfg.Admins = []string{"spiffe://" + td + "/ops/admin"}
	cfg.Identity.Source = identity.NewStaticSource(svid, s.ca.Bundle())
	cfg.Backends.Extra = []backend.Backend{s.local}
	cfg.Cache.TTL, cfg.Cache.FingerprintKeyFile = ttl, filepath.Join(s.dir, "fingerprint.key")
	cfg.Listener = lis
	cfg.Logger = slog.New(logging.NewHandler(slog.NewTextHandler(io.Discard, nil)))
	srv, err := spserver.New(context.Background(), cfg)
	if err != nil {
		lis.Close()
		return err
	}
	s.store, s.engine = srv.Store(), srv.Policy()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Run(ctx); close(done) }()
	s.stop = func() { cancel(); <-done }
	return nil
}

// restart stops the server and serves again on the same address.
func (s *server) restart(ttl time.Duration) error {
	s.stop()
	lis, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	return s.start(lis, ttl)
}

func (s *server) close() {
	s.stop()
	os.RemoveAll(s.dir)
}

// register binds name to a local ref, stores value, and grants verbs on it
// to the workload at path.
func (s *server) register(name, value, path string, verbs ...string) error {
	ctx := context.Background()
	ref := "local://" + name + "#value"
	if _, err := s.store.PutSecret(ctx, store.Secret{Name: name, Ref: ref}, store.Precondition{}); err != nil {
		return err
	}
	if err := s.write(name, value); err != nil {
		return err
	}
	if _, err := s.store.PutPolicy(ctx, store.Policy{Name: "grant-" + filepath.Base(name), Subject: "spiffe://" + td + path, Verbs: verbs, Objects: []string{name}}, store.Precondition{}); err != nil {
		return err
	}
	return s.engine.Load(ctx)
}

// write stores a new version of name's value in the backend directly.
func (s *server) write(name, value string) error {
	_, err := s.local.Write(context.Background(), secretref.MustParse("local://"+name+"#value"), []byte(value))
	return err
}

// workload returns an identity for the workload at path.
func (s *server) workload(path string) (identity.Source, error) {
	svid, err := s.ca.IssueSVID(spiffeid.RequireFromString("spiffe://"+td+path), time.Hour)
	if err != nil {
		return nil, err
	}
	return identity.NewStaticSource(svid, s.ca.Bundle()), nil
}

// svidFiles writes the workload's SVID files, as spiffe-helper would.
func (s *server) svidFiles(path string) (cert, key, bundle string, err error) {
	dir := filepath.Join(s.dir, "svid"+filepath.Base(path))
	if _, err := s.ca.IssueToDir(dir, spiffeid.RequireFromString("spiffe://"+td+path), time.Hour); err != nil {
		return "", "", "", err
	}
	return filepath.Join(dir, identity.SVIDCertFile), filepath.Join(dir, identity.SVIDKeyFile), filepath.Join(dir, identity.BundleFile), nil
}
