package awssm_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/awsfake"
)

func TestAgainstTheProtocol(t *testing.T) {
	// The SDK's default credential chain, fed from the environment.
	awsfake.Credentials(t)
	f, srv := awsfake.New(t)
	v1 := f.Put("prod/db", `{"password":"pw-1","user":"app","port":5432}`)
	f.Put("prod/db", `{"password":"pw-2","user":"app","port":5432}`)
	f.Put("prod/token", "plain-token")
	f.PutBinary("prod/cert", []byte("binary-ok"))
	f.PutBinary("prod/garbled", []byte{0xff, 0xfe, 's', 'e', 'c', 'r', 'e', 't'})
	f.Put("prod/huge", strings.Repeat("h", backend.MaxValueBytes+1))
	ctx := context.Background()
	b, err := awssm.New(ctx, awssm.Config{Region: "us-east-1", Endpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		ref, want string
		err       error
	}{
		{"aws-sm://prod/db#password", "pw-2", nil},
		{"aws-sm://prod/db?stage=AWSCURRENT#password", "pw-2", nil},
		{"aws-sm://prod/db?stage=AWSPREVIOUS#password", "pw-1", nil},
		{"aws-sm://prod/db?version=" + v1 + "#password", "pw-1", nil},
		{"aws-sm://prod/db#port", "5432", nil},
		{"aws-sm://arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf#user", "app", nil},
		{"aws-sm://prod/token", "plain-token", nil},
		{"aws-sm://prod/token#key", "", backend.ErrInvalidValue},
		{"aws-sm://prod/cert", "binary-ok", nil},
		{"aws-sm://prod/garbled", "", backend.ErrInvalidValue},
		{"aws-sm://prod/huge", "", backend.ErrInvalidValue},
		{"aws-sm://prod/db#nope", "", backend.ErrNotFound},
		{"aws-sm://prod/db?stage=AWSPENDING#password", "", backend.ErrNotFound},
		{"aws-sm://prod/missing#password", "", backend.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.ref, func(t *testing.T) {
			v, err := b.Read(ctx, secretref.MustParse(tc.ref))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %v, want %v", err, tc.err)
				}
				if strings.Contains(err.Error(), "hhhhhhhh") || strings.Contains(err.Error(), "\xff") || strings.Contains(err.Error(), "plain-token") {
					t.Fatalf("error repeats the value: %v", err)
				}
				return
			}
			if err != nil || string(v.Data) != tc.want || v.Version == "" {
				t.Fatalf("got %q (%s), %v; want %q", v.Data, v.Version, err, tc.want)
			}
		})
	}
	md, err := b.Describe(ctx, secretref.MustParse("aws-sm://prod/db"))
	if err != nil || md.Version == v1 || md.Versions != 2 {
		t.Fatalf("describe: %+v %v", md, err)
	}
	nv, err := b.Write(ctx, secretref.MustParse("aws-sm://prod/db#password"), []byte("pw-3"))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := b.Read(ctx, secretref.MustParse("aws-sm://prod/db#password")); err != nil || string(v.Data) != "pw-3" || v.Version != nv {
		t.Fatalf("after write: %q %s %v", v.Data, v.Version, err)
	}
	if v, err := b.Read(ctx, secretref.MustParse("aws-sm://prod/db?stage=AWSPREVIOUS#user")); err != nil || string(v.Data) != "app" {
		t.Fatalf("write lost keys or stages: %q %v", v.Data, err)
	}
	if _, err := b.Read(ctx, secretref.MustParse("aws-sm://prod/db?stage=AWSPREVIOUS#password")); err != nil {
		t.Fatal(err)
	}

	// No credentials: the SDK signs nothing and the server refuses.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	if bad, err := awssm.New(ctx, awssm.Config{Region: "us-east-1", Endpoint: srv.URL}); err == nil {
		if _, err := bad.Read(ctx, secretref.MustParse("aws-sm://prod/db#password")); err == nil {
			t.Fatal("read without credentials succeeded")
		}
	}
	// Endpoint down: Unavailable.
	srv.Close()
	if _, err := b.Read(ctx, secretref.MustParse("aws-sm://prod/db#password")); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("endpoint down: %v", err)
	}
}
