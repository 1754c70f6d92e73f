package api

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/validate"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Authorizer decides requests (policy.Engine).
type Authorizer interface {
	Decide(id spiffeid.ID, verb policy.Verb, object string) policy.Decision
	DecidePrefix(id spiffeid.ID, verb policy.Verb, prefix string) policy.Decision
}

// Auditor records access decisions (audit.Log).
type Auditor interface {
	Record(ctx context.Context, e audit.Event) error
}

// anyAuthenticated names decisions for calls every authenticated identity
// may make (CheckRef reads no data).
const anyAuthenticated = "any authenticated identity"

// rule says what a call needs: a verb on the objects the request names.
type rule struct {
	verb    policy.Verb
	objects func(req any) []string // exact names
	prefix  func(req any) string   // a listing: every name with this prefix
	anyone  bool                   // any authenticated identity
	action  string                 // what the audit log calls the call
}

func named(name func(req any) string) func(any) []string {
	return func(req any) []string { return []string{name(req)} }
}

// everything is the prefix of every name: what policy and audit management
// need (a grant on "*").
func everything(any) string { return "" }

// rules maps every RPC to its requirement. A method without a rule is
// refused: a new RPC must say what it needs before anyone can call it.
func rules() map[string]rule {
	admin := policy.Admin
	rs := map[string]rule{
		spv1.AdminService_PutSecret_FullMethodName:     {verb: admin, objects: named(func(r any) string { return r.(*spv1.PutSecretRequest).GetSecret().GetName() })},
		spv1.AdminService_GetSecret_FullMethodName:     {verb: admin, objects: named(func(r any) string { return r.(*spv1.GetSecretRequest).GetName() })},
		spv1.AdminService_DeleteSecret_FullMethodName:  {verb: admin, objects: named(func(r any) string { return r.(*spv1.DeleteSecretRequest).GetName() })},
		spv1.AdminService_ListConsumers_FullMethodName: {verb: admin, objects: named(func(r any) string { return r.(*spv1.ListConsumersRequest).GetName() })},
		spv1.AdminService_ListSecrets_FullMethodName:   {verb: admin, prefix: func(r any) string { return r.(*spv1.ListSecretsRequest).GetPrefix() }},
		spv1.AdminService_PutConfig_FullMethodName:     {verb: admin, objects: named(func(r any) string { return r.(*spv1.PutConfigRequest).GetConfig().GetName() })},
		spv1.AdminService_GetConfig_FullMethodName:     {verb: admin, objects: named(func(r any) string { return r.(*spv1.GetConfigRequest).GetName() })},
		spv1.AdminService_DeleteConfig_FullMethodName:  {verb: admin, objects: named(func(r any) string { return r.(*spv1.DeleteConfigRequest).GetName() })},
		spv1.AdminService_ListConfigs_FullMethodName:   {verb: admin, prefix: func(r any) string { return r.(*spv1.ListConfigsRequest).GetPrefix() }},
		spv1.AdminService_CheckRef_FullMethodName:      {anyone: true},

		spv1.PolicyService_PutPolicy_FullMethodName:    {verb: admin, prefix: everything},
		spv1.PolicyService_GetPolicy_FullMethodName:    {verb: admin, prefix: everything},
		spv1.PolicyService_ListPolicies_FullMethodName: {verb: admin, prefix: everything},
		spv1.PolicyService_DeletePolicy_FullMethodName: {verb: admin, prefix: everything},
		spv1.PolicyService_Explain_FullMethodName:      {verb: admin, prefix: everything},
		spv1.AuditService_Query_FullMethodName:         {verb: admin, prefix: everything},
		spv1.AuditService_Verify_FullMethodName:        {verb: admin, prefix: everything},

		spv1.SecretsService_Resolve_FullMethodName: {verb: policy.Read, objects: func(r any) []string { return r.(*spv1.ResolveRequest).GetNames() }},
		// Watch names its secrets in stream messages: the handler checks
		// "watch" on each when subscribed and again before every push.
		// Opening the stream needs only authentication.
		spv1.SecretsService_Watch_FullMethodName: {anyone: true},
	}
	for method, r := range rs {
		r.action = shortMethod(method)
		rs[method] = r
	}
	return rs
}

