package awssm_test

import (
	"context"
	"errors"
	"testing"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/awsfake"
)

func TestEncryptionKey(t *testing.T) {
	awsfake.Credentials(t)
	f, srv := awsfake.New(t)
	const customer = "arn:aws:kms:us-east-1:123456789012:key/0b1c2d3e-aaaa-bbbb-cccc-1234567890ab"
	f.Put("prod/default", "v")
	f.Put("prod/customer", "v")
	f.Put("prod/alias", "v")
	f.SetKMSKey("prod/customer", customer)
	f.SetKMSKey("prod/alias", "arn:aws:kms:us-east-1:123456789012:alias/aws/secretsmanager")
	ctx := context.Background()
	b, err := awssm.New(ctx, awssm.Config{Region: "us-east-1", Endpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		ref, key  string
		isDefault bool
		err       error
	}{
		{"aws-sm://prod/default", "", true, nil},
		{"aws-sm://prod/customer#password", customer, false, nil},
		{"aws-sm://prod/alias", "arn:aws:kms:us-east-1:123456789012:alias/aws/secretsmanager", true, nil},
		{"aws-sm://prod/missing", "", false, backend.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.ref, func(t *testing.T) {
			f.ResetCalls()
			key, err := b.EncryptionKey(ctx, secretref.MustParse(tc.ref))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if key != tc.key || awssm.IsDefaultKMSKey(key) != tc.isDefault {
				t.Fatalf("key %q (default %v), want %q (default %v)", key, awssm.IsDefaultKMSKey(key), tc.key, tc.isDefault)
			}
			for _, c := range f.Calls() {
				if c.Op != "DescribeSecret" {
					t.Fatalf("EncryptionKey called %s: metadata only", c.Op)
				}
			}
		})
	}
	for _, k := range []string{"alias/aws/secretsmanager", ""} {
		if !awssm.IsDefaultKMSKey(k) {
			t.Errorf("IsDefaultKMSKey(%q) = false", k)
		}
	}
	if awssm.IsDefaultKMSKey("alias/payments") {
		t.Error("a customer alias taken for the default key")
	}
}
