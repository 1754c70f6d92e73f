package catalog

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/material"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// refCacheTTL bounds how long a secret's name-to-ref binding is served from
// memory. Writes through this catalog invalidate at once; writes through
// another replica are seen within the TTL (until change notifications
// reach replicas).
const refCacheTTL = 5 * time.Second

// refCacheMax bounds the bindings held: the hot set of names being
// resolved, not the whole catalog.
const refCacheMax = 10_000

// refCache keeps secrets' parsed refs for the resolve path, which looks a
// secret up on every call.
type refCache struct {
	mu      sync.RWMutex
	entries map[string]refCacheEntry
	max     int
	now     func() time.Time
	// gen counts drops: a lookup that read the store before a drop must
	// not cache what it read, which the write behind the drop replaced.
	gen uint64
}

type refCacheEntry struct {
	ref       secretref.Ref
	canonical string // ref.String(), as stored
	kind      material.Kind
	until     time.Time
}

func newRefCache() *refCache {
	return &refCache{entries: map[string]refCacheEntry{}, max: refCacheMax, now: time.Now}
}

func (c *refCache) get(name string) (refCacheEntry, bool) {
	c.mu.RLock()
	e, ok := c.entries[name]
	c.mu.RUnlock()
	if !ok || !c.now().Before(e.until) {
		return refCacheEntry{}, false
	}
	return e, true
}

// generation returns the drop count, to pass to put.
func (c *refCache) generation() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}

// put caches a binding read from the store when no drop happened since
// gen was taken (before the read).
func (c *refCache) put(name string, ref secretref.Ref, canonical string, kind material.Kind, gen uint64) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if _, ok := c.entries[name]; !ok && len(c.entries) >= c.max {
		c.sweepLocked(now)
	}
	c.entries[name] = refCacheEntry{ref: ref, canonical: canonical, kind: kind, until: now.Add(refCacheTTL)}
}

// sweepLocked makes room: expired bindings go first; if the hot set is
// larger than the bound, a quarter of it goes too (in map order, which is
// random), so that sweeps stay rare and their cost amortised.
func (c *refCache) sweepLocked(now time.Time) {
	for name, e := range c.entries {
		if !now.Before(e.until) {
			delete(c.entries, name)
		}
	}
	for name := range c.entries {
		if len(c.entries) < c.max*3/4 {
			break
		}
		delete(c.entries, name)
	}
}

func (c *refCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// drop forgets name's binding. Call it after the store has the write that
// changed it, so no lookup can cache the old one again.
func (c *refCache) drop(name string) {
	c.mu.Lock()
	delete(c.entries, name)
	c.gen++
	c.mu.Unlock()
}

// LookupRef returns the parsed ref of the named secret, for the resolve
// and watch paths: from memory when looked up in the last few seconds,
// else from the store (parsed once per load, not per call). Admin reads use
// GetSecret, which always reads the store.
func (c *Catalog) LookupRef(ctx context.Context, name string) (secretref.Ref, error) {
	ref, _, err := c.LookupBinding(ctx, name)
	return ref, err
}

// LookupBinding is LookupRef with the ref's canonical form too (what the
// audit records), without building it on every call.
func (c *Catalog) LookupBinding(ctx context.Context, name string) (secretref.Ref, string, error) {
	e, err := c.lookup(ctx, name)
	if err == nil {
		if pins := c.pins.Load(); pins != nil {
			if v, ok := (*pins)[name]; ok {
				ref := e.ref
				ref.Version = v
				return ref, ref.String(), nil
			}
		}
	}
	return e.ref, e.canonical, err
}

// Pin serves the named secret at backend version (a rotation's pending
// step: the new version exists but is not served yet), or at its ref's
// own version again when version is "". Watchers are told at once, as for
// a rebind.
func (c *Catalog) Pin(ctx context.Context, name, version string) {
	c.pinsMu.Lock()
	next := map[string]string{}
	var before string
	if cur := c.pins.Load(); cur != nil {
		for k, v := range *cur {
			next[k] = v
		}
		before = (*cur)[name]
	}
	if version == "" {
		delete(next, name)
	} else {
		next[name] = version
	}
	c.pins.Store(&next)
	c.pinsMu.Unlock()
	if before == version {
		return
	}
	if e, err := c.lookup(ctx, name); err == nil {
		old, nu := e.ref, e.ref
		old.Version, nu.Version = before, version
		c.events.Publish(events.SecretRebound{Name: name, OldRef: old.String(), NewRef: nu.String()})
	}
}

// LookupKind returns what the named secret's value is, cached as
// LookupRef's binding is.
func (c *Catalog) LookupKind(ctx context.Context, name string) (material.Kind, error) {
	e, err := c.lookup(ctx, name)
	return e.kind, err
}

func (c *Catalog) lookup(ctx context.Context, name string) (refCacheEntry, error) {
	if e, ok := c.refs.get(name); ok {
		return e, nil
	}
	gen := c.refs.generation()
	s, err := c.GetSecret(ctx, name)
	if err != nil {
		return refCacheEntry{}, err
	}
	ref, err := secretref.Parse(s.Ref)
	if err != nil {
		return refCacheEntry{}, fmt.Errorf("secret %s has an unparseable stored ref: %w", name, err)
	}
	kind, err := material.ParseKind(s.Kind)
	if err != nil {
		return refCacheEntry{}, fmt.Errorf("secret %s has an unknown stored kind %q", name, s.Kind)
	}
	// The stored ref is canonical; String keeps it so if it was not.
	e := refCacheEntry{ref: ref, canonical: ref.String(), kind: kind}
	c.refs.put(name, e.ref, e.canonical, e.kind, gen)
	return e, nil
}
