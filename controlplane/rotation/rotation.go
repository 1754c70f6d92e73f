// Package rotation rotates secrets through a durable state machine whose
// end is verified: a rotation completes only when every consumer of the
// secret has acknowledged the new version.
//
//	pending      the rotator creates the new version in the backend; the
//	             secret stays pinned at the version it was served at
//	propagating  the pin is lifted and the new version pushed (the cache
//	             reads it at once, so every Watch and SDS stream gets it)
//	verifying    every consumer seen within the horizon must acknowledge it
//	             (Watch and SDS ACKs; a Resolve-only consumer once it read
//	             it) before the deadline
//	completed    (the previous version stays in the backend for rollback)
//	failed       a consumer lagged or rejected it; with auto-rollback the
//	             secret is pinned back at the previous version
//	rolled_back
//
// Each step is recorded in the store before the next begins and is
// idempotent: a server that stops at any point resumes its rotations at
// start, and a resumed pending step adopts the version it already wrote
// rather than writing a second. The package knows nothing of transports.
package rotation

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/store"
)

// States of a rotation.
const (
	Pending     = "pending"
	Propagating = "propagating"
	Verifying   = "verifying"
	Completed   = "completed"
	Failed      = "failed"
	RolledBack  = "rolled_back"
)

// Store persists rotations (store.Store).
type Store interface {
	store.RotationStore
}

// Catalog binds names to refs and pins a secret's served version
// (catalog.Catalog).
type Catalog interface {
	LookupBinding(ctx context.Context, name string) (secretref.Ref, string, error)
	Pin(ctx context.Context, name, version string)
}

// Backend reads and writes values (backend.Registry).
type Backend interface {
	Read(ctx context.Context, ref secretref.Ref) (backend.Value, error)
	Write(ctx context.Context, ref secretref.Ref, data []byte) (string, error)
}

// Resolver reads a ref afresh and tells its watchers (resolve.Resolver).
type Resolver interface {
	RefreshNow(ctx context.Context, ref secretref.Ref) (resolve.Result, error)
}

// Consumers lists who consumes a secret (consumers.Registry).
type Consumers interface {
	List(ctx context.Context, secret string) ([]store.Consumer, error)
}

// Recorder is the audit log (audit.Log).
type Recorder interface {
	RecordOutcome(ctx context.Context, ev audit.Event)
}

// Rotator makes a secret's next value from its current one.
type Rotator interface {
	Next(ctx context.Context, current backend.Value) ([]byte, error)
}

// ExpectedVersion is the version a consumer on channel acknowledges for
// the value res of secret (SDS versions derive from content; Watch and
// Resolve carry the backend's).
type ExpectedVersion func(ctx context.Context, channel, secret string, res resolve.Result) (string, error)

// Options tune a Manager. Zero values take the defaults.
type Options struct {
	// Deadline bounds verifying; default 2m.
	Deadline time.Duration
	// Horizon: consumers not seen for longer are not waited for; default 24h.
	Horizon time.Duration
	// AutoRollback pins a failed rotation's secret back at the previous
	// version.
	AutoRollback bool
	// Poll is how often verifying looks at the consumers; default 200ms.
	Poll time.Duration
	// StepTimeout bounds one rotator or backend step; default 30s.
	StepTimeout time.Duration
	Rotators    map[string]Rotator // by method; "random" is always there
	// Events, when set, gets an events.RotationStep for every step
	// audited (webhooks follow it).
	Events *events.Bus
	Log    *slog.Logger
	Now    func() time.Time
}

// Manager starts, drives and resumes rotations. Safe for concurrent use.
type Manager struct {
	store     Store
	catalog   Catalog
	backend   Backend
	resolver  Resolver
	consumers Consumers
	audit     Recorder
	expected  ExpectedVersion
	opts      Options
	log       *slog.Logger

	mu      sync.Mutex
	running map[string]bool // rotation ids being driven here
	wg      sync.WaitGroup
	ctx     context.Context // Run's: rotations started later are driven under it
}

