package server

import (
	"context"

	"github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/diagnose"
)

// StaticFindings are the configuration checks the server runs before it
// serves (Preflight), as doctor's findings: the one place `secretplane
// doctor` (on a running server and on --config FILE) takes them from.
func StaticFindings(ctx context.Context, cfg Config) []diagnose.Finding {
	var out []diagnose.Finding
	for _, p := range Preflight(ctx, withDevDefaults(cfg)) {
		sev := diagnose.Failure
		if p.Severity == Warning {
			sev = diagnose.Warning
		}
		out = append(out, diagnose.Finding{Check: p.Check, Severity: sev, Subject: p.Subject, Message: p.Message})
	}
	return out
}

// doctor is DoctorService's checks over the server's parts.
func (s *Server) doctor(refs *backend.Registry) api.Doctor {
	return func(ctx context.Context) []diagnose.Finding {
		return diagnose.Run(ctx, diagnose.Options{
			Secrets: s.store, Policies: s.store, Consumers: s.deps, Refs: refs, Backends: s.backends,
			Static: func(ctx context.Context) []diagnose.Finding { return StaticFindings(ctx, s.cfg) },
		})
	}
}
