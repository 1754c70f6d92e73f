package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// requestIDHeader is the metadata key of a request id (api.RequestIDHeader).
const requestIDHeader = "x-request-id"

// connection is a CLI session with the server.
type connection struct {
	conn  *grpc.ClientConn
	admin spv1.AdminServiceClient
	g     *globalFlags
}

// dial connects to the server with mutual TLS. Settings come from flags,
// then environment, then the dev server's data directory, the way the vault
// CLI finds its token: a dev user needs none of them.
func dial(g *globalFlags) (*connection, error) {
	var ep server.DevEndpoint
	epErr := readDevEndpoint(g.dataDir, &ep)

	addr := g.addr
	if addr == "" {
		if epErr != nil {
			return nil, fmt.Errorf("no server address: %w; a dev server started with --data-dir DIR (or `make run DATA_DIR=DIR`) is found with the same --data-dir DIR or %s=DIR; another server needs --addr or %s (or start one: `secretplane server --dev`)", epErr, envDataDir, envAddr)
		}
		addr = ep.Address
	}
	cert, key, bundle := g.cert, g.key, g.bundle
	if cert == "" && key == "" && bundle == "" {
		dir := filepath.Join(g.dataDir, identity.DevAdminDir)
		cert, key, bundle = filepath.Join(dir, identity.SVIDCertFile), filepath.Join(dir, identity.SVIDKeyFile), filepath.Join(dir, identity.BundleFile)
	} else if cert == "" || key == "" || bundle == "" {
		return nil, errors.New("--cert, --key and --bundle go together")
	}
	src, err := identity.LoadFiles(cert, key, bundle)
	if err != nil && g.cert == "" {
		return nil, fmt.Errorf("client identity: the dev admin's of data directory %s: %w (pass the dev server's --data-dir or set %s, or give --cert, --key and --bundle)", absDir(g.dataDir), err, envDataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("client identity: %w", err)
	}
	serverID, err := resolveServerID(g.serverID, ep, epErr, src.ID().TrustDomain())
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID)))}
	if g.requestID != "" {
		id := g.requestID
		opts = append(opts,
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
				return invoker(metadata.AppendToOutgoingContext(ctx, requestIDHeader, id), method, req, reply, cc, o...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
				return streamer(metadata.AppendToOutgoingContext(ctx, requestIDHeader, id), desc, cc, method, o...)
			}))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return &connection{conn: conn, admin: spv1.NewAdminServiceClient(conn), g: g}, nil
}

func resolveServerID(flag string, ep server.DevEndpoint, epErr error, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	switch {
	case flag != "":
		id, err := spiffeid.FromString(flag)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("--server-id: %w", err)
		}
		return id, nil
	case epErr == nil && ep.ServerID != "":
		id, err := spiffeid.FromString(ep.ServerID)
		if err != nil {
			return spiffeid.ID{}, fmt.Errorf("dev endpoint server id: %w", err)
		}
		return id, nil
	default:
		return identity.DevServerID(td), nil
	}
}

func readDevEndpoint(dataDir string, ep *server.DevEndpoint) error {
	raw, err := os.ReadFile(filepath.Join(dataDir, server.DevEndpointFile))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no dev server found in data directory %s (it has no %s)", absDir(dataDir), server.DevEndpointFile)
	}
	if err != nil {
		return fmt.Errorf("read dev endpoint: %w", err)
	}
	if err := json.Unmarshal(raw, ep); err != nil {
		return fmt.Errorf("parse %s: %w", server.DevEndpointFile, err)
	}
	return nil
}

// absDir is dir made absolute for messages (as given when that fails).
func absDir(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}

func (c *connection) close() { _ = c.conn.Close() }

// call runs fn with the per-call deadline.
func (c *connection) call(ctx context.Context, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.g.timeout)
	defer cancel()
	return fn(ctx)
}

// withConn dials, runs fn, and closes.
func withConn(ctx context.Context, g *globalFlags, fn func(context.Context, *connection) error) error {
	c, err := dial(g)
	if err != nil {
		return err
	}
	defer c.close()
	return c.call(ctx, func(ctx context.Context) error { return fn(ctx, c) })
}
