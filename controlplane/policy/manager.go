package policy

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/paging"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
)

// Store is the persistence the manager needs.
type Store interface {
	Lister
	ListSecrets(ctx context.Context, q store.ListQuery) ([]store.Secret, error)
	ListConfigs(ctx context.Context, q store.ListQuery) ([]store.ConfigDocument, error)
	PutPolicy(ctx context.Context, p store.Policy, pre store.Precondition) (store.Policy, error)
	GetPolicy(ctx context.Context, name string) (store.Policy, error)
	DeletePolicy(ctx context.Context, name string, pre store.Precondition) error
}

// Manager validates and stores policies and keeps the engine's snapshot in
// step with what this replica writes.
type Manager struct {
	store  Store
	engine *Engine
}

// NewManager returns a manager over s feeding e.
func NewManager(s Store, e *Engine) *Manager { return &Manager{store: s, engine: e} }

// Write conditions a put.
type Write struct {
	CreateOnly bool
	IfRevision int64
	Force      bool // accept grants broader than usual (see Compile)
}

// Put validates, stores and activates a policy; it reports whether the
// policy was created.
func (m *Manager) Put(ctx context.Context, p store.Policy, w Write) (store.Policy, bool, error) {
	if _, err := Compile(p, w.Force); err != nil {
		return store.Policy{}, false, err
	}
	p.Revision = 0
	out, err := m.store.PutPolicy(ctx, p, store.Precondition{MustNotExist: w.CreateOnly, IfRevision: w.IfRevision})
	if err != nil {
		return store.Policy{}, false, err
	}
	if err := m.engine.Load(ctx); err != nil {
		return store.Policy{}, false, err
	}
	m.engine.events.Publish(events.PolicyChanged{Name: out.Name})
	return out, out.CreateTime.Equal(out.UpdateTime), nil
}

// Get returns a policy.
func (m *Manager) Get(ctx context.Context, name string) (store.Policy, error) {
	if err := checkName(name); err != nil {
		return store.Policy{}, err
	}
	return m.store.GetPolicy(ctx, name)
}

// checkName validates a policy name as every object name is validated.
func checkName(name string) error { return validate.Field("name", validate.Name(name)) }

// List returns a page of policies.
func (m *Manager) List(ctx context.Context, r paging.Request) ([]store.Policy, string, error) {
	q, err := paging.Query(r)
	if err != nil {
		return nil, "", err
	}
	items, err := m.store.ListPolicies(ctx, q)
	if err != nil {
		return nil, "", err
	}
	items, next := paging.Page(items, q, func(p store.Policy) string { return p.Name })
	return items, next, nil
}

// Delete removes a policy and deactivates it.
func (m *Manager) Delete(ctx context.Context, name string, ifRevision int64) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := m.store.DeletePolicy(ctx, name, store.Precondition{IfRevision: ifRevision}); err != nil {
		return err
	}
	if err := m.engine.Load(ctx); err != nil {
		return err
	}
	m.engine.events.Publish(events.PolicyChanged{Name: name, Deleted: true})
	return nil
}

// Explain says which grant allows id to use verb on object, if any.
func (m *Manager) Explain(id spiffeid.ID, verb Verb, object string) Decision {
	return m.engine.Decide(id, verb, object)
}

// ExplainBind says which grant allows id to bind a name to ref, if any.
func (m *Manager) ExplainBind(id spiffeid.ID, ref secretref.Ref) Decision {
	return m.engine.DecideBind(id, ref)
}

// BindingFinding is an existing binding that a grant's holders could not
// make again: the grant gives admin on the object (a secret, or a
// configuration document) but not bind on its ref.
type BindingFinding struct {
	Kind    string // "secret" or "config"
	Object  string
	Ref     string
	Policy  string
	Subject string
}

// MaxBindingFindings bounds what AuditBindings returns; Total says how many
// there were.
const MaxBindingFindings = 1000

// BindingAudit is the result of AuditBindings.
type BindingAudit struct {
	Findings []BindingFinding // at most MaxBindingFindings: secrets by name, then documents
	Total    int              // findings in all
	Secrets  int              // secrets checked
	Configs  int              // configuration documents checked
}

// AuditBindings walks every registered secret and configuration document
// and lists the grants giving admin on one whose holders lack bind on a ref
// it binds: what an operator fixes after upgrading to the bind rule (grant
// bind on the ref, or bind another).
func (m *Manager) AuditBindings(ctx context.Context) (BindingAudit, error) {
	var out BindingAudit
	check := func(kind, name, raw string) {
		ref, err := secretref.Parse(raw)
		if err != nil {
			return // stored refs are canonical; an unparseable one binds nothing
		}
		for _, g := range m.engine.AdminsWithoutBind(name, ref) {
			out.Total++
			if len(out.Findings) < MaxBindingFindings {
				out.Findings = append(out.Findings, BindingFinding{Kind: kind, Object: name, Ref: raw, Policy: g.Name, Subject: g.Subject.String()})
			}
		}
	}
	err := eachPage(ctx, m.store.ListSecrets, func(s store.Secret) string { return s.Name }, func(s store.Secret) {
		out.Secrets++
		check("secret", s.Name, s.Ref)
	})
	if err == nil {
		err = eachPage(ctx, m.store.ListConfigs, func(d store.ConfigDocument) string { return d.Name }, func(d store.ConfigDocument) {
			out.Configs++
			for _, e := range d.Entries {
				if e.Ref != "" {
					check("config", d.Name, e.Ref)
				}
			}
		})
	}
	if err != nil {
		return BindingAudit{}, fmt.Errorf("audit bindings: %w", err)
	}
	return out, nil
}
