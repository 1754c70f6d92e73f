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
	"github.com/secretplane/secretplane/internal/failpoint"
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
	store.RotationPolicyStore
	SecretsByRef(ctx context.Context, ref string) ([]store.Secret, error)
}

// Catalog binds names to refs and pins a secret's served version
// (catalog.Catalog).
type Catalog interface {
	LookupBinding(ctx context.Context, name string) (secretref.Ref, string, error)
	Pin(ctx context.Context, name, version string)
}

// Backend reads and writes values (backend.Registry); a backend that
// stages new versions (backend.Stager) has them staged, then promoted.
type Backend interface {
	Read(ctx context.Context, ref secretref.Ref) (backend.Value, error)
	Write(ctx context.Context, ref secretref.Ref, data []byte) (string, error)
	Stager(ref secretref.Ref) (backend.Stager, bool)
	Invalidator(ref secretref.Ref) (backend.Invalidator, bool)
}

// Resolver reads a ref afresh and tells its watchers (resolve.Resolver).
type Resolver interface {
	Get(ctx context.Context, ref secretref.Ref) (resolve.Result, error)
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

// Rotator makes a secret's next value.
type Rotator interface {
	// Check says what is wrong with params, if anything (at policy put and
	// at start, so that a rotation never starts with parameters it cannot
	// use). Parameters are never values: lengths, formats, issuer paths.
	Check(params map[string]string) error
	// Next returns the new value. It must not log or keep it.
	Next(ctx context.Context, req Request) ([]byte, error)
}

// Stepper is a rotator with steps of its own around the new version, as
// AWS's rotation functions have (an external hook for a database user or a
// third-party API key): Set applies the new value where it is used, Test
// checks that it works there, both before any consumer is given it; Finish
// ends the rotation there (revoking the previous credential, say) once
// every consumer has acknowledged the new one. Each step is keyed by the
// rotation id and must be idempotent: a resumed rotation runs it again.
type Stepper interface {
	Set(ctx context.Context, req Request, value []byte) error
	Test(ctx context.Context, req Request, value []byte) error
	Finish(ctx context.Context, req Request) error
}

// Request is what a rotator is given.
type Request struct {
	RotationID string // the idempotency key of the step
	Secret     string
	Params     map[string]string // the secret's rotation policy's, for this method
	Current    backend.Value     // the value being replaced
}

// ExpectedVersion is the version a consumer on channel acknowledges for
// the value res of secret (SDS versions derive from content; Watch and
// Resolve carry the backend's).
type ExpectedVersion func(ctx context.Context, channel, secret string, res resolve.Result) (string, error)

// Options tune a Manager. Zero values take the defaults.
type Options struct {
	// Deadline bounds verifying; default 2m.
	Deadline time.Duration
	// Horizon: consumers not seen for longer are not waited for; default
	// 10m (an open Watch or SDS stream is seen continuously).
	Horizon time.Duration
	// AutoRollback pins a failed rotation's secret back at the previous
	// version.
	AutoRollback bool
	// Poll is how often verifying looks at the consumers; default 200ms.
	Poll time.Duration
	// StepTimeout bounds one rotator or backend step; default 30s.
	StepTimeout time.Duration
	Rotators    map[string]Rotator // by method; "random" is always there
	// CheckEvery is how often rotation policies are looked at for
	// rotations due (cadence, certificate renewal); default 30s.
	CheckEvery time.Duration
	// RetryAfter is how long a secret whose scheduled rotation failed
	// waits before the schedule tries again; default 10m.
	RetryAfter time.Duration
	// Events, when set, gets an events.RotationStep for every step
	// audited (webhooks follow it).
	Events *events.Bus
	// Observe records a rotation, verified as any other, for every new
	// backend version the cache sees that no rotation here made (Events
	// must be set).
	Observe bool
	Log     *slog.Logger
	Now     func() time.Time
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
	running map[string]*driver   // rotation ids being driven here
	own     map[string]time.Time // ref and version made current here, when
	undo    map[string]int       // secrets whose failed rotation is being rolled back
	wg      sync.WaitGroup
	ctx     context.Context // Run's: rotations started later are driven under it
}

// New returns a manager; call Run to resume and drive rotations.
func New(s Store, c Catalog, b Backend, r Resolver, cons Consumers, a Recorder, expected ExpectedVersion, opts Options) *Manager {
	if opts.Deadline <= 0 {
		opts.Deadline = 2 * time.Minute
	}
	if opts.Horizon <= 0 {
		opts.Horizon = 10 * time.Minute
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
	if opts.CheckEvery <= 0 {
		opts.CheckEvery = 30 * time.Second
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = 10 * time.Minute
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
	return &Manager{store: s, catalog: c, backend: b, resolver: r, consumers: cons, audit: a, expected: expected, opts: opts, log: log, running: map[string]*driver{}, own: map[string]time.Time{}, undo: map[string]int{}}
}

// StartRequest asks for a rotation.
type StartRequest struct {
	Secret    string
	Method    string // default "random"
	Actor     string // SPIFFE ID, or "system"
	Emergency bool   // do not wait for consumers: push and complete
	Trigger   string // manual (default), cadence, expiry or observed
}

// Refusals of Start, wrapped with what was refused.
var (
	ErrRunning       = errors.New("a rotation of this secret is already running")
	ErrFixedVersion  = errors.New("the secret is bound to a fixed version; rebind it to the unversioned ref to rotate it")
	ErrUnknownMethod = errors.New("unknown rotation method")
	ErrBadPolicy     = errors.New("invalid rotation policy")
	ErrFinal         = errors.New("the rotation has ended")
	ErrSuperseded    = errors.New("the rotation's version has been superseded")
	// ErrEmergencyRollback refuses to roll back an emergency rotation: the
	// version it replaced was declared leaked, and a rollback would serve
	// it again. Fix forward with another rotation.
	ErrEmergencyRollback = errors.New("an emergency rotation is not rolled back: the version it replaced is treated as leaked; start another rotation instead")
)

// methods lists the known rotators, for messages.
func (m *Manager) methods() string {
	names := make([]string, 0, len(m.opts.Rotators))
	for k := range m.opts.Rotators {
		names = append(names, k)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// Start records a new rotation in pending and has it driven. A secret
// with a rotation in flight is refused with that rotation's id.
func (m *Manager) Start(ctx context.Context, req StartRequest) (store.Rotation, error) {
	pol, err := m.store.GetRotationPolicy(ctx, req.Secret)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Rotation{}, fmt.Errorf("rotate %s: %w", req.Secret, err)
	}
	if req.Method == "" {
		req.Method = pol.Method
	}
	if req.Method == "" {
		req.Method = "random"
	}
	if req.Trigger == "" {
		req.Trigger = "manual"
	}
	rot, ok := m.opts.Rotators[req.Method]
	if !ok {
		return store.Rotation{}, fmt.Errorf("method %.64q: %w (known: %s)", req.Method, ErrUnknownMethod, m.methods())
	}
	if pol.Method == req.Method {
		if err := rot.Check(pol.Params); err != nil {
			return store.Rotation{}, fmt.Errorf("rotate %s: the rotation policy's parameters: %w: %w", req.Secret, ErrBadPolicy, err)
		}
	} else if err := rot.Check(nil); err != nil {
		return store.Rotation{}, fmt.Errorf("rotate %s: method %s needs parameters: set them with a rotation policy: %w: %w", req.Secret, req.Method, ErrBadPolicy, err)
	}
	if active, err := m.store.ListRotations(ctx, store.RotationQuery{Secret: req.Secret, ActiveOnly: true, Limit: 1}); err != nil {
		return store.Rotation{}, fmt.Errorf("rotate %s: %w", req.Secret, err)
	} else if len(active) > 0 {
		return store.Rotation{}, fmt.Errorf("rotate %s: %w (rotation %s, %s)", req.Secret, ErrRunning, active[0].ID, active[0].State)
	}
	if m.undoing(req.Secret) {
		return store.Rotation{}, fmt.Errorf("rotate %s: %w (its last rotation is being rolled back)", req.Secret, ErrRunning)
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
	r := store.Rotation{ID: newID(), Secret: req.Secret, Ref: canonical, Method: req.Method, State: Pending, Actor: req.Actor, Emergency: req.Emergency, Trigger: req.Trigger, FromVersion: cur.Version}
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
	if m.opts.Events != nil && m.opts.Observe {
		sub := m.opts.Events.Subscribe("rotation-observe", 0)
		m.wg.Go(func() { m.observe(ctx, sub) })
	}
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
	t := time.NewTicker(m.opts.CheckEvery)
	defer t.Stop()
	for {
		m.schedule(ctx)
		select {
		case <-ctx.Done():
			m.wg.Wait()
			return
		case <-t.C:
		}
	}
}

// driver is a rotation being driven here: stop ends its steps, done
// closes when they have.
type driver struct {
	stop context.CancelFunc
	done chan struct{}
}

// drive runs r's remaining steps in a goroutine of its own, once.
func (m *Manager) drive(r store.Rotation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running[r.ID] != nil || m.ctx == nil {
		return // already driven, or Run has not started: it resumes r
	}
	ctx, stop := context.WithCancel(m.ctx)
	d := &driver{stop: stop, done: make(chan struct{})}
	m.running[r.ID] = d
	m.wg.Go(func() {
		defer func() {
			m.mu.Lock()
			delete(m.running, r.ID)
			m.mu.Unlock()
			stop()
			close(d.done)
		}()
		m.steps(ctx, r)
	})
}

// undoing reports whether a failed rotation of secret is being rolled
// back here; markUndo counts them.
func (m *Manager) undoing(secret string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.undo[secret] > 0
}

func (m *Manager) markUndo(secret string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.undo[secret] += n; m.undo[secret] <= 0 {
		delete(m.undo, secret)
	}
}

// halt stops the driving of rotation id here and waits until its current
// step has ended (bounded by the step timeout).
func (m *Manager) halt(ctx context.Context, id string) error {
	m.mu.Lock()
	d := m.running[id]
	m.mu.Unlock()
	if d == nil {
		return nil
	}
	d.stop()
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(m.opts.StepTimeout + time.Second):
		return fmt.Errorf("rotation %s did not stop within %s", id, m.opts.StepTimeout)
	}
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
				m.catalog.Pin(ctx, r.Secret, "") // nothing new was written
			}
		}
		// A rotation failing on its way out (a hook's set or test, a
		// refused promotion) is rolled back whatever AutoRollback says:
		// its new version was never served, and a backend that does not
		// stage versions already has it as its latest.
		undo := r.State == Propagating && err != nil
		rollingBack := next.State == Failed && (m.opts.AutoRollback || undo) && next.ToVersion != ""
		if rollingBack && next.Emergency {
			// The version replaced is treated as leaked: never served
			// again. The secret is served at its backend's current
			// version, and the operator fixes forward.
			rollingBack = false
			next.Detail += "; not rolled back: an emergency rotation's replaced version is treated as leaked (rotate again)"
			if ref, perr := secretref.Parse(r.Ref); perr == nil {
				// The cache learns the backend's current version before
				// the pin goes, so the replaced one is not served from it.
				if res, rerr := m.resolver.RefreshNow(ctx, ref); rerr == nil {
					clear(res.Data)
				}
			}
			m.catalog.Pin(ctx, r.Secret, "")
		}
		if rollingBack {
			m.markUndo(r.Secret, 1) // no start between failed and rolled back
		}
		saved, err := m.store.UpdateRotation(ctx, next, r.State)
		if err != nil {
			if rollingBack {
				m.markUndo(r.Secret, -1)
			}
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
		if rollingBack {
			r = m.rollback(ctx, r)
			m.markUndo(r.Secret, -1)
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
		failpoint.Hold(ctx, "rotation/propagating")
		if err := m.setAndTest(ctx, r, ref); err != nil {
			return r, err
		}
		sctx, cancel := context.WithTimeout(ctx, m.opts.StepTimeout)
		defer cancel()
		if stager, ok := m.backend.Stager(ref); ok {
			if err := stager.Promote(sctx, ref, r.ToVersion); err != nil {
				return r, fmt.Errorf("make the new version current: %w", err)
			}
		}
		// Read before the pin is lifted: consumers that follow the
		// unpinned ref find it fresh, never the cached value before it.
		m.expectVersion(ref.String(), r.ToVersion)
		if _, err := m.resolver.RefreshNow(sctx, ref); err != nil {
			return r, fmt.Errorf("read the new version: %w", err)
		}
		m.catalog.Pin(ctx, r.Secret, "")
		if r.Emergency {
			detail := "emergency: pushed without waiting for consumers; " + m.invalidate(sctx, r, ref)
			if err := m.finish(ctx, r); err != nil {
				return r, err
			}
			r.State, r.Detail = Completed, detail
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
	stager, staged := m.backend.Stager(ref)
	if adopted, err := m.written(sctx, r, ref, cur, stager); err != nil || adopted != "" {
		return adopted, err
	}
	failpoint.Hold(ctx, "rotation/pending-before-write")
	params, err := m.params(sctx, r)
	if err != nil {
		return "", err
	}
	rot, ok := m.opts.Rotators[r.Method]
	if !ok {
		return "", fmt.Errorf("method %s: %w", r.Method, ErrUnknownMethod)
	}
	next, err := rot.Next(sctx, Request{RotationID: r.ID, Secret: r.Secret, Params: params, Current: cur})
	if err != nil {
		return "", fmt.Errorf("%s rotator: %w", r.Method, err)
	}
	defer clear(next)
	var v string
	if staged {
		v, err = stager.Stage(sctx, ref, next, r.ID)
	} else {
		v, err = m.backend.Write(sctx, ref, next)
	}
	if err != nil {
		return "", fmt.Errorf("write the new version: %w", err)
	}
	failpoint.Hold(ctx, "rotation/pending-after-write") // written, not yet recorded
	return v, nil
}

// stepper returns r's rotator as a Stepper with its request, when it is one.
func (m *Manager) stepper(ctx context.Context, r store.Rotation) (Stepper, Request, error) {
	st, ok := m.opts.Rotators[r.Method].(Stepper)
	if !ok {
		return nil, Request{}, nil
	}
	params, err := m.params(ctx, r)
	if err != nil {
		return nil, Request{}, err
	}
	return st, Request{RotationID: r.ID, Secret: r.Secret, Params: params}, nil
}

// params are the parameters r's rotator is given: its secret's policy's,
// when the policy names r's method.
func (m *Manager) params(ctx context.Context, r store.Rotation) (map[string]string, error) {
	pol, err := m.store.GetRotationPolicy(ctx, r.Secret)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read the rotation policy: %w", err)
	case pol.Method != r.Method:
		return nil, nil
	}
	return pol.Params, nil
}

// setAndTest runs a Stepper's set and test steps on the new version.
func (m *Manager) setAndTest(ctx context.Context, r store.Rotation, ref secretref.Ref) error {
	st, req, err := m.stepper(ctx, r)
	if err != nil || st == nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, m.opts.StepTimeout)
	defer cancel()
	at := ref
	at.Version = r.ToVersion
	v, err := m.backend.Read(sctx, at)
	if err != nil {
		return fmt.Errorf("read the new version for the %s rotator: %w", r.Method, err)
	}
	defer clear(v.Data)
	req.Current = backend.Value{Version: v.Version}
	for _, step := range []struct {
		name string
		run  func(context.Context, Request, []byte) error
	}{{"set", st.Set}, {"test", st.Test}} {
		if err := step.run(sctx, req, v.Data); err != nil {
			m.record(ctx, r, "rotation.hook_"+step.name, "Failed")
			return fmt.Errorf("%s rotator, %s step: %w", r.Method, step.name, err)
		}
		m.record(ctx, r, "rotation.hook_"+step.name, audit.OK)
	}
	return nil
}

// finish runs a Stepper's finish step.
func (m *Manager) finish(ctx context.Context, r store.Rotation) error {
	st, req, err := m.stepper(ctx, r)
	if err != nil || st == nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, m.opts.StepTimeout)
	defer cancel()
	req.Current = backend.Value{Version: r.FromVersion} // the one it replaced
	if err := st.Finish(sctx, req); err != nil {
		m.record(ctx, r, "rotation.hook_finish", "Failed")
		return fmt.Errorf("%s rotator, finish step: %w", r.Method, err)
	}
	m.record(ctx, r, "rotation.hook_finish", audit.OK)
	return nil
}

// written returns the version an earlier run of r's pending step created
// before it could record it, or "": a staged version under r's id, or a
// backend latest that is not the version r started from.
func (m *Manager) written(ctx context.Context, r store.Rotation, ref secretref.Ref, cur backend.Value, stager backend.Stager) (string, error) {
	v := ""
	if stager != nil {
		var err error
		if v, err = stager.Staged(ctx, ref, r.ID); err != nil {
			return "", fmt.Errorf("look for a version staged before: %w", err)
		}
	} else if cur.Version != r.FromVersion {
		v = cur.Version
	}
	if v != "" {
		m.log.InfoContext(ctx, "rotation adopts the version written before it stopped", "rotation", r.ID, "secret_name", r.Secret, "version", v)
	}
	return v, nil
}

// invalidate makes an emergency rotation's previous version unreadable
// where the backend can, and says what it did.
func (m *Manager) invalidate(ctx context.Context, r store.Rotation, ref secretref.Ref) string {
	inv, ok := m.backend.Invalidator(ref)
	if !ok {
		return "the previous version " + r.FromVersion + " is kept: this backend cannot invalidate a version"
	}
	if err := inv.Invalidate(ctx, ref, r.FromVersion); err != nil {
		m.log.ErrorContext(ctx, "emergency rotation: the previous version could not be invalidated", "rotation", r.ID, "secret_name", r.Secret, "error", err.Error())
		m.record(ctx, r, "rotation.invalidate_previous", "Failed")
		return "the previous version " + r.FromVersion + " could not be invalidated: " + err.Error()
	}
	m.record(ctx, r, "rotation.invalidate_previous", audit.OK)
	return "the previous version " + r.FromVersion + " is invalidated at the backend"
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
		lagging, rejected, gone, counted, err := m.laggards(ctx, r, res, want)
		switch {
		case err != nil && ctx.Err() != nil:
			return r, err
		case err != nil:
			m.log.WarnContext(ctx, "rotation could not check its consumers; retrying", "rotation", r.ID, "error", err.Error())
		case len(rejected) > 0:
			r.State, r.Detail = Failed, "rejected by "+strings.Join(rejected, ", ")
			return r, nil
		case len(lagging) == 0 && counted == 0:
			if err := m.finish(ctx, r); err != nil {
				return r, err
			}
			r.State, r.Detail = Completed, "no consumer seen within the horizon: nothing to wait for"+notWaited(gone)
			return r, nil
		case len(lagging) == 0:
			if err := m.finish(ctx, r); err != nil {
				return r, err
			}
			r.State, r.Detail = Completed, fmt.Sprintf("all %d consumers acknowledged %s", counted, r.ToVersion)+notWaited(gone)
			return r, nil
		case !m.opts.Now().Before(r.Deadline):
			r.State, r.Detail = Failed, "deadline passed; not acknowledged by "+strings.Join(lagging, ", ")+notWaited(gone)
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
func (m *Manager) laggards(ctx context.Context, r store.Rotation, res resolve.Result, want map[string]string) (lagging, rejected, gone []string, counted int, err error) {
	cs, err := m.consumers.List(ctx, r.Secret)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	horizon := m.opts.Now().Add(-m.opts.Horizon)
	for _, c := range cs {
		if c.LastSeen.Before(horizon) {
			gone = append(gone, describe(c))
			continue
		}
		v, ok := want[c.Channel]
		if !ok {
			if v, err = m.expected(ctx, c.Channel, r.Secret, res); err != nil {
				return nil, nil, nil, 0, err
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
	return lagging, rejected, gone, counted, nil
}

// notWaited says which consumers were past the horizon (at most five by
// name).
func notWaited(gone []string) string {
	switch {
	case len(gone) == 0:
		return ""
	case len(gone) > 5:
		return fmt.Sprintf("; %d consumers not seen within the horizon were not waited for: %s and %d more", len(gone), strings.Join(gone[:5], ", "), len(gone)-5)
	}
	return fmt.Sprintf("; %d not seen within the horizon, not waited for: %s", len(gone), strings.Join(gone, ", "))
}

// Lags reports whether consumer c is not on want, the version its channel
// must have: a resolving client by what it was given, a watching one or an
// Envoy by what it acknowledged (a rejection of want lags too).
func Lags(c store.Consumer, want string) bool {
	if c.Channel == "resolve" {
		return c.Version != want
	}
	return c.AckedVersion != want || c.AckError != ""
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
	restored, err := m.restore(ctx, r, ref)
	if err != nil {
		m.log.ErrorContext(ctx, "rollback: the previous value could not be made current; the secret stays pinned at it", "rotation", r.ID, "error", err.Error())
		return r
	}
	// Read before the pin is lifted, so that no consumer is given the
	// rolled-back value again from the cache.
	m.expectVersion(ref.String(), restored)
	if _, err := m.resolver.RefreshNow(ctx, ref); err != nil {
		m.log.WarnContext(ctx, "rolled-back value could not be read; watchers keep polling", "rotation", r.ID, "error", err.Error())
	}
	m.catalog.Pin(ctx, r.Secret, "")
	next := r
	next.State = RolledBack
	next.Detail = r.Detail + "; rolled back: the value of " + r.FromVersion + " is current again as " + restored
	saved, err := m.store.UpdateRotation(ctx, next, r.State)
	if err != nil {
		m.log.ErrorContext(ctx, "rollback could not be recorded", "rotation", r.ID, "error", err.Error())
		return r
	}
	m.record(ctx, saved, "rotation."+RolledBack, audit.OK)
	return saved
}

// restore makes r's previous value current again: promoted back where the
// backend stages versions (it never stopped existing), else written as the
// newest version. It returns the version now current.
func (m *Manager) restore(ctx context.Context, r store.Rotation, ref secretref.Ref) (string, error) {
	sctx, cancel := context.WithTimeout(ctx, m.opts.StepTimeout)
	defer cancel()
	if stager, ok := m.backend.Stager(ref); ok {
		if err := stager.Promote(sctx, ref, r.FromVersion); err != nil {
			return "", fmt.Errorf("make %s current again: %w", r.FromVersion, err)
		}
		return r.FromVersion, nil
	}
	old := ref
	old.Version = r.FromVersion
	prev, err := m.backend.Read(sctx, old)
	if err != nil {
		return "", fmt.Errorf("read the previous version: %w", err)
	}
	defer clear(prev.Data)
	v, err := m.backend.Write(sctx, ref, prev.Data)
	if err != nil {
		return "", fmt.Errorf("write the previous value back: %w", err)
	}
	return v, nil
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
		FromVersion: r.FromVersion, ToVersion: r.ToVersion, Detail: r.Detail, Actor: actor, Emergency: r.Emergency,
		Method: r.Method, Trigger: r.Trigger, Started: r.CreateTime})
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return fmt.Sprintf("rot-%x", b)
}
