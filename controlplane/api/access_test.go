package api_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/secretref"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Storing a configuration document checks every ref: the backend can see
// it, and the document's identity is granted a secret bound to it. A dry
// run reports the same and stores nothing.
func TestConfigAccessCheck(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	td := e.admin.ID().TrustDomain().IDString()
	admin := e.adminClient(t)
	if _, err := e.local.Write(ctx, secretref.MustParse("local://payments/db#password"), []byte("pw")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.local.Write(ctx, secretref.MustParse("local://billing/db#password"), []byte("pw")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*spv1.Secret{{Name: "payments/db", Ref: "local://payments/db#password"}, {Name: "billing/db", Ref: "local://billing/db#password"}} {
		if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: s}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := spv1.NewPolicyServiceClient(e.dial(t, e.admin)).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{
		Name: "api-read", Subject: td + "/payments/api", Verbs: []string{"read"}, Objects: []string{"payments/*"}}}); err != nil {
		t.Fatal(err)
	}
	doc := func(refs ...string) *spv1.ConfigDocument {
		d := &spv1.ConfigDocument{Name: "payments/api", Identity: td + "/payments/api"}
		for i, r := range refs {
			d.Entries = append(d.Entries, &spv1.ConfigEntry{Key: string(rune('A' + i)), Value: &spv1.ConfigEntry_Ref{Ref: r}})
		}
		return d
	}
	cases := []struct {
		name  string
		doc   *spv1.ConfigDocument
		code  codes.Code
		field string
	}{
		{"granted and visible", doc("local://payments/db#password"), codes.OK, ""},
		{"not in the backend", doc("local://payments/db#password", "local://payments/gone#password"), codes.FailedPrecondition, "config.entries[1].ref"},
		{"no backend for the scheme", doc("vault://secret/payments/db#password"), codes.FailedPrecondition, "config.entries[0].ref"},
		{"identity not granted", doc("local://billing/db#password"), codes.FailedPrecondition, "config.entries[0].ref"},
	}
	for _, tc := range cases {
		for _, dry := range []bool{true, false} {
			resp, err := admin.PutConfig(ctx, &spv1.PutConfigRequest{Config: tc.doc, DryRun: dry})
			if status.Code(err) != tc.code {
				t.Fatalf("%s (dry run %v): got %v, want %v", tc.name, dry, err, tc.code)
			}
			if tc.field != "" && !hasViolation(status.Convert(err), tc.field) {
				t.Fatalf("%s: no violation of %s in %v", tc.name, tc.field, err)
			}
			if dry && err == nil && resp.GetConfig().GetEtag() != "" {
				t.Fatalf("dry run returned an etag")
			}
			if dry && err == nil {
				if _, err := admin.GetConfig(ctx, &spv1.GetConfigRequest{Name: "payments/api"}); status.Code(err) != codes.NotFound {
					t.Fatalf("dry run stored the document: %v", err)
				}
			}
		}
	}
}
