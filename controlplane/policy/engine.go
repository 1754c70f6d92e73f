package policy

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/store"
)

// BootstrapGrant names the decisions made for the admins of the server's
// configuration, which hold admin on every object and bind on every ref
// whatever the store says.
const BootstrapGrant = "bootstrap-admin (server configuration)"

// Lister reads every stored policy.
type Lister interface {
	ListPolicies(ctx context.Context, q store.ListQuery) ([]store.Policy, error)
}

// Decision is the outcome of an evaluation.
type Decision struct {
	Allowed bool
	Grant   string // the grant that allowed it; "" when denied
}

// Engine evaluates requests against an in-memory snapshot of the policies,
// replaced whole on Load. Evaluation never touches the store.
type Engine struct {
	store     Lister
	bootstrap map[spiffeid.ID]bool
	grants    atomic.Pointer[[]Grant]
	log       *slog.Logger
	events    *events.Bus
}

// EngineOption configures an Engine.
type EngineOption func(*Engine)

// WithEvents makes the engine publish an events.PolicyChanged when a
// refresh finds the stored policies changed (by another replica), and the
// manager one for each put and delete.
func WithEvents(b *events.Bus) EngineOption { return func(e *Engine) { e.events = b } }

// NewEngine returns an engine with no grants but the bootstrap admins; call
// Load before serving.
func NewEngine(s Lister, bootstrapAdmins []spiffeid.ID, log *slog.Logger, opts ...EngineOption) *Engine {
	e := &Engine{store: s, bootstrap: map[spiffeid.ID]bool{}, log: log}
	for _, o := range opts {
		o(e)
	}
	for _, id := range bootstrapAdmins {
		e.bootstrap[id] = true
	}
	empty := []Grant{}
	e.grants.Store(&empty)
	return e
}

// Load replaces the snapshot with the store's policies. A stored policy that
// no longer compiles (written by a newer server, say) is skipped and logged:
// skipping can only deny more.
func (e *Engine) Load(ctx context.Context) error {
	_, err := e.load(ctx)
	return err
}

// load is Load, reporting whether the snapshot changed.
func (e *Engine) load(ctx context.Context) (bool, error) {
	var grants []Grant
	err := eachPage(ctx, e.store.ListPolicies, func(p store.Policy) string { return p.Name }, func(p store.Policy) {
		g, err := Compile(p, true)
		if err != nil {
			e.log.Warn("skipping a stored policy that does not compile", "policy", p.Name, "error", err)
			return
		}
		grants = append(grants, g)
	})
	if err != nil {
		return false, fmt.Errorf("load policies: %w", err)
	}
	sort.Slice(grants, func(i, j int) bool { return grants[i].Name < grants[j].Name })
	old := e.grants.Swap(&grants)
	return old == nil || !reflect.DeepEqual(*old, grants), nil
}

// Refresh reloads every interval until ctx ends, so that changes made
// through other replicas are seen (a change-notification path replaces the
// polling when replicas share notifications).
func (e *Engine) Refresh(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			changed, err := e.load(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				e.log.Warn("policy refresh failed; keeping the last snapshot", "error", err)
			case err == nil && changed:
				e.events.Publish(events.PolicyChanged{})
			}
		}
	}
}

// Decide evaluates verb on object for id. Deny by default.
func (e *Engine) Decide(id spiffeid.ID, verb Verb, object string) Decision {
	return e.decide(id, verb, func(g Grant) bool { return g.Allows(id, verb, object) })
}

// DecidePrefix evaluates verb on every object whose name starts with prefix.
func (e *Engine) DecidePrefix(id spiffeid.ID, verb Verb, prefix string) Decision {
	return e.decide(id, verb, func(g Grant) bool { return g.AllowsPrefix(id, verb, prefix) })
}

// DecideBind evaluates binding a name to ref. Deny by default.
func (e *Engine) DecideBind(id spiffeid.ID, ref secretref.Ref) Decision {
	return e.decide(id, Bind, func(g Grant) bool { return g.AllowsBind(id, ref) })
}

// decide returns the bootstrap grant for the configured admins, else the
// first grant (by name) that allows, else a denial.
func (e *Engine) decide(id spiffeid.ID, verb Verb, allows func(Grant) bool) Decision {
	if (verb == Admin || verb == Bind || verb == Rotate) && e.bootstrap[id] {
		return Decision{Allowed: true, Grant: BootstrapGrant}
	}
	for _, g := range *e.grants.Load() {
		if allows(g) {
			return Decision{Allowed: true, Grant: g.Name}
		}
	}
	return Decision{}
}

// AdminsWithoutBind returns the grants that give admin on name to
// identities not all of which hold bind on ref: the grants whose holders
// the bind rule now refuses when they put the secret again. Bootstrap
// admins hold bind on every ref and are never listed.
func (e *Engine) AdminsWithoutBind(name string, ref secretref.Ref) []Grant {
	grants := *e.grants.Load()
	var out []Grant
	for _, g := range grants {
		if !g.grantsName(Admin, name) {
			continue
		}
		covered := false
		for _, h := range grants {
			if h.bindsRef(ref) && h.Subject.Covers(g.Subject) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, g)
		}
	}
	return out
}

// eachPage calls fn on every object list returns, a page at a time, in
// name order.
func eachPage[T any](ctx context.Context, list func(context.Context, store.ListQuery) ([]T, error), name func(T) string, fn func(T)) error {
	after := ""
	for {
		page, err := list(ctx, store.ListQuery{After: after, Limit: 500})
		if err != nil {
			return err
		}
		for _, o := range page {
			fn(o)
		}
		if len(page) < 500 {
			return nil
		}
		after = name(page[len(page)-1])
	}
}
