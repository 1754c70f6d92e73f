package vault_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/vault"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/e2e/testenv"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func newBackend(t *testing.T, v *testenv.Vault, token string) *vault.Backend {
	t.Helper()
	b, err := vault.New(context.Background(), vault.Config{Address: v.Addr, AllowInsecure: true, TokenFile: writeFile(t, token)}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seed(t *testing.T, c *api.Client) {
	t.Helper()
	ctx := context.Background()
	kv := c.KVv2("secret")
	if _, err := kv.Put(ctx, "payments/db", map[string]any{"password": "pw-v1", "user": "app"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "payments/db", map[string]any{"password": "pw-v2", "user": "app"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "payments/nested", map[string]any{"db": map[string]any{"password": "nested-pw", "port": 5432}, "list": []any{"a", "b"}}); err != nil {
		t.Fatal(err)
	}
}

func TestReadDescribeWrite(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	seed(t, root)
	b := newBackend(t, v, v.RootToken)
	ctx := context.Background()
	cases := []struct {
		ref     string
		want    string
		version string
		err     error
	}{
		{"vault://secret/payments/db#password", "pw-v2", "2", nil},
		{"vault://secret/payments/db?version=1#password", "pw-v1", "1", nil},
		{"vault://secret/payments/db#user", "app", "2", nil},
		{"vault://secret/payments/nested#/db/password", "nested-pw", "1", nil},
		{"vault://secret/payments/nested#/db/port", "5432", "1", nil},
		{"vault://secret/payments/nested#/list/1", "b", "1", nil},
		{"vault://secret/payments/db#nope", "", "", backend.ErrNotFound},
		{"vault://secret/payments/missing#password", "", "", backend.ErrNotFound},
		{"vault://secret/payments/db?version=9#password", "", "", backend.ErrNotFound},
		{"vault://secret/payments/nested#db", "", "", backend.ErrInvalidValue},
		{"vault://nomount/x#y", "", "", backend.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.ref, func(t *testing.T) {
			val, err := b.Read(ctx, secretref.MustParse(tc.ref))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || string(val.Data) != tc.want || val.Version != tc.version {
				t.Fatalf("got %q v%s, %v; want %q v%s", val.Data, val.Version, err, tc.want, tc.version)
			}
		})
	}
	whole, err := b.Read(ctx, secretref.MustParse("vault://secret/payments/db"))
	if err != nil || !strings.Contains(string(whole.Data), `"password":"pw-v2"`) {
		t.Fatalf("whole value: %v", err)
	}
	md, err := b.Describe(ctx, secretref.MustParse("vault://secret/payments/db#password"))
	if err != nil || md.Version != "2" || md.Versions != 2 {
		t.Fatalf("describe: %+v %v", md, err)
	}
	ver, err := b.Write(ctx, secretref.MustParse("vault://secret/payments/db#password"), []byte("pw-v3"))
	if err != nil || ver != "3" {
		t.Fatalf("write: %q %v", ver, err)
	}
	if val, err := b.Read(ctx, secretref.MustParse("vault://secret/payments/db#user")); err != nil || string(val.Data) != "app" {
		t.Fatalf("write lost the other keys: %q %v", val.Data, err)
	}
}

func TestPermissionDeniedAndAppRole(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	seed(t, root)
	ctx := context.Background()
	if err := root.Sys().PutPolicyWithContext(ctx, "payments-read", `path "secret/data/payments/db" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	tok, err := root.Auth().Token().CreateWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"payments-read"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	limited := newBackend(t, v, tok.Auth.ClientToken)
	if val, err := limited.Read(ctx, secretref.MustParse("vault://secret/payments/db#password")); err != nil || string(val.Data) != "pw-v2" {
		t.Fatalf("granted read: %v", err)
	}
	if _, err := limited.Read(ctx, secretref.MustParse("vault://secret/payments/nested#/db/password")); !errors.Is(err, backend.ErrPermissionDenied) {
		t.Fatalf("denied read: %v", err)
	}

	// AppRole: enable, create a role, log in with role id + secret id file.
	roleID, secretIDFile := v.AppRole(t, "secretplane", "payments-read", "30s")
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ar, err := vault.New(bctx, vault.Config{Address: v.Addr, AllowInsecure: true, AppRole: &vault.AppRoleAuth{
		RoleID: roleID, SecretIDFile: secretIDFile,
	}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if val, err := ar.Read(ctx, secretref.MustParse("vault://secret/payments/db?version=1#password")); err != nil || string(val.Data) != "pw-v1" {
		t.Fatalf("AppRole read: %v", err)
	}
	if _, err := vault.New(ctx, vault.Config{Address: v.Addr, AllowInsecure: true, AppRole: &vault.AppRoleAuth{RoleID: "wrong", SecretIDFile: writeFile(t, "wrong")}}, slog.New(slog.DiscardHandler)); !errors.Is(err, backend.ErrPermissionDenied) && (err == nil || !strings.Contains(err.Error(), "AppRole login")) {
		t.Fatalf("bad AppRole credentials: %v", err)
	}
}

func TestOutageAndTLSRequirement(t *testing.T) {
	v := testenv.StartVault(t)
	seed(t, v.RootClient(t))
	b := newBackend(t, v, v.RootToken)
	ref := secretref.MustParse("vault://secret/payments/db#password")
	v.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := b.Read(ctx, ref); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("vault down: %v", err)
	}
	v.Start(t) // dev mode: empty again, same root token
	seed(t, v.RootClient(t))
	if val, err := b.Read(context.Background(), ref); err != nil || string(val.Data) != "pw-v2" {
		t.Fatalf("after restart: %v", err)
	}
	_, err := vault.New(context.Background(), vault.Config{Address: "http://vault.example.com:8200", AllowInsecure: true, TokenFile: writeFile(t, "x")}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "TLS is required") {
		t.Fatalf("plain http to a remote Vault: %v", err)
	}
	if _, err := vault.New(context.Background(), vault.Config{Address: v.Addr, TokenFile: writeFile(t, "x")}, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("plain http without dev allowance accepted")
	}
}

// Answers that must not become values: an oversize value, a token that
// expired, a read that outlives its deadline. Each maps to its error kind,
// and no error repeats the value.
func TestBadAnswers(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	seed(t, root)
	ctx := context.Background()
	huge := strings.Repeat("h", backend.MaxValueBytes+1)
	if _, err := root.KVv2("secret").Put(ctx, "payments/huge", map[string]any{"blob": huge}); err != nil {
		t.Fatal(err)
	}
	tok, err := root.Auth().Token().CreateWithContext(ctx, &api.TokenCreateRequest{Policies: []string{"default"}, TTL: "2s", ExplicitMaxTTL: "2s", Renewable: new(bool)})
	if err != nil {
		t.Fatal(err)
	}
	expiring := newBackend(t, v, tok.Auth.ClientToken)
	good := newBackend(t, v, v.RootToken)
	time.Sleep(3 * time.Second) // past the token's max TTL
	expired, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	cases := []struct {
		name string
		b    *vault.Backend
		ctx  context.Context
		ref  string
		want error
	}{
		{"value over the size bound", good, ctx, "vault://secret/payments/huge#blob", backend.ErrInvalidValue},
		{"whole secret over the size bound", good, ctx, "vault://secret/payments/huge", backend.ErrInvalidValue},
		{"expired token", expiring, ctx, "vault://secret/payments/db#password", backend.ErrPermissionDenied},
		{"deadline passed", good, expired, "vault://secret/payments/db#password", backend.ErrUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.b.Read(tc.ctx, secretref.MustParse(tc.ref))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), "hhhhhhhh") || strings.Contains(err.Error(), "pw-v2") {
				t.Fatalf("error repeats the value: %v", err)
			}
		})
	}
}

// Run keeps a login's token alive: renewed while it may be, logged in
// again when it reaches its max TTL. Without Run the token expires and
// reads are refused.
func TestRunRenewsAndLogsInAgain(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	seed(t, root)
	ctx := context.Background()
	if err := root.Sys().PutPolicyWithContext(ctx, "payments-read", `path "secret/data/payments/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	roleID, secretIDFile := v.AppRole(t, "short-lived", "payments-read", "2s")
	if _, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/short-lived", map[string]any{"token_policies": "payments-read", "token_ttl": "2s", "token_max_ttl": "4s"}); err != nil {
		t.Fatal(err)
	}
	open := func() *vault.Backend {
		b, err := vault.New(ctx, vault.Config{Address: v.Addr, AllowInsecure: true, AppRole: &vault.AppRoleAuth{RoleID: roleID, SecretIDFile: secretIDFile}}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ref := secretref.MustParse("vault://secret/payments/db#password")
	running, idle := open(), open()
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { running.Run(rctx); close(done) }()
	defer func() { stop(); <-done }()
	time.Sleep(6 * time.Second) // past the token's max TTL
	if _, err := running.Read(ctx, ref); err != nil {
		t.Fatalf("read with Run: %v", err)
	}
	if _, err := idle.Read(ctx, ref); !errors.Is(err, backend.ErrPermissionDenied) {
		t.Fatalf("read without Run: %v (the token should have expired)", err)
	}
}
