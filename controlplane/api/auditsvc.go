package api

import (
	"context"
	"log/slog"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/secretplane/secretplane/controlplane/audit"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// AuditServer implements secretplane.v1.AuditService.
type AuditServer struct {
	spv1.UnimplementedAuditServiceServer
	log    audit.Reader
	logger *slog.Logger
}

// NewAuditServer returns the audit service over the log's store.
func NewAuditServer(r audit.Reader, logger *slog.Logger) *AuditServer {
	return &AuditServer{log: r, logger: logger}
}

// Query implements AuditService.Query.
func (s *AuditServer) Query(ctx context.Context, req *spv1.AuditQueryRequest) (*spv1.AuditQueryResponse, error) {
	limit := int(req.GetLimit())
	switch {
	case limit < 0:
		return nil, toStatus(ctx, s.logger, fieldError("limit", "must not be negative"))
	case limit == 0:
		limit = 100
	case limit > 1000:
		limit = 1000
	}
	events, err := s.log.QueryAudit(ctx, store.AuditQuery{AfterSeq: req.GetAfterSeq(), Actor: req.GetActor(), Action: req.GetAction(), Limit: limit, Newest: req.GetNewest()})
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	resp := &spv1.AuditQueryResponse{}
	for _, e := range events {
		resp.Events = append(resp.Events, &spv1.AuditEvent{Seq: e.Seq, Time: timestamppb.New(e.Time), Actor: e.Actor, Action: e.Action, Target: e.Target,
			Decision: e.Decision, Policy: e.Policy, Outcome: e.Outcome, RequestId: e.RequestID, Ref: e.Ref, Refused: e.Refused, PrevHash: e.PrevHash, Hash: e.Hash})
	}
	return resp, nil
}

// Verify implements AuditService.Verify.
func (s *AuditServer) Verify(ctx context.Context, _ *spv1.AuditVerifyRequest) (*spv1.AuditVerifyResponse, error) {
	rep, err := audit.Verify(ctx, s.log)
	if err != nil {
		return nil, toStatus(ctx, s.logger, err)
	}
	resp := &spv1.AuditVerifyResponse{Events: rep.Events}
	for _, p := range rep.Problems {
		resp.Problems = append(resp.Problems, p.String())
	}
	return resp, nil
}
