// Package store defines what secretplane persists and the interface the core
// uses to persist it. Implementations live in subpackages (postgres, sqlite);
// storetest holds the conformance suite every implementation must pass.
//
// Secret values cannot reach the store by construction: none of the stored
// types has a field for one. A Secret holds only a reference (a canonical
// SecretRef string) and metadata; a ConfigDocument holds references and
// non-secret literals that the core has checked with the literal detector.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by every Store implementation. Callers test with errors.Is.
var (
	// ErrNotFound: the named object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a create-only write found the name taken.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: a conditional write or delete found another revision.
	ErrConflict = errors.New("revision conflict")
)

// Secret is a named entry bound to a SecretRef. It never holds the value.
type Secret struct {
	Name        string // e.g. "payments/db"
	Ref         string // canonical SecretRef, e.g. "vault://secret/payments/db#password"
	Description string
	Owner       string // team or on-call route
	Required    bool   // startup fails closed when a required secret cannot be resolved
	Kind        string // what the value is (material.Kind): "generic", "tls_certificate", ...
	Labels      map[string]string

	Revision   int64 // assigned by the store; strictly increasing across all objects of a store
	CreateTime time.Time
	UpdateTime time.Time
}

// ConfigEntry is one key of a configuration document: exactly one of Literal
// and Ref is set. Literal values are non-secret by policy (the core refuses
// secret-looking literals before they reach the store).
type ConfigEntry struct {
	Key     string
	Literal string
	Ref     string // canonical SecretRef
}

// ConfigDocument is a service's configuration: keys mapped to literals or
// SecretRefs.
type ConfigDocument struct {
	Name     string // e.g. "payments/api"
	Identity string // SPIFFE ID of the service the document belongs to; may be empty
	Entries  []ConfigEntry
	Labels   map[string]string

	Revision   int64
	CreateTime time.Time
	UpdateTime time.Time
}

// Precondition guards a write or delete.
type Precondition struct {
	// MustNotExist makes a put create-only: ErrAlreadyExists if the name is taken.
	MustNotExist bool
	// IfRevision, when non-zero, requires the current revision to equal it:
	// ErrNotFound if the object is absent, ErrConflict if it has changed.
	IfRevision int64
}

// ListQuery selects a page of objects ordered by name.
type ListQuery struct {
	Prefix string // only names with this prefix
	After  string // only names strictly greater than this (the last name of the previous page)
	Limit  int    // at most this many; must be > 0
}

