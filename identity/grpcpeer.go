package identity

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// CallerID returns the SPIFFE ID of a gRPC call's peer, from the client
// certificate its connection's mutual TLS handshake verified: the only
// identity a server trusts. The error is an Unauthenticated status.
func CallerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "connection is not mutual TLS")
	}
	id, err := PeerID(info.State)
	if err != nil {
		return spiffeid.ID{}, status.Error(codes.Unauthenticated, "client certificate carries no SPIFFE ID")
	}
	return id, nil
}
