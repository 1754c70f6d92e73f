package api

import (
	"crypto/tls"
	"log/slog"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/secretplane/secretplane/controlplane/catalog"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// MaxRequestBytes bounds a request message; larger ones fail with
// RESOURCE_EXHAUSTED before they are decoded.
const MaxRequestBytes = 1 << 20

// Config assembles the gRPC server.
type Config struct {
	TLS     *tls.Config // mutual TLS 1.3; see identity.ServerTLSConfig
	Log     *slog.Logger
	Catalog *catalog.Catalog
	Admins  []spiffeid.ID // identities allowed the admin API
}

// NewServer returns a gRPC server with every service registered and the
// interceptor chain installed: decode guard, request id, logging, recovery,
// authentication, admin authorisation.
func NewServer(cfg Config) *grpc.Server {
	guard := newDecodeGuard()
	admin := newAdminAuthorizer(cfg.Admins)
	isAdmin := selector.MatchFunc(isAdminCall)
	logger := interceptorLogger(cfg.Log)
	recover := recovery.WithRecoveryHandlerContext(recoveryHandler(cfg.Log))

	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(cfg.TLS)),
		grpc.ForceServerCodec(guard),
		grpc.MaxRecvMsgSize(MaxRequestBytes),
		grpc.ChainUnaryInterceptor(
			guard.unary,
			requestIDUnary,
			logging.UnaryServerInterceptor(logger, loggingOptions()...),
			recovery.UnaryServerInterceptor(recover),
			auth.UnaryServerInterceptor(authenticate),
			selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(admin.authorize), isAdmin),
		),
		grpc.ChainStreamInterceptor(
			guard.stream,
			requestIDStream,
			logging.StreamServerInterceptor(logger, loggingOptions()...),
			recovery.StreamServerInterceptor(recover),
			auth.StreamServerInterceptor(authenticate),
			selector.StreamServerInterceptor(auth.StreamServerInterceptor(admin.authorize), isAdmin),
		),
	)
	spv1.RegisterAdminServiceServer(srv, NewAdminServer(cfg.Catalog, cfg.Log))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	return srv
}
