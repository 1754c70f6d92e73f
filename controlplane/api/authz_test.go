package api_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/identity"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// rpc drives one RPC against one secret name.
type rpc struct {
	method string
	// need is what the call needs: a verb on the name, on the name's
	// prefix (listings), on everything (policy and audit management), or
	// nothing beyond authentication.
	verb   policy.Verb
	scope  string // "name", "prefix", "all", "anyone"
	call   func(ctx context.Context, conn *grpc.ClientConn, name string) error
	denyOK codes.Code // the code an allowed call may still return (e.g. Unimplemented, NotFound)
}

func prefixOf(name string) string { return name[:strings.IndexByte(name, '/')+1] }

func allRPCs() []rpc {
	adm := func(c *grpc.ClientConn) spv1.AdminServiceClient { return spv1.NewAdminServiceClient(c) }
	pol := func(c *grpc.ClientConn) spv1.PolicyServiceClient { return spv1.NewPolicyServiceClient(c) }
	aud := func(c *grpc.ClientConn) spv1.AuditServiceClient { return spv1.NewAuditServiceClient(c) }
	rot := func(c *grpc.ClientConn) spv1.RotationServiceClient { return spv1.NewRotationServiceClient(c) }
	hook := func(c *grpc.ClientConn) spv1.WebhookServiceClient { return spv1.NewWebhookServiceClient(c) }
	return []rpc{
		// An unknown method is refused after the decision: the matrix
		// starts no rotation.
		{"RotationService.StartRotation", policy.Rotate, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := rot(c).StartRotation(ctx, &spv1.StartRotationRequest{Secret: n, Method: "no-such-method"})
			return err
		}, codes.InvalidArgument},
		{"RotationService.GetRotation", policy.Rotate, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := rot(c).GetRotation(ctx, &spv1.GetRotationRequest{Secret: n})
			return err
		}, codes.NotFound},
		{"RotationService.CancelRotation", policy.Rotate, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := rot(c).CancelRotation(ctx, &spv1.CancelRotationRequest{Secret: n, Id: "rot-none"})
			return err
		}, codes.NotFound},
		{"RotationService.RollbackRotation", policy.Rotate, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := rot(c).RollbackRotation(ctx, &spv1.RollbackRotationRequest{Secret: n})
			return err
		}, codes.NotFound},
		{"RotationService.SetRotationPolicy", policy.Rotate, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := rot(c).SetRotationPolicy(ctx, &spv1.SetRotationPolicyRequest{Policy: &spv1.RotationPolicy{Secret: n, Method: "no-such-method"}})
			return err
		}, codes.InvalidArgument},
		{"RotationService.GetRotationPolicy", policy.Rotate, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := rot(c).GetRotationPolicy(ctx, &spv1.GetRotationPolicyRequest{Secret: n})
			return err
		}, codes.NotFound},
		{"RotationService.DeleteRotationPolicy", policy.Rotate, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := rot(c).DeleteRotationPolicy(ctx, &spv1.DeleteRotationPolicyRequest{Secret: n})
			return err
		}, codes.NotFound},
		{"RotationService.ListRotations", policy.Rotate, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := rot(c).ListRotations(ctx, &spv1.ListRotationsRequest{Secret: n})
			return err
		}, codes.OK},
		{"AdminService.PutSecret", policy.Admin, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: n, Ref: "vault://secret/" + n + "#v"}})
			return err
		}, codes.OK},
		{"AdminService.GetSecret", policy.Admin, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).GetSecret(ctx, &spv1.GetSecretRequest{Name: n})
			return err
		}, codes.OK},
		{"AdminService.ListSecrets", policy.Admin, "prefix", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).ListSecrets(ctx, &spv1.ListSecretsRequest{Prefix: prefixOf(n)})
			return err
		}, codes.OK},
		{"AdminService.ListConsumers", policy.Admin, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).ListConsumers(ctx, &spv1.ListConsumersRequest{Name: n})
			return err
		}, codes.OK},
		{"AdminService.CheckRef", "", "anyone", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).CheckRef(ctx, &spv1.CheckRefRequest{Ref: "vault://secret/" + n + "#v"})
			return err
		}, codes.OK},
		{"AdminService.PutConfig", policy.Admin, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).PutConfig(ctx, &spv1.PutConfigRequest{Config: &spv1.ConfigDocument{Name: n, Entries: []*spv1.ConfigEntry{{Key: "A", Value: &spv1.ConfigEntry_Literal{Literal: "1"}}}}})
			return err
		}, codes.OK},
		{"AdminService.GetConfig", policy.Admin, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).GetConfig(ctx, &spv1.GetConfigRequest{Name: n})
			return err
		}, codes.OK},
		{"AdminService.ListConfigs", policy.Admin, "prefix", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).ListConfigs(ctx, &spv1.ListConfigsRequest{Prefix: prefixOf(n)})
			return err
		}, codes.OK},
		{"AdminService.DeleteConfig", policy.Admin, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).DeleteConfig(ctx, &spv1.DeleteConfigRequest{Name: n})
			return err
		}, codes.NotFound},
		{"AdminService.DeleteSecret", policy.Admin, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := adm(c).DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: n})
			return err
		}, codes.NotFound},
		{"PolicyService.PutPolicy", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := pol(c).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{Name: "probe", Subject: "spiffe://test.example/probe", Verbs: []string{"read"}, Objects: []string{n}}})
			return err
		}, codes.OK},
		{"PolicyService.GetPolicy", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := pol(c).GetPolicy(ctx, &spv1.GetPolicyRequest{Name: "probe"})
			return err
		}, codes.OK},
		{"PolicyService.ListPolicies", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := pol(c).ListPolicies(ctx, &spv1.ListPoliciesRequest{})
			return err
		}, codes.OK},
		{"PolicyService.Explain", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := pol(c).Explain(ctx, &spv1.ExplainRequest{SpiffeId: "spiffe://test.example/x", Object: n})
			return err
		}, codes.OK},
		{"PolicyService.DeletePolicy", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := pol(c).DeletePolicy(ctx, &spv1.DeletePolicyRequest{Name: "probe"})
			return err
		}, codes.OK},
		{"PolicyService.AuditBindings", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := pol(c).AuditBindings(ctx, &spv1.AuditBindingsRequest{})
			return err
		}, codes.OK},
		{"AuditService.Query", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := aud(c).Query(ctx, &spv1.AuditQueryRequest{Limit: 5})
			return err
		}, codes.OK},
		{"AuditService.Verify", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := aud(c).Verify(ctx, &spv1.AuditVerifyRequest{})
			return err
		}, codes.OK},
		// No webhook is configured: ListDeliveries of one is NotFound.
		{"WebhookService.ListWebhooks", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := hook(c).ListWebhooks(ctx, &spv1.ListWebhooksRequest{})
			return err
		}, codes.OK},
		{"WebhookService.ListDeliveries", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := hook(c).ListDeliveries(ctx, &spv1.ListDeliveriesRequest{Webhook: "ops", State: "dead"})
			return err
		}, codes.NotFound},
		{"DoctorService.Diagnose", policy.Admin, "all", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := spv1.NewDoctorServiceClient(c).Diagnose(ctx, &spv1.DiagnoseRequest{})
			return err
		}, codes.OK},
		{"SecretsService.Resolve", policy.Read, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			_, err := spv1.NewSecretsServiceClient(c).Resolve(ctx, &spv1.ResolveRequest{Names: []string{n}})
			return err
		}, codes.NotFound},
		{"SecretsService.Watch", policy.Watch, "name", func(ctx context.Context, c *grpc.ClientConn, n string) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			st, err := spv1.NewSecretsServiceClient(c).Watch(ctx)
			if err != nil {
				return err
			}
			if err := st.Send(&spv1.WatchRequest{Request: &spv1.WatchRequest_Subscribe{Subscribe: &spv1.WatchSubscribe{Names: []string{n}}}}); err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}, codes.NotFound},
	}
}

