package identity

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// WorkloadSource takes the process's X.509-SVID and trust bundles from the
// SPIFFE Workload API (a SPIRE agent). Rotated SVIDs and bundles are picked
// up as the agent pushes them: TLS configs built on it present the new SVID
// on the next handshake, and open connections are left alone.
type WorkloadSource struct {
	*workloadapi.X509Source
	id     spiffeid.ID
	addr   string
	stop   context.CancelFunc // ends the update log
	logged chan struct{}
}

// NewWorkloadSource connects to the Workload API at addr (for example
// "unix:///run/spire/agent.sock") and waits up to timeout for the first
// SVID. Updates are logged until Close.
func NewWorkloadSource(ctx context.Context, addr string, timeout time.Duration, log *slog.Logger) (*WorkloadSource, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	src, err := workloadapi.NewX509Source(wctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		return nil, fmt.Errorf("fetch X.509-SVID from the Workload API at %s: %w", addr, err)
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("read X.509-SVID from the Workload API: %w", err)
	}
	lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	w := &WorkloadSource{X509Source: src, id: svid.ID, addr: addr, stop: stop, logged: make(chan struct{})}
	go func() { w.logUpdates(lctx, log); close(w.logged) }()
	return w, nil
}

// Close stops the source and its update log.
func (w *WorkloadSource) Close() error {
	w.stop()
	<-w.logged
	return w.X509Source.Close()
}

// ID is the SPIFFE ID of the SVID.
func (w *WorkloadSource) ID() spiffeid.ID { return w.id }

// FetchJWTSVID asks the Workload API for a new JWT-SVID for audience and
// returns the token: a credential, to be sent where it is due and never
// logged.
func (w *WorkloadSource) FetchJWTSVID(ctx context.Context, audience string) (string, error) {
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience}, workloadapi.WithAddr(w.addr))
	if err != nil {
		return "", fmt.Errorf("fetch JWT-SVID for audience %q from the Workload API: %w", audience, err)
	}
	return svid.Marshal(), nil
}

func (w *WorkloadSource) logUpdates(ctx context.Context, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.Updated():
			svid, err := w.GetX509SVID()
			if err != nil {
				log.Warn("Workload API update without a usable SVID", "error", err)
				continue
			}
			leaf := svid.Certificates[0]
			log.Info("X.509-SVID updated from the Workload API", "spiffe_id", svid.ID.String(), "serial", leaf.SerialNumber.String(), "expires", leaf.NotAfter)
		}
	}
}
