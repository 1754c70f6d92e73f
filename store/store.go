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
	DeleteSecret(ctx context.Context, name string, pre Precondition) error

	PutConfig(ctx context.Context, d ConfigDocument, pre Precondition) (ConfigDocument, error)
	GetConfig(ctx context.Context, name string) (ConfigDocument, error)
	ListConfigs(ctx context.Context, q ListQuery) ([]ConfigDocument, error)
	DeleteConfig(ctx context.Context, name string, pre Precondition) error

	// Ping checks that the store is reachable.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}
