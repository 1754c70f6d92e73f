// Package resolve turns SecretRefs into values through a bounded cache:
// entries live for a TTL and are refreshed ahead of expiry with jitter;
// concurrent misses of one ref share a single backend read; a backend
// failure serves the last good value up to a max-stale bound and then fails
// closed; not-found and permission errors are cached briefly; and every
// new value is compared by keyed fingerprint so that changes can be pushed.
package resolve

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// Reader reads values from secret managers (backend.Registry).
type Reader interface {
	Read(ctx context.Context, ref secretref.Ref) (backend.Value, error)
}

// Options tune a Resolver. Zero values take the defaults.
type Options struct {
	TTL          time.Duration // how long a value is fresh; default 5m
	MaxStale     time.Duration // how long past its TTL a value may serve while the backend fails; default 1h
	NegativeTTL  time.Duration // how long not-found and denied answers are cached; default 5s
	RefreshAhead float64       // refresh once this fraction of the TTL has passed; default 0.75
	Jitter       float64       // ± fraction of the TTL added to the refresh time; default 0.1
	MaxEntries   int           // bound on cached values; default 100,000
	MaxBytes     int64         // bound on cached value bytes; default 256 MiB
	FetchTimeout time.Duration // bound on one backend read; default 10s
	// FingerprintKey keys the HMAC that fingerprints values; required.
	FingerprintKey []byte
	// Events receives an events.NewVersion (outside locks) whenever a
	// ref's fingerprint changes from one the cache had before; nil drops
	// them.
	Events *events.Bus
	Now    func() time.Time
}

// Result is a resolved value.
type Result struct {
	Data        []byte
	Version     string
	Fingerprint string    // keyed HMAC-SHA256 of the value, hex
	FetchedAt   time.Time // when the backend returned it
	RefreshAt   time.Time // when a client should ask again
	ExpiresAt   time.Time // when the value itself expires, if the backend knows
	Stale       bool      // served past its TTL because the backend failed
}

// ErrStale is wrapped by errors returned once max-stale has passed.
var ErrStale = errors.New("cached value is past max-stale and the backend is failing")

type entry struct {
	key      string
	res      Result // zero Data when only an error is cached
	err      error  // cached not-found / denied answer
	errUntil time.Time
	elem     *list.Element
	// newest is the start sequence of the newest read that wrote the
	// entry (or of the Invalidate that emptied it): a read that started
	// before it must not replace what it wrote, so a RefreshNow, or a read
	// after an Invalidate, is never undone by a slower read begun earlier.
	newest uint64
}

// Resolver is the cache. Safe for concurrent use.
type Resolver struct {
	reader Reader
	opts   Options
	group  singleflight.Group

	mu      sync.Mutex
	entries map[string]*entry
	lru     *list.List // front = most recently used
	bytes   int64
	reads   int64 // backend reads (for tests and metrics)
	evicted int64
	hits    int64  // answered from the cache (values and cached errors)
	misses  int64  // Gets that had to read the backend
	stale   int64  // values served past their TTL because the backend failed
	seq     uint64 // numbers the reads as they start
}

