package api_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	spapi "github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/secretref"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// Resolve returns values to granted identities only, maps backend failures
// to fitting statuses, and never names a value in an error.
func TestResolve(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	td := e.admin.ID().TrustDomain().IDString()
	admin := e.adminClient(t)
	for _, s := range []*spv1.Secret{
		{Name: "payments/db", Ref: "local://payments/db#password"},
		{Name: "payments/missing-key", Ref: "local://payments/db#nope"},
		{Name: "payments/missing", Ref: "local://payments/none#password"},
	} {
		if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: s}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.local.Write(ctx, secretref.MustParse("local://payments/db#password"), []byte("pw-Zq8vW3xR")); err != nil {
		t.Fatal(err)
	}
	if _, err := spv1.NewPolicyServiceClient(e.dial(t, e.admin)).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{
		Name: "payments-read", Subject: td + "/payments/api", Verbs: []string{"read"}, Objects: []string{"payments/*"}}}); err != nil {
		t.Fatal(err)
	}
	api := spv1.NewSecretsServiceClient(e.dial(t, issueFor(t, e, "/payments/api")))
	other := spv1.NewSecretsServiceClient(e.dial(t, issueFor(t, e, "/billing/api")))

	resp, err := api.Resolve(ctx, &spv1.ResolveRequest{Names: []string{"payments/db"}})
	if err != nil || len(resp.GetValues()) != 1 || string(resp.GetValues()[0].GetValue()) != "pw-Zq8vW3xR" || resp.GetValues()[0].GetFingerprint() == "" {
		t.Fatalf("resolve: %v %v", resp, err)
	}
	cases := []struct {
		name    string
		client  spv1.SecretsServiceClient
		names   []string
		code    codes.Code
		says    string // in the message
		not     string // not in the message
		ref     string // the audit event's ref
		refused string
	}{
		{"not granted", other, []string{"payments/db"}, codes.PermissionDenied, "not allowed read on payments/db", "", "", "payments/db"},
		{"one name of a batch not granted", api, []string{"payments/db", "billing/db", "billing/x"}, codes.PermissionDenied, "not allowed read on billing/db, billing/x", "payments/db", "", "billing/db,billing/x"},
		{"not registered", api, []string{"payments/unknown"}, codes.NotFound, "not registered", "", "", ""},
		{"missing key", api, []string{"payments/missing-key"}, codes.NotFound, "", "", "local://payments/db#nope", ""},
		{"missing secret in the backend", api, []string{"payments/missing"}, codes.NotFound, "", "", "local://payments/none#password", ""},
		{"no names", api, nil, codes.InvalidArgument, "names: is required", "", "", ""},
		{"an empty name", api, []string{"payments/db", ""}, codes.InvalidArgument, "names[1]: is required", "", "", ""},
		{"an upper-case name", api, []string{"Payments/db"}, codes.InvalidArgument, "names[0]", "Payments", "", ""},
		{"a token for a name", api, []string{"payments/canary-3f9a0c2be41d7785a6c0d2e1"}, codes.InvalidArgument, "looks like a secret value", "3f9a0c2be41d7785a6c0d2e1", "", ""},
		{"too many names", api, make([]string, 101), codes.InvalidArgument, "the limit is 100", "", "", ""},
		{"granted", api, []string{"payments/db"}, codes.OK, "", "", "local://payments/db#password", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			callCtx := metadata.AppendToOutgoingContext(ctx, spapi.RequestIDHeader, "resolve-"+strings.ReplaceAll(tc.name, " ", "-"))
			_, err := tc.client.Resolve(callCtx, &spv1.ResolveRequest{Names: tc.names})
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			msg := status.Convert(err).Message()
			if strings.Contains(msg, "pw-Zq8vW3xR") || !strings.Contains(msg, tc.says) || tc.not != "" && strings.Contains(msg, tc.not) {
				t.Fatalf("message %q: want %q in it and not %q", msg, tc.says, tc.not)
			}
			// The audit event says what happened.
			ev := auditOf(t, e, "resolve-"+strings.ReplaceAll(tc.name, " ", "-"))
			if len(ev) != 1 || ev[0].Outcome != outcomeName(tc.code) || ev[0].Ref != tc.ref {
				t.Fatalf("audit %+v; want outcome %s, ref %q", ev, outcomeName(tc.code), tc.ref)
			}
			wantDecision := "allow"
			if tc.code == codes.PermissionDenied || tc.code == codes.InvalidArgument {
				wantDecision = "deny"
			}
			if strings.Contains(ev[0].Target, "3f9a0c2be41d7785a6c0d2e1") || strings.Contains(ev[0].Target, "Payments") {
				t.Fatalf("the audit target repeats a malformed name: %+v", ev[0])
			}
			if ev[0].Decision != wantDecision || ev[0].Refused != tc.refused {
				t.Fatalf("audit %+v; want decision %s, refused %q", ev[0], wantDecision, tc.refused)
			}
		})
	}
	if strings.Contains(e.logs.String(), "pw-Zq8vW3xR") {
		t.Fatal("value in the server logs")
	}
}

// auditOf returns the audit events of one request id.
func auditOf(t *testing.T, e *env, requestID string) []store.AuditEvent {
	t.Helper()
	evs, err := e.audit.QueryAudit(ctxT(t), store.AuditQuery{Limit: 1000, Newest: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []store.AuditEvent
	for _, ev := range evs {
		if ev.RequestID == requestID {
			out = append(out, ev)
		}
	}
	return out
}

// outcomeName is what the audit log records for a call that ended with code.
func outcomeName(code codes.Code) string {
	if code == codes.OK {
		return "ok"
	}
	return code.String()
}
