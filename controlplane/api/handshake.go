package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/validate"
)

// auditRefusedHandshakes returns a copy of cfg that records every client
// certificate it refuses (foreign trust domain, unknown CA, expired SVID) in
// the audit log. The claimed identity is unverified and recorded as such.
func auditRefusedHandshakes(cfg *tls.Config, a Auditor, log *slog.Logger) *tls.Config {
	out := cfg.Clone()
	verify := cfg.VerifyPeerCertificate
	if verify == nil || a == nil {
		return out
	}
	out.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		err := verify(raw, chains)
		if err == nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if rerr := a.Record(ctx, audit.Event{
			Actor: claimedID(raw), Action: "tls.handshake", Target: "server",
			Decision: audit.Deny, Outcome: "client certificate refused",
		}); rerr != nil {
			log.Error("refused handshake not audited", "error", rerr)
		}
		return err
	}
	return out
}

// claimedID renders the SPIFFE ID a refused certificate claims, marked as
// unverified; anything that is not a clean SPIFFE ID is not repeated.
func claimedID(raw [][]byte) string {
	if len(raw) == 0 {
		return "unverified:none"
	}
	cert, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return "unverified:unparseable certificate"
	}
	id, err := x509svid.IDFromCert(cert)
	if err != nil || validate.Identifier(id.String()) != nil {
		return "unverified:no SPIFFE ID"
	}
	return "unverified:" + id.String()
}
