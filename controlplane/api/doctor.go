package api

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/diagnose"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Doctor runs doctor's checks once (diagnose.Run over the server's parts).
type Doctor func(ctx context.Context) []diagnose.Finding

// DoctorServer implements secretplane.v1.DoctorService; the interceptor
// has decided admin on "*". Findings carry names and refs, never a value.
type DoctorServer struct {
	spv1.UnimplementedDoctorServiceServer
	doctor Doctor
}

// NewDoctorServer returns the doctor service over d (nil: its calls
// answer Unimplemented).
func NewDoctorServer(d Doctor) *DoctorServer { return &DoctorServer{doctor: d} }

// Diagnose implements DoctorService.Diagnose.
func (s *DoctorServer) Diagnose(ctx context.Context, _ *spv1.DiagnoseRequest) (*spv1.DiagnoseResponse, error) {
	if s.doctor == nil {
		return nil, status.Error(codes.Unimplemented, "doctor is not available on this server")
	}
	found := s.doctor(ctx)
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	resp := &spv1.DiagnoseResponse{Checks: diagnose.Checks(), Findings: make([]*spv1.Finding, len(found))}
	for i, f := range found {
		resp.Findings[i] = &spv1.Finding{Check: f.Check, Severity: string(f.Severity), Subject: f.Subject, Message: f.Message}
	}
	return resp, nil
}
