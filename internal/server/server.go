// Package server assembles a secretplane server from its parts, the one
// way every caller builds one: cmd/secretplane, the API tests and the
// client library's tests. New checks the configuration and opens what the
// server needs (store, identity, backends, audit log), wiring the core's
// parts to one change bus; Run serves and runs every background part as a
// task of one group, and on the way out stops them in dependency order:
//
//  1. health checks answer NOT_SERVING, and the server keeps serving for
//     Shutdown.Delay (load balancers and Kubernetes stop sending calls);
//  2. Watch streams are told to end, and the gRPC server stops taking
//     calls and waits for those in flight (Shutdown.Timeout), each of
//     which is audited before it answers;
//  3. background tasks stop (policy refresh, watch polling, backend token
//     renewal; the consumer registry writes its last sightings);
//  4. the audit log records what is queued and moves its journal into the
//     store;
//  5. the store and the identity source close.
//
// Another listener (SDS on its own port, metrics over HTTP) is one more
// task.
package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/inventory"
	"github.com/secretplane/secretplane/controlplane/logging"
	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/controlplane/rotation/hook"
	"github.com/secretplane/secretplane/controlplane/watch"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/sds"
	"github.com/secretplane/secretplane/store"
)

// Dev mode's files in the data directory.
const (
	DevEndpointFile = "dev.json"
	DevStoreFile    = "secretplane.db"
)

// DevEndpoint is what a dev server writes to its data directory, so the
// CLI can find it.
type DevEndpoint struct {
	Address  string `json:"address"`
	ServerID string `json:"server_id"`
	// MetricsAddress is the operations listener's (metrics, probes).
	MetricsAddress string `json:"metrics_address,omitempty"`
}

// Server is an assembled secretplane server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	serverID spiffeid.ID
	admins   []spiffeid.ID
	dev      *identity.DevIdentities

	store     store.Store
	source    identity.Source
	bus       *events.Bus
	engine    *policy.Engine
	audit     *audit.Log
	backends  []backend.Backend
	hub       *watch.Hub
	sds       *sds.Server
	rotations *rotation.Manager
	notifier  *notify.Notifier
	sdsLis    net.Listener // SDS's own listener, when configured
	sdsGRPC   *grpc.Server
	deps      *consumers.Registry
	ops       *ops // metrics, inventory and the operations listener
	grpc      *grpc.Server
	health    *health.Server
	drain     chan struct{} // closed when Watch streams must end
	lis       net.Listener

	closers []func() // undone by close, last first
}

