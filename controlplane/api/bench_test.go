package api_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/loadtest"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// BenchmarkBaselineHealthCheck is the bare mTLS gRPC unary call that the
// performance targets are ratios of: the standard health check on a plain
// gRPC server with the same TLS 1.3 mutual-TLS config, no interceptors.
func BenchmarkBaselineHealthCheck(b *testing.B) {
	e := newEnvLevel(b, slog.LevelInfo)
	bare := grpc.NewServer(grpc.Creds(credentials.NewTLS(e.serverTLS)))
	healthpb.RegisterHealthServer(bare, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = bare.Serve(lis) }()
	b.Cleanup(bare.Stop)
	e.addr = lis.Addr().String()
	clients := make([]healthpb.HealthClient, loadtest.Callers)
	for i := range clients {
		clients[i] = healthpb.NewHealthClient(e.dial(b, e.admin))
	}
	loadtest.Run(b, func(ctx context.Context, c int) error {
		_, err := clients[c].Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	})
}

// BenchmarkAdminGetSecret is an admin read of a secret's metadata over
// mTLS: authentication, admin authorisation, request id, logging and a
// SQLite read.
func BenchmarkAdminGetSecret(b *testing.B) {
	e := newEnvLevel(b, slog.LevelInfo)
	clients := make([]spv1.AdminServiceClient, loadtest.Callers)
	for i := range clients {
		clients[i] = spv1.NewAdminServiceClient(e.dial(b, e.admin))
	}
	if _, err := clients[0].PutSecret(context.Background(), &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/payments/db#password"}}); err != nil {
		b.Fatal(err)
	}
	loadtest.Run(b, func(ctx context.Context, c int) error {
		_, err := clients[c].GetSecret(ctx, &spv1.GetSecretRequest{Name: "payments/db"})
		return err
	})
}

// BenchmarkResolveCacheHit is a workload's Resolve of a cached 1 KiB value
// over mTLS: authentication, policy (read), audit group commit, the
// catalog lookup of the secret's ref, and a cache hit.
func BenchmarkResolveCacheHit(b *testing.B) { benchResolveCacheHit(b, false) }

// BenchmarkResolveCacheHitMetrics is BenchmarkResolveCacheHit with metrics
// on (the operations listener, RPC interceptors, backend observer) and
// scraped every second, harder than Prometheus's usual 15 s.
func BenchmarkResolveCacheHitMetrics(b *testing.B) { benchResolveCacheHit(b, true) }

func benchResolveCacheHit(b *testing.B, withMetrics bool) {
	var tune func(*server.Config)
	if withMetrics {
		tune = func(c *server.Config) { c.Metrics.Listen = "127.0.0.1:0" }
	}
	e := newEnvWith(b, slog.LevelInfo, tune)
	if withMetrics {
		scrapeEverySecond(b, e.srv.MetricsAddr())
	}
	ctx := context.Background()
	td := e.admin.ID().TrustDomain().IDString()
	admin := spv1.NewAdminServiceClient(e.dial(b, e.admin))
	if _, err := e.local.Write(ctx, secretref.MustParse("local://payments/db#password"), bytes.Repeat([]byte("x"), 1024)); err != nil {
		b.Fatal(err)
	}
	if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "local://payments/db#password"}}); err != nil {
		b.Fatal(err)
	}
	if _, err := spv1.NewPolicyServiceClient(e.dial(b, e.admin)).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{
		Name: "api-read", Subject: td + "/payments/api", Verbs: []string{"read"}, Objects: []string{"payments/*"}}}); err != nil {
		b.Fatal(err)
	}
	workload := issueFor(b, e, "/payments/api")
	clients := make([]spv1.SecretsServiceClient, loadtest.Callers)
	for i := range clients {
		clients[i] = spv1.NewSecretsServiceClient(e.dial(b, workload))
	}
	req := &spv1.ResolveRequest{Names: []string{"payments/db"}}
	if _, err := clients[0].Resolve(ctx, req); err != nil { // warm the cache
		b.Fatal(err)
	}
	loadtest.Run(b, func(ctx context.Context, c int) error {
		_, err := clients[c].Resolve(ctx, req)
		return err
	})
}

// scrapeEverySecond scrapes /metrics at addr every second until the
// benchmark ends, failing it when a scrape fails.
func scrapeEverySecond(b *testing.B, addr string) {
	stop := make(chan struct{})
	done := make(chan struct{})
	b.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
}
