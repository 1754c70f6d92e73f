// Package api holds secretplane's gRPC services. Handlers are thin: decode,
// authorise, call the core (catalog, later resolve and policy), encode. The
// interceptor chain adds request ids, logging through the redacting handler,
// panic recovery, authentication by SPIFFE ID and authorisation.
package api
