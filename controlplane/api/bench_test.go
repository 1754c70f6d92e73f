package api_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/secretplane/secretplane/controlplane/secretref"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// benchCallers is the concurrency of DESIGN.md's targets: 64 callers, each
// on its own connection.
const benchCallers = 64

// runCallers runs fn from benchCallers goroutines until b.N calls are done
// and reports throughput and latency percentiles.
func runCallers(b *testing.B, fn func(ctx context.Context, caller int) error) {
	var (
		mu   sync.Mutex
		lats = make([]time.Duration, 0, b.N)
		next = make(chan struct{}, b.N)
		wg   sync.WaitGroup
	)
	for i := 0; i < b.N; i++ {
		next <- struct{}{}
	}
	close(next)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for c := 0; c < benchCallers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			local := make([]time.Duration, 0, b.N/benchCallers+1)
			for range next {
				t0 := time.Now()
				if err := fn(ctx, c); err != nil {
					b.Error(err)
					return
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	if len(lats) > 0 {
		b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "calls/s")
		b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
	}
}

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
	clients := make([]healthpb.HealthClient, benchCallers)
	for i := range clients {
		clients[i] = healthpb.NewHealthClient(e.dial(b, e.admin))
	}
	runCallers(b, func(ctx context.Context, c int) error {
		_, err := clients[c].Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	})
}

// BenchmarkAdminGetSecret is an admin read of a secret's metadata over
// mTLS: authentication, admin authorisation, request id, logging and a
// SQLite read.
func BenchmarkAdminGetSecret(b *testing.B) {
	e := newEnvLevel(b, slog.LevelInfo)
	clients := make([]spv1.AdminServiceClient, benchCallers)
	for i := range clients {
		clients[i] = spv1.NewAdminServiceClient(e.dial(b, e.admin))
	}
	if _, err := clients[0].PutSecret(context.Background(), &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/payments/db#password"}}); err != nil {
		b.Fatal(err)
	}
	runCallers(b, func(ctx context.Context, c int) error {
		_, err := clients[c].GetSecret(ctx, &spv1.GetSecretRequest{Name: "payments/db"})
		return err
	})
}

// BenchmarkResolveCacheHit is a workload's Resolve of a cached 1 KiB value
// over mTLS: authentication, policy (read), audit group commit, the
// catalog lookup of the secret's ref, and a cache hit.
func BenchmarkResolveCacheHit(b *testing.B) {
	e := newEnvLevel(b, slog.LevelInfo)
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
	clients := make([]spv1.SecretsServiceClient, benchCallers)
	for i := range clients {
		clients[i] = spv1.NewSecretsServiceClient(e.dial(b, workload))
	}
	req := &spv1.ResolveRequest{Names: []string{"payments/db"}}
	if _, err := clients[0].Resolve(ctx, req); err != nil { // warm the cache
		b.Fatal(err)
	}
	runCallers(b, func(ctx context.Context, c int) error {
		_, err := clients[c].Resolve(ctx, req)
		return err
	})
}
