package api_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	spapi "github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/secretref"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// The bind matrix: binding a ref to a name (a put that creates the secret,
// a put that rebinds it) needs admin on the name and bind on the ref.
// Identities with each half only, and with bind through prefixes and exact
// refs on every scheme, against refs inside, beside and outside their
// patterns. Every refusal is PermissionDenied naming the missing grant,
// is audited with the refused ref, and changes nothing.
func TestBindMatrix(t *testing.T) {
	e := newEnv(t)
	// Some 900 calls: more than ctxT's 10 seconds under the race detector.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	td := e.admin.ID().TrustDomain().IDString()
	pc := spv1.NewPolicyServiceClient(e.dial(t, e.admin))
	for _, p := range []*spv1.Policy{
		{Name: "lead-admin", Subject: td + "/payments/lead", Verbs: []string{"admin"}, Objects: []string{"payments/*"}},
		{Name: "lead-bind", Subject: td + "/payments/lead", Verbs: []string{"bind"}, Objects: []string{
			"local://payments/*", "vault://secret/payments/*", "aws-sm://prod/payments/*",
			"vault://secret/shared/tls#cert", "aws-sm://prod/shared/api", "local://shared/signing?version=2#key"}},
		{Name: "helper-admin", Subject: td + "/payments/helper", Verbs: []string{"admin"}, Objects: []string{"payments/*"}},
		{Name: "binder-bind", Subject: td + "/payments/binder", Verbs: []string{"bind"}, Objects: []string{"*"}},
	} {
		if _, err := pc.PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: p}); err != nil {
			t.Fatal(err)
		}
	}
	// Whether the lead's bind patterns cover each ref.
	refs := []struct {
		ref     string
		covered bool
	}{
		{"local://payments/db#password", true},
		{"local://payments/deep/er/key#k", true},
		{"local://payments-old/db#password", false},
		{"local://canary/value#k", false},
		{"local://shared/signing?version=2#key", true},
		{"local://shared/signing?version=3#key", false},
		{"local://shared/signing#key", false},
		{"vault://secret/payments/db?version=4#password", true},
		{"vault://secret/payments/db?namespace=team-b#password", false},
		{"vault://kv/payments/db#password", false},
		{"vault://secret/shared/tls#cert", true},
		{"vault://secret/shared/tls?version=9#cert", true},
		{"vault://secret/shared/tls#key", false},
		{"aws-sm://prod/payments/db?stage=AWSPREVIOUS#password", true},
		{"aws-sm://prod/payments/db?region=eu-west-1#password", false},
		{"aws-sm://prod/shared/api#token", true},
		{"aws-sm://prod/shared/api-v2#token", false},
		{"aws-sm://prod/billing/db#password", false},
		// Spellings do not matter: matching is on the canonical ref.
		{"LOCAL://payments/db#password", true},
		{"local://payments%2Fdb#password", true},
		{"local://canary%2Fvalue#k", false},
		{"aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/payments/db-AbCdEf#password", false},
	}
	identities := []struct {
		name         string
		conn         spv1.AdminServiceClient
		admin, binds func(ref string, covered bool) bool
	}{
		{"root admin", e.adminClient(t), func(string, bool) bool { return true }, func(string, bool) bool { return true }},
		{"lead", spv1.NewAdminServiceClient(e.dial(t, issueFor(t, e, "/payments/lead"))), func(string, bool) bool { return true }, func(_ string, c bool) bool { return c }},
		{"admin without bind", spv1.NewAdminServiceClient(e.dial(t, issueFor(t, e, "/payments/helper"))), func(string, bool) bool { return true }, func(string, bool) bool { return false }},
		{"bind without admin", spv1.NewAdminServiceClient(e.dial(t, issueFor(t, e, "/payments/binder"))), func(string, bool) bool { return false }, func(string, bool) bool { return true }},
	}
	admin := e.adminClient(t)
	checked := 0
	for _, id := range identities {
		for i, r := range refs {
			for _, op := range []string{"put", "rebind"} {
				name := fmt.Sprintf("payments/%s-%d", op, i)
				if op == "rebind" { // an existing secret, bound elsewhere by the root admin
					if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: "local://root-only/x#k"}}); err != nil {
						t.Fatal(err)
					}
				} else {
					_, _ = admin.DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: name})
				}
				t.Run(fmt.Sprintf("%s/%s/%s", id.name, op, r.ref), func(t *testing.T) {
					rid := fmt.Sprintf("bind-%d", checked)
					callCtx := metadata.AppendToOutgoingContext(ctx, spapi.RequestIDHeader, rid)
					_, err := id.conn.PutSecret(callCtx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: r.ref}})
					want := id.admin(r.ref, r.covered) && id.binds(r.ref, r.covered)
					canonical := secretref.MustParse(r.ref).String()
					got, gerr := admin.GetSecret(ctx, &spv1.GetSecretRequest{Name: name})
					if want {
						if err != nil || gerr != nil || got.GetRef() != canonical {
							t.Fatalf("allowed bind failed: %v; stored %v %v", err, got.GetRef(), gerr)
						}
						ev := auditOf(t, e, rid)
						if len(ev) != 2 || ev[0].Outcome != "authorized" || ev[1].Outcome != "ok" || ev[0].Ref != canonical || ev[1].Ref != canonical {
							t.Fatalf("audit of an allowed bind: %+v", ev)
						}
						return
					}
					if status.Code(err) != codes.PermissionDenied {
						t.Fatalf("want PermissionDenied, got %v", err)
					}
					msg := status.Convert(err).Message()
					if id.binds(r.ref, r.covered) == false && !strings.Contains(msg, "bind on "+canonical) {
						t.Fatalf("the refusal does not name the missing bind: %s", msg)
					}
					switch {
					case op == "put" && status.Code(gerr) != codes.NotFound:
						t.Fatalf("a refused put created the secret: %v %v", got, gerr)
					case op == "rebind" && got.GetRef() != "local://root-only/x#k":
						t.Fatalf("a refused rebind changed the binding to %s", got.GetRef())
					}
					ev := auditOf(t, e, rid)
					if len(ev) != 1 || ev[0].Decision != "deny" || ev[0].Outcome != "PermissionDenied" || ev[0].Ref != canonical || ev[0].Target != name {
						t.Fatalf("audit of a refused bind: %+v", ev)
					}
					if !id.binds(r.ref, r.covered) && !strings.Contains(ev[0].Refused, canonical) {
						t.Fatalf("the audit does not name the refused ref: %+v", ev[0])
					}
				})
				checked++
			}
		}
	}
	if checked != len(identities)*len(refs)*2 {
		t.Fatalf("checked %d combinations", checked)
	}
	// Explain says which grant allows a bind, or that none does.
	for _, tc := range []struct{ id, ref, policy string }{
		{td + "/payments/lead", "local://payments/db#password", "lead-bind"},
		{td + "/payments/lead", "local://canary/value#k", ""},
		{e.admin.ID().String(), "local://canary/value#k", "bootstrap-admin (server configuration)"},
	} {
		r, err := pc.Explain(ctx, &spv1.ExplainRequest{SpiffeId: tc.id, Object: tc.ref, Verb: "bind"})
		if err != nil || r.GetPolicy() != tc.policy || r.GetAllowed() != (tc.policy != "") {
			t.Errorf("Explain bind %s %s = %v %v; want %q", tc.id, tc.ref, r, err, tc.policy)
		}
	}
	if _, err := pc.Explain(ctx, &spv1.ExplainRequest{SpiffeId: td + "/x", Object: "payments/db", Verb: "bind"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Explain bind on a name: %v", err)
	}
}