// New checks cfg and opens everything the server needs. Every problem of
// the configuration is reported at once, naming settings, never values.
func New(ctx context.Context, cfg Config) (_ *Server, err error) {
	cfg = withDevDefaults(cfg)
	s := &Server{cfg: cfg, bus: events.New(), drain: make(chan struct{}), ops: newOps()}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.log = cfg.Logger; s.log == nil {
		if s.log, err = newLogger(cfg.Log); err != nil {
			return nil, err
		}
	}
	st, err := s.prepare(ctx)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := identity.ServerTLSConfig(s.source, st.accept...)
	if err != nil {
		return nil, err
	}
	if s.lis = cfg.Listener; s.lis == nil {
		if s.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
	}
	s.closers = append(s.closers, func() { s.lis.Close() })

	s.engine = policy.NewEngine(s.store, s.admins, s.log, policy.WithEvents(s.bus))
	if err := s.engine.Load(ctx); err != nil {
		return nil, err
	}
	if err := s.openAudit(ctx, st.journal); err != nil {
		return nil, err
	}
	registry, err := s.openBackends(ctx)
	if err != nil {
		return nil, err
	}
	fpKey, err := fingerprintKey(cfg)
	if err != nil {
		return nil, err
	}
	resolver, err := resolve.New(registry, resolve.Options{
		TTL: cfg.Cache.TTL, MaxStale: cfg.Cache.MaxStale, FingerprintKey: fpKey,
		MaxEntries: cfg.Cache.MaxEntries, MaxBytes: cfg.Cache.MaxBytes, Events: s.bus,
	})
	if err != nil {
		return nil, err
	}
	cat := catalog.New(s.store, catalog.WithAccessCheck(registry, s.engine), catalog.WithEvents(s.bus))
	if err := s.requireSecrets(ctx, cat, resolver); err != nil {
		return nil, err
	}
	s.hub = watch.NewHub(cat, resolver, watch.Options{Log: s.log, RetryInterval: cfg.WatchRetry, Events: s.bus})
	s.deps = consumers.New(s.store, consumers.Options{Log: s.log})
	s.health = health.NewServer()
	expected := func(ctx context.Context, channel, name string, res resolve.Result) (string, error) {
		if channel != consumers.SDS {
			return res.Version, nil
		}
		kind, err := cat.LookupKind(ctx, name)
		if err != nil {
			return "", err
		}
		return sds.ResourceVersion(name, kind, res.Fingerprint), nil
	}
	hooks, err := newHookRotator(cfg)
	if err != nil {
		return nil, err
	}
	s.rotations = rotation.New(s.store, cat, registry, resolver, s.deps, s.audit, expected, rotation.Options{
		Deadline: cfg.Rotation.Deadline, Horizon: cfg.Rotation.Horizon, AutoRollback: cfg.Rotation.AutoRollback, Log: s.log, Events: s.bus,
		CheckEvery: cfg.Rotation.CheckInterval, Observe: cfg.Rotation.Observe,
		Rotators: map[string]rotation.Rotator{"certificate": rotation.Certificate{Issuers: s.issuers()}, "hook": hooks},
	})
	inv := inventory.New(s.store, cat, s.deps, resolver, inventory.Options{Interval: cfg.Metrics.Refresh, Horizon: cfg.Rotation.Horizon, Expected: expected, Log: s.log})
	var webhooks []api.Webhook
	if s.notifier, webhooks, err = newNotifier(cfg, s.store, s.bus, s.serverID.String(), s.log, cat); err != nil {
		return nil, err
	}
	inv.OnRefresh(func(ctx context.Context, snap inventory.Snapshot) { s.notifier.Expiring(ctx, snap.Secrets) })
	s.sds = sds.New(sds.Config{
		Guard: access.NewGuard(s.engine, s.audit), Catalog: cat, Resolver: resolver, Hub: s.hub, Consumers: s.deps,
		Events: s.bus, Audit: s.audit, Bundles: s.source, TrustDomains: st.accept,
		BundleInterval: cfg.SDS.BundleRefresh, MaxNames: cfg.SDS.MaxNames, HoldRetry: cfg.SDS.HoldRetry,
		Drain: s.drain, Log: s.log,
	})
	apiCfg := api.Config{
		TLS: tlsCfg, Log: s.log, Catalog: cat,
		Policies: policy.NewManager(s.store, s.engine), Policy: s.engine,
		Audit: s.audit, AuditLog: s.audit, Resolver: resolver, Watch: s.hub, Consumer: s.deps,
		Health: s.health, Drain: s.drain,
		Rotation: s.rotations,
		Webhooks: webhooks,
		Outbox:   s.store,
		Doctor:   s.doctor(registry),
		Extra:    s.sds.Register, ExtraServices: sds.Services(), MaxStreamsPerConn: uint32(cfg.MaxStreamsPerConn),
		WatchStreams: &s.ops.watch,
	}
	if cfg.Metrics.Listen != "" {
		// RPC metrics only when something serves them: a call costs the
		// same as before metrics otherwise.
		apiCfg.Unary = []grpc.UnaryServerInterceptor{s.ops.grpc.UnaryServerInterceptor()}
		apiCfg.Stream = []grpc.StreamServerInterceptor{s.ops.grpc.StreamServerInterceptor()}
	}
	s.grpc = api.NewServer(apiCfg)
	if cfg.SDS.Listen != "" {
		// A listener for Envoys alone: SDS and health, nothing else.
		if s.sdsLis, err = net.Listen("tcp", cfg.SDS.Listen); err != nil {
			return nil, fmt.Errorf("listen for SDS on %s: %w", cfg.SDS.Listen, err)
		}
		s.closers = append(s.closers, func() { s.sdsLis.Close() })
		apiCfg.OnlyExtra = true
		s.sdsGRPC = api.NewServer(apiCfg)
	}
	s.ops.wire(inv, resolver, s.audit, s.sds.Stats, s.bus.Drops, s.notifier.DeadLetters)
	if err := s.listenOps(); err != nil {
		return nil, err
	}
	if cfg.Dev {
		if err := writeDevEndpoint(cfg.DataDir, DevEndpoint{Address: s.Addr(), ServerID: s.serverID.String(), MetricsAddress: s.MetricsAddr()}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Run serves until ctx ends or a part fails, then drains and stops
// everything in dependency order (see the package comment). It returns the
// failure, if any; a server runs once.
func (s *Server) Run(ctx context.Context) error {
	defer s.close()
	s.log.Info("secretplane server listening", "address", s.Addr(), "spiffe_id", s.serverID.String(), "dev", s.cfg.Dev, "admins", len(s.admins))

	// The audit log outlives every part that records into it.
	auditCtx, stopAudit := context.WithCancel(context.Background())
	go s.audit.Run(auditCtx)

	// Background tasks: one group, one context, stopped after the
	// listener has drained and before the audit log and the store.
	bg, stopBackground := context.WithCancel(context.Background())
	var tasks sync.WaitGroup
	for _, run := range s.tasks() {
		tasks.Go(func() { run(bg) })
	}

	served := make(chan error, 2)
	go func() { served <- s.grpc.Serve(s.lis) }()
	if s.sdsGRPC != nil {
		go func() { served <- s.sdsGRPC.Serve(s.sdsLis) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		err = fmt.Errorf("serve: %w", err)
	}

	start := time.Now()
	s.log.Info("draining", "delay", s.cfg.Shutdown.Delay)
	s.health.Shutdown() // NOT_SERVING from the first moment of the drain
	if s.cfg.Shutdown.Delay > 0 {
		time.Sleep(s.cfg.Shutdown.Delay)
	}
	close(s.drain) // Watch streams end; clients reconnect elsewhere
	calls := time.Now()
	stopped := make(chan struct{})
	go func() {
		if s.sdsGRPC != nil {
			s.sdsGRPC.GracefulStop()
		}
		s.grpc.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(s.cfg.Shutdown.Timeout):
		s.log.Warn("calls still running at the shutdown timeout are cut off", "timeout", s.cfg.Shutdown.Timeout)
		if s.sdsGRPC != nil {
			s.sdsGRPC.Stop()
		}
		s.grpc.Stop()
		<-stopped
	}
	background := time.Now()
	stopBackground()
	tasks.Wait()
	auditing := time.Now()
	stopAudit()
	<-s.audit.Done()
	s.log.Info("stopped", "drain", time.Since(start).Round(time.Millisecond),
		"calls", background.Sub(calls).Round(time.Millisecond), "background", auditing.Sub(background).Round(time.Millisecond),
		"audit", time.Since(auditing).Round(time.Millisecond))
	return err
}

// tasks are the background parts, each run until its context ends: the
// policy refresh, the watch hub, the consumer registry, and backends with
// work of their own (Vault's token renewal).
func (s *Server) tasks() []func(context.Context) {
	ts := []func(context.Context){
		func(ctx context.Context) { s.engine.Refresh(ctx, s.cfg.PolicyRefresh) },
		s.hub.Run,
		s.deps.Run,
		s.sds.Run,
		s.rotations.Run,
		s.notifier.Run,
		s.ops.inv.Run,
		func(ctx context.Context) { s.ops.metrics.Follow(ctx, s.bus) },
		s.serveOps,
	}
	for _, b := range s.backends {
		if r, ok := b.(interface{ Run(context.Context) }); ok {
			ts = append(ts, r.Run)
		}
	}
	return ts
}

// close releases what New opened, last first. Run calls it on its way out;
// New on failure.
func (s *Server) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// SDSAddr is the address of SDS's own listener ("" when SDS is served on
// Addr only).
func (s *Server) SDSAddr() string {
	if s.sdsLis == nil {
		return ""
	}
	return s.sdsLis.Addr().String()
}

// ID is the server's SPIFFE ID.
func (s *Server) ID() spiffeid.ID { return s.serverID }

// DevIdentities are dev mode's CA and identities (nil outside dev mode).
func (s *Server) DevIdentities() *identity.DevIdentities { return s.dev }

// Store is the server's store, for tests and tools that seed or inspect it.
func (s *Server) Store() store.Store { return s.store }

// Audit is the server's audit log; reads through it see every event
// recorded before them.
func (s *Server) Audit() *audit.Log { return s.audit }

// Rotations is the server's rotation manager.
func (s *Server) Rotations() *rotation.Manager { return s.rotations }

// Policy is the server's policy engine.
func (s *Server) Policy() *policy.Engine { return s.engine }

// Consumers is the dependents registry.
func (s *Server) Consumers() *consumers.Registry { return s.deps }

// setup is what prepare decides besides the Server's fields.
type setup struct {
	accept  []spiffeid.TrustDomain
	journal string
}

// prepare checks the configuration and opens the identity and the store.
func (s *Server) prepare(ctx context.Context) (setup, error) {
	cfg := s.cfg
	var (
		problems []string
		st       setup
		td       spiffeid.TrustDomain
	)
	problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	problems = append(problems, s.preflight(ctx)...)
	switch {
	case cfg.Identity.Source != nil:
		s.source = cfg.Identity.Source
		svid, err := s.source.GetX509SVID()
		if err != nil {
			return setup{}, fmt.Errorf("identity: %w", err)
		}
		s.serverID, td = svid.ID, svid.ID.TrustDomain()
	case cfg.Dev:
		var err error
		if td, err = spiffeid.TrustDomainFromString(cfg.TrustDomain); err != nil {
			return setup{}, fmt.Errorf("trust_domain: %w", err)
		}
		if err := identity.EnsureDir(cfg.DataDir); err != nil {
			return setup{}, fmt.Errorf("data directory: %w", err)
		}
		dev, err := identity.BootstrapDev(cfg.DataDir, td, time.Now())
		if err != nil {
			return setup{}, fmt.Errorf("dev identities: %w", err)
		}
		s.dev, s.source, s.serverID = dev, dev.Server, dev.Server.ID()
		s.admins = append(s.admins, dev.Admin.ID())
	default:
		files := cfg.Identity.Cert != "" || cfg.Identity.Key != "" || cfg.Identity.Bundle != ""
		switch {
		case cfg.Identity.WorkloadAPI != "" && files:
			problem("identity: give --workload-api or the SVID files, not both")
		case cfg.Identity.WorkloadAPI != "":
			src, err := identity.NewWorkloadSource(ctx, cfg.Identity.WorkloadAPI, cfg.Identity.WorkloadAPITimeout, s.log)
			if err != nil {
				problem("identity: %v", err)
			} else {
				s.source, s.serverID, td = src, src.ID(), src.ID().TrustDomain()
				s.closers = append(s.closers, func() { src.Close() })
			}
		case cfg.Identity.Cert == "" || cfg.Identity.Key == "" || cfg.Identity.Bundle == "":
			problem("identity: --workload-api, or --svid-cert, --svid-key and --bundle-file, is required outside --dev")
		default:
			federated := map[spiffeid.TrustDomain]string{}
			for name, file := range cfg.FederatedBundles {
				ftd, err := spiffeid.TrustDomainFromString(name)
				if err != nil {
					problem("federated_bundles: %v", err)
					continue
				}
				federated[ftd] = file
			}
			// Files rotated in place (spiffe-helper, cert-manager) are
			// picked up for new connections without a restart.
			if src, err := identity.WatchFiles(cfg.Identity.Cert, cfg.Identity.Key, cfg.Identity.Bundle, identity.FileOptions{Federated: federated, Log: s.log}); err != nil {
				problem("identity: %v", err)
			} else {
				s.source, s.serverID, td = src, src.ID(), src.ID().TrustDomain()
			}
		}
		if len(cfg.FederatedBundles) > 0 && cfg.Identity.WorkloadAPI != "" {
			problem("federated_bundles: with the Workload API, SPIRE federation supplies the bundles")
		}
	}
	if !cfg.Dev {
		if cfg.Listen == "" && cfg.Listener == nil {
			problem("listen: required outside --dev")
		}
		if cfg.Store == "" {
			problem("store: required outside --dev (sqlite:PATH or postgres://...)")
		}
		if len(cfg.Admins) == 0 {
			problem("admins: at least one admin SPIFFE ID is required outside --dev")
		}
	}
	for _, name := range cfg.AcceptTrustDomains {
		atd, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			problem("accept_trust_domains: %q: %v", name, err)
			continue
		}
		st.accept = append(st.accept, atd)
	}
	if len(st.accept) == 0 && !td.IsZero() {
		st.accept = []spiffeid.TrustDomain{td}
	}
	if cfg.Cache.TTL <= 0 || cfg.Cache.MaxStale < 0 {
		problem("cache: ttl must be positive and max_stale not negative")
	}
	if cfg.Cache.MaxEntries <= 0 || cfg.Cache.MaxBytes <= 0 {
		problem("cache: max_entries and max_bytes must be positive (they bound the server's memory)")
	}
	if cfg.PolicyRefresh < time.Second || cfg.WatchRetry <= 0 {
		problem("policy_refresh must be at least 1s and watch_retry positive")
	}
	if cfg.Rotation.Deadline <= 0 || cfg.Rotation.Horizon <= 0 || cfg.Rotation.CheckInterval <= 0 {
		problem("rotation: deadline, horizon and check_interval must be positive")
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Rotation.Hooks)) {
		if err := hook.CheckTarget(name, cfg.Rotation.Hooks[name]); err != nil {
			problem("rotation.hooks: %v", err)
		}
	}
	if cfg.SDS.MaxNames <= 0 || cfg.SDS.BundleRefresh <= 0 || cfg.SDS.HoldRetry <= 0 || cfg.MaxStreamsPerConn <= 0 || cfg.MaxStreamsPerConn > 1<<20 {
		problem("sds: max_names, bundle_refresh and hold_retry must be positive, and max_streams_per_connection between 1 and 1048576")
	}
	if cfg.Metrics.Refresh <= 0 {
		problem("metrics: refresh must be positive")
	}
	if cfg.Shutdown.Timeout <= 0 || cfg.Shutdown.Delay < 0 {
		problem("shutdown: timeout must be positive and delay not negative")
	}
	if cfg.Identity.WorkloadAPI != "" && cfg.Identity.WorkloadAPITimeout <= 0 {
		problem("identity: workload_api_timeout must be positive")
	}
	if cfg.Audit.FailOpen && !cfg.Dev {
		problem("audit: fail_open is allowed in --dev only; production refuses requests it cannot audit")
	}
	for _, a := range cfg.Admins {
		id, err := spiffeid.FromString(a)
		if err != nil {
			problem("admins: %q is not a SPIFFE ID: %v", a, err)
			continue
		}
		s.admins = append(s.admins, id)
	}
	spec := cfg.Store
	if spec == "" && cfg.Dev {
		spec = "sqlite:" + filepath.Join(cfg.DataDir, DevStoreFile)
	}
	if spec != "" && len(problems) == 0 {
		db, journal, err := openStore(ctx, spec, cfg.Dev)
		if err != nil {
			problem("store: %v", err)
		} else {
			s.store, st.journal = db, journal
			s.closers = append(s.closers, func() { db.Close() })
		}
	}
	if len(problems) > 0 {
		return setup{}, fmt.Errorf("refusing to start:\n  - %s", strings.Join(problems, "\n  - "))
	}
	return st, nil
}

// openAudit opens the audit log: through its journal for an embedded
// store, a transaction per batch otherwise; with the mirror file if set.
func (s *Server) openAudit(ctx context.Context, journal string) error {
	opts := audit.Options{FailOpen: s.cfg.Audit.FailOpen, Log: s.log}
	if s.cfg.Audit.File != "" {
		f, err := os.OpenFile(s.cfg.Audit.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("audit file: %w", err)
		}
		s.closers = append(s.closers, func() { f.Close() })
		opts.Mirror = f
	}
	if journal == "" {
		s.audit = audit.New(s.store, opts)
		return nil
	}
	l, err := audit.OpenJournaled(ctx, s.store, journal, opts)
	if err != nil {
		return err
	}
	s.audit = l
	// Before the store closes (closers run last first); after Run's wait
	// for the log's Done.
	s.closers = append(s.closers, func() {
		if err := l.Close(); err != nil {
			s.log.Error("closing the audit journal", "error", err)
		}
	})
	return nil
}

func newLogger(c LogConfig) (*slog.Logger, error) {
	level := new(slog.LevelVar)
	if c.Level == "" {
		c.Level = "info"
	}
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	out := c.Out
	if out == nil {
		out = os.Stderr
	}
	return logging.New(out, c.Format, level)
}

func writeDevEndpoint(dataDir string, ep DevEndpoint) error {
	raw, err := json.MarshalIndent(ep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dataDir, DevEndpointFile), append(raw, '\n'), 0o600); err != nil {
		return fmt.Errorf("write dev endpoint: %w", err)
	}
	return nil
}
