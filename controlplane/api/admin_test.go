package api_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/secretplane/secretplane/identity"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func issueFor(t testing.TB, e *env, path string) *identity.StaticSource {
	t.Helper()
	id := e.admin.ID().TrustDomain()
	svid, err := e.ca.IssueSVID(mustID(t, id.IDString()+path), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewStaticSource(svid, e.ca.Bundle())
}

// Bad input gets a status that fits, names the field, never echoes the
// value, and leaves the store as it was.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	c := e.adminClient(t)
	ctx := ctxT(t)
	seed, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/payments/db#password", Owner: "team-payments"}})
	if err != nil {
		t.Fatal(err)
	}
	const leaked = "hunter2-Zq8vW3xR"
	jwt := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	cases := []struct {
		name      string
		call      func() error
		code      codes.Code
		field     string // BadRequest field violation expected, if any
		mustNotIn string // text that must not appear in the error
	}{
		{"malformed ref", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "a/b", Ref: "vault://"}})
			return err
		}, codes.InvalidArgument, "secret.ref", ""},
		{"unknown scheme", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "a/b", Ref: "gopher://secret/x#y"}})
			return err
		}, codes.InvalidArgument, "secret.ref", ""},
		{"credentials in ref", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "a/b", Ref: "vault://admin:" + leaked + "@secret/x#y"}})
			return err
		}, codes.InvalidArgument, "secret.ref", leaked},
		{"literal secret where a ref belongs", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "a/b", Ref: jwt}})
			return err
		}, codes.InvalidArgument, "secret.ref", jwt[:40]},
		{"bad name", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "Payments//DB", Ref: "vault://secret/a#b"}})
			return err
		}, codes.InvalidArgument, "secret.name", ""},
		{"missing secret", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{})
			return err
		}, codes.InvalidArgument, "secret.name", ""},
		{"duplicate name with create_only", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/other#x"}, CreateOnly: true})
			return err
		}, codes.AlreadyExists, "", ""},
		{"stale etag", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/other#x", Etag: "999999"}})
			return err
		}, codes.Aborted, "", ""},
		{"garbage etag", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/other#x", Etag: "W/abc"}})
			return err
		}, codes.InvalidArgument, "secret.etag", ""},
		{"stale etag on delete", func() error {
			_, err := c.DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: "payments/db", Etag: "999999"})
			return err
		}, codes.Aborted, "", ""},
		{"secret-looking description", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/a#b", Description: jwt}})
			return err
		}, codes.InvalidArgument, "secret.description", jwt[:40]},
		{"not found", func() error {
			_, err := c.GetSecret(ctx, &spv1.GetSecretRequest{Name: "nope/nothing"})
			return err
		}, codes.NotFound, "", ""},
		{"oversize payload", func() error {
			_, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/a#b", Description: strings.Repeat("x", 2<<20)}})
			return err
		}, codes.ResourceExhausted, "", ""},
		{"literal secret in configuration", func() error {
			_, err := c.PutConfig(ctx, &spv1.PutConfigRequest{Config: &spv1.ConfigDocument{Name: "payments/api", Entries: []*spv1.ConfigEntry{
				{Key: "HOST", Value: &spv1.ConfigEntry_Literal{Literal: "db.internal"}},
				{Key: "TOKEN", Value: &spv1.ConfigEntry_Literal{Literal: jwt}},
			}}})
			return err
		}, codes.InvalidArgument, "config.entries[1].literal", jwt[:40]},
		{"duplicate config keys", func() error {
			_, err := c.PutConfig(ctx, &spv1.PutConfigRequest{Config: &spv1.ConfigDocument{Name: "payments/api", Entries: []*spv1.ConfigEntry{
				{Key: "HOST", Value: &spv1.ConfigEntry_Literal{Literal: "a"}},
				{Key: "HOST", Value: &spv1.ConfigEntry_Literal{Literal: "b"}},
			}}})
			return err
		}, codes.InvalidArgument, "config.entries[1].key", ""},
		{"bad ref in configuration", func() error {
			_, err := c.PutConfig(ctx, &spv1.PutConfigRequest{Config: &spv1.ConfigDocument{Name: "payments/api", Entries: []*spv1.ConfigEntry{
				{Key: "DB", Value: &spv1.ConfigEntry_Ref{Ref: "vault://u:" + leaked + "@secret/db#p"}},
			}}})
			return err
		}, codes.InvalidArgument, "config.entries[0].ref", leaked},
		{"bad identity in configuration", func() error {
			_, err := c.PutConfig(ctx, &spv1.PutConfigRequest{Config: &spv1.ConfigDocument{Name: "payments/api", Identity: "https://example.com/x"}})
			return err
		}, codes.InvalidArgument, "config.identity", ""},
		{"foreign page token", func() error {
			_, err := c.ListSecrets(ctx, &spv1.ListSecretsRequest{PageToken: "bm9wZQ"})
			return err
		}, codes.InvalidArgument, "page_token", ""},
		{"invalid UTF-8", func() error {
			return invokeRaw(ctx, e.dial(t, e.admin), "/secretplane.v1.AdminService/PutSecret", invalidUTF8PutSecret())
		}, codes.InvalidArgument, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			st := status.Convert(err)
			if st.Code() != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			if tc.field != "" && !hasViolation(st, tc.field) {
				t.Fatalf("no BadRequest violation for %q in %v (details %v)", tc.field, err, st.Details())
			}
			if tc.mustNotIn != "" && strings.Contains(fmt.Sprint(err, st.Details()), tc.mustNotIn) {
				t.Fatalf("error echoes the offending value: %v", err)
			}
		})
	}
	// Nothing was half-written: the seed secret is unchanged and no config exists.
	got, err := c.GetSecret(ctx, &spv1.GetSecretRequest{Name: "payments/db"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetEtag() != seed.GetSecret().GetEtag() || got.GetRef() != "vault://secret/payments/db#password" {
		t.Fatalf("seed secret changed: %v", got)
	}
	list, err := c.ListConfigs(ctx, &spv1.ListConfigsRequest{})
	if err != nil || len(list.GetConfigs()) != 0 {
		t.Fatalf("configs after refused writes: %v %v", list, err)
	}
}

func hasViolation(st *status.Status, field string) bool {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return true
				}
			}
		}
	}
	return false
}

// rawCodec sends pre-encoded bytes, to put what a Go client refuses to
// encode (invalid UTF-8) on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { *(v.(*[]byte)) = data; return nil }
func (rawCodec) Name() string                       { return "proto" }

var _ encoding.Codec = rawCodec{}

func invokeRaw(ctx context.Context, conn *grpc.ClientConn, method string, req []byte) error {
	var resp []byte
	return conn.Invoke(ctx, method, req, &resp, grpc.ForceCodec(rawCodec{}))
}

// invalidUTF8PutSecret encodes PutSecretRequest{secret: {name: "\xff\xfe"}}.
func invalidUTF8PutSecret() []byte {
	var secret []byte
	secret = protowire.AppendTag(secret, 1, protowire.BytesType)
	secret = protowire.AppendBytes(secret, []byte{0xff, 0xfe, 'x'})
	var req []byte
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	return protowire.AppendBytes(req, secret)
}