// Store persists secrets metadata and configuration documents. Every method
// honours the context's deadline and cancellation. Writes are atomic: an
// error leaves the store as it was.
type Store interface {
	// PutSecret creates or replaces a secret under the precondition and
	// returns it as stored (revision and times assigned). CreateTime is kept
	// across updates.
	PutSecret(ctx context.Context, s Secret, pre Precondition) (Secret, error)
	GetSecret(ctx context.Context, name string) (Secret, error)
	ListSecrets(ctx context.Context, q ListQuery) ([]Secret, error)
	// SecretsByRef returns the secrets bound to a canonical ref, by name.
	SecretsByRef(ctx context.Context, ref string) ([]Secret, error)
	DeleteSecret(ctx context.Context, name string, pre Precondition) error

	PutConfig(ctx context.Context, d ConfigDocument, pre Precondition) (ConfigDocument, error)
	GetConfig(ctx context.Context, name string) (ConfigDocument, error)
	ListConfigs(ctx context.Context, q ListQuery) ([]ConfigDocument, error)
	DeleteConfig(ctx context.Context, name string, pre Precondition) error

	PolicyStore
	AuditStore
	ConsumerStore
	RotationStore
	RotationPolicyStore
	DeliveryStore

	// Ping checks that the store is reachable.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}

// Policy is one least-privilege grant: a subject (a SPIFFE ID, or a trust
// domain and path prefix) may use verbs on objects (secret or configuration
// names, or name prefixes). Semantics live in controlplane/policy.
type Policy struct {
	Name        string
	Description string
	Subject     string   // "spiffe://td/path" or "spiffe://td/prefix/*"
	Verbs       []string // read, watch, rotate, admin
	Objects     []string // "payments/db", "payments/*" or "*"

	Revision   int64
	CreateTime time.Time
	UpdateTime time.Time
}

// AuditEvent is one record of the append-only audit log. Seq, PrevHash and
// Hash are assigned by the writer that appends it (controlplane/audit).
type AuditEvent struct {
	Seq       int64
	Time      time.Time
	Actor     string // SPIFFE ID of the caller, or "system"
	Action    string // e.g. "AdminService.PutSecret", "policy.put"
	Target    string // object acted on (secret name, policy name, ref)
	Decision  string // "allow" or "deny"
	Policy    string // the grant that decided ("" when none)
	Outcome   string // "authorized" (a write's decision, before it runs), "ok", or a status code name
	RequestID string
	Ref       string // canonical refs of the secrets acted on, comma-separated ("" when none)
	Refused   string // for a denial, the objects refused, comma-separated
	PrevHash  string // hex SHA-256 of the previous event ("" for the first)
	Hash      string // hex SHA-256 over this event's fields and PrevHash
}

// AuditQuery selects audit events in sequence order.
type AuditQuery struct {
	AfterSeq int64  // only events with Seq > AfterSeq
	Actor    string // exact match when set
	Action   string // exact match when set
	Limit    int    // must be > 0
	Newest   bool   // the Limit newest matching events (still returned in sequence order)
}

// AuditChainHead is the last appended event's sequence number and hash.
type AuditChainHead struct {
	Seq  int64
	Hash string
}

// PolicyStore persists policies.
type PolicyStore interface {
	PutPolicy(ctx context.Context, p Policy, pre Precondition) (Policy, error)
	GetPolicy(ctx context.Context, name string) (Policy, error)
	ListPolicies(ctx context.Context, q ListQuery) ([]Policy, error)
	DeletePolicy(ctx context.Context, name string, pre Precondition) error
}

// AuditStore persists the audit log. AppendAudit runs fn inside one
// transaction with the chain head locked against other writers (other
// replicas included): fn receives the current head and returns the events
// to append, whose Seq, PrevHash and Hash it has set. Nothing is appended if
// fn or the transaction fails.
type AuditStore interface {
	AppendAudit(ctx context.Context, fn func(head AuditChainHead) ([]AuditEvent, error)) error
	QueryAudit(ctx context.Context, q AuditQuery) ([]AuditEvent, error)
}

// Consumer is an identity observed reading or watching a secret: the
// secret's dependents list, which rotation verifies its rollout against.
// One row per secret, identity and channel.
type Consumer struct {
	Secret   string // secret name
	Identity string // SPIFFE ID
	Channel  string // "resolve", "watch" or "sds"
	// Node tells apart consumers sharing one identity: an Envoy's node id
	// on SDS (several Envoys of a fleet often share a SPIFFE ID); empty on
	// the other channels. Recorded for operators, never used to authorise.
	Node string

	FirstSeen time.Time
	LastSeen  time.Time
	Version   string // the version last delivered

	AckedVersion string    // the version the consumer last acknowledged applying
	AckError     string    // set when it reported failing to apply one
	AckTime      time.Time // when it last acknowledged (zero: never)
}

// ConsumerStore persists the consumer registry. Writes come from every
// replica: UpsertConsumers merges, keeping the earliest FirstSeen and the
// fields of the newest sighting and the newest acknowledgement.
type ConsumerStore interface {
	UpsertConsumers(ctx context.Context, cs []Consumer) error
	// ListConsumers returns a secret's consumers by identity and channel.
	ListConsumers(ctx context.Context, secret string) ([]Consumer, error)
}

// Rotation is one rotation of a secret: a durable state machine (see
// controlplane/rotation). It holds versions and fingerprints, never a value.
type Rotation struct {
	ID        string // assigned by the caller (the rotation's idempotency key)
	Secret    string
	Ref       string // the secret's canonical ref when the rotation started
	Method    string // the rotator, e.g. "random"
	State     string // pending, propagating, verifying, completed, failed, rolled_back
	Actor     string // who started it: a SPIFFE ID, or "system"
	Emergency bool
	// Trigger is what started it: manual, cadence, expiry or observed.
	Trigger string
	// FromVersion is the backend version served when it started; ToVersion
	// the one it created ("" until created).
	FromVersion string
	ToVersion   string
	// Detail says why it failed, or who it waits for (names and versions only).
	Detail   string
	Deadline time.Time // when verifying gives up

	CreateTime time.Time
	UpdateTime time.Time
}

// RotationQuery selects rotations, newest first.
type RotationQuery struct {
	Secret     string // exact match when set
	ActiveOnly bool   // only those not completed, failed or rolled back
	Limit      int    // must be > 0
}

// RotationStore persists rotations. At most one active rotation exists per
// secret: CreateRotation returns ErrAlreadyExists when there is one.
// UpdateRotation replaces a rotation's mutable fields if its stored state
// is still fromState (ErrConflict otherwise), so two writers never both
// advance it.
type RotationStore interface {
	CreateRotation(ctx context.Context, r Rotation) (Rotation, error)
	UpdateRotation(ctx context.Context, r Rotation, fromState string) (Rotation, error)
	GetRotation(ctx context.Context, id string) (Rotation, error)
	ListRotations(ctx context.Context, q RotationQuery) ([]Rotation, error)
}

// RotationPolicy says how and when a secret is rotated. It holds
// parameters (lengths, formats, issuer paths), never a value.
type RotationPolicy struct {
	Secret string
	Method string            // the rotator
	Params map[string]string // the rotator's parameters
	// Every is the cadence (0: none); Window, "HH:MM-HH:MM" in UTC, bounds
	// when a cadence rotation may start ("": any time).
	Every  time.Duration
	Window string
	// RenewAt is the fraction of a certificate's lifetime at which it is
	// re-issued (0: not renewed on expiry).
	RenewAt float64

	CreateTime time.Time
	UpdateTime time.Time
}

// RotationPolicyStore persists rotation policies, one per secret.
type RotationPolicyStore interface {
	// PutRotationPolicy creates or replaces the secret's policy.
	PutRotationPolicy(ctx context.Context, p RotationPolicy) (RotationPolicy, error)
	// GetRotationPolicy returns ErrNotFound when the secret has none.
	GetRotationPolicy(ctx context.Context, secret string) (RotationPolicy, error)
	// ListRotationPolicies returns policies by secret name, after the
	// given one, at most limit (> 0).
	ListRotationPolicies(ctx context.Context, after string, limit int) ([]RotationPolicy, error)
	// DeleteRotationPolicy returns ErrNotFound when the secret has none.
	DeleteRotationPolicy(ctx context.Context, secret string) error
}

// Rotation states that are final.
var FinalRotationStates = []string{"completed", "failed", "rolled_back"}

// Delivery is one event queued for one webhook: recorded before it is
// attempted, so that a restart loses none. Its body is the CloudEvent as
// sent (names, versions and fingerprints, never a value).
type Delivery struct {
	ID          string // the CloudEvent's id and the webhook's name: unique
	Webhook     string
	EventType   string
	Body        []byte
	State       string // pending, delivered, dead
	Attempts    int
	NextAttempt time.Time
	LastError   string
	CreateTime  time.Time
	UpdateTime  time.Time
}

// DeliveryStore is the webhooks' outbox.
type DeliveryStore interface {
	// EnqueueDeliveries records pending deliveries; one already recorded
	// (same id) is left as it is.
	EnqueueDeliveries(ctx context.Context, ds []Delivery) error
	// DueDeliveries returns pending deliveries whose next attempt is due.
	DueDeliveries(ctx context.Context, now time.Time, limit int) ([]Delivery, error)
	// UpdateDelivery records an attempt's result (state, attempts, next
	// attempt, last error).
	UpdateDelivery(ctx context.Context, d Delivery) error
	// ListDeliveries returns a webhook's deliveries, newest first ("" for all).
	ListDeliveries(ctx context.Context, webhook string, limit int) ([]Delivery, error)
	// DeliveryReader reads it filtered and summarised (outbox.go).
	DeliveryReader
}
