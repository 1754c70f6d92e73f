package api

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/rotation"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// Rotations starts and reads rotations (rotation.Manager).
type Rotations interface {
	Start(ctx context.Context, req rotation.StartRequest) (store.Rotation, error)
	Get(ctx context.Context, id string) (store.Rotation, error)
	List(ctx context.Context, q store.RotationQuery) ([]store.Rotation, error)
	Cancel(ctx context.Context, id, actor string) (store.Rotation, error)
	Rollback(ctx context.Context, id, actor string) (store.Rotation, error)
	SetPolicy(ctx context.Context, p store.RotationPolicy) (store.RotationPolicy, error)
	Policy(ctx context.Context, secret string) (store.RotationPolicy, error)
	DeletePolicy(ctx context.Context, secret string) error
}

// RotationServer implements secretplane.v1.RotationService; the
// interceptor has decided "rotate" on the secret.
type RotationServer struct {
	spv1.UnimplementedRotationServiceServer
	rotations Rotations
	log       *slog.Logger
}

// StartRotation implements RotationService.StartRotation.
func (s *RotationServer) StartRotation(ctx context.Context, req *spv1.StartRotationRequest) (*spv1.Rotation, error) {
	if s.rotations == nil {
		return nil, status.Error(codes.Unimplemented, "rotations are not configured on this server")
	}
	id, _ := PeerID(ctx)
	r, err := s.rotations.Start(ctx, rotation.StartRequest{Secret: req.GetSecret(), Method: req.GetMethod(), Emergency: req.GetEmergency(), Actor: id.String()})
	if err != nil {
		return nil, rotationStatus(ctx, s.log, err)
	}
	return rotationToProto(r), nil
}

// GetRotation implements RotationService.GetRotation.
func (s *RotationServer) GetRotation(ctx context.Context, req *spv1.GetRotationRequest) (*spv1.Rotation, error) {
	if s.rotations == nil {
		return nil, status.Error(codes.Unimplemented, "rotations are not configured on this server")
	}
	r, err := s.rotationOf(ctx, req.GetSecret(), req.GetId())
	if err != nil {
		return nil, err
	}
	return rotationToProto(r), nil
}

// ListRotations implements RotationService.ListRotations.
func (s *RotationServer) ListRotations(ctx context.Context, req *spv1.ListRotationsRequest) (*spv1.ListRotationsResponse, error) {
	if s.rotations == nil {
		return nil, status.Error(codes.Unimplemented, "rotations are not configured on this server")
	}
	limit := int(req.GetLimit())
	if limit <= 0 || limit > 100 {
		limit = 100
	}
	rs, err := s.rotations.List(ctx, store.RotationQuery{Secret: req.GetSecret(), Limit: limit})
	if err != nil {
		return nil, toStatus(ctx, s.log, err)
	}
	out := &spv1.ListRotationsResponse{Rotations: make([]*spv1.Rotation, len(rs))}
	for i, r := range rs {
		out.Rotations[i] = rotationToProto(r)
	}
	return out, nil
}

// CancelRotation implements RotationService.CancelRotation.
func (s *RotationServer) CancelRotation(ctx context.Context, req *spv1.CancelRotationRequest) (*spv1.Rotation, error) {
	if s.rotations == nil {
		return nil, status.Error(codes.Unimplemented, "rotations are not configured on this server")
	}
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "id: the rotation to cancel is required (rotate status shows it)")
	}
	if _, err := s.rotationOf(ctx, req.GetSecret(), req.GetId()); err != nil {
		return nil, err
	}
	id, _ := PeerID(ctx)
	r, err := s.rotations.Cancel(ctx, req.GetId(), id.String())
	if err != nil {
		return nil, rotationStatus(ctx, s.log, err)
	}
	return rotationToProto(r), nil
}

// RollbackRotation implements RotationService.RollbackRotation.
func (s *RotationServer) RollbackRotation(ctx context.Context, req *spv1.RollbackRotationRequest) (*spv1.Rotation, error) {
	if s.rotations == nil {
		return nil, status.Error(codes.Unimplemented, "rotations are not configured on this server")
	}
	r, err := s.rotationOf(ctx, req.GetSecret(), req.GetId())
	if err != nil {
		return nil, err
	}
	id, _ := PeerID(ctx)
	if r, err = s.rotations.Rollback(ctx, r.ID, id.String()); err != nil {
		return nil, rotationStatus(ctx, s.log, err)
	}
	return rotationToProto(r), nil
}

