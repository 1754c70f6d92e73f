package api

import (
	"context"
	"log/slog"

	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// AdminServer implements secretplane.v1.AdminService over the catalog.
type AdminServer struct {
	spv1.UnimplementedAdminServiceServer
	catalog   *catalog.Catalog
	consumers ConsumerLister
	log       *slog.Logger
}

// ConsumerLister reads the dependents list (consumers.Registry).
type ConsumerLister interface {
	List(ctx context.Context, secret string) ([]store.Consumer, error)
}

// NewAdminServer returns the admin service.
func NewAdminServer(c *catalog.Catalog, cl ConsumerLister, log *slog.Logger) *AdminServer {
	return &AdminServer{catalog: c, consumers: cl, log: log}
}

// ListConsumers implements AdminService.ListConsumers.
func (s *AdminServer) ListConsumers(ctx context.Context, req *spv1.ListConsumersRequest) (*spv1.ListConsumersResponse, error) {
	if err := validate.Name(req.GetName()); err != nil {
		return nil, toStatus(ctx, s.log, fieldError("name", err.Error()))
	}
	cs, err := s.consumers.List(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	resp := &spv1.ListConsumersResponse{Consumers: make([]*spv1.Consumer, len(cs))}
	for i, c := range cs {
		resp.Consumers[i] = consumerToProto(c)
	}
	return resp, nil
}

// PutSecret implements AdminService.PutSecret.
func (s *AdminServer) PutSecret(ctx context.Context, req *spv1.PutSecretRequest) (*spv1.PutSecretResponse, error) {
	if req.GetSecret() == nil {
		return nil, toStatus(ctx, s.log, fieldError("secret", "is required"))
	}
	rev, err := parseEtag("secret.etag", req.GetSecret().GetEtag())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out, created, err := s.catalog.PutSecret(ctx, secretFromProto(req.GetSecret()), catalog.Write{CreateOnly: req.GetCreateOnly(), IfRevision: rev})
	if err != nil {
		return nil, toStatus(ctx, s.log, prefixed(err, "secret."))
	}
	return &spv1.PutSecretResponse{Secret: secretToProto(out), Created: created}, nil
}

// GetSecret implements AdminService.GetSecret.
func (s *AdminServer) GetSecret(ctx context.Context, req *spv1.GetSecretRequest) (*spv1.Secret, error) {
	out, err := s.catalog.GetSecret(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	callOf(ctx).NoteRef(out.Ref)
	return secretToProto(out), nil
}

// ListSecrets implements AdminService.ListSecrets.
func (s *AdminServer) ListSecrets(ctx context.Context, req *spv1.ListSecretsRequest) (*spv1.ListSecretsResponse, error) {
	items, next, err := s.catalog.ListSecrets(ctx, catalog.ListRequest{Prefix: req.GetPrefix(), PageSize: int(req.GetPageSize()), PageToken: req.GetPageToken()})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	resp := &spv1.ListSecretsResponse{NextPageToken: next, Secrets: make([]*spv1.Secret, len(items))}
	for i, it := range items {
		resp.Secrets[i] = secretToProto(it)
	}
	return resp, nil
}

// DeleteSecret implements AdminService.DeleteSecret.
func (s *AdminServer) DeleteSecret(ctx context.Context, req *spv1.DeleteSecretRequest) (*spv1.DeleteSecretResponse, error) {
	rev, err := parseEtag("etag", req.GetEtag())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	gone, err := s.catalog.DeleteSecret(ctx, req.GetName(), rev)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	callOf(ctx).NoteRef(gone.Ref)
	return &spv1.DeleteSecretResponse{}, nil
}

// CheckRef implements AdminService.CheckRef.
func (s *AdminServer) CheckRef(ctx context.Context, req *spv1.CheckRefRequest) (*spv1.CheckRefResponse, error) {
	if req.GetRef() == "" {
		return nil, toStatus(ctx, s.log, fieldError("ref", "is required"))
	}
	ref, err := secretref.Parse(req.GetRef())
	if err != nil {
		return nil, toStatus(ctx, s.log, fieldError("ref", err.Error()))
	}
	return &spv1.CheckRefResponse{
		Canonical: ref.String(),
		Scheme:    string(ref.Scheme),
		Path:      ref.Path,
		Field:     ref.Field,
		Version:   ref.Version,
		Stage:     ref.Stage,
		Namespace: ref.Namespace,
		Region:    ref.Region,
	}, nil
}

// PutConfig implements AdminService.PutConfig.
func (s *AdminServer) PutConfig(ctx context.Context, req *spv1.PutConfigRequest) (*spv1.PutConfigResponse, error) {
	if req.GetConfig() == nil {
		return nil, toStatus(ctx, s.log, fieldError("config", "is required"))
	}
	rev, err := parseEtag("config.etag", req.GetConfig().GetEtag())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out, created, err := s.catalog.PutConfig(ctx, configFromProto(req.GetConfig()), catalog.Write{CreateOnly: req.GetCreateOnly(), IfRevision: rev, DryRun: req.GetDryRun()})
	if err != nil {
		return nil, toStatus(ctx, s.log, prefixed(err, "config."))
	}
	resp := &spv1.PutConfigResponse{Config: configToProto(out), Created: created}
	if req.GetDryRun() { // nothing was stored: no etag, no times
		resp.Config.Etag, resp.Config.CreateTime, resp.Config.UpdateTime = "", nil, nil
	}
	return resp, nil
}

// GetConfig implements AdminService.GetConfig.
func (s *AdminServer) GetConfig(ctx context.Context, req *spv1.GetConfigRequest) (*spv1.ConfigDocument, error) {
	out, err := s.catalog.GetConfig(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return configToProto(out), nil
}

// ListConfigs implements AdminService.ListConfigs.
func (s *AdminServer) ListConfigs(ctx context.Context, req *spv1.ListConfigsRequest) (*spv1.ListConfigsResponse, error) {
	items, next, err := s.catalog.ListConfigs(ctx, catalog.ListRequest{Prefix: req.GetPrefix(), PageSize: int(req.GetPageSize()), PageToken: req.GetPageToken()})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	resp := &spv1.ListConfigsResponse{NextPageToken: next, Configs: make([]*spv1.ConfigDocument, len(items))}
	for i, it := range items {
		resp.Configs[i] = configToProto(it)
	}
	return resp, nil
}

// DeleteConfig implements AdminService.DeleteConfig.
func (s *AdminServer) DeleteConfig(ctx context.Context, req *spv1.DeleteConfigRequest) (*spv1.DeleteConfigResponse, error) {
	rev, err := parseEtag("etag", req.GetEtag())
	if err == nil {
		err = s.catalog.DeleteConfig(ctx, req.GetName(), rev)
	}
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &spv1.DeleteConfigResponse{}, nil
}
