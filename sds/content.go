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
	key      string // kind and fingerprint the entry was built from
	b        *built
	err      error
	errUntil time.Time // a failed check is tried again after this: validity depends on the time
	logged   bool
}

// contentRetry is how long a failed check is trusted: a certificate not
// yet valid becomes valid, so the check is made again.
const contentRetry = 5 * time.Second

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
	prev, had := c.entries[name]
	if had && prev.key == key && (prev.err == nil || now.Before(prev.errUntil)) {
		c.mu.Unlock()
		return prev.b, prev.err
	}
	c.mu.Unlock()
	e := contentEntry{key: key, errUntil: now.Add(contentRetry)}
	m, err := material.Parse(kind, data, now)
	if err == nil {
		var b *built
		if b, err = buildSecret(name, ref, kind, fp, data, m); err == nil {
			e.b = b
		}
	}
	e.err = err
	// Logged and audited once per content, however often it is checked.
	e.logged = err != nil && had && prev.key == key && prev.logged
	report := err != nil && !e.logged
	e.logged = e.logged || report
	c.mu.Lock()
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
	if report {
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
	return &built{name: name, version: ResourceVersion(name, kind, fp), any: a, ref: ref, quoted: quotable(data, m)}, nil
}

// ResourceVersion is the version SDS gives the secret name of kind whose
// value has fingerprint fp: what an Envoy ACKs, for rollout verification.
func ResourceVersion(name string, kind material.Kind, fp string) string {
	return versionOf([]byte("secret"), []byte(name), []byte(kind), []byte(fp))
}
