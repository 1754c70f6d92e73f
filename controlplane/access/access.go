// Package access decides and audits every call, whatever transport
// carries it (the gRPC API, and SDS streams): the caller's SPIFFE ID needs
// a verb on the names the call acts on, and bind on every ref it binds a
// name to; deny by default. Every decision is audited with what the call
// did:
//
//   - a refusal is recorded before the caller hears of it, and when it
//     cannot be, the caller is told the audit log is unavailable;
//   - a read (nothing changes) runs first and is recorded once, with its
//     outcome and the refs it read, before its answer leaves: when the
//     event cannot be recorded the answer is withheld (fail closed);
//   - a write has its decision recorded before it runs (fail closed), and
//     its outcome after, in a second event with the same request id, which
//     the audit log keeps as a follow-up when it cannot take it at once.
//
// Names are validated here, the same way for every service, so that a
// malformed name is InvalidArgument whatever the call; what a message or
// an audit event repeats of a request is masked unless it is a well-formed
// name or ref, since a request can carry a pasted secret.
package access

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
)

// Decider evaluates grants (policy.Engine).
type Decider interface {
	Decide(id spiffeid.ID, verb policy.Verb, object string) policy.Decision
	DecidePrefix(id spiffeid.ID, verb policy.Verb, prefix string) policy.Decision
	DecideBind(id spiffeid.ID, ref secretref.Ref) policy.Decision
}

// Recorder is the audit log (audit.Log).
type Recorder interface {
	Record(ctx context.Context, e audit.Event) error
	RecordOutcome(ctx context.Context, e audit.Event)
}

// AnyAuthenticated is the grant of calls every authenticated identity may
// make (they read no data).
const AnyAuthenticated = "any authenticated identity"

// ErrAuditUnavailable: the decision or the outcome of a call that must be
// audited first could not be; the call is refused.
var ErrAuditUnavailable = errors.New("the audit log cannot be written; request refused")

// Request is one call to decide.
type Request struct {
	Actor     spiffeid.ID
	Action    string // what the audit log calls the call, e.g. "AdminService.PutSecret"
	RequestID string

	// What the call needs: Verb on every name of Names, or on every name
	// under Prefix when Listing, or nothing beyond authentication when
	// Anyone. NoRule refuses the call: a call must say what it needs.
	Verb     policy.Verb
	Names    []string
	Field    string // the request field that holds Names, for messages ("name", "names")
	MaxNames int    // when set, more names than this is InvalidArgument
	Listing  bool
	Prefix   string
	Anyone   bool
	NoRule   bool

	// Binds are the refs the call binds names to (a secret's ref, a
	// configuration document's refs): each needs bind. A ref that does not
	// parse binds nothing; the call refuses it with its own message.
	Binds []string

	// Object is a name the call acts on whose authorisation is Prefix's
	// (a policy: managing policies needs admin on everything). It is
	// validated as names are, in Field, and is the audit target.
	Object    string
	HasObject bool

	// Target names what the call acts on in the audit log when it is not
	// Names, Object or Prefix.
	Target string
	// Writes says the call changes state: its decision is recorded before
	// it runs.
	Writes bool
}

// Guard decides calls and records them.
type Guard struct {
	policy Decider
	audit  Recorder
}

// NewGuard returns a guard over a policy engine and an audit log.
func NewGuard(p Decider, a Recorder) *Guard { return &Guard{policy: p, audit: a} }

// DeniedError is a refusal: what the caller lacks, naming only what it
// asked for.
type DeniedError struct {
	Actor   spiffeid.ID
	Missing []Missing // empty with NoRule
	Action  string
}

// Missing is a verb the caller lacks on some objects.
type Missing struct {
	Verb    policy.Verb
	Objects []string // masked as in audit events
}