// authorizer is the one authorisation interceptor: it evaluates the rule of
// the call against the caller's SPIFFE ID, records the decision in the audit
// log, and refuses the call when denied or when the decision cannot be
// recorded (fail closed).
type authorizer struct {
	rules  map[string]rule
	policy Authorizer
	audit  Auditor
}

func (a *authorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.authorize(ctx, info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// stream authorises a stream at open from its method alone; per-object
// checks happen as the stream names objects (Watch, in its handler).
func (a *authorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.authorize(ss.Context(), info.FullMethod, nil); err != nil {
		return err
	}
	return handler(srv, ss)
}

func (a *authorizer) authorize(ctx context.Context, method string, req any) error {
	r, known := a.rules[method]
	if !known {
		r.action = shortMethod(method)
	}
	return a.check(ctx, r, known, req)
}

// authorizeNames decides verb on every name for the caller and records the
// decision as action: for streams, which name their objects in messages.
func (a *authorizer) authorizeNames(ctx context.Context, action string, verb policy.Verb, names []string) error {
	return a.check(ctx, rule{verb: verb, objects: func(any) []string { return names }, action: action}, true, names)
}

// check evaluates rule r for the caller, records the decision, and returns
// the error to answer with when the call may not proceed.
func (a *authorizer) check(ctx context.Context, r rule, known bool, req any) error {
	action := r.action
	id, ok := PeerID(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "caller not authenticated")
	}
	target, decision := "", policy.Decision{}
	switch {
	case !known:
		target = action
	case r.anyone:
		decision = policy.Decision{Allowed: true, Grant: anyAuthenticated}
	case req == nil: // a stream whose rule needs objects: refuse at open
		target = action
	case r.prefix != nil:
		p := r.prefix(req)
		target = safeTarget(p) + "*"
		decision = a.policy.DecidePrefix(id, r.verb, p)
	default:
		names := r.objects(req)
		safe := make([]string, len(names))
		for i, n := range names {
			safe[i] = safeTarget(n)
		}
		target = strings.Join(safe, ",")
		decision = policy.Decision{Allowed: len(names) > 0}
		for _, n := range names {
			d := a.policy.Decide(id, r.verb, n)
			if !d.Allowed {
				decision = policy.Decision{}
				break
			}
			decision.Grant = d.Grant
		}
	}
	ev := audit.Event{Actor: id.String(), Action: action, Target: target, Grant: decision.Grant, RequestID: RequestID(ctx)}
	if decision.Allowed {
		ev.Decision, ev.Outcome = audit.Allow, "authorized"
	} else {
		ev.Decision, ev.Outcome = audit.Deny, codes.PermissionDenied.String()
	}
	if err := a.audit.Record(ctx, ev); err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Error(codes.Unavailable, "the audit log cannot be written; request refused")
	}
	if !decision.Allowed {
		if !known {
			return status.Errorf(codes.PermissionDenied, "%s has no authorisation rule", action)
		}
		return status.Errorf(codes.PermissionDenied, "%s is not allowed %s on %s", id, r.verb, target)
	}
	return nil
}

// safeTarget keeps an object name for the audit record only when it is a
// well-formed name: a request can carry anything, a pasted secret included,
// and the audit log must never store one.
func safeTarget(name string) string {
	if validate.NamePrefix(name) == nil {
		return name
	}
	return fmt.Sprintf("[invalid name, %d bytes]", len(name))
}

// shortMethod turns "/secretplane.v1.AdminService/PutSecret" into
// "AdminService.PutSecret".
func shortMethod(full string) string {
	full = strings.TrimPrefix(full, "/")
	svc, m, _ := strings.Cut(full, "/")
	if i := strings.LastIndexByte(svc, '.'); i >= 0 {
		svc = svc[i+1:]
	}
	return svc + "." + m
}
