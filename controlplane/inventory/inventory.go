// Package inventory keeps what operators watch about every secret: when
// its value expires and is due for renewal, its latest rotation and when
// the next is due, how many consumers lag its current version, and, for a
// secret marked required, whether it resolves. It is refreshed in the
// background on an interval, so that readers (metrics scrapes, readiness
// probes, expiry alerts) never wait on the store or a backend: a store
// outage leaves the last snapshot in place, marked with the failure.
//
// It reads names, versions and certificate dates; a value it resolves is
// parsed for its dates and cleared at once.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/material"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/store"
)

// Store lists what the inventory looks at (store.Store).
type Store interface {
	ListSecrets(ctx context.Context, q store.ListQuery) ([]store.Secret, error)
	ListRotations(ctx context.Context, q store.RotationQuery) ([]store.Rotation, error)
	ListRotationPolicies(ctx context.Context, after string, limit int) ([]store.RotationPolicy, error)
}

// Consumers lists a secret's consumers (consumers.Registry).
type Consumers interface {
	List(ctx context.Context, secret string) ([]store.Consumer, error)
}

// Resolver reads values through the cache (resolve.Resolver).
type Resolver interface {
	Get(ctx context.Context, ref secretref.Ref) (resolve.Result, error)
	Peek(ref secretref.Ref) (resolve.Result, bool)
}

// Expected is the version a channel's consumers must have of a value (the
// SDS resource version, or the backend version): the rotation manager's.
type Expected func(ctx context.Context, channel, name string, res resolve.Result) (string, error)

// Options tune an Inventory. Zero values take the defaults.
type Options struct {
	Interval time.Duration // how often it is refreshed; default 30s
	Timeout  time.Duration // bound on one refresh; default Interval
	// ResolveTimeout bounds each value read (a hanging backend delays
	// one secret's figures, not the snapshot); default 5s.
	ResolveTimeout time.Duration
	Horizon        time.Duration // consumers not seen for longer are not counted; default 10m
	Expected       Expected
	Log            *slog.Logger
	Now            func() time.Time
}

// Secret is one secret's figures. Zero times are unknown or none.
type Secret struct {
	Name, Owner, Ref string
	Kind             material.Kind
	Required         bool
	// Resolvable and ResolveError are set for required secrets only: the
	// error names what failed (not found, denied, unavailable), never a
	// value.
	Resolvable   bool
	ResolveError string
	ExpiresAt    time.Time // the current value's expiry (a certificate's NotAfter)
	RenewAt      time.Time // when its rotation policy re-issues it
	// Rotation is the latest rotation (nil: never rotated).
	Rotation    *store.Rotation
	LastSuccess time.Time // the latest completed rotation's end
	NextDue     time.Time // when its cadence next wants a rotation
	Lagging     int       // consumers within the horizon not on the current version
}

// reportable: s has a figure (the snapshot keeps only those: a secret
// that is not required, has no dates, no rotation, no cadence and no
// consumer lagging has nothing to show, and 100,000 of them would cost
// memory for nothing).
func (s Secret) reportable() bool {
	return s.Required || !s.ExpiresAt.IsZero() || !s.RenewAt.IsZero() || s.Rotation != nil || !s.NextDue.IsZero() || s.Lagging > 0
}

// Snapshot is the inventory at one time.
type Snapshot struct {
	At      time.Time
	Secrets []Secret // by name; only those with a figure to show
	// Err is the last refresh's failure (the store could not be read):
	// Secrets are then those of the last refresh that succeeded.
	Err error
}

// Inventory refreshes and holds the snapshot.
type Inventory struct {
	store     Store
	consumers Consumers
	resolver  Resolver
	bindings  Bindings
	opts      Options
	log       *slog.Logger

	snap      atomic.Pointer[Snapshot]
	mu        sync.Mutex
	listeners []func(context.Context, Snapshot)
}

// Bindings looks up a secret's parsed ref (catalog.Catalog, which applies
// a rotation's pin).
type Bindings interface {
	LookupBinding(ctx context.Context, name string) (secretref.Ref, string, error)
}

