package sds

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/material"
)

// Recorder is the audit log (audit.Log), for content that fails its check.
type Recorder interface {
	RecordOutcome(ctx context.Context, ev audit.Event)
}

// contentCache builds each secret's resource once per content change and
// shares it between every stream holding the name; content that fails its
// check is logged and audited once, not once per stream.
type contentCache struct {
	log    *slog.Logger
	record Recorder

	mu      sync.Mutex
	entries map[string]contentEntry // by name
}

type contentEntry struct {
	key string // kind and fingerprint the entry was built from
	b   *built
	err error
}

// maxContentEntries bounds the cache; beyond it, entries are dropped at
// random (map order) and rebuilt when next needed.
const maxContentEntries = 100_000

func newContentCache(log *slog.Logger, record Recorder) *contentCache {
	return &contentCache{log: log, record: record, entries: map[string]contentEntry{}}
}

// secret returns the resource of name for a value with fingerprint fp and
// bytes data, building it when the content changed. A failed check is
// returned as a *material.Error.
func (c *contentCache) secret(ctx context.Context, name, ref string, kind material.Kind, fp string, data []byte, now time.Time) (*built, error) {
	key := string(kind) + "|" + fp
	c.mu.Lock()
	if e, ok := c.entries[name]; ok && e.key == key {
		c.mu.Unlock()
		return e.b, e.err
	}
	c.mu.Unlock()
	e := contentEntry{key: key}
	m, err := material.Parse(kind, data, now)
	if err == nil {
		var b *built
		if b, err = buildSecret(name, ref, kind, fp, data, m); err == nil {
			e.b = b
		}
	}
	e.err = err
	c.mu.Lock()
	prev, had := c.entries[name]
	if len(c.entries) >= maxContentEntries {
		for n := range c.entries {
			delete(c.entries, n)
			if len(c.entries) < maxContentEntries*3/4 {
				break
			}
		}
	}
	c.entries[name] = e
	c.mu.Unlock()
	if err != nil && (!had || prev.key != key) {
		// Once per content: the Envoys keep their last good value.
		c.log.ErrorContext(ctx, "secret content failed its check; not served over SDS (Envoys keep their last good value)", "secret_name", name, "kind", string(kind), "error", err.Error())
		if c.record != nil {
			c.record.RecordOutcome(ctx, audit.Event{Actor: "system", Action: "SDS.CheckContent", Target: name, Ref: ref, Decision: audit.Deny, Outcome: "InvalidContent"})
		}
	}
	return e.b, e.err
}

func buildSecret(name, ref string, kind material.Kind, fp string, data []byte, m material.Material) (*built, error) {
	a, err := pack(secretResource(name, m))
	if err != nil {
		return nil, err
	}
	return &built{name: name, version: versionOf([]byte("secret"), []byte(kind), []byte(fp)), any: a, ref: ref, quoted: quotable(data, m)}, nil
}
