package api_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	spapi "github.com/secretplane/secretplane/controlplane/api"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Every call's audit says what it did: a read's one event carries its
// outcome, a write's decision is followed by its outcome, secret calls
// name the ref, policy calls the policy.
func TestAuditRecordsWhatHappened(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	admin := e.adminClient(t)
	pc := spv1.NewPolicyServiceClient(e.dial(t, e.admin))
	with := func(id string) (context.Context, string) {
		return metadata.AppendToOutgoingContext(ctx, spapi.RequestIDHeader, id), id
	}

	put, rid := with("put-1")
	created, err := admin.PutSecret(put, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "VAULT://secret/payments/db#password"}})
	if err != nil {
		t.Fatal(err)
	}
	type want struct{ action, target, decision, outcome, ref string }
	check := func(rid string, wants ...want) {
		t.Helper()
		evs := auditOf(t, e, rid)
		if len(evs) != len(wants) {
			t.Fatalf("%s: %d events, want %d: %+v", rid, len(evs), len(wants), evs)
		}
		for i, w := range wants {
			ev := evs[i]
			if ev.Action != w.action || ev.Target != w.target || ev.Decision != w.decision || ev.Outcome != w.outcome || ev.Ref != w.ref {
				t.Fatalf("%s: event %d is %+v; want %+v", rid, i, ev, w)
			}
		}
	}
	const ref = "vault://secret/payments/db#password"
	check(rid, want{"AdminService.PutSecret", "payments/db", "allow", "authorized", ref}, want{"AdminService.PutSecret", "payments/db", "allow", "ok", ref})

	stale, rid := with("put-stale")
	_, err = admin.PutSecret(stale, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/payments/db?version=2#password", Etag: created.GetSecret().GetEtag() + "0"}})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("stale etag: %v", err)
	}
	const v2 = "vault://secret/payments/db?version=2#password"
	check(rid, want{"AdminService.PutSecret", "payments/db", "allow", "authorized", v2}, want{"AdminService.PutSecret", "payments/db", "allow", "Aborted", v2})

	get, rid := with("get-1")
	if _, err := admin.GetSecret(get, &spv1.GetSecretRequest{Name: "payments/db"}); err != nil {
		t.Fatal(err)
	}
	check(rid, want{"AdminService.GetSecret", "payments/db", "allow", "ok", ref})

	missing, rid := with("get-missing")
	if _, err := admin.GetSecret(missing, &spv1.GetSecretRequest{Name: "payments/nope"}); status.Code(err) != codes.NotFound {
		t.Fatal(err)
	}
	check(rid, want{"AdminService.GetSecret", "payments/nope", "allow", "NotFound", ""})

	resolve, rid := with("resolve-unregistered")
	if _, err := spv1.NewSecretsServiceClient(e.dial(t, e.admin)).Resolve(resolve, &spv1.ResolveRequest{Names: []string{"payments/unregistered"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatal(err) // the root admin holds admin, not read
	}
	check(rid, want{"SecretsService.Resolve", "payments/unregistered", "deny", "PermissionDenied", ""})

	del, rid := with("delete-1")
	if _, err := admin.DeleteSecret(del, &spv1.DeleteSecretRequest{Name: "payments/db"}); err != nil {
		t.Fatal(err)
	}
	check(rid, want{"AdminService.DeleteSecret", "payments/db", "allow", "authorized", ""}, want{"AdminService.DeleteSecret", "payments/db", "allow", "ok", ref})

	pol, rid := with("policy-put")
	if _, err := pc.PutPolicy(pol, &spv1.PutPolicyRequest{Policy: &spv1.Policy{Name: "api-read", Subject: "spiffe://test.example/payments/api", Verbs: []string{"read"}, Objects: []string{"payments/*"}}}); err != nil {
		t.Fatal(err)
	}
	check(rid, want{"PolicyService.PutPolicy", "api-read", "allow", "authorized", ""}, want{"PolicyService.PutPolicy", "api-read", "allow", "ok", ""})

	polBad, rid := with("policy-put-bad")
	if _, err := pc.PutPolicy(polBad, &spv1.PutPolicyRequest{Policy: &spv1.Policy{Name: "api-read", Subject: "nope", Verbs: []string{"read"}, Objects: []string{"x"}}}); status.Code(err) != codes.InvalidArgument {
		t.Fatal(err)
	}
	check(rid, want{"PolicyService.PutPolicy", "api-read", "allow", "authorized", ""}, want{"PolicyService.PutPolicy", "api-read", "allow", "InvalidArgument", ""})

	polDel, rid := with("policy-delete")
	if _, err := pc.DeletePolicy(polDel, &spv1.DeletePolicyRequest{Name: "api-read"}); err != nil {
		t.Fatal(err)
	}
	check(rid, want{"PolicyService.DeletePolicy", "api-read", "allow", "authorized", ""}, want{"PolicyService.DeletePolicy", "api-read", "allow", "ok", ""})

	// Policy names are checked as secret names are: malformed is
	// InvalidArgument, and a secret-looking one is neither echoed nor
	// audited.
	for _, name := range []string{"UPPER", "canary-3f9a0c2be41d7785a6c0d2e1"} {
		getPol, rid := with("policy-get-" + strings.ToLower(name[:5]))
		_, err := pc.GetPolicy(getPol, &spv1.GetPolicyRequest{Name: name})
		if status.Code(err) != codes.InvalidArgument || strings.Contains(err.Error(), name) {
			t.Fatalf("policy get %s: %v", name, err)
		}
		evs := auditOf(t, e, rid)
		if len(evs) != 1 || evs[0].Outcome != "InvalidArgument" || strings.Contains(evs[0].Target, name) {
			t.Fatalf("policy get %s audited as %+v", name, evs)
		}
		if _, err := pc.DeletePolicy(ctx, &spv1.DeletePolicyRequest{Name: name}); status.Code(err) != codes.InvalidArgument || strings.Contains(err.Error(), name) {
			t.Fatalf("policy delete %s: %v", name, err)
		}
	}
	if _, err := admin.GetSecret(ctx, &spv1.GetSecretRequest{Name: "UPPER"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("secret get UPPER: %v", err)
	}
}
