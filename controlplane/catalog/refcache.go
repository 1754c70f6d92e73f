package catalog

import (
	"context"
	"sync"
	"time"

	"github.com/secretplane/secretplane/store"
)

// refCacheTTL bounds how long a secret's name-to-ref binding is served from
// memory. Writes through this catalog invalidate at once; writes through
// another replica are seen within the TTL (until change notifications
// reach replicas).
const refCacheTTL = 5 * time.Second

// refCacheMax bounds the bindings held: the hot set of names being
// resolved, not the whole catalog.
const refCacheMax = 10_000

// refCache keeps secrets' metadata for the resolve path, which looks a
// secret up on every call.
type refCache struct {
	mu      sync.RWMutex
	entries map[string]refCacheEntry
	max     int
	now     func() time.Time
}

type refCacheEntry struct {
	secret store.Secret
	until  time.Time
}

func newRefCache() *refCache {
	return &refCache{entries: map[string]refCacheEntry{}, max: refCacheMax, now: time.Now}
}

func (c *refCache) get(name string) (store.Secret, bool) {
	c.mu.RLock()
	e, ok := c.entries[name]
	c.mu.RUnlock()
	if !ok || !c.now().Before(e.until) {
		return store.Secret{}, false
	}
	return e.secret, true
}

func (c *refCache) put(s store.Secret) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[s.Name]; !ok && len(c.entries) >= c.max {
		c.sweepLocked(now)
	}
	c.entries[s.Name] = refCacheEntry{secret: s, until: now.Add(refCacheTTL)}
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

func (c *refCache) drop(name string) {
	c.mu.Lock()
	delete(c.entries, name)
	c.mu.Unlock()
}

// LookupSecret returns the named secret for the resolve path: from memory
// when looked up in the last few seconds, else from the store. Admin reads
// use GetSecret, which always reads the store.
func (c *Catalog) LookupSecret(ctx context.Context, name string) (store.Secret, error) {
	if s, ok := c.refs.get(name); ok {
		return s, nil
	}
	s, err := c.GetSecret(ctx, name)
	if err != nil {
		return store.Secret{}, err
	}
	c.refs.put(s)
	return s, nil
}
