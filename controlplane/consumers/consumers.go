// Package consumers keeps the dependents list: which identity reads or
// watches which secret over which channel, the version it was last given
// and the version it last acknowledged. Sightings are recorded in memory on
// the request path (a map update) and written behind to the store in
// batches, so that Resolve never waits on a database row of its own; a
// sighting only dirties its row when something changed or the last written
// sighting is older than the resolution.
package consumers

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/secretplane/secretplane/store"
)

// Channels a consumer is seen on.
const (
	Resolve = "resolve"
	Watch   = "watch"
	SDS     = "sds"
)

// Store persists the registry (store.Store).
type Store interface {
	UpsertConsumers(ctx context.Context, cs []store.Consumer) error
	ListConsumers(ctx context.Context, secret string) ([]store.Consumer, error)
}

// Options tune a Registry. Zero values take the defaults.
type Options struct {
	FlushInterval time.Duration // how often sightings are written; default 2s
	// Resolution is how stale a stored LastSeen may get while nothing else
	// changes; default 30s.
	Resolution time.Duration
	// MaxEntries bounds the sightings kept in memory; clean ones beyond it
	// are forgotten after a flush (they are in the store). Default 100,000.
	MaxEntries int
	Log        *slog.Logger
	Now        func() time.Time
}

type key struct{ secret, identity, channel, node string }

type entry struct {
	c           store.Consumer
	dirty       bool
	flushedSeen time.Time
	holds       int // open streams of this consumer: it is seen while they last
}

// Registry records sightings and acknowledgements. Safe for concurrent use.
type Registry struct {
	store Store
	opts  Options
	log   *slog.Logger

	flushMu sync.Mutex // one flush at a time
	mu      sync.Mutex
	entries map[key]*entry
}

// New returns a registry writing to s; call Run to flush periodically.
func New(s Store, opts Options) *Registry {
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 2 * time.Second
	}
	if opts.Resolution <= 0 {
		opts.Resolution = 30 * time.Second
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 100_000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Registry{store: s, opts: opts, log: log, entries: map[key]*entry{}}
}

func (r *Registry) entryLocked(k key, now time.Time) *entry {
	e := r.entries[k]
	if e == nil {
		e = &entry{c: store.Consumer{Secret: k.secret, Identity: k.identity, Channel: k.channel, Node: k.node, FirstSeen: now}, dirty: true}
		r.entries[k] = e
	}
	return e
}

// Seen records that identity was given version of secret over channel.
func (r *Registry) Seen(identity, secret, channel, version string) {
	r.SeenNode(identity, "", secret, channel, version)
}

// SeenNode is Seen for one of several consumers sharing identity, told
// apart by node (an Envoy's node id).
func (r *Registry) SeenNode(identity, node, secret, channel, version string) {
	now := r.opts.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entryLocked(key{secret, identity, channel, node}, now)
	if e.c.Version != version || now.Sub(e.flushedSeen) >= r.opts.Resolution {
		e.dirty = true
	}
	e.c.LastSeen, e.c.Version = now, version
}

// Hold records that a stream of identity (node: one of several sharing
// it) delivering secret over channel is open: while it is, the consumer is
// seen at every flush (at Resolution), idle or not, so that a rotation's
// horizon tells a live consumer from one gone since. release ends it.
func (r *Registry) Hold(identity, node, secret, channel string) (release func()) {
	k := key{secret, identity, channel, node}
	r.mu.Lock()
	r.entryLocked(k, r.opts.Now()).holds++
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if e := r.entries[k]; e != nil && e.holds > 0 {
				e.holds--
			}
		})
	}
}

// Acked records that identity reports having applied version of secret
// (errMsg set: it failed to).
func (r *Registry) Acked(identity, secret, channel, version, errMsg string) {
	r.AckedNode(identity, "", secret, channel, version, errMsg)
}

// AckedNode is Acked for one of several consumers sharing identity.
func (r *Registry) AckedNode(identity, node, secret, channel, version, errMsg string) {
	now := r.opts.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entryLocked(key{secret, identity, channel, node}, now)
	e.c.LastSeen = now
	e.c.AckedVersion, e.c.AckError, e.c.AckTime = version, errMsg, now
	e.dirty = true
}

// Flush writes the changed sightings. On failure they stay dirty and are
// written by the next flush.
func (r *Registry) Flush(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	var batch []store.Consumer
	var keys []key
	now := r.opts.Now()
	for k, e := range r.entries {
		if e.holds > 0 && now.Sub(e.c.LastSeen) >= r.opts.Resolution {
			e.c.LastSeen, e.dirty = now, true
		}
		if e.dirty {
			batch = append(batch, e.c)
			keys = append(keys, k)
			e.dirty = false
		}
	}
	r.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	if err := r.store.UpsertConsumers(ctx, batch); err != nil {
		r.mu.Lock()
		for _, k := range keys {
			if e := r.entries[k]; e != nil {
				e.dirty = true
			}
		}
		r.mu.Unlock()
		return fmt.Errorf("write %d consumer sightings: %w", len(batch), err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, k := range keys {
		if e := r.entries[k]; e != nil {
			e.flushedSeen = batch[i].LastSeen
		}
	}
	if len(r.entries) > r.opts.MaxEntries {
		for k, e := range r.entries {
			if len(r.entries) <= r.opts.MaxEntries {
				break
			}
			if !e.dirty && e.holds == 0 {
				delete(r.entries, k)
			}
		}
	}
	return nil
}

// Run flushes every FlushInterval until ctx ends, then once more.
func (r *Registry) Run(ctx context.Context) {
	t := time.NewTicker(r.opts.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := r.Flush(fctx); err != nil {
				r.log.Warn("consumer sightings not written at shutdown", "error", err.Error())
			}
			cancel()
			return
		case <-t.C:
			if err := r.Flush(ctx); err != nil && ctx.Err() == nil {
				r.log.WarnContext(ctx, "consumer sightings not written; retrying", "error", err.Error())
			}
		}
	}
}

// List returns secret's consumers, with this replica's latest sightings
// written first.
func (r *Registry) List(ctx context.Context, secret string) ([]store.Consumer, error) {
	if err := r.Flush(ctx); err != nil {
		return nil, err
	}
	cs, err := r.store.ListConsumers(ctx, secret)
	if err != nil {
		return nil, fmt.Errorf("list consumers of %s: %w", secret, err)
	}
	return cs, nil
}