// The authorisation matrix: 4 identities x every RPC (Watch included) x 3 secrets. Exactly
// the granted combinations get past authorisation; every denial is
// PermissionDenied and leaves an audit record.
func TestAuthorizationMatrix(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	td := e.admin.ID().TrustDomain().IDString()
	lead := issueFor(t, e, "/payments/lead")
	api := issueFor(t, e, "/payments/api")
	billing := issueFor(t, e, "/billing/worker")
	pc := spv1.NewPolicyServiceClient(e.dial(t, e.admin))
	for _, p := range []*spv1.Policy{
		{Name: "payments-admin", Subject: td + "/payments/lead", Verbs: []string{"admin", "bind"}, Objects: []string{"payments/*", "vault://secret/payments/*"}},
		{Name: "payments-read", Subject: td + "/payments/*", Verbs: []string{"read", "watch"}, Objects: []string{"payments/*"}},
		{Name: "billing-read", Subject: td + "/billing/worker", Verbs: []string{"read"}, Objects: []string{"billing/db"}},
	} {
		if _, err := pc.PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: p}); err != nil {
			t.Fatal(err)
		}
	}
	identities := []struct {
		name  string
		src   identity.Source
		id    string
		grant func(verb policy.Verb, scope, secret string) bool
	}{
		{"root admin", e.admin, e.admin.ID().String(), func(v policy.Verb, scope, s string) bool {
			return v == policy.Admin || v == policy.Rotate || scope == "anyone"
		}},
		{"payments lead", lead, lead.ID().String(), func(v policy.Verb, scope, s string) bool {
			return scope == "anyone" || (v == policy.Admin && scope != "all" && strings.HasPrefix(s, "payments/")) || ((v == policy.Read || v == policy.Watch) && strings.HasPrefix(s, "payments/"))
		}},
		{"payments api", api, api.ID().String(), func(v policy.Verb, scope, s string) bool {
			return scope == "anyone" || ((v == policy.Read || v == policy.Watch) && strings.HasPrefix(s, "payments/"))
		}},
		{"billing worker", billing, billing.ID().String(), func(v policy.Verb, scope, s string) bool {
			return scope == "anyone" || (v == policy.Read && s == "billing/db")
		}},
	}
	secrets := []string{"payments/db", "payments/api-key", "billing/db"}
	rpcs := allRPCs()
	if got, want := len(rpcs), len(spv1.AdminService_ServiceDesc.Methods)+len(spv1.PolicyService_ServiceDesc.Methods)+len(spv1.AuditService_ServiceDesc.Methods)+
		len(spv1.SecretsService_ServiceDesc.Methods)+len(spv1.SecretsService_ServiceDesc.Streams)+len(spv1.RotationService_ServiceDesc.Methods)+
		len(spv1.WebhookService_ServiceDesc.Methods)+len(spv1.DoctorService_ServiceDesc.Methods); got != want {
		t.Fatalf("the matrix covers %d RPCs; the API has %d", got, want)
	}
	checked := 0
	for _, id := range identities {
		conn := e.dial(t, id.src)
		for _, secret := range secrets {
			for _, r := range rpcs {
				t.Run(fmt.Sprintf("%s/%s/%s", id.name, r.method, secret), func(t *testing.T) {
					want := id.grant(r.verb, r.scope, secret)
					err := r.call(ctx, conn, secret)
					code := status.Code(err)
					if want {
						if code == codes.PermissionDenied || (code != codes.OK && code != r.denyOK) {
							t.Fatalf("granted call failed: %v", err)
						}
						return
					}
					if code != codes.PermissionDenied {
						t.Fatalf("want PermissionDenied, got %v", err)
					}
					action := r.method
					if action == "SecretsService.Watch" { // a stream's names are decided per message
						action += ".Subscribe"
					}
					ev, err := e.audit.QueryAudit(ctx, store.AuditQuery{Actor: id.id, Action: action, Limit: 1, Newest: true})
					if err != nil || len(ev) != 1 || ev[0].Decision != "deny" || ev[0].Outcome != "PermissionDenied" {
						t.Fatalf("no deny audit record: %+v %v", ev, err)
					}
				})
				checked++
			}
		}
	}
	if checked < 4*3*len(rpcs) {
		t.Fatalf("checked %d combinations", checked)
	}
	// Allowed calls are audited too, and the chain verifies.
	if ev, err := e.audit.QueryAudit(ctx, store.AuditQuery{Actor: e.admin.ID().String(), Limit: 1}); err != nil || len(ev) == 0 || ev[0].Decision != "allow" {
		t.Fatalf("no allow record for the admin: %+v %v", ev, err)
	}
	v, err := spv1.NewAuditServiceClient(e.dial(t, e.admin)).Verify(ctx, &spv1.AuditVerifyRequest{})
	if err != nil || len(v.GetProblems()) != 0 || v.GetEvents() < int64(checked) {
		t.Fatalf("verify: %v %v", v, err)
	}
}

