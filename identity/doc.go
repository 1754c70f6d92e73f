// Package identity gives secretplane its SPIFFE identities: the server's own
// X.509-SVID and trust bundle (from the built-in dev CA here; from the SPIRE
// Workload API later), mutual-TLS configurations that require TLS 1.3 and a
// client SVID from the trust bundle, and extraction of a peer's SPIFFE ID
// from a verified TLS connection.
//
// It knows nothing of gRPC: transports turn the tls.Config values into
// credentials and hand the peer's tls.ConnectionState to PeerID.
package identity