func (e *DeniedError) Error() string {
	if len(e.Missing) == 0 {
		return e.Action + " has no authorisation rule"
	}
	var b strings.Builder
	b.WriteString(e.Actor.String())
	b.WriteString(" is not allowed ")
	for i, m := range e.Missing {
		if i > 0 {
			b.WriteString("; nor ")
		}
		b.WriteString(string(m.Verb))
		b.WriteString(" on ")
		b.WriteString(strings.Join(m.Objects, ", "))
		if m.Verb == policy.Bind {
			b.WriteString(" (binding a name to a ref needs bind on a ref pattern covering it)")
		}
	}
	return b.String()
}

// Call is an allowed call in progress: the transport runs it and then
// calls Finish.
type Call struct {
	g      *Guard
	ev     audit.Event
	writes bool
	noted  []string
	one    [1]string // noted's room for the usual single ref
}

// NoteRef adds the canonical ref of a secret the call acted on (a read's
// resolved ref, a delete's former binding) to its audit event. A nil call
// (none in the context) notes nothing.
func (c *Call) NoteRef(ref string) {
	if c != nil && ref != "" && !slices.Contains(c.noted, ref) {
		c.noted = append(c.noted, ref)
	}
}

// Authorize decides req for its actor. A refusal is recorded and returned
// as a *DeniedError (a malformed name as a *validate.Error): when the
// refusal cannot be recorded the error wraps ErrAuditUnavailable instead.
// An allowed write has its decision recorded before Authorize returns; an
// allowed read is recorded by Finish.
func (g *Guard) Authorize(ctx context.Context, req Request) (*Call, error) {
	ev := audit.Event{Actor: req.Actor.String(), Action: req.Action, RequestID: req.RequestID, Target: req.Target}
	binds := parseBinds(req.Binds)
	ev.Ref = joinRefs(binds)
	var (
		missing []Missing
		invalid error
		room    [2]string
		grants  = room[:0]
	)
	switch {
	case req.NoRule:
		ev.Target = orDefault(ev.Target, req.Action)
		return nil, g.refuse(ctx, ev, &DeniedError{Action: req.Action}, "PermissionDenied", req.Action)
	case req.Anyone:
		grants = append(grants, AnyAuthenticated)
	case req.Listing:
		listed := Mask(req.Prefix) + "*"
		if req.HasObject { // one object, authorised through the prefix
			ev.Target = orDefault(ev.Target, Mask(req.Object))
			invalid = checkNames([]string{req.Object}, orDefault(req.Field, "name"), 0)
		} else {
			ev.Target = orDefault(ev.Target, listed)
			invalid = validate.Field(orDefault(req.Field, "prefix"), validate.NamePrefix(req.Prefix))
		}
		if invalid != nil {
			break
		}
		if d := g.policy.DecidePrefix(req.Actor, req.Verb, req.Prefix); d.Allowed {
			grants = append(grants, d.Grant)
		} else {
			missing = append(missing, Missing{Verb: req.Verb, Objects: []string{listed}})
		}
	default:
		if invalid = checkNames(req.Names, orDefault(req.Field, "names"), req.MaxNames); invalid != nil {
			masked := make([]string, len(req.Names))
			for i, n := range req.Names {
				masked[i] = Mask(n)
			}
			ev.Target = orDefault(ev.Target, strings.Join(masked, ","))
			break
		}
		ev.Target = orDefault(ev.Target, strings.Join(req.Names, ","))
		var refused []string
		for _, n := range req.Names {
			if d := g.policy.Decide(req.Actor, req.Verb, n); d.Allowed {
				grants = appendNew(grants, d.Grant)
			} else if !slices.Contains(refused, n) {
				refused = append(refused, n)
			}
		}
		if len(refused) > 0 {
			missing = append(missing, Missing{Verb: req.Verb, Objects: refused})
		}
	}
	if invalid == nil {
		var refused []string
		for _, r := range binds {
			if d := g.policy.DecideBind(req.Actor, r); d.Allowed {
				grants = appendNew(grants, d.Grant)
			} else {
				refused = append(refused, r.String())
			}
		}
		if len(refused) > 0 {
			missing = append(missing, Missing{Verb: policy.Bind, Objects: refused})
		}
	}
	switch {
	case invalid != nil:
		return nil, g.refuse(ctx, ev, invalid, "InvalidArgument", "")
	case len(missing) > 0:
		var refused []string
		for _, m := range missing {
			refused = append(refused, m.Objects...)
		}
		return nil, g.refuse(ctx, ev, &DeniedError{Actor: req.Actor, Missing: missing, Action: req.Action}, "PermissionDenied", strings.Join(refused, ","))
	}
	ev.Decision, ev.Grant = audit.Allow, strings.Join(grants, ",")
	c := &Call{g: g, ev: ev, writes: req.Writes}
	c.noted = c.one[:0]
	if req.Writes {
		ev.Outcome = audit.Authorized
		if err := g.record(ctx, ev); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Finish records what the call did: outcome is audit.OK or the name of
// the status it failed with. For a read it is the call's only event, and
// an error (wrapping ErrAuditUnavailable, or the context's) means the
// answer must not be sent. For a write it is the outcome event, which
// never fails (see audit.Log.RecordOutcome).
func (c *Call) Finish(ctx context.Context, outcome string) error {
	ev := c.ev
	ev.Outcome = outcome
	switch {
	case len(c.noted) == 0:
	case ev.Ref == "" && len(c.noted) == 1:
		ev.Ref = c.noted[0] // a read of one name: no string built
	default:
		for _, r := range c.noted {
			if !slices.Contains(strings.Split(ev.Ref, ","), r) {
				ev.Ref = joinNonEmpty(ev.Ref, r)
			}
		}
	}
	if c.writes {
		c.g.audit.RecordOutcome(ctx, ev)
		return nil
	}
	return c.g.record(ctx, ev)
}

// refuse records a refusal and returns what to answer with.
func (g *Guard) refuse(ctx context.Context, ev audit.Event, err error, outcome, refused string) error {
	ev.Decision, ev.Outcome, ev.Refused = audit.Deny, outcome, refused
	if rerr := g.record(ctx, ev); rerr != nil {
		return rerr
	}
	return err
}

func (g *Guard) record(ctx context.Context, ev audit.Event) error {
	if err := g.audit.Record(ctx, ev); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: %w", ErrAuditUnavailable, err)
	}
	return nil
}

func checkNames(names []string, field string, limit int) error {
	switch {
	case len(names) == 0:
		return validate.Field(field, errors.New("is required"))
	case limit > 0 && len(names) > limit:
		return validate.Field(field, fmt.Errorf("has %d names; the limit is %d", len(names), limit))
	}
	var c validate.Collector
	for i, n := range names {
		err := validate.Name(n)
		if err == nil {
			continue // the common case, on every call: nothing built
		}
		f := field
		if len(names) > 1 || strings.HasSuffix(field, "s") {
			f = fmt.Sprintf("%s[%d]", field, i)
		}
		c.Add(f, err)
	}
	return c.Err()
}

// parseBinds parses the refs a call binds, in canonical form, once each.
func parseBinds(raw []string) []secretref.Ref {
	var out []secretref.Ref
	for _, s := range raw {
		if s == "" {
			continue
		}
		if r, err := secretref.Parse(s); err == nil && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

func joinRefs(refs []secretref.Ref) string {
	s := make([]string, len(refs))
	for i, r := range refs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

func joinNonEmpty(a, b string) string {
	if a == "" {
		return b
	}
	return a + "," + b
}

func appendNew(xs []string, x string) []string {
	if slices.Contains(xs, x) {
		return xs
	}
	return append(xs, x)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Mask renders an object name from a request for a message or an audit
// event: as it is when it is a well-formed name (or name prefix), else by
// its length only, since a request can carry anything, a pasted secret
// included.
func Mask(name string) string {
	if validate.NamePrefix(name) == nil {
		return name
	}
	return fmt.Sprintf("[invalid name, %d bytes]", len(name))
}
