package api

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
)

// toStatus maps a core error to a gRPC status. Core errors never carry
// secret values, so their text is safe to return; unexpected errors are
// logged and answered with a generic message and the request id.
func toStatus(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var (
		verr *validate.Error
		aerr *catalog.AccessError
	)
	switch {
	case errors.As(err, &verr):
		return invalidArgument(verr)
	case errors.As(err, &aerr):
		return withViolations(codes.FailedPrecondition, aerr.Error(), aerr.Violations)
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.Aborted, err.Error()+": the etag is stale; read the object again and retry")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	id := RequestID(ctx)
	log.ErrorContext(ctx, "request failed", "request_id", id, "error", err)
	return status.Errorf(codes.Internal, "internal error (request id %s)", id)
}

// invalidArgument builds an INVALID_ARGUMENT status with a
// google.rpc.BadRequest detail listing every field violation.
func invalidArgument(verr *validate.Error) error {
	return withViolations(codes.InvalidArgument, verr.Error(), verr.Violations)
}

// withViolations builds a status with a google.rpc.BadRequest detail.
func withViolations(code codes.Code, msg string, violations []validate.Violation) error {
	st := status.New(code, msg)
	br := &errdetails.BadRequest{}
	for _, v := range violations {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field:       v.Field,
			Description: v.Description,
		})
	}
	withDetails, err := st.WithDetails(br)
	if err != nil {
		return st.Err()
	}
	return withDetails.Err()
}

// fieldError is a one-violation validation error.
func fieldError(field, description string) error {
	return &validate.Error{Violations: []validate.Violation{{Field: field, Description: description}}}
}