// New returns a manager; call Run to resume and drive rotations.
func New(s Store, c Catalog, b Backend, r Resolver, cons Consumers, a Recorder, expected ExpectedVersion, opts Options) *Manager {
	if opts.Deadline <= 0 {
		opts.Deadline = 2 * time.Minute
	}
	if opts.Horizon <= 0 {
		opts.Horizon = 24 * time.Hour
	}
	if opts.Poll <= 0 {
		opts.Poll = 200 * time.Millisecond
	}
	if opts.StepTimeout <= 0 {
		opts.StepTimeout = 30 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	rotators := map[string]Rotator{"random": Random{}}
	for k, v := range opts.Rotators {
		rotators[k] = v
	}
	opts.Rotators = rotators
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{store: s, catalog: c, backend: b, resolver: r, consumers: cons, audit: a, expected: expected, opts: opts, log: log, running: map[string]bool{}}
}

// StartRequest asks for a rotation.
type StartRequest struct {
	Secret    string
	Method    string // default "random"
	Actor     string // SPIFFE ID, or "system"
	Emergency bool   // do not wait for consumers: push and complete
}

// Refusals of Start, wrapped with what was refused.
var (
	ErrRunning       = errors.New("a rotation of this secret is already running")
	ErrFixedVersion  = errors.New("the secret is bound to a fixed version; rebind it to the unversioned ref to rotate it")
	ErrUnknownMethod = errors.New("unknown rotation method")
)

// Start records a new rotation in pending and has it driven. A secret
// with a rotation in flight is refused with that rotation's id.
func (m *Manager) Start(ctx context.Context, req StartRequest) (store.Rotation, error) {
	if req.Method == "" {
		req.Method = "random"
	}
	if _, ok := m.opts.Rotators[req.Method]; !ok {
		return store.Rotation{}, fmt.Errorf("method %.64q: %w (known: random)", req.Method, ErrUnknownMethod)
	}
	if active, err := m.store.ListRotations(ctx, store.RotationQuery{Secret: req.Secret, ActiveOnly: true, Limit: 1}); err != nil {
		return store.Rotation{}, fmt.Errorf("rotate %s: %w", req.Secret, err)
	} else if len(active) > 0 {
		return store.Rotation{}, fmt.Errorf("rotate %s: %w (rotation %s, %s)", req.Secret, ErrRunning, active[0].ID, active[0].State)
	}
	ref, canonical, err := m.catalog.LookupBinding(ctx, req.Secret)
	if err != nil {
		return store.Rotation{}, fmt.Errorf("rotate %s: %w", req.Secret, err)
	}
	if ref.Version != "" || ref.Stage != "" {
		return store.Rotation{}, fmt.Errorf("rotate %s (%s): %w", req.Secret, canonical, ErrFixedVersion)
	}
	cur, err := m.read(ctx, ref)
	if err != nil {
		return store.Rotation{}, fmt.Errorf("rotate %s: read the current version: %w", req.Secret, err)
	}
	clear(cur.Data)
	r := store.Rotation{ID: newID(), Secret: req.Secret, Ref: canonical, Method: req.Method, State: Pending, Actor: req.Actor, Emergency: req.Emergency, FromVersion: cur.Version}
	// Pinned before the rotation exists: from now on the current version
	// is what is served, whatever the backend's latest becomes.
	m.catalog.Pin(ctx, req.Secret, cur.Version)
	created, err := m.store.CreateRotation(ctx, r)
	if err != nil {
		m.catalog.Pin(ctx, req.Secret, "")
		if errors.Is(err, store.ErrAlreadyExists) {
			if active, lerr := m.store.ListRotations(ctx, store.RotationQuery{Secret: req.Secret, ActiveOnly: true, Limit: 1}); lerr == nil && len(active) > 0 {
				m.catalog.Pin(ctx, req.Secret, active[0].FromVersion)
				return store.Rotation{}, fmt.Errorf("rotate %s: %w (rotation %s, %s)", req.Secret, ErrRunning, active[0].ID, active[0].State)
			}
			return store.Rotation{}, fmt.Errorf("rotate %s: %w", req.Secret, ErrRunning)
		}
		return store.Rotation{}, err
	}
	m.record(ctx, created, "rotation.start", audit.OK)
	m.drive(created)
	return created, nil
}

// Get returns a rotation.
func (m *Manager) Get(ctx context.Context, id string) (store.Rotation, error) {
	return m.store.GetRotation(ctx, id)
}

// List returns rotations, newest first.
func (m *Manager) List(ctx context.Context, q store.RotationQuery) ([]store.Rotation, error) {
	return m.store.ListRotations(ctx, q)
}

// Run resumes every rotation in flight, drives those started later, and
// waits for them when ctx ends (each stops at its next step, resumable).
func (m *Manager) Run(ctx context.Context) {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	active, err := m.store.ListRotations(ctx, store.RotationQuery{ActiveOnly: true, Limit: 10_000})
	if err != nil {
		m.log.ErrorContext(ctx, "rotations in flight could not be listed; they resume at the next start", "error", err.Error())
	}
	for _, r := range active {
		if r.State == Pending {
			m.catalog.Pin(ctx, r.Secret, r.FromVersion)
		}
		m.log.InfoContext(ctx, "resuming rotation", "rotation", r.ID, "secret_name", r.Secret, "state", r.State)
		m.drive(r)
	}
	<-ctx.Done()
	m.wg.Wait()
}

// drive runs r's remaining steps in a goroutine of its own, once.
func (m *Manager) drive(r store.Rotation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running[r.ID] || m.ctx == nil {
		return // already driven, or Run has not started: it resumes r
	}
	m.running[r.ID] = true
	ctx := m.ctx
	m.wg.Go(func() {
		defer func() {
			m.mu.Lock()
			delete(m.running, r.ID)
			m.mu.Unlock()
		}()
		m.steps(ctx, r)
	})
}

// steps advances r until it is final or ctx ends.
func (m *Manager) steps(ctx context.Context, r store.Rotation) {
	for ctx.Err() == nil && !slices.Contains(store.FinalRotationStates, r.State) {
		next, err := m.step(ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				return // stopping: the step resumes at the next start
			}
			m.log.WarnContext(ctx, "rotation step failed", "rotation", r.ID, "secret_name", r.Secret, "state", r.State, "error", err.Error())
			next = r
			next.State, next.Detail = Failed, err.Error()
			if r.State == Pending && r.ToVersion == "" {
				m.catalog.Pin(ctx, r.Secret, "") // nothing new was served
			}
		}
		saved, err := m.store.UpdateRotation(ctx, next, r.State)
		if err != nil {
			m.log.ErrorContext(ctx, "rotation state could not be recorded; retrying", "rotation", r.ID, "error", err.Error())
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if cur, gerr := m.store.GetRotation(ctx, r.ID); gerr == nil {
				r = cur
			}
			continue
		}
		outcome := audit.OK
		if saved.State == Failed {
			outcome = "Failed"
		}
		m.record(ctx, saved, "rotation."+saved.State, outcome)
		r = saved
		if r.State == Failed && m.opts.AutoRollback && r.ToVersion != "" {
			r = m.rollback(ctx, r)
		}
	}
}

