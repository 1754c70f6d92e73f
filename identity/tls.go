package identity

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrNoPeerID is returned by PeerID when the connection carries no verified
// X.509-SVID.
var ErrNoPeerID = errors.New("no verified peer SPIFFE ID")

// ServerTLSConfig returns a TLS 1.3 server configuration that presents the
// source's SVID and requires every client to present an X.509-SVID that
// chains to a bundle of the source and belongs to one of the trust domains.
// Which ID may do what is decided after the handshake, by policy.
func ServerTLSConfig(src Source, trustDomains ...spiffeid.TrustDomain) (*tls.Config, error) {
	if len(trustDomains) == 0 {
		return nil, errors.New("server TLS config: no trust domain to accept clients from")
	}
	cfg := tlsconfig.MTLSServerConfig(src, src, authorizeMemberOfAny(trustDomains))
	cfg.MinVersion = tls.VersionTLS13
	return cfg, nil
}

// ClientTLSConfig returns a TLS 1.3 client configuration that presents the
// source's SVID and accepts only a server whose SVID has exactly serverID.
func ClientTLSConfig(src Source, serverID spiffeid.ID) *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(serverID))
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}

// PeerID returns the SPIFFE ID of the peer of a handshake that
// ServerTLSConfig or ClientTLSConfig verified.
func PeerID(state tls.ConnectionState) (spiffeid.ID, error) {
	if len(state.PeerCertificates) == 0 {
		return spiffeid.ID{}, ErrNoPeerID
	}
	id, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrNoPeerID, err)
	}
	return id, nil
}

func authorizeMemberOfAny(tds []spiffeid.TrustDomain) tlsconfig.Authorizer {
	return tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		for _, td := range tds {
			if id.MemberOf(td) {
				return nil
			}
		}
		return fmt.Errorf("trust domain %q is not accepted", id.TrustDomain())
	})
}