// rotationOf returns the secret's rotation id, or its newest when id is
// empty; another secret's rotation is as absent as a missing one.
func (s *RotationServer) rotationOf(ctx context.Context, secret, id string) (store.Rotation, error) {
	if id == "" {
		rs, err := s.rotations.List(ctx, store.RotationQuery{Secret: secret, Limit: 1})
		if err != nil {
			return store.Rotation{}, toStatus(ctx, s.log, err)
		}
		if len(rs) == 0 {
			return store.Rotation{}, status.Errorf(codes.NotFound, "secret %s has no rotation", secret)
		}
		return rs[0], nil
	}
	r, err := s.rotations.Get(ctx, id)
	if err != nil || r.Secret != secret {
		return store.Rotation{}, status.Errorf(codes.NotFound, "secret %s has no rotation %.64q", secret, id)
	}
	return r, nil
}

// SetRotationPolicy implements RotationService.SetRotationPolicy.
func (s *RotationServer) SetRotationPolicy(ctx context.Context, req *spv1.SetRotationPolicyRequest) (*spv1.RotationPolicy, error) {
	if s.rotations == nil {
		return nil, status.Error(codes.Unimplemented, "rotations are not configured on this server")
	}
	p := req.GetPolicy()
	if p.GetEverySeconds() < 0 || p.GetEverySeconds() > int64(100*365*24*3600) {
		return nil, status.Error(codes.InvalidArgument, "policy.every_seconds: want 0 (no cadence) up to 100 years")
	}
	saved, err := s.rotations.SetPolicy(ctx, store.RotationPolicy{Secret: p.GetSecret(), Method: p.GetMethod(), Params: p.GetParams(),
		Every: time.Duration(p.GetEverySeconds()) * time.Second, Window: p.GetWindow(), RenewAt: p.GetRenewAt()})
	if err != nil {
		return nil, rotationStatus(ctx, s.log, err)
	}
	return rotationPolicyToProto(saved), nil
}

// GetRotationPolicy implements RotationService.GetRotationPolicy.
func (s *RotationServer) GetRotationPolicy(ctx context.Context, req *spv1.GetRotationPolicyRequest) (*spv1.RotationPolicy, error) {
	if s.rotations == nil {
		return nil, status.Error(codes.Unimplemented, "rotations are not configured on this server")
	}
	p, err := s.rotations.Policy(ctx, req.GetSecret())
	if err != nil {
		return nil, rotationStatus(ctx, s.log, err)
	}
	return rotationPolicyToProto(p), nil
}

// DeleteRotationPolicy implements RotationService.DeleteRotationPolicy.
func (s *RotationServer) DeleteRotationPolicy(ctx context.Context, req *spv1.DeleteRotationPolicyRequest) (*spv1.DeleteRotationPolicyResponse, error) {
	if s.rotations == nil {
		return nil, status.Error(codes.Unimplemented, "rotations are not configured on this server")
	}
	if err := s.rotations.DeletePolicy(ctx, req.GetSecret()); err != nil {
		return nil, rotationStatus(ctx, s.log, err)
	}
	return &spv1.DeleteRotationPolicyResponse{}, nil
}

func rotationPolicyToProto(p store.RotationPolicy) *spv1.RotationPolicy {
	return &spv1.RotationPolicy{Secret: p.Secret, Method: p.Method, Params: p.Params, EverySeconds: int64(p.Every / time.Second),
		Window: p.Window, RenewAt: p.RenewAt, CreateTime: timestamppb.New(p.CreateTime), UpdateTime: timestamppb.New(p.UpdateTime)}
}

func rotationStatus(ctx context.Context, log *slog.Logger, err error) error {
	switch {
	case errors.Is(err, rotation.ErrRunning), errors.Is(err, rotation.ErrFixedVersion),
		errors.Is(err, rotation.ErrFinal), errors.Is(err, rotation.ErrSuperseded), errors.Is(err, rotation.ErrEmergencyRollback):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, rotation.ErrUnknownMethod), errors.Is(err, rotation.ErrBadPolicy):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, backend.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, backend.ErrNotFound), errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	}
	return toStatus(ctx, log, err)
}

func rotationToProto(r store.Rotation) *spv1.Rotation {
	out := &spv1.Rotation{Id: r.ID, Secret: r.Secret, Method: r.Method, State: r.State, Actor: r.Actor, Emergency: r.Emergency,
		FromVersion: r.FromVersion, ToVersion: r.ToVersion, Detail: r.Detail,
		CreateTime: timestamppb.New(r.CreateTime), UpdateTime: timestamppb.New(r.UpdateTime), Trigger: r.Trigger}
	if !r.Deadline.IsZero() {
		out.Deadline = timestamppb.New(r.Deadline)
	}
	return out
}
