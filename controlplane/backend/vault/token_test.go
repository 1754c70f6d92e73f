package vault_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/secretplane/secretplane/controlplane/backend/vault"
	"github.com/secretplane/secretplane/e2e/testenv"
)

func TestTokenInfo(t *testing.T) {
	v := testenv.StartVault(t)
	root := v.RootClient(t)
	ctx := context.Background()
	create := func(req *api.TokenCreateRequest) string {
		t.Helper()
		s, err := root.Auth().Token().CreateWithContext(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return s.Auth.ClientToken
	}
	no := false
	cases := []struct {
		name                string
		token               string
		ttl, creation, max  time.Duration
		renewable, hasIssue bool
	}{
		{"root", v.RootToken, 0, 0, 0, false, true},
		{"short, not renewable", create(&api.TokenCreateRequest{TTL: "2h", Renewable: &no, Policies: []string{"default"}}), 2 * time.Hour, 2 * time.Hour, 0, false, true},
		{"renewable with a cap", create(&api.TokenCreateRequest{TTL: "1h", ExplicitMaxTTL: "3h", Policies: []string{"default"}}), time.Hour, time.Hour, 3 * time.Hour, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, v, tc.token)
			info, err := b.TokenInfo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// ttl counts down from creation: a minute of slack.
			if info.TTL > tc.ttl || info.TTL < tc.ttl-time.Minute || info.CreationTTL != tc.creation || info.ExplicitMaxTTL != tc.max ||
				info.Renewable != tc.renewable || info.IssueTime.IsZero() != !tc.hasIssue || info.Relogin {
				t.Fatalf("got %+v, want ttl %v creation %v max %v renewable %v", info, tc.ttl, tc.creation, tc.max, tc.renewable)
			}
		})
	}
	t.Run("login method", func(t *testing.T) {
		roleID, secretIDFile := v.AppRole(t, "doctor", "default", "1h")
		b, err := vault.New(ctx, vault.Config{Address: v.Addr, AllowInsecure: true, AppRole: &vault.AppRoleAuth{RoleID: roleID, SecretIDFile: secretIDFile}}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		info, err := b.TokenInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Relogin || info.TTL <= 0 {
			t.Fatalf("got %+v: an AppRole token logs in again", info)
		}
	})
}
