package api

import (
	"context"
	"errors"
	"log/slog"

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
	if req.GetId() == "" {
		rs, err := s.rotations.List(ctx, store.RotationQuery{Secret: req.GetSecret(), Limit: 1})
		if err != nil {
			return nil, toStatus(ctx, s.log, err)
		}
		if len(rs) == 0 {
			return nil, status.Errorf(codes.NotFound, "secret %s has no rotation", req.GetSecret())
		}
		return rotationToProto(rs[0]), nil
	}
	r, err := s.rotations.Get(ctx, req.GetId())
	if err != nil || r.Secret != req.GetSecret() {
		// Another secret's rotation is as absent as a missing one.
		return nil, status.Errorf(codes.NotFound, "secret %s has no rotation %.64q", req.GetSecret(), req.GetId())
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

func rotationStatus(ctx context.Context, log *slog.Logger, err error) error {
	switch {
	case errors.Is(err, rotation.ErrRunning), errors.Is(err, rotation.ErrFixedVersion):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, rotation.ErrUnknownMethod):
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
		CreateTime: timestamppb.New(r.CreateTime), UpdateTime: timestamppb.New(r.UpdateTime)}
	if !r.Deadline.IsZero() {
		out.Deadline = timestamppb.New(r.Deadline)
	}
	return out
}
