package api_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/secretref"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
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
		name   string
		client spv1.SecretsServiceClient
		names  []string
		code   codes.Code
	}{
		{"not granted", other, []string{"payments/db"}, codes.PermissionDenied},
		{"one name of a batch not granted", api, []string{"payments/db", "billing/db"}, codes.PermissionDenied},
		{"not registered", api, []string{"payments/unknown"}, codes.NotFound},
		{"missing key", api, []string{"payments/missing-key"}, codes.NotFound},
		{"missing secret in the backend", api, []string{"payments/missing"}, codes.NotFound},
		{"no names", api, nil, codes.PermissionDenied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.Resolve(ctx, &spv1.ResolveRequest{Names: tc.names})
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			if strings.Contains(err.Error(), "pw-Zq8vW3xR") {
				t.Fatal("error carries the value")
			}
		})
	}
	if strings.Contains(e.logs.String(), "pw-Zq8vW3xR") {
		t.Fatal("value in the server logs")
	}
}
