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

// refCache keeps secrets' metadata for the resolve path, which looks a
// secret up on every call.
type refCache struct {
	mu      sync.RWMutex
	entries map[string]refCacheEntry
	now     func() time.Time
}

type refCacheEntry struct {
	secret store.Secret
	until  time.Time
}

func newRefCache() *refCache {
	return &refCache{entries: map[string]refCacheEntry{}, now: time.Now}
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
	c.mu.Lock()
	c.entries[s.Name] = refCacheEntry{secret: s, until: c.now().Add(refCacheTTL)}
	c.mu.Unlock()
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
