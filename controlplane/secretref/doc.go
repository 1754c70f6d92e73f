// Package secretref is the SecretRef grammar: a URI that names a value in a
// secret manager, never the value itself.
//
//	scheme://locator[?params][#selector]
//
// The selector (fragment) is always the field inside the value: a key name
// (#password) or an RFC 6901 JSON pointer (#/db/password); without one the
// whole value is meant. It is never a version. Params are allowed per scheme
// and unknown ones are refused; version (immutable) and stage (mutable
// label) exclude each other.
//
//	vault://<mount>/<path>#<field>          KV v2; params version=N, namespace=ns
//	aws-sm://<name-or-arn>#<json-key>       params stage=AWSCURRENT|AWSPENDING|AWSPREVIOUS|label,
//	                                        version=<version-id>, region=<region>
//	local://<name>#<key>                    the embedded encrypted backend; param version=N
//
// Refused: credentials in the locator (user:pw@), "." and ".." segments,
// empty segments, unknown schemes and params, control characters, spaces,
// invalid UTF-8, refs over MaxLen bytes, bad percent-encoding, and anything
// that looks like a pasted secret (see DetectLiteral) where a ref belongs.
// Errors name the component and the problem and never repeat the input.
//
// Every ref has one canonical form (String): scheme in lower case, params
// sorted, only the characters that need it percent-encoded (":" inside an
// ARN becomes %3A). It is the cache key and the audit identifier.
//
// The grammar covers the references users already write: CloudFormation's
// {{resolve:secretsmanager:prod/db:SecretString:password:AWSPREVIOUS}} is
// aws-sm://prod/db?stage=AWSPREVIOUS#password (FromCloudFormation), and an
// External Secrets Operator remote ref {key, property, version} is
// scheme://key?version=v#property (FromExternalSecrets).
package secretref
