// Package api holds secretplane's gRPC services: admin (secrets,
// configuration documents), policy, audit, and the workload-facing
// Resolve and Watch. Handlers are thin: decode, call the core (catalog,
// resolve, watch, policy, consumers), encode. The interceptor chain adds a
// decode guard, request ids, a call log through the redacting handler,
// panic recovery and authentication by SPIFFE ID; one authorisation
// interceptor turns each call's rule into a request for the
// transport-free guard of controlplane/access, which decides and audits it.
// The server is assembled by internal/server.
package api
