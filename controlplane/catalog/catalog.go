// Package catalog is the registry of what secretplane knows: secrets (names
// bound to SecretRefs, never values) and service configuration documents.
// It validates and normalises input, refuses secret-looking literals, and
// persists through a Store with optimistic concurrency.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/paging"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
)

// Store is the persistence the catalog needs.
type Store interface {
	PutSecret(ctx context.Context, s store.Secret, pre store.Precondition) (store.Secret, error)
	GetSecret(ctx context.Context, name string) (store.Secret, error)
	ListSecrets(ctx context.Context, q store.ListQuery) ([]store.Secret, error)
	SecretsByRef(ctx context.Context, ref string) ([]store.Secret, error)
	DeleteSecret(ctx context.Context, name string, pre store.Precondition) error

	PutConfig(ctx context.Context, d store.ConfigDocument, pre store.Precondition) (store.ConfigDocument, error)
	GetConfig(ctx context.Context, name string) (store.ConfigDocument, error)
	ListConfigs(ctx context.Context, q store.ListQuery) ([]store.ConfigDocument, error)
	DeleteConfig(ctx context.Context, name string, pre store.Precondition) error
}

// Catalog validates and stores secrets and configuration documents.
type Catalog struct {
	store  Store
	access *accessCheck // nil: refs are checked for syntax only
	refs   *refCache
	events *events.Bus // secrets put, rebound, deleted; nil drops them
	// pins maps a secret to the backend version it is served at while a
	// rotation holds it (copy on write: the resolve path reads it unlocked).
	pins   atomic.Pointer[map[string]string]
	pinsMu sync.Mutex
}

// WithEvents makes the catalog publish events.SecretPut, SecretRebound and
// SecretDeleted once each change is in the store.
func WithEvents(b *events.Bus) Option { return func(c *Catalog) { c.events = b } }

// Option configures a Catalog.
type Option func(*Catalog)

