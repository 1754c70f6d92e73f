package server

import (
	"context"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend/vault"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/identity"
)

// issuers are the certificate issuers rotations re-issue from: the Vault
// backend's PKI engines when Vault is configured, the built-in CA in dev
// mode.
func (s *Server) issuers() map[string]rotation.Issuer {
	out := map[string]rotation.Issuer{}
	for _, b := range s.backends {
		if v, ok := b.(*vault.Backend); ok {
			out["vault"] = vaultIssuer{v}
		}
	}
	if s.dev != nil {
		out["builtin"] = CAIssuer{s.dev.CA}
	}
	for k, v := range s.cfg.Rotation.Issuers {
		out[k] = v
	}
	return out
}

type vaultIssuer struct{ b *vault.Backend }

func (v vaultIssuer) Issue(ctx context.Context, req rotation.IssueRequest) ([]byte, []byte, error) {
	return v.b.IssueCertificate(ctx, req.Path, req.CommonName, req.AltNames, req.TTL)
}

// CAIssuer issues from a CA of ours (the dev CA).
type CAIssuer struct{ CA *identity.CA }

// Issue implements rotation.Issuer.
func (c CAIssuer) Issue(_ context.Context, req rotation.IssueRequest) ([]byte, []byte, error) {
	return c.CA.IssueCertificate(time.Now(), req.CommonName, req.AltNames, req.TTL)
}