// New returns a resolver reading through r.
func New(r Reader, opts Options) (*Resolver, error) {
	if len(opts.FingerprintKey) < 16 {
		return nil, errors.New("resolve: a fingerprint key of at least 16 bytes is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.TTL, 5*time.Minute)
	def(&opts.MaxStale, time.Hour)
	def(&opts.NegativeTTL, 5*time.Second)
	def(&opts.FetchTimeout, 10*time.Second)
	if opts.RefreshAhead <= 0 || opts.RefreshAhead >= 1 {
		opts.RefreshAhead = 0.75
	}
	if opts.Jitter < 0 || opts.Jitter >= 0.25 {
		opts.Jitter = 0.1
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = 100_000
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 20
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Resolver{reader: r, opts: opts, entries: map[string]*entry{}, lru: list.New()}, nil
}

// Stats are counters for metrics and tests.
type Stats struct {
	Entries      int
	Bytes        int64
	BackendReads int64
	Evictions    int64
	Hits         int64
	Misses       int64
	StaleServes  int64
}

// Stats returns the current counters.
func (r *Resolver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{Entries: len(r.entries), Bytes: r.bytes, BackendReads: r.reads, Evictions: r.evicted,
		Hits: r.hits, Misses: r.misses, StaleServes: r.stale}
}

// Get resolves ref: from the cache when fresh (starting a background
// refresh once the refresh time has passed), else from the backend, with
// concurrent misses sharing one read. The caller owns the returned Data (a
// copy), so the cache can zero its own bytes when it drops them.
func (r *Resolver) Get(ctx context.Context, ref secretref.Ref) (Result, error) {
	key := ref.String()
	now := r.opts.Now()
	r.mu.Lock()
	e := r.entries[key]
	if e != nil {
		r.lru.MoveToFront(e.elem)
		if e.err != nil && now.Before(e.errUntil) {
			err := e.err
			r.hits++
			r.mu.Unlock()
			return Result{}, err
		}
		if e.res.Data != nil && now.Before(e.res.FetchedAt.Add(r.opts.TTL)) {
			res := e.res
			res.Data = clone(res.Data)
			r.hits++
			r.mu.Unlock()
			if !now.Before(res.RefreshAt) {
				r.refreshAsync(ref, key)
			}
			return res, nil
		}
	}
	r.misses++
	r.mu.Unlock()

	return r.load(ctx, ref, key, fetchMiss)
}

// Peek returns what the cache holds of ref without its value (Data nil)
// and without reading the backend or counting a hit: for figures that
// need a version or fingerprint only. ok is false when nothing fresh is
// cached.
func (r *Resolver) Peek(ref secretref.Ref) (res Result, ok bool) {
	key := ref.String()
	now := r.opts.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[key]
	if e == nil || e.res.Data == nil || !now.Before(e.res.FetchedAt.Add(r.opts.TTL)) {
		return Result{}, false
	}
	res = e.res
	res.Data = nil
	return res, true
}

// Refresh returns ref's value, reading the backend first when the cached
// value is due for refreshing (or absent). Watchers call it at each value's
// RefreshAt, so a change in the backend is seen within the refresh
// interval even when nobody resolves the ref; a change is published like
// any other.
func (r *Resolver) Refresh(ctx context.Context, ref secretref.Ref) (Result, error) {
	return r.load(ctx, ref, ref.String(), fetchDue)
}

// RefreshNow reads ref from its backend whatever the cache holds (a
// rotation wrote a new version, a secret was rebound to it), and reports
// a change like any refresh. Concurrent callers share one read; when the
// backend fails, the last good value serves as for any read.
func (r *Resolver) RefreshNow(ctx context.Context, ref secretref.Ref) (Result, error) {
	return r.load(ctx, ref, ref.String(), fetchNow)
}

// How a fetch treats a cached value.
type fetchMode int

const (
	fetchMiss fetchMode = iota // a Get that missed: a value fetched meanwhile serves
	fetchDue                   // a refresh: a value not yet due for refreshing serves
	fetchNow                   // read the backend whatever is cached
)

// load fetches through the flight and, when the backend fails, serves the
// last good value until max-stale.
func (r *Resolver) load(ctx context.Context, ref secretref.Ref, key string, mode fetchMode) (Result, error) {
	flight := key
	if mode == fetchNow {
		// Not the flight of a Get or a refresh already running: it may
		// have started before what made the caller ask for a fresh read.
		flight = "now:" + key
	}
	// A read that began before the entry was last invalidated or refreshed
	// must not answer this caller: it may predate the new version. Joining
	// such a flight is possible (it is still finishing), so its answer is
	// set aside and a flight of its own is begun; one begun after the first
	// has finished started after mark.
	r.mu.Lock()
	var mark uint64
	if e := r.entries[key]; e != nil {
		mark = e.newest
	}
	r.mu.Unlock()
	var (
		v   any
		err error
	)
	for try := 0; try < 2; try++ {
		v, err, _ = r.group.Do(flight, func() (any, error) { return r.fetch(ctx, ref, key, mode) })
		if err != nil || v.(fetched).started >= mark {
			break
		}
	}
	now := r.opts.Now()
	if err == nil {
		res := v.(fetched).Result
		res.Data = clone(res.Data) // the flight's copy is shared by its callers
		return res, nil
	}
	// The backend failed: serve the last good value until max-stale.
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[key]; e != nil && e.res.Data != nil && !isDefinitive(err) {
		if now.Before(e.res.FetchedAt.Add(r.opts.TTL + r.opts.MaxStale)) {
			res := e.res
			res.Data = clone(res.Data)
			res.Stale = true
			r.stale++
			return res, nil
		}
		return Result{}, fmt.Errorf("%s: %w: %w", ref, ErrStale, err)
	}
	return Result{}, err
}

// isDefinitive: answers that mean the value is gone or forbidden, which a
// stale copy must not paper over.
func isDefinitive(err error) bool {
	return errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrPermissionDenied)
}

func (r *Resolver) refreshAsync(ref secretref.Ref, key string) {
	go func() {
		_, _, _ = r.group.Do(key, func() (any, error) { return r.fetch(context.Background(), ref, key, fetchDue) })
	}()
}

// fetch reads ref from the backend and updates the cache. Only one fetch
// per key runs at a time (singleflight); it is detached from the first
// caller's cancellation so that other waiters are not failed by it.
//
// A caller that saw a miss may reach the flight just after another flight
// for the same key finished, so fetch first looks again: a value fetched in
// the meantime is returned without a read (for a refresh, one that is not
// yet due for refreshing).
// fetched is a flight's answer: a value no cache entry shares (the cache
// zeroes its own bytes when it drops them, which may happen before the
// flight's callers have copied theirs) and the sequence of the read that
// produced it.
type fetched struct {
	Result
	started uint64
}

func (r *Resolver) fetch(ctx context.Context, ref secretref.Ref, key string, mode fetchMode) (fetched, error) {
	r.mu.Lock()
	if e := r.entries[key]; e != nil && e.err != nil && mode == fetchMiss && r.opts.Now().Before(e.errUntil) {
		err := e.err
		r.mu.Unlock()
		return fetched{}, err
	}
	if e := r.entries[key]; e != nil && e.res.Data != nil && mode != fetchNow {
		now := r.opts.Now()
		due := e.res.FetchedAt.Add(r.opts.TTL)
		if mode == fetchDue {
			due = e.res.RefreshAt
		}
		if now.Before(due) {
			res := e.res
			res.Data = clone(res.Data)
			started := e.newest
			r.mu.Unlock()
			return fetched{res, started}, nil
		}
	}
	r.reads++
	r.seq++
	started := r.seq
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.opts.FetchTimeout)
	defer cancel()
	v, err := r.reader.Read(ctx, ref)
	now := r.opts.Now()
	if err != nil {
		if isDefinitive(err) {
			r.mu.Lock()
			if e := r.entryLocked(key); started > e.newest {
				e.newest = started
				e.err, e.errUntil = err, now.Add(r.opts.NegativeTTL)
				if e.res.Data != nil { // the value is gone or forbidden now: drop it
					r.dropDataLocked(e)
				}
			}
			r.mu.Unlock()
		}
		return fetched{}, err
	}
	res := Result{
		Data:        clone(v.Data), // the flight's copy; the cache keeps another
		Version:     v.Version,
		Fingerprint: r.fingerprint(v.Data),
		FetchedAt:   now,
		RefreshAt:   r.refreshTime(now),
		ExpiresAt:   v.ExpiresAt,
	}
	r.mu.Lock()
	e := r.entryLocked(key)
	if started < e.newest {
		// A read begun later (a RefreshNow) or an Invalidate got there
		// first: what it holds is newer than this read's answer, which goes
		// to this read's callers only.
		r.mu.Unlock()
		return fetched{res, started}, nil
	}
	e.newest = started
	old, oldVersion := e.res.Fingerprint, e.res.Version
	r.dropDataLocked(e)
	e.res, e.err = res, nil
	e.res.Data = clone(res.Data)
	r.bytes += int64(len(res.Data))
	r.evictLocked()
	r.mu.Unlock()
	if old != "" && old != res.Fingerprint {
		r.opts.Events.Publish(events.NewVersion{Ref: key, Version: res.Version, Fingerprint: res.Fingerprint, OldVersion: oldVersion, OldFingerprint: old})
	}
	return fetched{res, started}, nil
}

func (r *Resolver) refreshTime(now time.Time) time.Time {
	ttl := float64(r.opts.TTL)
	offset := ttl * (r.opts.RefreshAhead + r.opts.Jitter*(2*rand.Float64()-1))
	return now.Add(time.Duration(offset))
}

func (r *Resolver) entryLocked(key string) *entry {
	if e := r.entries[key]; e != nil {
		r.lru.MoveToFront(e.elem)
		return e
	}
	e := &entry{key: key}
	e.elem = r.lru.PushFront(e)
	r.entries[key] = e
	return e
}

// dropDataLocked forgets e's value, zeroing the bytes the cache owned.
func (r *Resolver) dropDataLocked(e *entry) {
	if e.res.Data == nil {
		return
	}
	r.bytes -= int64(len(e.res.Data))
	clear(e.res.Data)
	e.res = Result{Fingerprint: e.res.Fingerprint}
}

// evictLocked removes least recently used entries beyond the bounds.
func (r *Resolver) evictLocked() {
	for len(r.entries) > r.opts.MaxEntries || r.bytes > r.opts.MaxBytes {
		back := r.lru.Back()
		if back == nil {
			return
		}
		e := back.Value.(*entry)
		r.dropDataLocked(e)
		r.lru.Remove(back)
		delete(r.entries, e.key)
		r.evicted++
	}
}

// Invalidate drops ref's cached value, so that the next read goes to the
// backend. The fingerprint is kept: that read reports a change like any
// refresh (use RefreshNow to read at once).
func (r *Resolver) Invalidate(ref secretref.Ref) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// The entry is kept (or made) to mark when: a read in flight now may
	// predate the new version, and must not be cached.
	e := r.entryLocked(ref.String())
	r.dropDataLocked(e)
	e.err = nil
	r.seq++
	e.newest = r.seq
	r.evictLocked()
}

func (r *Resolver) fingerprint(data []byte) string {
	m := hmac.New(sha256.New, r.opts.FingerprintKey)
	m.Write(data)
	return hex.EncodeToString(m.Sum(nil))
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