// step performs r's current step and returns it in its next state.
func (m *Manager) step(ctx context.Context, r store.Rotation) (store.Rotation, error) {
	ref, err := secretref.Parse(r.Ref)
	if err != nil {
		return r, fmt.Errorf("the rotation's ref does not parse: %w", err)
	}
	switch r.State {
	case Pending:
		if r.ToVersion == "" {
			v, err := m.create(ctx, r, ref)
			if err != nil {
				return r, err
			}
			r.ToVersion = v
			m.record(ctx, r, "rotation.create_version", audit.OK)
		}
		r.State = Propagating
		return r, nil
	case Propagating:
		m.catalog.Pin(ctx, r.Secret, "")
		sctx, cancel := context.WithTimeout(ctx, m.opts.StepTimeout)
		defer cancel()
		if _, err := m.resolver.RefreshNow(sctx, ref); err != nil {
			return r, fmt.Errorf("read the new version: %w", err)
		}
		if r.Emergency {
			r.State, r.Detail = Completed, "emergency: pushed without waiting for consumers"
			return r, nil
		}
		r.State, r.Deadline = Verifying, m.opts.Now().Add(m.opts.Deadline)
		return r, nil
	case Verifying:
		return m.verify(ctx, r, ref)
	}
	return r, fmt.Errorf("unknown state %q", r.State)
}

