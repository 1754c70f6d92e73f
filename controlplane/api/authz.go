package api

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/access"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Authorizer decides requests (policy.Engine).
type Authorizer = access.Decider

// Auditor records access decisions and outcomes (audit.Log).
type Auditor interface {
	access.Recorder
}

// rule says what a call needs, read off its request: a verb on the names
// it acts on (or on a prefix, for a listing), bind on the refs it binds,
// or nothing beyond authentication.
type rule struct {
	verb     policy.Verb
	field    string                 // the request field holding the names
	names    func(req any) []string // exact names
	prefix   func(req any) string   // a listing: every name with this prefix
	anyone   bool                   // any authenticated identity
	binds    func(req any) []string // refs the call binds names to
	target   func(req any) string   // what the audit calls the object, when not the names
	object   func(req any) string   // a name authorised through prefix (a policy's): validated, the audit target
	writes   func(req any) bool     // the call changes state (default: no)
	maxNames int                    // more names than this is InvalidArgument
	action   string                 // what the audit log calls the call
}

func named(name func(req any) string) func(any) []string {
	return func(req any) []string { return []string{name(req)} }
}

// everything is the prefix of every name: what policy and audit management
// need (a grant on "*").
func everything(any) string { return "" }

func always(any) bool { return true }

// rules maps every RPC to its requirement. A method without a rule is
// refused: a new RPC must say what it needs before anyone can call it.
func rules() map[string]rule {
	admin := policy.Admin
	rs := map[string]rule{
		spv1.AdminService_PutSecret_FullMethodName: {verb: admin, field: "secret.name", writes: always,
			names: named(func(r any) string { return r.(*spv1.PutSecretRequest).GetSecret().GetName() }),
			binds: func(r any) []string { return []string{r.(*spv1.PutSecretRequest).GetSecret().GetRef()} }},
		spv1.AdminService_GetSecret_FullMethodName: {verb: admin, field: "name", names: named(func(r any) string { return r.(*spv1.GetSecretRequest).GetName() })},
		spv1.AdminService_DeleteSecret_FullMethodName: {verb: admin, field: "name", writes: always,
			names: named(func(r any) string { return r.(*spv1.DeleteSecretRequest).GetName() })},
		spv1.AdminService_ListConsumers_FullMethodName: {verb: admin, field: "name", names: named(func(r any) string { return r.(*spv1.ListConsumersRequest).GetName() })},
		spv1.AdminService_ListSecrets_FullMethodName:   {verb: admin, field: "prefix", prefix: func(r any) string { return r.(*spv1.ListSecretsRequest).GetPrefix() }},
		spv1.AdminService_PutConfig_FullMethodName: {verb: admin, field: "config.name",
			names:  named(func(r any) string { return r.(*spv1.PutConfigRequest).GetConfig().GetName() }),
			binds:  func(r any) []string { return configRefs(r.(*spv1.PutConfigRequest).GetConfig()) },
			writes: func(r any) bool { return !r.(*spv1.PutConfigRequest).GetDryRun() }},
		spv1.AdminService_GetConfig_FullMethodName: {verb: admin, field: "name", names: named(func(r any) string { return r.(*spv1.GetConfigRequest).GetName() })},
		spv1.AdminService_DeleteConfig_FullMethodName: {verb: admin, field: "name", writes: always,
			names: named(func(r any) string { return r.(*spv1.DeleteConfigRequest).GetName() })},
		spv1.AdminService_ListConfigs_FullMethodName: {verb: admin, field: "prefix", prefix: func(r any) string { return r.(*spv1.ListConfigsRequest).GetPrefix() }},
		spv1.AdminService_CheckRef_FullMethodName:    {anyone: true},

		spv1.PolicyService_PutPolicy_FullMethodName: {verb: admin, prefix: everything, writes: always, field: "policy.name",
			object: func(r any) string { return r.(*spv1.PutPolicyRequest).GetPolicy().GetName() }},
		spv1.PolicyService_GetPolicy_FullMethodName: {verb: admin, prefix: everything, field: "name",
			object: func(r any) string { return r.(*spv1.GetPolicyRequest).GetName() }},
		spv1.PolicyService_ListPolicies_FullMethodName: {verb: admin, prefix: everything},
		spv1.PolicyService_DeletePolicy_FullMethodName: {verb: admin, prefix: everything, writes: always, field: "name",
			object: func(r any) string { return r.(*spv1.DeletePolicyRequest).GetName() }},
		spv1.PolicyService_Explain_FullMethodName: {verb: admin, prefix: everything,
			target: func(r any) string { return explainTarget(r.(*spv1.ExplainRequest)) }},
		spv1.PolicyService_AuditBindings_FullMethodName: {verb: admin, prefix: everything},
		spv1.AuditService_Query_FullMethodName:          {verb: admin, prefix: everything},
		spv1.AuditService_Verify_FullMethodName:         {verb: admin, prefix: everything},
		// Webhooks belong to the server, not to one secret or team: their
		// outbox spans every secret's rotations. Like the audit log and
		// policy management they need admin on everything ("*"), so a
		// team's admin (admin on "payments/*") does not read other teams'
		// events; the audit target names the webhook.
		spv1.WebhookService_ListWebhooks_FullMethodName: {verb: admin, prefix: everything},
		spv1.WebhookService_ListDeliveries_FullMethodName: {verb: admin, prefix: everything,
			target: func(r any) string { return "webhook:" + access.Mask(r.(*spv1.ListDeliveriesRequest).GetWebhook()) }},

		// Doctor looks at every secret, policy and backend of the server,
		// as the audit log does: admin on everything.
		spv1.DoctorService_Diagnose_FullMethodName: {verb: admin, prefix: everything},

		spv1.RotationService_StartRotation_FullMethodName: {verb: policy.Rotate, field: "secret", writes: always,
			names: named(func(r any) string { return r.(*spv1.StartRotationRequest).GetSecret() })},
		spv1.RotationService_GetRotation_FullMethodName: {verb: policy.Rotate, field: "secret",
			names: named(func(r any) string { return r.(*spv1.GetRotationRequest).GetSecret() })},
		spv1.RotationService_ListRotations_FullMethodName: {verb: policy.Rotate, field: "secret",
			names: named(func(r any) string { return r.(*spv1.ListRotationsRequest).GetSecret() })},
		spv1.RotationService_CancelRotation_FullMethodName: {verb: policy.Rotate, field: "secret", writes: always,
			names: named(func(r any) string { return r.(*spv1.CancelRotationRequest).GetSecret() })},
		spv1.RotationService_RollbackRotation_FullMethodName: {verb: policy.Rotate, field: "secret", writes: always,
			names: named(func(r any) string { return r.(*spv1.RollbackRotationRequest).GetSecret() })},
		spv1.RotationService_SetRotationPolicy_FullMethodName: {verb: policy.Rotate, field: "policy.secret", writes: always,
			names: named(func(r any) string { return r.(*spv1.SetRotationPolicyRequest).GetPolicy().GetSecret() })},
		spv1.RotationService_GetRotationPolicy_FullMethodName: {verb: policy.Rotate, field: "secret",
			names: named(func(r any) string { return r.(*spv1.GetRotationPolicyRequest).GetSecret() })},
		spv1.RotationService_DeleteRotationPolicy_FullMethodName: {verb: policy.Rotate, field: "secret", writes: always,
			names: named(func(r any) string { return r.(*spv1.DeleteRotationPolicyRequest).GetSecret() })},

		spv1.SecretsService_Resolve_FullMethodName: {verb: policy.Read, field: "names", maxNames: MaxResolveNames,
			names: func(r any) []string { return r.(*spv1.ResolveRequest).GetNames() }},
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

// configRefs lists a configuration document's refs: putting it binds each.
func configRefs(d *spv1.ConfigDocument) []string {
	var refs []string
	for _, e := range d.GetEntries() {
		if r := e.GetRef(); r != "" {
			refs = append(refs, r)
		}
	}
	return refs
}

// explainTarget is what an Explain asks about: a name, or a ref for bind.
func explainTarget(r *spv1.ExplainRequest) string {
	if r.GetVerb() == string(policy.Bind) {
		if ref, err := secretref.Parse(r.GetObject()); err == nil {
			return ref.String()
		}
		return "[invalid ref]"
	}
	return access.Mask(r.GetObject())
}

// authorizer is the one authorisation interceptor: it turns the call's
// rule into an access request, which the guard decides and audits (see
// package access), runs the handler only when allowed, and records the
// outcome before the answer leaves.
type authorizer struct {
	rules map[string]rule
	guard *access.Guard
	self  map[string]bool // services that authorise each object themselves
}

func (a *authorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	call, err := a.authorize(ctx, info.FullMethod, req)
	if err != nil {
		return nil, err
	}
	finished := false
	defer func() {
		if !finished { // the handler panicked: its write's outcome is Internal
			_ = call.Finish(ctx, codes.Internal.String())
		}
	}()
	if s := stateOf(ctx); s != nil {
		s.call = call
	}
	resp, herr := handler(ctx, req)
	finished = true
	if err := call.Finish(ctx, outcome(herr)); err != nil {
		return nil, accessStatus(ctx, err)
	}
	return resp, herr
}

// stream authorises a stream at open from its method alone; per-object
// checks happen as the stream names objects (Watch, in its handler). The
// stream's end is recorded with how it ended.
func (a *authorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	call, err := a.authorize(ss.Context(), info.FullMethod, nil)
	if err != nil {
		return err
	}
	herr := handler(srv, ss)
	// The stream's context has ended with it: the event is recorded all
	// the same.
	if err := call.Finish(context.WithoutCancel(ss.Context()), outcome(herr)); err != nil && herr == nil {
		return accessStatus(ss.Context(), err)
	}
	return herr
}

// authorize decides the call's rule for the caller; the error is the
// status to answer with.
func (a *authorizer) authorize(ctx context.Context, method string, req any) (*access.Call, error) {
	r, known := a.rules[method]
	if svc, _, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/"); !known && a.self[svc] {
		// Opening needs only authentication; the service decides and
		// audits each object it serves.
		r, known = rule{anyone: true, action: shortMethod(method)}, true
	}
	ar := access.Request{Action: r.action, Verb: r.verb, Field: r.field, MaxNames: r.maxNames, Anyone: r.anyone}
	switch {
	case !known:
		ar.Action, ar.NoRule = shortMethod(method), true
	case r.anyone:
	case req == nil: // a stream whose rule needs objects: refuse at open
		ar.NoRule = true
	case r.prefix != nil:
		ar.Listing, ar.Prefix = true, r.prefix(req)
	default:
		ar.Names = r.names(req)
	}
	if known && req != nil {
		if r.binds != nil {
			ar.Binds = r.binds(req)
		}
		if r.target != nil {
			ar.Target = r.target(req)
		}
		if r.object != nil {
			ar.Object, ar.HasObject = r.object(req), true
		}
		ar.Writes = r.writes != nil && r.writes(req)
	}
	return a.decide(ctx, ar)
}

// authorizeNames decides verb on every name for the caller, as action:
// for streams, which name their objects in messages. The caller runs the
// step and finishes the call before it sends anything.
func (a *authorizer) authorizeNames(ctx context.Context, action string, verb policy.Verb, field string, names []string) (*access.Call, error) {
	return a.decide(ctx, access.Request{Action: action, Verb: verb, Field: field, Names: names, MaxNames: MaxResolveNames})
}

// decide has the guard decide ar for the caller; the error is the status
// to answer with.
func (a *authorizer) decide(ctx context.Context, ar access.Request) (*access.Call, error) {
	id, ok := PeerID(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "caller not authenticated")
	}
	ar.Actor, ar.RequestID = id, RequestID(ctx)
	call, err := a.guard.Authorize(ctx, ar)
	if err != nil {
		return nil, accessStatus(ctx, err)
	}
	return call, nil
}

// outcome is what the audit log records of a finished call.
func outcome(err error) string {
	if err == nil {
		return audit.OK
	}
	return status.Code(err).String()
}

// accessStatus maps a refusal to its status: PermissionDenied naming what
// is missing, InvalidArgument for a malformed name, Unavailable when the
// audit log cannot be written.
func accessStatus(ctx context.Context, err error) error {
	var (
		denied *access.DeniedError
		verr   *validate.Error
	)
	switch {
	case errors.As(err, &denied):
		return status.Error(codes.PermissionDenied, denied.Error())
	case errors.As(err, &verr):
		return invalidArgument(verr)
	case errors.Is(err, access.ErrAuditUnavailable):
		return status.Error(codes.Unavailable, access.ErrAuditUnavailable.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, "internal error")
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
