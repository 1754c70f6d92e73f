// Package client is the Go library services use to read their secrets from
// secretplane: it connects with the service's SPIFFE SVID (from the SPIRE
// Workload API or from files) over mutual TLS, caches values until the
// server says to refresh them, serves the last good value while the server
// cannot be reached (up to a bound), and keeps watched secrets current over
// one stream, calling a rotation hook with the old and new version of each
// change and acknowledging what the service applied.
//
// Values are returned to the caller only; the library never logs them.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/identity"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Config says where the server is and who the service is.
type Config struct {
	// Address is the server's host:port.
	Address string
	// ServerID is the SPIFFE ID the server must present.
	ServerID spiffeid.ID

	// Identity: exactly one of WorkloadAPI (e.g. "unix:///run/spire/agent.sock"),
	// the three SVID files, or Source.
	WorkloadAPI string
	CertFile    string
	KeyFile     string
	BundleFile  string
	Source      identity.Source

	// MaxStale bounds how long past its refresh time a cached value may be
	// served while the server cannot be reached; default 1h. Past it, Get
	// fails (closed).
	MaxStale time.Duration
	// Backoff bounds the reconnect delay of watches: it starts at
	// Backoff.Min and doubles (with jitter) up to Backoff.Max; defaults
	// 200ms and 30s.
	Backoff Backoff
	// Instance tells this process apart from the other instances of the
	// service (replicas sharing its identity): each is a consumer a
	// rotation waits for. Default: host name and process id.
	Instance string
	// Log receives the library's own events (never values); default discard.
	Log *slog.Logger
	// DialOptions are added to the gRPC connection's options.
	DialOptions []grpc.DialOption
}

// Backoff bounds reconnect delays.
type Backoff struct{ Min, Max time.Duration }

// Secret is a resolved value.
type Secret struct {
	Name        string
	Version     string
	Value       []byte
	Fingerprint string    // keyed fingerprint from the server, for change detection
	RefreshAt   time.Time // when the library asks the server again
	ExpiresAt   time.Time // when the value itself expires, if known
	// Stale is set when the value is served past RefreshAt because the
	// server could not be reached.
	Stale bool
}

// Client reads secrets. Safe for concurrent use; Close it when done.
type Client struct {
	cfg     Config
	conn    *grpc.ClientConn
	secrets spv1.SecretsServiceClient
	closer  func() error
	log     *slog.Logger
	now     func() time.Time

	mu    sync.Mutex
	cache map[string]Secret
}

// New connects (lazily: the first call dials) with the configured identity.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Address == "" {
		return nil, errors.New("client: Address is required")
	}
	if cfg.ServerID.IsZero() {
		return nil, errors.New("client: ServerID is required")
	}
	if cfg.MaxStale <= 0 {
		cfg.MaxStale = time.Hour
	}
	if cfg.Instance == "" {
		host, _ := os.Hostname()
		cfg.Instance = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if cfg.Backoff.Min <= 0 {
		cfg.Backoff.Min = 200 * time.Millisecond
	}
	if cfg.Backoff.Max < cfg.Backoff.Min {
		cfg.Backoff.Max = max(30*time.Second, cfg.Backoff.Min)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	src, closer, err := openSource(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, cfg.ServerID)))}, cfg.DialOptions...)
	conn, err := grpc.NewClient(cfg.Address, opts...)
	if err != nil {
		_ = closer()
		return nil, fmt.Errorf("client: connect to %s: %w", cfg.Address, err)
	}
	return &Client{cfg: cfg, conn: conn, secrets: spv1.NewSecretsServiceClient(conn), closer: closer, log: log, now: time.Now, cache: map[string]Secret{}}, nil
}

func openSource(ctx context.Context, cfg Config, log *slog.Logger) (identity.Source, func() error, error) {
	files := cfg.CertFile != "" || cfg.KeyFile != "" || cfg.BundleFile != ""
	n := 0
	for _, set := range []bool{cfg.WorkloadAPI != "", files, cfg.Source != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, nil, errors.New("client: give exactly one identity: WorkloadAPI, the SVID files, or Source")
	}
	switch {
	case cfg.Source != nil:
		return cfg.Source, func() error { return nil }, nil
	case cfg.WorkloadAPI != "":
		src, err := identity.NewWorkloadSource(ctx, cfg.WorkloadAPI, 30*time.Second, log)
		if err != nil {
			return nil, nil, fmt.Errorf("client: %w", err)
		}
		return src, src.Close, nil
	}
	// Files rotated in place (spiffe-helper, cert-manager) are picked up
	// for new connections.
	src, err := identity.WatchFiles(cfg.CertFile, cfg.KeyFile, cfg.BundleFile, identity.FileOptions{Log: log})
	if err != nil {
		return nil, nil, fmt.Errorf("client: load SVID files: %w", err)
	}
	return src, func() error { return nil }, nil
}

// Close releases the connection and the identity source.
func (c *Client) Close() error {
	err := c.conn.Close()
	if cerr := c.closer(); err == nil {
		err = cerr
	}
	return err
}

// Get returns name's value: from the local cache until its refresh time,
// then from the server. When the server cannot be reached (or answers
// Unavailable), the last good value is returned with Stale set, until
// MaxStale past its refresh time; other errors (not granted, not found)
// are returned as they are, and drop the cached value.
func (c *Client) Get(ctx context.Context, name string) (Secret, error) {
	now := c.now()
	c.mu.Lock()
	cached, ok := c.cache[name]
	c.mu.Unlock()
	if ok && now.Before(cached.RefreshAt) {
		return cached.copy(), nil
	}
	resp, err := c.secrets.Resolve(ctx, &spv1.ResolveRequest{Names: []string{name}})
	if err == nil && len(resp.GetValues()) == 1 {
		s := fromProto(resp.GetValues()[0])
		c.store(s)
		return s.copy(), nil
	}
	if err == nil {
		err = fmt.Errorf("client: resolve %s: the server returned %d values", name, len(resp.GetValues()))
	}
	if ok && transient(err) && ctx.Err() == nil && now.Before(cached.RefreshAt.Add(c.cfg.MaxStale)) {
		c.log.WarnContext(ctx, "serving the last good value: secretplane is unreachable", "secret", name, "version", cached.Version, "error", status.Convert(err).Message())
		s := cached.copy()
		s.Stale = true
		return s, nil
	}
	if !transient(err) {
		c.mu.Lock()
		delete(c.cache, name)
		c.mu.Unlock()
	}
	return Secret{}, fmt.Errorf("client: resolve %s: %w", name, err)
}

func (c *Client) store(s Secret) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cache[s.Name] = s.copy()
}

// transient: failures that a cached value may paper over.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
		return true
	}
	return false
}

func fromProto(v *spv1.SecretValue) Secret {
	s := Secret{Name: v.GetName(), Version: v.GetVersion(), Value: v.GetValue(), Fingerprint: v.GetFingerprint()}
	if v.GetRefreshTime() != nil {
		s.RefreshAt = v.GetRefreshTime().AsTime()
	}
	if v.GetExpireTime() != nil {
		s.ExpiresAt = v.GetExpireTime().AsTime()
	}
	return s
}

func (s Secret) copy() Secret {
	s.Value = append([]byte(nil), s.Value...)
	return s
}