// create writes the next version, or adopts the one an earlier run of
// this step wrote before it could record it: the backend's latest is not
// the version the rotation started from.
func (m *Manager) create(ctx context.Context, r store.Rotation, ref secretref.Ref) (string, error) {
	sctx, cancel := context.WithTimeout(ctx, m.opts.StepTimeout)
	defer cancel()
	cur, err := m.read(sctx, ref)
	if err != nil {
		return "", fmt.Errorf("read the current version: %w", err)
	}
	defer clear(cur.Data)
	if cur.Version != r.FromVersion {
		m.log.InfoContext(ctx, "rotation adopts the version written before it stopped", "rotation", r.ID, "secret_name", r.Secret, "version", cur.Version)
		return cur.Version, nil
	}
	next, err := m.opts.Rotators[r.Method].Next(sctx, cur)
	if err != nil {
		return "", fmt.Errorf("%s rotator: %w", r.Method, err)
	}
	defer clear(next)
	v, err := m.backend.Write(sctx, ref, next)
	if err != nil {
		return "", fmt.Errorf("write the new version: %w", err)
	}
	return v, nil
}

// verify waits until every consumer seen within the horizon has the new
// version, one of them rejects it, or the deadline passes.
func (m *Manager) verify(ctx context.Context, r store.Rotation, ref secretref.Ref) (store.Rotation, error) {
	// The new version, read once: what each channel's consumers must
	// acknowledge does not change while verifying.
	pinned := ref
	pinned.Version = r.ToVersion
	res, err := m.resolver.RefreshNow(ctx, pinned)
	if err != nil {
		return r, fmt.Errorf("read the new version: %w", err)
	}
	clear(res.Data)
	want := map[string]string{}
	t := time.NewTicker(m.opts.Poll)
	defer t.Stop()
	for {
		lagging, rejected, counted, err := m.laggards(ctx, r, res, want)
		switch {
		case err != nil && ctx.Err() != nil:
			return r, err
		case err != nil:
			m.log.WarnContext(ctx, "rotation could not check its consumers; retrying", "rotation", r.ID, "error", err.Error())
		case len(rejected) > 0:
			r.State, r.Detail = Failed, "rejected by "+strings.Join(rejected, ", ")
			return r, nil
		case len(lagging) == 0 && counted == 0:
			r.State, r.Detail = Completed, "no consumer seen within the horizon: nothing to wait for"
			return r, nil
		case len(lagging) == 0:
			r.State, r.Detail = Completed, fmt.Sprintf("all %d consumers acknowledged %s", counted, r.ToVersion)
			return r, nil
		case !m.opts.Now().Before(r.Deadline):
			r.State, r.Detail = Failed, "deadline passed; not acknowledged by "+strings.Join(lagging, ", ")
			return r, nil
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-t.C:
		}
	}
}

