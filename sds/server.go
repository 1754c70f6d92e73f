// Package sds serves Envoy's Secret Discovery Service (xDS v3): the
// SecretDiscoveryService (state-of-the-world, Delta and Fetch) and the
// secret type over the AggregatedDiscoveryService, on the server's mTLS
// listener. It is transport: the caller's SPIFFE ID comes from the
// verified client certificate, every name is authorised (read) through
// the same guard and audit as the gRPC API when subscribed and again
// before every push, values come from the watch hub, and acknowledgements
// feed the consumer registry.
//
// It is a stream handler of its own over go-control-plane's API types
// rather than go-control-plane's server with a cache: that server's cache
// sees a request and the (untrusted) node but not the authenticated peer,
// so it cannot authorise per identity; it cannot drop one ungranted name
// from an ADS or Delta stream while serving the rest; and the rules Envoy
// needs (hold unknown names, no resend after a NACK, content-derived
// versions) would have to be worked around in both the cache and its
// callbacks.
//
// What it keeps to (DESIGN.md section 6): a SotW response carries only
// resources the stream asked for, by their exact names, and for a stream
// of one name exactly that resource; a name that does not exist yet is
// held, never answered empty; a NACK does not cause a resend of the same
// content; a stale nonce changes nothing; versions derive from content;
// a push happens only when content changes; a Delta removal happens only
// when a secret is deleted or its grant withdrawn, never because a backend
// read failed.
package sds

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/material"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/watch"
)

// Guard decides and audits each name (access.Guard).
type Guard interface {
	Authorize(ctx context.Context, req access.Request) (*access.Call, error)
}

// Catalog tells a secret's kind and binding (catalog.Catalog).
type Catalog interface {
	LookupKind(ctx context.Context, name string) (material.Kind, error)
	LookupBinding(ctx context.Context, name string) (secretref.Ref, string, error)
}

// Resolver reads a value for FetchSecrets (resolve.Resolver).
type Resolver interface {
	Get(ctx context.Context, ref secretref.Ref) (resolve.Result, error)
}

// Consumers records deliveries and acknowledgements (consumers.Registry).
type Consumers interface {
	SeenNode(identity, node, secret, channel, version string)
	AckedNode(identity, node, secret, channel, version, errMsg string)
	Hold(identity, node, secret, channel string) (release func())
}

// Config assembles the SDS server.
type Config struct {
	Guard     Guard
	Catalog   Catalog
	Resolver  Resolver
	Hub       *watch.Hub
	Consumers Consumers
	Events    *events.Bus // secrets created meanwhile wake the streams holding their names
	Audit     Recorder    // records content that fails its check
	// Bundles and TrustDomains: the trust bundles served as
	// spiffe://<trust-domain> validation contexts.
	Bundles      BundleSource
	TrustDomains []spiffeid.TrustDomain
	// BundleInterval is how often bundles are re-read; default 5s.
	BundleInterval time.Duration
	// MaxNames bounds the names one stream holds; default 1000.
	MaxNames int
	// HoldRetry is how often names that do not exist yet are looked up
	// again, once each whoever holds them (a name this replica creates is
	// served at once); default 10s.
	HoldRetry time.Duration
	// Drain, when closed, ends every stream (Unavailable: Envoy reconnects,
	// to another replica).
	Drain <-chan struct{}
	Log   *slog.Logger
	Now   func() time.Time
}

// Server implements the SDS and ADS services.
type Server struct {
	cfg     Config
	log     *slog.Logger
	bundles *bundles
	built   *contentCache

	mu      sync.Mutex
	waiters map[string]map[*stream]struct{} // names held because they do not exist yet
	streams map[*stream]struct{}            // every open stream, to decide again after a policy change

	pushes, acks, nacks atomic.Uint64
}

// Stats are SDS's figures for metrics.
type Stats struct {
	Streams             int    // open SDS and ADS streams
	Pushes, Acks, Nacks uint64 // responses sent, and the ACKs and NACKs of them
}

// Stats returns SDS's current figures.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.streams)
	s.mu.Unlock()
	return Stats{Streams: n, Pushes: s.pushes.Load(), Acks: s.acks.Load(), Nacks: s.nacks.Load()}
}

// New returns an SDS server; call Run to follow bundles and events.
func New(cfg Config) *Server {
	if cfg.BundleInterval <= 0 {
		cfg.BundleInterval = 5 * time.Second
	}
	if cfg.MaxNames <= 0 {
		cfg.MaxNames = 1000
	}
	if cfg.HoldRetry <= 0 {
		cfg.HoldRetry = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, waiters: map[string]map[*stream]struct{}{}, streams: map[*stream]struct{}{}}
	s.built = newContentCache(log, cfg.Audit)
	if cfg.Bundles != nil {
		s.bundles = newBundles(cfg.Bundles, cfg.TrustDomains, cfg.BundleInterval, log)
	}
	return s
}

// Register adds the SDS and ADS services to r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	secretv3.RegisterSecretDiscoveryServiceServer(r, sdsService{s})
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(r, adsService{s})
}