func TestExplain(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	td := e.admin.ID().TrustDomain().IDString()
	pc := spv1.NewPolicyServiceClient(e.dial(t, e.admin))
	if _, err := pc.PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{Name: "payments-read", Subject: td + "/payments/*", Verbs: []string{"read"}, Objects: []string{"payments/*"}}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		id, object, verb, policy string
	}{
		{td + "/payments/api", "payments/db", "", "payments-read"},
		{td + "/payments/api", "payments/db", "admin", ""},
		{td + "/billing/api", "payments/db", "read", ""},
		{e.admin.ID().String(), "anything", "admin", policy.BootstrapGrant},
	}
	for _, tc := range cases {
		r, err := pc.Explain(ctx, &spv1.ExplainRequest{SpiffeId: tc.id, Object: tc.object, Verb: tc.verb})
		if err != nil || r.GetPolicy() != tc.policy || r.GetAllowed() != (tc.policy != "") {
			t.Errorf("Explain(%s, %s, %s) = %v, %v; want %q", tc.id, tc.object, tc.verb, r, err, tc.policy)
		}
	}
	if _, err := pc.Explain(ctx, &spv1.ExplainRequest{SpiffeId: "nope", Object: "a"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad id: %v", err)
	}
	if _, err := pc.PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{Name: "too-broad", Subject: td + "/*", Verbs: []string{"admin"}, Objects: []string{"*"}}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("broad grant: %v", err)
	}
	if _, err := pc.PutPolicy(ctx, &spv1.PutPolicyRequest{Force: true, Policy: &spv1.Policy{Name: "too-broad", Subject: td + "/*", Verbs: []string{"admin"}, Objects: []string{"*"}}}); err != nil {
		t.Fatalf("forced broad grant: %v", err)
	}
}
