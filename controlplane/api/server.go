package api

import (
	"context"
	"crypto/tls"
	"log/slog"
	"runtime"
	"slices"
	"sync/atomic"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/watch"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// MaxRequestBytes bounds a request message; larger ones fail with
// RESOURCE_EXHAUSTED before they are decoded.
const MaxRequestBytes = 1 << 20

// Config assembles the gRPC server.
type Config struct {
	TLS      *tls.Config // mutual TLS 1.3; see identity.ServerTLSConfig
	Log      *slog.Logger
	Catalog  *catalog.Catalog
	Policies *policy.Manager
	Policy   Authorizer   // decides every call (policy.Engine)
	Audit    Auditor      // records every decision (audit.Log)
	AuditLog audit.Reader // the audit store, for queries and verification
	Resolver *resolve.Resolver
	Watch    *watch.Hub          // keeps watched secrets fresh
	Consumer *consumers.Registry // the dependents list
	Rotation Rotations           // rotations (nil: RotationService answers Unimplemented)
	Webhooks []Webhook           // the configured webhooks, for WebhookService
	Outbox   Outbox              // their deliveries (nil: WebhookService answers Unimplemented)
	Doctor   Doctor              // doctor's checks (nil: DoctorService answers Unimplemented)
	// Health is the health service to register (one is made when nil):
	// the assembly sets it NOT_SERVING when it starts draining.
	Health *health.Server
	// Drain, when closed, ends every Watch stream and refuses new calls
	// (Unavailable: the client reconnects, to another replica), so that a
	// graceful stop waits only for the calls in flight.
	Drain <-chan struct{}

	// Extra registers services that authorise each object they serve
	// themselves (SDS): for the methods of ExtraServices (full service
	// names) the interceptors authenticate the caller and audit the call
	// as they do a Watch stream's.
	Extra         func(grpc.ServiceRegistrar)
	ExtraServices []string
	// OnlyExtra leaves the secretplane services out: a listener of its own
	// for the extra services (an SDS listener).
	OnlyExtra bool
	// MaxStreamsPerConn bounds the concurrent calls and streams of one
	// connection (HTTP/2 MAX_CONCURRENT_STREAMS); default 1000.
	MaxStreamsPerConn uint32
	// Unary and Stream run first on every call, before the server's own
	// chain (metrics: they see every call and the code it ended with).
	Unary  []grpc.UnaryServerInterceptor
	Stream []grpc.StreamServerInterceptor
	// WatchStreams, when set, counts the open Watch streams.
	WatchStreams *atomic.Int64
}

// NewServer returns a gRPC server with every service registered and the
// interceptor chain installed: decode guard, request id, logging, recovery,
// authentication, and one authorisation interceptor (policy + audit) on
// every call but health checks.
func NewServer(cfg Config) *grpc.Server {
	guard := newDecodeGuard()
	drain := draining(cfg.Drain)
	authz := &authorizer{rules: rules(), guard: access.NewGuard(cfg.Policy, cfg.Audit), self: map[string]bool{}}
	for _, svc := range cfg.ExtraServices {
		authz.self[svc] = true
	}
	if cfg.MaxStreamsPerConn == 0 {
		cfg.MaxStreamsPerConn = 1000
	}
	notHealth := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.Service != healthpb.Health_ServiceDesc.ServiceName
	})
	calls := callLog{log: cfg.Log}
	recover := recovery.WithRecoveryHandlerContext(recoveryHandler(cfg.Log))

	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(auditRefusedHandshakes(cfg.TLS, cfg.Audit, cfg.Log))),
		grpc.ForceServerCodecV2(guard),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.NumStreamWorkers(streamWorkers()),
		grpc.MaxConcurrentStreams(cfg.MaxStreamsPerConn),
		grpc.ChainUnaryInterceptor(append(slices.Clone(cfg.Unary),
			drain.unary,
			guard.unary,
			requestIDUnary,
			calls.unary,
			recovery.UnaryServerInterceptor(recover),
			auth.UnaryServerInterceptor(authenticate),
			selector.UnaryServerInterceptor(authz.unary, notHealth),
		)...),
		grpc.ChainStreamInterceptor(append(slices.Clone(cfg.Stream),
			drain.stream,
			guard.stream,
			requestIDStream,
			calls.stream,
			recovery.StreamServerInterceptor(recover),
			auth.StreamServerInterceptor(authenticate),
			selector.StreamServerInterceptor(authz.stream, notHealth),
		)...),
	)
	if !cfg.OnlyExtra {
		spv1.RegisterAdminServiceServer(srv, NewAdminServer(cfg.Catalog, cfg.Consumer, cfg.Log))
		spv1.RegisterPolicyServiceServer(srv, NewPolicyServer(cfg.Policies, cfg.Log))
		spv1.RegisterAuditServiceServer(srv, NewAuditServer(cfg.AuditLog, cfg.Log))
		spv1.RegisterRotationServiceServer(srv, &RotationServer{rotations: cfg.Rotation, log: cfg.Log})
		spv1.RegisterWebhookServiceServer(srv, NewWebhookServer(cfg.Webhooks, cfg.Outbox, cfg.Log))
		spv1.RegisterDoctorServiceServer(srv, NewDoctorServer(cfg.Doctor))
		spv1.RegisterSecretsServiceServer(srv, &SecretsServer{catalog: cfg.Catalog, resolver: cfg.Resolver, hub: cfg.Watch, consumers: cfg.Consumer, authz: authz, log: cfg.Log, drain: cfg.Drain, streams: cfg.WatchStreams})
	}
	if cfg.Extra != nil {
		cfg.Extra(srv)
	}
	hs := cfg.Health
	if hs == nil {
		hs = health.NewServer()
	}
	healthpb.RegisterHealthServer(srv, drainingHealth{Server: hs, drain: cfg.Drain})
	return srv
}

// drainingHealth ends its Watch streams when the server drains (after
// they have been told NOT_SERVING), so that a graceful stop does not wait
// for health watchers to leave.
type drainingHealth struct {
	*health.Server
	drain <-chan struct{}
}

func (h drainingHealth) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-h.drain:
			cancel()
		case <-ctx.Done():
		}
	}()
	return h.Server.Watch(req, &healthStream{Health_WatchServer: stream, ctx: ctx})
}

type healthStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (s *healthStream) Context() context.Context { return s.ctx }

// streamWorkers is how many goroutines serve calls and stay for the next.
// A goroutine per call starts with a small stack, which the interceptor
// chain grows on every call (2-3% of Resolve's CPU in stack copying); a
// kept worker has grown it once. Calls beyond the workers get a goroutine
// of their own, as without workers, so the number bounds nothing.
func streamWorkers() uint32 {
	return uint32(max(64, 16*runtime.GOMAXPROCS(0)))
}