// Services are the full names of the services Register adds: they
// authorise each resource themselves.
func Services() []string {
	return []string{secretv3.SecretDiscoveryService_ServiceDesc.ServiceName, discoveryv3.AggregatedDiscoveryService_ServiceDesc.ServiceName}
}

// Run re-reads trust bundles, wakes streams holding names that were
// created (at once when through this replica, else within HoldRetry), and
// has every stream decide its names again after a policy change, until
// ctx ends.
func (s *Server) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.bundles != nil {
		wg.Go(func() { s.bundles.run(ctx) })
	}
	var changes <-chan events.Event
	if s.cfg.Events != nil {
		sub := s.cfg.Events.Subscribe("sds", 0)
		defer sub.Close()
		changes = sub.C()
	}
	retry := time.NewTicker(s.cfg.HoldRetry)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			s.lookUpHeld(ctx)
		case e := <-changes:
			switch e := e.(type) {
			case events.SecretPut:
				s.wakeWaiters(e.Name)
			case events.SecretRebound:
				s.wakeWaiters(e.Name)
			case events.PolicyChanged:
				s.decideAgain()
			}
		}
	}
}

// lookUpHeld looks each held name up once (not once per stream holding
// it) and wakes the streams holding the ones that exist now: created
// through another replica.
func (s *Server) lookUpHeld(ctx context.Context) {
	s.mu.Lock()
	names := make([]string, 0, len(s.waiters))
	for n := range s.waiters {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		if _, err := s.cfg.Catalog.LookupKind(ctx, n); err == nil {
			s.wakeWaiters(n)
		}
	}
}

func (s *Server) track(st *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[st] = struct{}{}
}

func (s *Server) untrack(st *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, st)
}

// decideAgain has every stream decide its names again.
func (s *Server) decideAgain() {
	s.mu.Lock()
	all := make([]*stream, 0, len(s.streams))
	for st := range s.streams {
		all = append(all, st)
	}
	s.mu.Unlock()
	for _, st := range all {
		st.recheck.Store(true)
		st.poke()
	}
}

func (s *Server) hold(name string, st *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.waiters[name]
	if w == nil {
		w = map[*stream]struct{}{}
		s.waiters[name] = w
	}
	w[st] = struct{}{}
}

func (s *Server) unhold(name string, st *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.waiters[name]; w != nil {
		delete(w, st)
		if len(w) == 0 {
			delete(s.waiters, name)
		}
	}
}

func (s *Server) wakeWaiters(name string) {
	s.mu.Lock()
	var wake []*stream
	for st := range s.waiters[name] {
		wake = append(wake, st)
	}
	s.mu.Unlock()
	for _, st := range wake {
		st.poke()
	}
}

// Streams are the services' entry points; each builds a stream and runs it.
type sdsService struct{ s *Server }

type adsService struct{ s *Server }

const (
	sdsStream   = "SecretDiscoveryService.StreamSecrets"
	sdsDelta    = "SecretDiscoveryService.DeltaSecrets"
	sdsFetch    = "SecretDiscoveryService.FetchSecrets"
	adsStream   = "AggregatedDiscoveryService.StreamAggregatedResources"
	adsDelta    = "AggregatedDiscoveryService.DeltaAggregatedResources"
	subscribeOp = ".Subscribe"
	pushOp      = ".Push"
)

func (v sdsService) StreamSecrets(ss secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	return v.s.serveSotW(ss, sdsStream, false)
}

func (v sdsService) DeltaSecrets(ds secretv3.SecretDiscoveryService_DeltaSecretsServer) error {
	return v.s.serveDelta(ds, sdsDelta, false)
}

func (v sdsService) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	return v.s.fetch(ctx, req)
}

func (v adsService) StreamAggregatedResources(ss discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return v.s.serveSotW(ss, adsStream, true)
}

func (v adsService) DeltaAggregatedResources(ds discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return v.s.serveDelta(ds, adsDelta, true)
}

// checkType accepts the secret type; an SDS stream may leave it empty.
func checkType(typeURL string, ads bool) error {
	switch {
	case typeURL == SecretType:
		return nil
	case typeURL == "" && !ads:
		return nil
	case typeURL == "":
		return status.Error(codes.InvalidArgument, "type_url: required on an aggregated stream; this server serves only "+SecretType)
	}
	return status.Errorf(codes.InvalidArgument, "type_url: %.200q is not served here; this server serves only %s", typeURL, SecretType)
}

// denialStatus maps a guard refusal to the status to answer with.
func denialStatus(ctx context.Context, err error) error {
	var denied *access.DeniedError
	switch {
	case errors.As(err, &denied):
		return status.Error(codes.PermissionDenied, denied.Error())
	case errors.Is(err, access.ErrAuditUnavailable):
		return status.Error(codes.Unavailable, access.ErrAuditUnavailable.Error())
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return err
	}
	return status.Error(codes.InvalidArgument, err.Error())
}
