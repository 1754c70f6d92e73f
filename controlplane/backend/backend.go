// Package backend defines what secretplane needs from a secret manager:
// read a value named by a SecretRef, describe it without reading it, and
// write a new version (for rotation). One subpackage per manager (vault,
// awssm, local) implements it.
//
// Values cross this interface and nothing else: callers keep them in memory
// only as long as needed and never log, store or return them except to a
// granted identity.
package backend

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/secretplane/secretplane/controlplane/secretref"
)

// Errors every backend maps its failures to, so that callers can answer
// with a fitting status. Wrap them with the ref (never the value).
var (
	ErrNotFound         = errors.New("not found")           // no such secret, version or field
	ErrPermissionDenied = errors.New("permission denied")   // the manager refused our credentials
	ErrUnavailable      = errors.New("backend unavailable") // network, timeout, sealed, 5xx
	ErrInvalidValue     = errors.New("invalid value")       // not UTF-8, too large, field is not a string
)

// MaxValueBytes bounds a value read from any backend.
const MaxValueBytes = 512 << 10

// Value is a secret value with its metadata.
type Value struct {
	Data      []byte
	Version   string    // the manager's version id
	CreatedAt time.Time // when this version was written, if known
	ExpiresAt time.Time // when the value stops being valid, if known (certs, leases)
}

// Metadata describes a secret without its value.
type Metadata struct {
	Version   string // current version
	CreatedAt time.Time
	UpdatedAt time.Time
	Versions  int // how many versions the manager keeps, if known
}

// Backend is one secret manager.
type Backend interface {
	// Scheme is the SecretRef scheme the backend serves.
	Scheme() secretref.Scheme
	// Read returns the value ref names: its version (or the default), and
	// its field (or the whole value).
	Read(ctx context.Context, ref secretref.Ref) (Value, error)
	// Describe returns metadata only: it proves the ref is reachable with
	// our credentials without reading the value.
	Describe(ctx context.Context, ref secretref.Ref) (Metadata, error)
	// Write stores data as a new version at ref's locator (field, when set,
	// names the key inside a key/value secret) and returns the new version.
	// A ref naming a version or a stage is refused (CheckWrite).
	Write(ctx context.Context, ref secretref.Ref, data []byte) (string, error)
}

// CheckWrite refuses a write to a ref that names a version or a stage: a
// write makes the next version, and a version given would be silently
// ignored.
func CheckWrite(ref secretref.Ref) error {
	switch {
	case ref.Version != "":
		return fmt.Errorf("%s: a write makes the next version; drop ?version= from the ref: %w", ref, ErrInvalidValue)
	case ref.Stage != "":
		return fmt.Errorf("%s: a write makes the next version; drop ?stage= from the ref: %w", ref, ErrInvalidValue)
	}
	return nil
}

// Registry routes refs to backends by scheme.
type Registry struct {
	backends map[secretref.Scheme]Backend
	observer Observer
}

// Observer is told of every request the registry passes to a backend
// (metrics): the backend's scheme, the operation (read, describe, write),
// how long it took and its error. It must not block.
type Observer interface {
	BackendRequest(scheme, operation string, took time.Duration, err error)
}

// RegistryOption configures a Registry.
type RegistryOption func(*Registry)

// WithObserver tells o of every backend request.
func WithObserver(o Observer) RegistryOption { return func(r *Registry) { r.observer = o } }

// NewRegistry returns a registry of the given backends.
func NewRegistry(bs []Backend, opts ...RegistryOption) *Registry {
	r := &Registry{backends: map[secretref.Scheme]Backend{}}
	for _, b := range bs {
		r.backends[b.Scheme()] = b
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Schemes are the schemes of the configured backends.
func (r *Registry) Schemes() []secretref.Scheme {
	out := make([]secretref.Scheme, 0, len(r.backends))
	for s := range r.backends {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// observe tells the observer of a request begun at start.
func (r *Registry) observe(ref secretref.Ref, op string, start time.Time, err error) {
	if r.observer != nil {
		r.observer.BackendRequest(string(ref.Scheme), op, time.Since(start), err)
	}
}

// For returns the backend serving ref.
func (r *Registry) For(ref secretref.Ref) (Backend, error) {
	b, ok := r.backends[ref.Scheme]
	if !ok {
		return nil, fmt.Errorf("%s: no %s backend is configured: %w", ref, ref.Scheme, ErrUnavailable)
	}
	return b, nil
}

// Read reads ref from its backend.
func (r *Registry) Read(ctx context.Context, ref secretref.Ref) (Value, error) {
	b, err := r.For(ref)
	if err != nil {
		return Value{}, err
	}
	start := time.Now()
	v, err := b.Read(ctx, ref)
	r.observe(ref, "read", start, err)
	return v, err
}

// Describe describes ref through its backend.
func (r *Registry) Describe(ctx context.Context, ref secretref.Ref) (Metadata, error) {
	b, err := r.For(ref)
	if err != nil {
		return Metadata{}, err
	}
	start := time.Now()
	m, err := b.Describe(ctx, ref)
	r.observe(ref, "describe", start, err)
	return m, err
}

// Write writes data as a new version at ref through its backend.
func (r *Registry) Write(ctx context.Context, ref secretref.Ref, data []byte) (string, error) {
	b, err := r.For(ref)
	if err != nil {
		return "", err
	}
	if err := CheckWrite(ref); err != nil {
		return "", err
	}
	start := time.Now()
	v, err := b.Write(ctx, ref, data)
	r.observe(ref, "write", start, err)
	return v, err
}

// Stager is a backend whose new versions can be staged: created under a
// pending label without becoming current, then promoted (AWS Secrets
// Manager's rotation contract: AWSPENDING, then AWSCURRENT moved to it and
// AWSPREVIOUS kept on the one before). Rotation uses it when a backend has
// it; a backend without it makes the new version current at Write.
type Stager interface {
	// Stage creates data as a new version labelled pending, keyed by token
	// (an idempotency key: staging again with the same token never creates
	// a second version). A ref naming a version or stage is refused.
	Stage(ctx context.Context, ref secretref.Ref, data []byte, token string) (version string, err error)
	// Staged returns the version staged under token, or "" when there is
	// none: a rotation resumed after a crash adopts it.
	Staged(ctx context.Context, ref secretref.Ref, token string) (version string, err error)
	// Promote makes version current: the version current until now is
	// kept as the previous one, and the pending label is removed. Promoting
	// the current version is a no-op.
	Promote(ctx context.Context, ref secretref.Ref, version string) error
}

// Stager returns ref's backend as a Stager, when it is one.
func (r *Registry) Stager(ref secretref.Ref) (Stager, bool) {
	b, err := r.For(ref)
	if err != nil {
		return nil, false
	}
	s, ok := b.(Stager)
	return s, ok
}

// Invalidator is a backend that can make an old version unreadable: an
// emergency rotation (after a leak) invalidates the version it replaced.
type Invalidator interface {
	Invalidate(ctx context.Context, ref secretref.Ref, version string) error
}

// Invalidator returns ref's backend as an Invalidator, when it is one.
func (r *Registry) Invalidator(ref secretref.Ref) (Invalidator, bool) {
	b, err := r.For(ref)
	if err != nil {
		return nil, false
	}
	i, ok := b.(Invalidator)
	return i, ok
}
