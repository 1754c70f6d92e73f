package server

import (
	"context"

	"github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/diagnose"
)

// StaticFindings are the configuration checks the server runs before it
// serves, as doctor's findings: the one place `secretplane doctor` (on a
// running server and on --config FILE) takes them from.
//
// The startup checks (Preflight: plain-http backends outside dev,
// PostgreSQL's sslmode, the local key file's mode, literal secrets in
// configuration files, data and audit directories others can write) are
// being written; until they land this reports none, and doctor says so.
func StaticFindings(_ context.Context, _ Config) []diagnose.Finding {
	return nil
}

// StaticChecksAvailable reports whether StaticFindings runs any check.
const StaticChecksAvailable = false

// doctor is DoctorService's checks over the server's parts.
func (s *Server) doctor(refs *backend.Registry) api.Doctor {
	return func(ctx context.Context) []diagnose.Finding {
		return diagnose.Run(ctx, diagnose.Options{
			Secrets: s.store, Policies: s.store, Consumers: s.deps, Refs: refs, Backends: s.backends,
			Static: func(ctx context.Context) []diagnose.Finding { return StaticFindings(ctx, s.cfg) },
		})
	}
}
