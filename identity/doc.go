// Package identity gives secretplane its SPIFFE identities: the server's own
// X.509-SVID and trust bundles (from the built-in dev CA, from SVID files
// rotated in place, or from the SPIRE Workload API, rotated live),
// mutual-TLS configurations that require TLS 1.3 and a client SVID from an
// accepted trust domain, and extraction of a peer's SPIFFE ID from a
// verified TLS connection.
//
// It knows nothing of gRPC: transports turn the tls.Config values into
// credentials and hand the peer's tls.ConnectionState to PeerID.
package identity
