package sds

import (
	"context"
	"errors"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/material"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/store"
)

// fetch answers FetchSecrets: the current content of every name, or an
// error; a name that does not exist is NotFound (a unary call cannot be
// held).
func (s *Server) fetch(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	if err := checkType(req.GetTypeUrl(), false); err != nil {
		return nil, err
	}
	id, err := identity.CallerID(ctx)
	if err != nil {
		return nil, err
	}
	names := req.GetResourceNames()
	if len(names) == 0 {
		return nil, status.Error(codes.InvalidArgument, "resource_names: name the secrets to fetch")
	}
	if len(names) > s.cfg.MaxNames {
		return nil, status.Errorf(codes.InvalidArgument, "resource_names: at most %d names", s.cfg.MaxNames)
	}
	var secrets []string
	for _, n := range names {
		if !isBundleName(n) {
			secrets = append(secrets, n)
		}
	}
	req1 := access.Request{Actor: id, Action: sdsFetch, Verb: policy.Read, Names: secrets, Field: "resource_names", Target: ""}
	if len(secrets) == 0 {
		req1 = access.Request{Actor: id, Action: sdsFetch, Anyone: true, Target: names[0]}
	}
	call, err := s.cfg.Guard.Authorize(ctx, req1)
	if err != nil {
		return nil, denialStatus(ctx, err)
	}
	st := &stream{srv: s, ctx: ctx, action: sdsFetch}
	_ = st.noteNode(req.GetNode())
	versions := map[string]string{}
	var out []*anypb.Any
	var done []string
	for _, n := range names {
		if slices.Contains(done, n) {
			continue
		}
		done = append(done, n)
		b, err := s.current(ctx, call, n, st.form)
		if err != nil {
			_ = call.Finish(ctx, status.Code(err).String())
			return nil, err
		}
		versions[n] = b.version
		out = append(out, b.any)
	}
	if err := call.Finish(ctx, audit.OK); err != nil {
		return nil, denialStatus(ctx, err)
	}
	for _, n := range done {
		s.cfg.Consumers.SeenNode(id.String(), st.node, n, consumers.SDS, versions[n])
	}
	version := versions[done[0]]
	if len(done) > 1 {
		sorted := slices.Clone(done)
		slices.Sort(sorted)
		version = stateVersion(sorted, versions)
	}
	return &discoveryv3.DiscoveryResponse{VersionInfo: version, Resources: out, TypeUrl: SecretType}, nil
}

// current builds name's resource from what is there now.
func (s *Server) current(ctx context.Context, call *access.Call, name string, f form) (*built, error) {
	if isBundleName(name) {
		if s.bundles == nil {
			return nil, status.Errorf(codes.NotFound, "no trust bundle is served as %s", name)
		}
		b := s.bundles.built(name, f)
		if b == nil {
			return nil, status.Errorf(codes.NotFound, "no trust bundle is served as %s", name)
		}
		return b, nil
	}
	ref, canonical, err := s.cfg.Catalog.LookupBinding(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "secret %s is not registered", name)
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "secret %s could not be looked up", name)
	}
	call.NoteRef(canonical)
	kind, err := s.cfg.Catalog.LookupKind(ctx, name)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "secret %s could not be looked up", name)
	}
	res, err := s.cfg.Resolver.Get(ctx, ref)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "secret %s: its backend has no value", name)
	case err != nil:
		s.log.WarnContext(ctx, "SDS fetch could not read a secret", "secret_name", name, "error", err.Error())
		return nil, status.Errorf(codes.Unavailable, "secret %s could not be read from its backend", name)
	}
	b, err := s.built.secret(ctx, name, canonical, kind, res.Fingerprint, res.Data, s.cfg.Now())
	clear(res.Data)
	if err != nil {
		var me *material.Error
		if errors.As(err, &me) {
			return nil, status.Errorf(codes.FailedPrecondition, "secret %s: %s", name, me.Error())
		}
		return nil, status.Errorf(codes.Internal, "secret %s could not be built", name)
	}
	return b, nil
}
