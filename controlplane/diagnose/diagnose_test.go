package diagnose_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/backend/vault"
	"github.com/secretplane/secretplane/controlplane/diagnose"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/awsfake"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

// storeConsumers reads consumers straight from the store.
type storeConsumers struct{ st store.Store }

func (c storeConsumers) List(ctx context.Context, secret string) ([]store.Consumer, error) {
	return c.st.ListConsumers(ctx, secret)
}

// hanging is a backend that never answers and ignores its context: doctor
// must not wait for it.
type hanging struct{ release chan struct{} }

func (h hanging) Scheme() secretref.Scheme { return secretref.SchemeVault }
func (h hanging) Read(context.Context, secretref.Ref) (backend.Value, error) {
	<-h.release
	return backend.Value{}, backend.ErrUnavailable
}
func (h hanging) Describe(context.Context, secretref.Ref) (backend.Metadata, error) {
	<-h.release
	return backend.Metadata{}, backend.ErrUnavailable
}
func (h hanging) Write(context.Context, secretref.Ref, []byte) (string, error) {
	<-h.release
	return "", backend.ErrUnavailable
}

const secretValue = "s3cr3t-value-never-shown"

func TestRun(t *testing.T) {
	ctx := context.Background()
	awsfake.Credentials(t)
	fake, srv := awsfake.New(t)
	fake.Put("prod/default-key", secretValue)
	fake.Put("prod/customer-key", secretValue)
	fake.SetKMSKey("prod/customer-key", "arn:aws:kms:us-east-1:123456789012:key/0b1c2d3e")
	aws, err := awssm.New(ctx, awssm.Config{Region: "us-east-1", Endpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	loc, err := local.New(filepath.Join(t.TempDir(), "secrets.json"), make([]byte, local.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loc.Write(ctx, secretref.MustParse("local://payments/db#password"), []byte(secretValue)); err != nil {
		t.Fatal(err)
	}
	if _, err := loc.Write(ctx, secretref.MustParse("local://payments/api#key"), []byte(secretValue)); err != nil {
		t.Fatal(err)
	}
	h := hanging{release: make(chan struct{})}
	t.Cleanup(func() { close(h.release) })

	const api = "spiffe://test.example/payments/api"
	type seed struct {
		secrets   []store.Secret
		policies  []store.Policy
		consumers []store.Consumer
	}
	owned := func(name, ref string) store.Secret { return store.Secret{Name: name, Ref: ref, Owner: "payments"} }
	read := func(secret string) store.Consumer {
		return store.Consumer{Secret: secret, Identity: api, Channel: "resolve", FirstSeen: time.Now(), LastSeen: time.Now()}
	}
	cases := []struct {
		name     string
		seed     seed
		backends []backend.Backend
		static   []diagnose.Finding
		want     []string // check/severity/subject
	}{
		{name: "nothing registered", want: nil},
		{name: "clean", seed: seed{
			secrets:   []store.Secret{owned("payments/db", "local://payments/db#password"), owned("payments/api", "local://payments/api#key")},
			policies:  []store.Policy{{Name: "api", Subject: api, Verbs: []string{"read"}, Objects: []string{"payments/*"}}},
			consumers: []store.Consumer{read("payments/db"), read("payments/api")},
		}},
		{name: "unowned and never read", seed: seed{
			secrets: []store.Secret{{Name: "payments/db", Ref: "local://payments/db#password"}},
		}, want: []string{"secret-owner/warning/payments/db", "secret-never-read/warning/payments/db"}},
		{name: "inaccessible local ref", seed: seed{
			secrets:   []store.Secret{owned("payments/gone", "local://payments/gone#password")},
			consumers: []store.Consumer{read("payments/gone")},
		}, want: []string{"ref-accessible/failure/payments/gone"}},
		{name: "no backend for the scheme", seed: seed{
			secrets:   []store.Secret{owned("payments/v", "vault://secret/payments/v#password")},
			consumers: []store.Consumer{read("payments/v")},
		}, want: []string{"ref-accessible/failure/payments/v"}},
		{name: "hanging backend times out", backends: []backend.Backend{h}, seed: seed{
			secrets:   []store.Secret{owned("payments/v", "vault://secret/payments/v#password"), owned("payments/w", "vault://secret/payments/w#password")},
			consumers: []store.Consumer{read("payments/v"), read("payments/w")},
		}, want: []string{"ref-accessible/failure/payments/v", "ref-accessible/failure/payments/w"}},
		{name: "wildcard grant broader than used", seed: seed{
			secrets: []store.Secret{owned("payments/db", "local://payments/db#password"), owned("payments/api", "local://payments/api#key"),
				owned("orders/db", "local://payments/db#password")},
			policies: []store.Policy{
				{Name: "api", Subject: api, Verbs: []string{"read", "watch"}, Objects: []string{"payments/*"}},
				{Name: "exact", Subject: "spiffe://test.example/orders", Verbs: []string{"read"}, Objects: []string{"orders/db"}},
				{Name: "everything", Subject: "spiffe://test.example/ops", Verbs: []string{"read"}, Objects: []string{"*"}},
				{Name: "admins", Subject: "spiffe://test.example/admin", Verbs: []string{"admin"}, Objects: []string{"*"}},
			},
			consumers: []store.Consumer{read("payments/db"), {Secret: "orders/db", Identity: "spiffe://test.example/orders", Channel: "watch", LastSeen: time.Now()}},
		}, want: []string{"secret-never-read/warning/payments/api", "grant-breadth/warning/spiffe://test.example/ops", "grant-breadth/warning/" + api}},
		{name: "aws default key", backends: []backend.Backend{aws}, seed: seed{
			secrets:   []store.Secret{owned("prod/default", "aws-sm://prod/default-key"), owned("prod/customer", "aws-sm://prod/customer-key"), owned("prod/missing", "aws-sm://prod/missing")},
			consumers: []store.Consumer{read("prod/default"), read("prod/customer"), read("prod/missing")},
		}, want: []string{"ref-accessible/failure/prod/missing", "aws-kms-key/warning/prod/default"}},
		{name: "static findings first", static: []diagnose.Finding{{Check: "backend-tls", Severity: diagnose.Failure, Subject: "vault", Message: "http"}},
			want: []string{"backend-tls/failure/vault"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), fmt.Sprintf("s%d.db", i)))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			for _, s := range tc.seed.secrets {
				if _, err := st.PutSecret(ctx, s, store.Precondition{}); err != nil {
					t.Fatal(err)
				}
			}
			for _, p := range tc.seed.policies {
				if _, err := st.PutPolicy(ctx, p, store.Precondition{}); err != nil {
					t.Fatal(err)
				}
			}
			if err := st.UpsertConsumers(ctx, tc.seed.consumers); err != nil {
				t.Fatal(err)
			}
			opts := diagnose.Options{Secrets: st, Policies: st, Consumers: storeConsumers{st},
				Refs: backend.NewRegistry(append([]backend.Backend{loc}, tc.backends...)), Backends: tc.backends, Timeout: 300 * time.Millisecond}
			if tc.static != nil {
				opts.Static = func(context.Context) []diagnose.Finding { return tc.static }
			}
			start := time.Now()
			found := diagnose.Run(ctx, opts)
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("took %v: a hanging backend held doctor", took)
			}
			var got []string
			for _, f := range found {
				got = append(got, fmt.Sprintf("%s/%s/%s", f.Check, f.Severity, f.Subject))
				if strings.Contains(f.Message, secretValue) || f.Message == "" {
					t.Errorf("finding %+v: empty or holds the value", f)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("findings\n  %v\nwant\n  %v\n%+v", got, tc.want, found)
			}
			for _, c := range fake.Calls() {
				if c.Op == "GetSecretValue" {
					t.Fatal("doctor read a value from AWS")
				}
			}
		})
	}
}

func TestTokenFinding(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		info vault.TokenInfo
		warn bool
	}{
		{"root token never expires", vault.TokenInfo{}, false},
		{"long-lived", vault.TokenInfo{TTL: 30 * 24 * time.Hour, CreationTTL: 32 * 24 * time.Hour}, false},
		{"under 24h, not renewable", vault.TokenInfo{TTL: 20 * time.Hour, CreationTTL: 72 * time.Hour}, true},
		{"under 10% of creation, not renewable", vault.TokenInfo{TTL: 25 * 24 * time.Hour, CreationTTL: 365 * 24 * time.Hour}, true},
		{"under 24h but renewable", vault.TokenInfo{TTL: time.Hour, CreationTTL: time.Hour, Renewable: true}, false},
		{"renewable, explicit max ends soon", vault.TokenInfo{TTL: time.Hour, CreationTTL: time.Hour, Renewable: true,
			ExplicitMaxTTL: 48 * time.Hour, IssueTime: now.Add(-40 * time.Hour)}, true},
		{"renewable, explicit max far away", vault.TokenInfo{TTL: time.Hour, CreationTTL: time.Hour, Renewable: true,
			ExplicitMaxTTL: 30 * 24 * time.Hour, IssueTime: now.Add(-time.Hour)}, false},
		{"renewable, capped far below its creation TTL", vault.TokenInfo{TTL: 2 * time.Hour, CreationTTL: 768 * time.Hour, Renewable: true}, true},
		{"short but the backend logs in again", vault.TokenInfo{TTL: time.Minute, CreationTTL: time.Hour, Relogin: true}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, warn := diagnose.TokenFinding(tc.info, now)
			if warn != tc.warn {
				t.Fatalf("warn = %v (%+v), want %v", warn, f, tc.warn)
			}
			if warn && (f.Severity != diagnose.Warning || f.Check != diagnose.CheckVaultToken || !strings.Contains(f.Message, "rule:")) {
				t.Fatalf("finding %+v", f)
			}
		})
	}
}