// New returns an inventory; call Run (or Refresh).
func New(s Store, b Bindings, c Consumers, r Resolver, opts Options) *Inventory {
	if opts.Interval <= 0 {
		opts.Interval = 30 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = opts.Interval
	}
	if opts.ResolveTimeout <= 0 {
		opts.ResolveTimeout = 5 * time.Second
	}
	if opts.Horizon <= 0 {
		opts.Horizon = 10 * time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Inventory{store: s, bindings: b, consumers: c, resolver: r, opts: opts, log: log}
}

// OnRefresh calls f with every snapshot a refresh makes (alerts). f runs
// on the refresher's goroutine: it must not take long.
func (inv *Inventory) OnRefresh(f func(context.Context, Snapshot)) {
	inv.mu.Lock()
	inv.listeners = append(inv.listeners, f)
	inv.mu.Unlock()
}

// Snapshot returns the latest snapshot; ok is false before the first
// refresh has finished.
func (inv *Inventory) Snapshot() (Snapshot, bool) {
	s := inv.snap.Load()
	if s == nil {
		return Snapshot{}, false
	}
	return *s, true
}

// Run refreshes at once and then every Interval until ctx ends.
//
// A refresh reads the store for every secret: with many secrets it is
// long, and the wait after it grows to dutyFactor times its length, so
// the inventory takes a bounded share of the server's time however many
// secrets there are.
func (inv *Inventory) Run(ctx context.Context) {
	for {
		start := time.Now()
		inv.Refresh(ctx)
		wait := max(inv.opts.Interval, dutyFactor*time.Since(start))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// dutyFactor bounds the inventory's share of time: a refresh that took d
// is followed by at least dutyFactor*d of rest.
const dutyFactor = 10

// Refresh builds a new snapshot now. The store is read within Timeout;
// values are then read through the cache, up to readers at a time and
// each within ResolveTimeout, so a hanging backend delays its own
// secrets' figures and fails neither the snapshot nor the store's figure.
// When the store cannot be read, the previous snapshot's secrets stay,
// with the error.
func (inv *Inventory) Refresh(ctx context.Context) Snapshot {
	storeCtx, cancel := context.WithTimeout(ctx, inv.opts.Timeout)
	work, err := inv.gather(storeCtx)
	cancel()
	var secrets []Secret
	if err == nil {
		secrets = slices.DeleteFunc(inv.readValues(ctx, work), func(s Secret) bool { return !s.reportable() })
	}
	snap := Snapshot{At: inv.opts.Now(), Secrets: secrets, Err: err}
	if err != nil {
		if prev := inv.snap.Load(); prev != nil {
			snap.Secrets = prev.Secrets
		}
		if ctx.Err() == nil {
			inv.log.WarnContext(ctx, "inventory refresh failed; the last figures stay", "error", err.Error())
		}
	}
	inv.snap.Store(&snap)
	inv.mu.Lock()
	ls := slices.Clone(inv.listeners)
	inv.mu.Unlock()
	for _, f := range ls {
		lctx, cancel := context.WithTimeout(ctx, inv.opts.Timeout)
		f(lctx, snap)
		cancel()
	}
	return snap
}

const (
	page    = 500
	readers = 8 // values read at once
)

// pending is a secret's figures from the store, with what its value read
// still has to fill in.
type pending struct {
	st          Secret
	read        bool // its value is needed
	ref         secretref.Ref
	certificate bool
	renewAt     float64
	consumers   []store.Consumer
}

// gather reads what the store says of every secret.
func (inv *Inventory) gather(ctx context.Context) ([]pending, error) {
	var all []store.Secret
	for after := ""; ; {
		ss, err := inv.store.ListSecrets(ctx, store.ListQuery{After: after, Limit: page})
		if err != nil {
			return nil, fmt.Errorf("list secrets: %w", err)
		}
		all = append(all, ss...)
		if len(ss) < page {
			break
		}
		after = ss[len(ss)-1].Name
	}
	policies := map[string]store.RotationPolicy{}
	for after := ""; ; {
		ps, err := inv.store.ListRotationPolicies(ctx, after, page)
		if err != nil {
			return nil, fmt.Errorf("list rotation policies: %w", err)
		}
		for _, p := range ps {
			policies[p.Secret] = p
		}
		if len(ps) < page {
			break
		}
		after = ps[len(ps)-1].Secret
	}
	out := make([]pending, 0, len(all))
	for _, s := range all {
		w, err := inv.secret(ctx, s, policies)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

// secret gathers one secret's figures from the store.
func (inv *Inventory) secret(ctx context.Context, s store.Secret, policies map[string]store.RotationPolicy) (pending, error) {
	w := pending{st: Secret{Name: s.Name, Owner: s.Owner, Ref: s.Ref, Kind: material.Kind(s.Kind), Required: s.Required}}
	rs, err := inv.store.ListRotations(ctx, store.RotationQuery{Secret: s.Name, Limit: 20})
	if err != nil {
		return pending{}, fmt.Errorf("list rotations of %s: %w", s.Name, err)
	}
	if len(rs) > 0 {
		latest := rs[0]
		w.st.Rotation = &latest
		if c := rotation.LastCompleted(rs); c != nil {
			w.st.LastSuccess = c.UpdateTime
		}
	}
	p, hasPolicy := policies[s.Name]
	if hasPolicy {
		w.st.NextDue = rotation.NextDue(p, rotation.LastCompleted(rs))
		w.renewAt = p.RenewAt
	}
	cs, err := inv.consumers.List(ctx, s.Name)
	if err != nil {
		return pending{}, fmt.Errorf("list consumers of %s: %w", s.Name, err)
	}
	horizon := inv.opts.Now().Add(-inv.opts.Horizon)
	w.consumers = slices.DeleteFunc(cs, func(c store.Consumer) bool { return c.LastSeen.Before(horizon) })
	// The value is read (through the cache) for what needs it: a
	// certificate's dates, a required secret's resolvability, and the
	// version lagging consumers are counted against.
	w.certificate = w.st.Kind == material.TLSCertificate || w.st.Kind == material.ValidationContext || w.renewAt > 0
	if !w.certificate && !s.Required && len(w.consumers) == 0 {
		return w, nil
	}
	ref, _, err := inv.bindings.LookupBinding(ctx, s.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return w, nil // deleted since it was listed
	case err != nil:
		return pending{}, fmt.Errorf("look up %s: %w", s.Name, err)
	}
	w.ref, w.read = ref, true
	return w, nil
}

// readValues fills in what the values say, readers at a time.
func (inv *Inventory) readValues(ctx context.Context, work []pending) []Secret {
	out := make([]Secret, len(work))
	sem := make(chan struct{}, readers)
	var wg sync.WaitGroup
	for i := range work {
		if !work[i].read {
			out[i] = work[i].st
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i] = inv.value(ctx, work[i])
		})
	}
	wg.Wait()
	return out
}

// value reads w's value within ResolveTimeout: the cache's read of a
// backend outlives its caller's context, so the wait is bounded here.
func (inv *Inventory) value(ctx context.Context, w pending) Secret {
	st := w.st
	if !w.certificate && !st.Required {
		// Consumers only: the version lag is counted against is what the
		// cache holds, without copying the value (100,000 cached secrets
		// would otherwise be copied each refresh).
		if res, ok := inv.resolver.Peek(w.ref); ok {
			inv.countLagging(ctx, &st, w.consumers, res)
			return st
		}
	}
	type got struct {
		res resolve.Result
		err error
	}
	rctx, cancel := context.WithTimeout(ctx, inv.opts.ResolveTimeout)
	defer cancel()
	done := make(chan got, 1)
	go func() {
		res, err := inv.resolver.Get(rctx, w.ref)
		done <- got{res, err}
	}()
	var g got
	select {
	case g = <-done:
	case <-rctx.Done():
		g.err = rctx.Err()
		go func() { // the late answer's bytes are cleared, not kept
			if late := <-done; late.err == nil {
				clear(late.res.Data)
			}
		}()
	}
	if g.err != nil {
		if st.Required {
			st.ResolveError = resolveProblem(g.err)
		}
		return st
	}
	res := g.res
	defer clear(res.Data)
	st.Resolvable = st.Required
	st.ExpiresAt = res.ExpiresAt
	if w.certificate {
		if leaf, err := rotation.LeafOf(res.Data); err == nil {
			st.ExpiresAt = leaf.NotAfter
			if w.renewAt > 0 {
				st.RenewAt = rotation.RenewalPoint(st.Name, w.renewAt, leaf)
			}
		}
	}
	inv.countLagging(rctx, &st, w.consumers, res)
	return st
}

// countLagging counts the consumers not on the version of res their
// channel must have.
func (inv *Inventory) countLagging(ctx context.Context, st *Secret, cs []store.Consumer, res resolve.Result) {
	want := map[string]string{}
	for _, c := range cs {
		v, ok := want[c.Channel]
		if !ok {
			v = res.Version
			if inv.opts.Expected != nil {
				var err error
				if v, err = inv.opts.Expected(ctx, c.Channel, st.Name, res); err != nil {
					return // lag unknown this time
				}
			}
			want[c.Channel] = v
		}
		if rotation.Lags(c, v) {
			st.Lagging++
		}
	}
}

// resolveProblem names the class of a read's failure, not its text (which
// a backend may fill with anything).
func resolveProblem(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.Is(err, resolve.ErrStale):
		return "unavailable past max-stale"
	}
	return rootCause(err)
}

func rootCause(err error) string {
	for _, c := range []error{backend.ErrNotFound, backend.ErrPermissionDenied, backend.ErrUnavailable, backend.ErrInvalidValue} {
		if errors.Is(err, c) {
			return c.Error()
		}
	}
	return "failed"
}