// A prefix admin's dry runs are no oracle: for refs it may not bind, a ref
// bound to another team's secret, a path missing from the backend and a
// path present but ungranted all answer alike, naming nothing but what the
// caller sent (the bind check comes before the backend's answer could
// make them differ).
func TestConfigDryRunIsNoOracle(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	td := e.admin.ID().TrustDomain().IDString()
	admin := e.adminClient(t)
	for _, ref := range []string{"local://canary/value#k", "local://probe/present#k", "local://payments/db#password"} {
		if _, err := e.local.Write(ctx, secretref.MustParse(ref), []byte("v-Zq8vW3xR")); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*spv1.Secret{{Name: "canary/s", Ref: "local://canary/value#k"}, {Name: "payments/db", Ref: "local://payments/db#password"}} {
		if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: s}); err != nil {
			t.Fatal(err)
		}
	}
	pc := spv1.NewPolicyServiceClient(e.dial(t, e.admin))
	for _, p := range []*spv1.Policy{
		{Name: "lead-admin", Subject: td + "/payments/lead", Verbs: []string{"admin", "bind"}, Objects: []string{"payments/*", "local://payments/*"}},
		{Name: "canary-read", Subject: td + "/payments/api", Verbs: []string{"read"}, Objects: []string{"canary/s", "payments/*"}},
	} {
		if _, err := pc.PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: p}); err != nil {
			t.Fatal(err)
		}
	}
	lead := spv1.NewAdminServiceClient(e.dial(t, issueFor(t, e, "/payments/lead")))
	answer := func(ref string) string {
		_, err := lead.PutConfig(ctx, &spv1.PutConfigRequest{DryRun: true, Config: &spv1.ConfigDocument{
			Name: "payments/api", Identity: td + "/payments/api",
			Entries: []*spv1.ConfigEntry{{Key: "A", Value: &spv1.ConfigEntry_Ref{Ref: ref}}}}})
		st := status.Convert(err)
		// The ref the caller sent is the only thing that may differ.
		return st.Code().String() + ": " + strings.ReplaceAll(st.Message(), secretref.MustParse(ref).String(), "<REF>") + fmt.Sprint(st.Details())
	}
	foreign := answer("local://canary/value#k")  // bound to another team's secret, granted to the identity
	missing := answer("local://probe/missing#k") // no such path
	present := answer("local://probe/present#k") // present, bound to nothing, not the lead's
	if foreign != missing || missing != present {
		t.Fatalf("answers differ:\nforeign: %s\nmissing: %s\npresent: %s", foreign, missing, present)
	}
	if !strings.HasPrefix(foreign, "PermissionDenied") || !strings.Contains(foreign, "bind on <REF>") {
		t.Fatalf("want a refusal naming the missing bind: %s", foreign)
	}
	for _, leak := range []string{"canary/s", "probe", "registered", "backend"} {
		if strings.Contains(foreign, leak) {
			t.Fatalf("the answer names %q: %s", leak, foreign)
		}
	}
	// Inside its own patterns the lead gets the full check, which names
	// no secret of anyone's.
	if got := answer("local://payments/db#password"); !strings.HasPrefix(got, "OK") {
		t.Fatalf("own ref: %s", got)
	}
	if got := answer("local://payments/gone#k"); !strings.Contains(got, "FailedPrecondition") || strings.Contains(got, "canary") {
		t.Fatalf("own missing ref: %s", got)
	}
}