// New returns a catalog over s.
func New(s Store, opts ...Option) *Catalog {
	c := &Catalog{store: s, refs: newRefCache()}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Write says how a put or delete is conditioned.
type Write struct {
	CreateOnly bool  // fail with store.ErrAlreadyExists when the name is taken
	IfRevision int64 // when non-zero, the stored revision must match (store.ErrConflict)
	DryRun     bool  // run every check, store nothing (configuration documents)
}

func (w Write) precondition() store.Precondition {
	return store.Precondition{MustNotExist: w.CreateOnly, IfRevision: w.IfRevision}
}

// ListRequest asks for one page of objects.
type ListRequest = paging.Request

// PutSecret validates s, normalises its ref to canonical form and stores
// it. It reports whether the secret was created (rather than replaced).
func (c *Catalog) PutSecret(ctx context.Context, s store.Secret, w Write) (store.Secret, bool, error) {
	s, err := normaliseSecret(s)
	if err != nil {
		return store.Secret{}, false, err
	}
	if err := checkWrite(w); err != nil {
		return store.Secret{}, false, err
	}
	var before string // the ref it had, to tell a rebind
	if c.events != nil && !w.CreateOnly {
		if prev, err := c.store.GetSecret(ctx, s.Name); err == nil {
			before = prev.Ref
		}
	}
	out, err := c.store.PutSecret(ctx, s, w.precondition())
	if err != nil {
		return store.Secret{}, false, err
	}
	// After the store has it: a lookup racing the put cannot cache the
	// binding it replaced (see refCache.drop).
	c.refs.drop(s.Name)
	created := out.CreateTime.Equal(out.UpdateTime)
	if before != "" && before != out.Ref {
		c.events.Publish(events.SecretRebound{Name: out.Name, OldRef: before, NewRef: out.Ref})
	} else {
		c.events.Publish(events.SecretPut{Name: out.Name, Ref: out.Ref, Created: created})
	}
	return out, created, nil
}

// GetSecret returns the named secret.
func (c *Catalog) GetSecret(ctx context.Context, name string) (store.Secret, error) {
	if err := checkName(name); err != nil {
		return store.Secret{}, err
	}
	s, err := c.store.GetSecret(ctx, name)
	if err != nil {
		return store.Secret{}, err
	}
	return s, nil
}

// ListSecrets returns a page of secrets ordered by name and the token of the
// next page ("" on the last).
func (c *Catalog) ListSecrets(ctx context.Context, r ListRequest) ([]store.Secret, string, error) {
	q, err := paging.Query(r)
	if err != nil {
		return nil, "", err
	}
	items, err := c.store.ListSecrets(ctx, q)
	if err != nil {
		return nil, "", err
	}
	items, next := paging.Page(items, q, func(s store.Secret) string { return s.Name })
	return items, next, nil
}

// DeleteSecret removes the named secret and returns it as it was (its ref
// is what the audit records of the delete). The delete is conditioned on
// the revision read, so what it returns is what it removed; a put racing
// it makes it read again, a few times at most.
func (c *Catalog) DeleteSecret(ctx context.Context, name string, ifRevision int64) (store.Secret, error) {
	if err := checkName(name); err != nil {
		return store.Secret{}, err
	}
	if err := checkWrite(Write{IfRevision: ifRevision}); err != nil {
		return store.Secret{}, err
	}
	for attempt := 0; ; attempt++ {
		cur, err := c.store.GetSecret(ctx, name)
		if err != nil {
			return store.Secret{}, err
		}
		rev := ifRevision
		if rev == 0 {
			rev = cur.Revision
		} else if rev != cur.Revision {
			return store.Secret{}, fmt.Errorf("delete secret %s: %w", name, store.ErrConflict)
		}
		err = c.store.DeleteSecret(ctx, name, store.Precondition{IfRevision: rev})
		if errors.Is(err, store.ErrConflict) && ifRevision == 0 && attempt < 3 {
			continue
		}
		if err != nil {
			return store.Secret{}, err
		}
		c.refs.drop(name)
		c.events.Publish(events.SecretDeleted{Name: name, Ref: cur.Ref})
		return cur, nil
	}
}

// PutConfig validates d, sorts its entries by key, normalises refs and
// stores it. It reports whether the document was created.
func (c *Catalog) PutConfig(ctx context.Context, d store.ConfigDocument, w Write) (store.ConfigDocument, bool, error) {
	d, err := normaliseConfig(d)
	if err != nil {
		return store.ConfigDocument{}, false, err
	}
	if err := checkWrite(w); err != nil {
		return store.ConfigDocument{}, false, err
	}
	if c.access != nil {
		if err := c.access.check(ctx, c.store, d); err != nil {
			return store.ConfigDocument{}, false, err
		}
	}
	if w.DryRun {
		return d, false, nil
	}
	out, err := c.store.PutConfig(ctx, d, w.precondition())
	if err != nil {
		return store.ConfigDocument{}, false, err
	}
	return out, out.CreateTime.Equal(out.UpdateTime), nil
}

// GetConfig returns the named configuration document.
func (c *Catalog) GetConfig(ctx context.Context, name string) (store.ConfigDocument, error) {
	if err := checkName(name); err != nil {
		return store.ConfigDocument{}, err
	}
	d, err := c.store.GetConfig(ctx, name)
	if err != nil {
		return store.ConfigDocument{}, err
	}
	return d, nil
}

// ListConfigs returns a page of configuration documents ordered by name.
func (c *Catalog) ListConfigs(ctx context.Context, r ListRequest) ([]store.ConfigDocument, string, error) {
	q, err := paging.Query(r)
	if err != nil {
		return nil, "", err
	}
	items, err := c.store.ListConfigs(ctx, q)
	if err != nil {
		return nil, "", err
	}
	items, next := paging.Page(items, q, func(d store.ConfigDocument) string { return d.Name })
	return items, next, nil
}

// DeleteConfig removes the named configuration document.
func (c *Catalog) DeleteConfig(ctx context.Context, name string, ifRevision int64) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := checkWrite(Write{IfRevision: ifRevision}); err != nil {
		return err
	}
	if err := c.store.DeleteConfig(ctx, name, store.Precondition{IfRevision: ifRevision}); err != nil {
		return err
	}
	return nil
}

func checkName(name string) error { return validate.Field("name", validate.Name(name)) }

func checkWrite(w Write) error {
	var c validate.Collector
	if w.IfRevision < 0 {
		c.Addf("etag", "is not an etag issued by this server")
	}
	if w.CreateOnly && w.IfRevision != 0 {
		c.Addf("etag", "must be empty with create_only: a new object has no etag yet")
	}
	return c.Err()
}

func sortEntries(entries []store.ConfigEntry) {
	sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
}
