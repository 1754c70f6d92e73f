package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/inventory"
	"github.com/secretplane/secretplane/controlplane/metrics"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/sds"
)

// ops is the operations listener's part: metrics, the inventory they and
// the readiness probe read, and the HTTP server.
type ops struct {
	metrics *metrics.Metrics
	grpc    *grpcprom.ServerMetrics
	inv     *inventory.Inventory
	watch   atomic.Int64 // open Watch streams
	lis     net.Listener // nil: no listener
	http    *http.Server
}

// version is the module's version as built ("(devel)" from a checkout).
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "unknown"
}

// newOps builds the metrics (the gRPC server's included); wire gives
// them the parts they read once those are built.
func newOps() *ops {
	o := &ops{metrics: metrics.New(version())}
	o.grpc = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}),
	))
	o.metrics.Register(o.grpc)
	return o
}

// MetricNames are the names of every metric a server exports (for the
// alert rules' and dashboards' tests).
func MetricNames() []string { return newOps().metrics.Names() }

// wire points the metrics at the parts.
func (o *ops) wire(inv *inventory.Inventory, resolver *resolve.Resolver, al *audit.Log, sdsStats func() sds.Stats, drops, dead func() map[string]uint64) {
	o.inv = inv
	o.metrics.Read(metrics.Sources{
		Cache: resolver.Stats,
		Audit: al.Stats,
		SDS: func() metrics.StreamStats {
			st := sdsStats()
			return metrics.StreamStats{Streams: st.Streams, Pushes: st.Pushes, Acks: st.Acks, Nacks: st.Nacks}
		},
		Watch:       func() int { return int(o.watch.Load()) },
		Drops:       drops,
		DeadLetters: dead,
		Inventory:   inv.Snapshot,
	})
}

// listenOps opens the operations listener, when one is configured.
func (s *Server) listenOps() error {
	addr := s.cfg.Metrics.Listen
	if addr == "" {
		return nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	s.ops.lis = lis
	s.closers = append(s.closers, func() { lis.Close() })
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.ops.metrics.Registry(), promhttp.HandlerOpts{
		// A scrape reads counters and the inventory's snapshot, never the
		// store: it cannot hang on an outage; this bounds it regardless.
		Timeout:       10 * time.Second,
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-s.drain:
			http.Error(w, "draining\n", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		problems := s.readiness(r.Context())
		if len(problems) > 0 {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready:\n  - %s\n", strings.Join(problems, "\n  - "))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	s.ops.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
	return nil
}

// MetricsAddr is the operations listener's address ("" when off).
func (s *Server) MetricsAddr() string {
	if s.ops == nil || s.ops.lis == nil {
		return ""
	}
	return s.ops.lis.Addr().String()
}

// serveOps serves the operations listener until ctx ends.
func (s *Server) serveOps(ctx context.Context) {
	if s.ops.http == nil {
		<-ctx.Done()
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.ops.http.Serve(s.ops.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics listener failed", "error", err.Error())
		}
	}()
	<-ctx.Done()
	stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = s.ops.http.Shutdown(stop)
	<-done
}

// readiness lists why the server is not ready to serve (none: ready): the
// store must answer, the identity be valid, and every required secret
// resolve (from the inventory's last refresh). Names only, never a value.
func (s *Server) readiness(ctx context.Context) []string {
	var problems []string
	select {
	case <-s.drain:
		problems = append(problems, "draining")
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		problems = append(problems, "store: not reachable")
	}
	if svid, err := s.source.GetX509SVID(); err != nil {
		problems = append(problems, "identity: no SVID")
	} else if now := time.Now(); len(svid.Certificates) == 0 || now.After(svid.Certificates[0].NotAfter) {
		problems = append(problems, "identity: the SVID has expired")
	}
	snap, ok := s.ops.inv.Snapshot()
	switch {
	case !ok:
		problems = append(problems, "secrets: not checked yet")
	case snap.Err != nil:
		problems = append(problems, "secrets: the last check could not read the store")
	}
	for _, sec := range snap.Secrets {
		if sec.Required && !sec.Resolvable {
			problems = append(problems, fmt.Sprintf("required secret %s: %s", sec.Name, sec.ResolveError))
		}
	}
	return problems
}
