package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
)

// Describer reads a ref's metadata from its backend (backend.Registry).
type Describer interface {
	Describe(ctx context.Context, ref secretref.Ref) (backend.Metadata, error)
}

// Decider evaluates grants (policy.Engine).
type Decider interface {
	Decide(id spiffeid.ID, verb policy.Verb, object string) policy.Decision
}

// WithAccessCheck makes PutConfig check every ref of a document: its
// backend can see it (metadata only, never the value), and the document's
// identity, when set, is granted read on a secret bound to that ref. The
// caller's bind on each ref is checked before (package access), so these
// answers go only to callers who may bind the ref.
func WithAccessCheck(d Describer, p Decider) Option {
	return func(c *Catalog) { c.access = &accessCheck{describe: d, policy: p} }
}

type accessCheck struct {
	describe Describer
	policy   Decider
}

// AccessError lists entries whose refs cannot be used as the document
// says. Transports answer FAILED_PRECONDITION with a violation per entry.
type AccessError struct {
	Violations []validate.Violation
}

func (e *AccessError) Error() string {
	return strings.Replace((&validate.Error{Violations: e.Violations}).Error(), "invalid argument", "refs not usable", 1)
}

// Prefixed returns a copy whose field paths start with prefix.
func (e *AccessError) Prefixed(prefix string) *AccessError {
	return &AccessError{Violations: (&validate.Error{Violations: e.Violations}).Prefixed(prefix).Violations}
}

func (c *accessCheck) check(ctx context.Context, st Store, d store.ConfigDocument) error {
	var (
		coll validate.Collector
		id   spiffeid.ID
	)
	if d.Identity != "" {
		id, _ = spiffeid.FromString(d.Identity) // validated by normaliseConfig
	}
	for i, e := range d.Entries {
		if e.Ref == "" {
			continue
		}
		field := fmt.Sprintf("entries[%d].ref", i)
		ref, err := secretref.Parse(e.Ref)
		if err != nil {
			coll.Add(field, err)
			continue
		}
		if _, err := c.describe.Describe(ctx, ref); err != nil {
			coll.Addf(field, "%s", describeProblem(ref, err))
			continue
		}
		if id.IsZero() {
			continue
		}
		secrets, err := st.SecretsByRef(ctx, ref.String())
		if err != nil {
			return fmt.Errorf("check config %s: %w", d.Name, err)
		}
		if len(secrets) == 0 {
			coll.Addf(field, "no secret is registered for %s: register one and grant %s read on it", ref, id)
			continue
		}
		// Which secrets are bound to the ref is not said: they may be
		// another team's, and their names are not the caller's to see.
		granted := false
		for _, s := range secrets {
			if c.policy.Decide(id, policy.Read, s.Name).Allowed {
				granted = true
				break
			}
		}
		if !granted {
			coll.Addf(field, "%s is not granted read on any secret bound to %s: grant it read on one", id, ref)
		}
	}
	if err := coll.Err(); err != nil {
		var verr *validate.Error
		errors.As(err, &verr)
		return &AccessError{Violations: verr.Violations}
	}
	return nil
}

func describeProblem(ref secretref.Ref, err error) string {
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return fmt.Sprintf("the %s backend has no secret at %s", ref.Scheme, ref)
	case errors.Is(err, backend.ErrPermissionDenied):
		return fmt.Sprintf("secretplane's %s credentials cannot see %s", ref.Scheme, ref)
	default:
		return fmt.Sprintf("the %s backend could not be asked about %s: %v", ref.Scheme, ref, err)
	}
}