// laggards names the consumers that lack the new version, and those that
// rejected it, of the counted ones seen within the horizon.
// want caches, per channel, the version its consumers acknowledge.
func (m *Manager) laggards(ctx context.Context, r store.Rotation, res resolve.Result, want map[string]string) (lagging, rejected []string, counted int, err error) {
	cs, err := m.consumers.List(ctx, r.Secret)
	if err != nil {
		return nil, nil, 0, err
	}
	horizon := m.opts.Now().Add(-m.opts.Horizon)
	for _, c := range cs {
		if c.LastSeen.Before(horizon) {
			continue
		}
		v, ok := want[c.Channel]
		if !ok {
			if v, err = m.expected(ctx, c.Channel, r.Secret, res); err != nil {
				return nil, nil, 0, err
			}
			want[c.Channel] = v
		}
		counted++
		who := describe(c)
		switch {
		case c.Channel == "resolve":
			if c.Version != v {
				lagging = append(lagging, who)
			}
		case c.AckedVersion == v && c.AckError != "":
			rejected = append(rejected, who)
		case c.AckedVersion != v:
			lagging = append(lagging, who)
		}
	}
	return lagging, rejected, counted, nil
}

func describe(c store.Consumer) string {
	s := c.Identity + " (" + c.Channel
	if c.Node != "" {
		s += ", node " + c.Node
	}
	return s + ")"
}

// rollback makes a failed rotation's previous value current again (as
// Vault's kv rollback does: written as the backend's newest version, so
// that the backend and what is served agree) and pushes it.
func (m *Manager) rollback(ctx context.Context, r store.Rotation) store.Rotation {
	ref, err := secretref.Parse(r.Ref)
	if err != nil {
		return r
	}
	m.catalog.Pin(ctx, r.Secret, r.FromVersion) // served at once, while the write happens
	old := ref
	old.Version = r.FromVersion
	prev, err := m.read(ctx, old)
	if err != nil {
		m.log.ErrorContext(ctx, "rollback: the previous version could not be read; the secret stays pinned at it", "rotation", r.ID, "error", err.Error())
		return r
	}
	sctx, cancel := context.WithTimeout(ctx, m.opts.StepTimeout)
	restored, err := m.backend.Write(sctx, ref, prev.Data)
	cancel()
	clear(prev.Data)
	if err != nil {
		m.log.ErrorContext(ctx, "rollback: the previous value could not be written back; the secret stays pinned at it", "rotation", r.ID, "error", err.Error())
		return r
	}
	m.catalog.Pin(ctx, r.Secret, "")
	if _, err := m.resolver.RefreshNow(ctx, ref); err != nil {
		m.log.WarnContext(ctx, "rolled-back value could not be read; watchers keep polling", "rotation", r.ID, "error", err.Error())
	}
	next := r
	next.State = RolledBack
	next.Detail = r.Detail + "; rolled back: the value of " + r.FromVersion + " is current again as " + restored
	saved, err := m.store.UpdateRotation(ctx, next, Failed)
	if err != nil {
		m.log.ErrorContext(ctx, "rollback could not be recorded", "rotation", r.ID, "error", err.Error())
		return r
	}
	m.record(ctx, saved, "rotation."+RolledBack, audit.OK)
	return saved
}

func (m *Manager) read(ctx context.Context, ref secretref.Ref) (backend.Value, error) {
	sctx, cancel := context.WithTimeout(ctx, m.opts.StepTimeout)
	defer cancel()
	return m.backend.Read(sctx, ref)
}

// record audits a transition or step: what, of which secret, by whom.
func (m *Manager) record(ctx context.Context, r store.Rotation, action, outcome string) {
	actor := r.Actor
	if actor == "" {
		actor = "system"
	}
	target := r.Secret + " rotation " + r.ID
	if r.Emergency {
		target += " (emergency)"
	}
	m.audit.RecordOutcome(context.WithoutCancel(ctx), audit.Event{Actor: actor, Action: action, Target: target, Ref: r.Ref, Decision: audit.Allow, Outcome: outcome})
	m.opts.Events.Publish(events.RotationStep{ID: r.ID, Secret: r.Secret, State: r.State, Step: strings.TrimPrefix(action, "rotation."),
		FromVersion: r.FromVersion, ToVersion: r.ToVersion, Detail: r.Detail, Actor: actor, Emergency: r.Emergency})
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return fmt.Sprintf("rot-%x", b)
}
