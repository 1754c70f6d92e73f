package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/validate"
)

// auditRefusedHandshakes returns a copy of cfg that logs and records in
// the audit log every client certificate it refuses (foreign trust domain,
// unknown CA, expired SVID) and every client that presents none. The
// claimed identity is unverified and recorded as such.
//
// A client without a certificate would be refused by the TLS stack before
// any callback runs (RequireAnyClientCert), leaving no trace; so the copy
// only asks for one and refuses its absence itself, with the same result
// for the client.
func auditRefusedHandshakes(cfg *tls.Config, a Auditor, log *slog.Logger) *tls.Config {
	out := cfg.Clone()
	verify := cfg.VerifyPeerCertificate
	if verify == nil || a == nil {
		return out
	}
	if out.ClientAuth == tls.RequireAnyClientCert {
		out.ClientAuth = tls.RequestClientCert
	}
	lines := &everySecond{}
	out.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		var err error
		reason := "client certificate refused"
		if len(raw) == 0 {
			err, reason = errNoClientCert, "no client certificate"
		} else if err = verify(raw, chains); err == nil {
			return nil
		}
		actor := claimedID(raw)
		// Every refusal is audited; the log gets at most a line a second,
		// so that a flood of bad clients cannot flood it.
		if ok, skipped := lines.allow(time.Now()); ok {
			log.Warn("TLS handshake refused", "peer", actor, "reason", reason, "refused_since_last_line", skipped)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if rerr := a.Record(ctx, audit.Event{
			Actor: actor, Action: "tls.handshake", Target: "server",
			Decision: audit.Deny, Outcome: reason,
		}); rerr != nil {
			log.Error("refused handshake not audited", "error", rerr)
		}
		return err
	}
	return out
}

var errNoClientCert = errors.New("tls: client didn't provide a certificate")

// everySecond lets one event a second through and counts the others.
type everySecond struct {
	mu      sync.Mutex
	last    time.Time
	skipped int
}

// allow reports whether the event at now may go through, and how many
// were held back since the last that did.
func (e *everySecond) allow(now time.Time) (bool, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Sub(e.last) < time.Second {
		e.skipped++
		return false, 0
	}
	skipped := e.skipped
	e.last, e.skipped = now, 0
	return true, skipped
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
