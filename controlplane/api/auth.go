package api

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/identity"
)

// PeerID returns the caller's SPIFFE ID, set by the authentication
// interceptor from the verified mTLS handshake.
func PeerID(ctx context.Context) (spiffeid.ID, bool) {
	if s := stateOf(ctx); s != nil && s.hasPeer {
		return s.peer, true
	}
	return spiffeid.ID{}, false
}

// authenticate puts the caller's SPIFFE ID, taken from the verified client
// certificate of the connection, into the context. The TLS handshake has
// already refused clients without an SVID of an accepted trust domain; this
// is the second line, and what handlers rely on.
func authenticate(ctx context.Context) (context.Context, error) {
	id, err := connPeerID(ctx)
	if err != nil {
		return nil, err
	}
	s := stateOf(ctx)
	if s == nil { // the request id interceptor runs first; this is for its absence
		s = &callState{}
		ctx = context.WithValue(ctx, callStateKey{}, s)
	}
	s.peer, s.hasPeer = id, true
	return ctx, nil
}

// connPeerID reads the SPIFFE ID of the connection's verified client
// certificate.
func connPeerID(ctx context.Context) (spiffeid.ID, error) { return identity.CallerID(ctx) }
