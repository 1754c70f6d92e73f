package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// MaxResolveNames bounds a batch Resolve.
const MaxResolveNames = 100

// SecretsServer implements secretplane.v1.SecretsService.Resolve. (Watch
// answers UNIMPLEMENTED until it lands.) Authorisation (read on every name)
// and audit happen in the interceptor before it runs.
type SecretsServer struct {
	spv1.UnimplementedSecretsServiceServer
	catalog  *catalog.Catalog
	resolver *resolve.Resolver
	log      *slog.Logger
}

// NewSecretsServer returns the workload-facing service.
func NewSecretsServer(c *catalog.Catalog, r *resolve.Resolver, log *slog.Logger) *SecretsServer {
	return &SecretsServer{catalog: c, resolver: r, log: log}
}

// Resolve implements SecretsService.Resolve.
func (s *SecretsServer) Resolve(ctx context.Context, req *spv1.ResolveRequest) (*spv1.ResolveResponse, error) {
	names := req.GetNames()
	switch {
	case len(names) == 0:
		return nil, toStatus(ctx, s.log, fieldError("names", "is required"))
	case len(names) > MaxResolveNames:
		return nil, toStatus(ctx, s.log, fieldError("names", fmt.Sprintf("has %d names; the limit is %d", len(names), MaxResolveNames)))
	}
	resp := &spv1.ResolveResponse{Values: make([]*spv1.SecretValue, 0, len(names))}
	for _, name := range names {
		v, err := s.resolveOne(ctx, name)
		if err != nil {
			return nil, err
		}
		resp.Values = append(resp.Values, v)
	}
	return resp, nil
}

func (s *SecretsServer) resolveOne(ctx context.Context, name string) (*spv1.SecretValue, error) {
	sec, err := s.catalog.LookupSecret(ctx, name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "secret %s is not registered", name)
		}
		return nil, toStatus(ctx, s.log, err)
	}
	ref, err := secretref.Parse(sec.Ref)
	if err != nil {
		return nil, toStatus(ctx, s.log, fmt.Errorf("secret %s has an unparseable stored ref: %w", name, err))
	}
	res, err := s.resolver.Get(ctx, ref)
	if err != nil {
		return nil, backendStatus(ctx, s.log, name, err)
	}
	v := &spv1.SecretValue{Name: name, Version: res.Version, Value: res.Data, Fingerprint: res.Fingerprint, RefreshTime: timestamppb.New(res.RefreshAt)}
	if !res.ExpiresAt.IsZero() {
		v.ExpireTime = timestamppb.New(res.ExpiresAt)
	}
	return v, nil
}

// backendStatus maps a resolution failure to a status naming the secret
// and its ref (backend errors carry the ref, never the value).
func backendStatus(ctx context.Context, log *slog.Logger, name string, err error) error {
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return status.Errorf(codes.NotFound, "secret %s: %v", name, err)
	case errors.Is(err, backend.ErrPermissionDenied):
		return status.Errorf(codes.PermissionDenied, "secret %s: the backend refused secretplane's credentials: %v", name, err)
	case errors.Is(err, backend.ErrInvalidValue):
		return status.Errorf(codes.FailedPrecondition, "secret %s: %v", name, err)
	case errors.Is(err, resolve.ErrStale), errors.Is(err, backend.ErrUnavailable):
		return status.Errorf(codes.Unavailable, "secret %s: %v", name, err)
	}
	return toStatus(ctx, log, err)
}
