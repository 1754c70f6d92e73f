package api

import (
	"context"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/secretplane/secretplane/controlplane/paging"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// PolicyServer implements secretplane.v1.PolicyService.
type PolicyServer struct {
	spv1.UnimplementedPolicyServiceServer
	policies *policy.Manager
	log      *slog.Logger
}

// NewPolicyServer returns the policy service.
func NewPolicyServer(m *policy.Manager, log *slog.Logger) *PolicyServer {
	return &PolicyServer{policies: m, log: log}
}

func policyToProto(p store.Policy) *spv1.Policy {
	return &spv1.Policy{Name: p.Name, Description: p.Description, Subject: p.Subject, Verbs: p.Verbs, Objects: p.Objects,
		Etag: etag(p.Revision), CreateTime: timestamppb.New(p.CreateTime), UpdateTime: timestamppb.New(p.UpdateTime)}
}

// PutPolicy implements PolicyService.PutPolicy.
func (s *PolicyServer) PutPolicy(ctx context.Context, req *spv1.PutPolicyRequest) (*spv1.PutPolicyResponse, error) {
	p := req.GetPolicy()
	if p == nil {
		return nil, toStatus(ctx, s.log, fieldError("policy", "is required"))
	}
	rev, err := parseEtag("policy.etag", p.GetEtag())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	in := store.Policy{Name: p.GetName(), Description: p.GetDescription(), Subject: p.GetSubject(), Verbs: p.GetVerbs(), Objects: p.GetObjects()}
	out, created, err := s.policies.Put(ctx, in, policy.Write{CreateOnly: req.GetCreateOnly(), IfRevision: rev, Force: req.GetForce()})
	if err != nil {
		return nil, toStatus(ctx, s.log, prefixed(err, "policy."))
	}
	return &spv1.PutPolicyResponse{Policy: policyToProto(out), Created: created}, nil
}

// GetPolicy implements PolicyService.GetPolicy.
func (s *PolicyServer) GetPolicy(ctx context.Context, req *spv1.GetPolicyRequest) (*spv1.Policy, error) {
	out, err := s.policies.Get(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return policyToProto(out), nil
}

// ListPolicies implements PolicyService.ListPolicies.
func (s *PolicyServer) ListPolicies(ctx context.Context, req *spv1.ListPoliciesRequest) (*spv1.ListPoliciesResponse, error) {
	items, next, err := s.policies.List(ctx, paging.Request{Prefix: req.GetPrefix(), PageSize: int(req.GetPageSize()), PageToken: req.GetPageToken()})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	resp := &spv1.ListPoliciesResponse{NextPageToken: next}
	for _, p := range items {
		resp.Policies = append(resp.Policies, policyToProto(p))
	}
	return resp, nil
}

// DeletePolicy implements PolicyService.DeletePolicy.
func (s *PolicyServer) DeletePolicy(ctx context.Context, req *spv1.DeletePolicyRequest) (*spv1.DeletePolicyResponse, error) {
	rev, err := parseEtag("etag", req.GetEtag())
	if err == nil {
		err = s.policies.Delete(ctx, req.GetName(), rev)
	}
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	return &spv1.DeletePolicyResponse{}, nil
}

// Explain implements PolicyService.Explain.
func (s *PolicyServer) Explain(ctx context.Context, req *spv1.ExplainRequest) (*spv1.ExplainResponse, error) {
	id, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, toStatus(ctx, s.log, fieldError("spiffe_id", "is not a SPIFFE ID: "+err.Error()))
	}
	if err := validate.Identifier(id.String()); err != nil {
		return nil, toStatus(ctx, s.log, fieldError("spiffe_id", err.Error()))
	}
	verb := policy.Read
	if req.GetVerb() != "" {
		v, ok := policy.ParseVerb(req.GetVerb())
		if !ok {
			return nil, toStatus(ctx, s.log, fieldError("verb", "is not a verb (want read, watch, rotate, admin or bind)"))
		}
		verb = v
	}
	var d policy.Decision
	if verb == policy.Bind {
		if req.GetObject() == "" {
			return nil, toStatus(ctx, s.log, fieldError("object", "is required: the SecretRef to bind"))
		}
		ref, err := secretref.Parse(req.GetObject())
		if err != nil {
			return nil, toStatus(ctx, s.log, fieldError("object", err.Error()))
		}
		d = s.policies.ExplainBind(id, ref)
	} else {
		if err := validate.Name(req.GetObject()); err != nil {
			return nil, toStatus(ctx, s.log, fieldError("object", err.Error()))
		}
		d = s.policies.Explain(id, verb, req.GetObject())
	}
	return &spv1.ExplainResponse{Allowed: d.Allowed, Policy: d.Grant}, nil
}

// AuditBindings implements PolicyService.AuditBindings.
func (s *PolicyServer) AuditBindings(ctx context.Context, _ *spv1.AuditBindingsRequest) (*spv1.AuditBindingsResponse, error) {
	rep, err := s.policies.AuditBindings(ctx)
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	resp := &spv1.AuditBindingsResponse{Total: int32(rep.Total), Secrets: int32(rep.Secrets), Configs: int32(rep.Configs)}
	for _, f := range rep.Findings {
		resp.Findings = append(resp.Findings, &spv1.BindingFinding{Kind: f.Kind, Object: f.Object, Ref: f.Ref, Policy: f.Policy, Subject: f.Subject})
	}
	return resp, nil
}
