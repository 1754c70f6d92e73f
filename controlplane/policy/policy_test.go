package policy_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

func TestParseSubject(t *testing.T) {
	api := spiffeid.RequireFromString("spiffe://example.org/ns/payments/sa/api")
	other := spiffeid.RequireFromString("spiffe://example.org/ns/billing/sa/api")
	foreign := spiffeid.RequireFromString("spiffe://evil.org/ns/payments/sa/api")
	cases := []struct {
		in      string
		err     string
		matches []spiffeid.ID
		not     []spiffeid.ID
	}{
		{in: "spiffe://example.org/ns/payments/sa/api", matches: []spiffeid.ID{api}, not: []spiffeid.ID{other, foreign}},
		{in: "spiffe://example.org/ns/payments/*", matches: []spiffeid.ID{api}, not: []spiffeid.ID{other, foreign}},
		{in: "spiffe://example.org/ns/pay/*", not: []spiffeid.ID{api}},
		{in: "spiffe://example.org/*", matches: []spiffeid.ID{api, other}, not: []spiffeid.ID{foreign}},
		{in: "spiffe://example.org", err: "names a trust domain"},
		{in: "spiffe://example.org/ns/*/sa/api", err: "may only end"},
		{in: "spiffe://example.org/ns/pay*", err: "may only end"},
		{in: "https://example.org/x", err: "not a SPIFFE ID"},
		{in: "spiffe://Example.org/x", err: "not a SPIFFE ID"},
		{in: "spiffe://example.org/a//b", err: "not a SPIFFE ID"},
	}
	for _, tc := range cases {
		s, err := policy.ParseSubject(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSubject(%q) = %v; want error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseSubject(%q): %v", tc.in, err)
			continue
		}
		if s.String() != tc.in {
			t.Errorf("String() = %q, want %q", s.String(), tc.in)
		}
		for _, id := range tc.matches {
			if !s.Matches(id) {
				t.Errorf("%s should match %s", tc.in, id)
			}
		}
		for _, id := range tc.not {
			if s.Matches(id) {
				t.Errorf("%s should not match %s", tc.in, id)
			}
		}
	}
}

func TestCompileRefusesBadAndBroadGrants(t *testing.T) {
	good := store.Policy{Name: "payments-read", Subject: "spiffe://example.org/ns/payments/sa/api", Verbs: []string{"read"}, Objects: []string{"payments/*"}}
	cases := []struct {
		name   string
		mutate func(*store.Policy)
		field  string
		force  bool // whether force makes it acceptable
	}{
		{"unknown verb", func(p *store.Policy) { p.Verbs = []string{"read", "delete"} }, "verbs[1]", false},
		{"repeated verb", func(p *store.Policy) { p.Verbs = []string{"read", "read"} }, "verbs[1]", false},
		{"no verbs", func(p *store.Policy) { p.Verbs = nil }, "verbs", false},
		{"no objects", func(p *store.Policy) { p.Objects = nil }, "objects", false},
		{"bad object", func(p *store.Policy) { p.Objects = []string{"pay*ments"} }, "objects[0]", false},
		{"bad subject", func(p *store.Policy) { p.Subject = "payments" }, "subject", false},
		{"bad name", func(p *store.Policy) { p.Name = "Payments Read" }, "name", false},
		{"admin to a prefix", func(p *store.Policy) { p.Verbs = []string{"admin"}; p.Subject = "spiffe://example.org/ns/payments/*" }, "subject", true},
		{"admin to a trust domain", func(p *store.Policy) { p.Verbs = []string{"admin"}; p.Subject = "spiffe://example.org/*" }, "subject", true},
		{"everything to a trust domain", func(p *store.Policy) { p.Subject = "spiffe://example.org/*"; p.Objects = []string{"*"} }, "objects", true},
		{"ref pattern without bind", func(p *store.Policy) { p.Objects = []string{"payments/*", "vault://secret/payments/*"} }, "objects[1]", false},
		{"bind on names only", func(p *store.Policy) { p.Verbs = []string{"bind"} }, "objects", false},
		{"read on ref patterns only", func(p *store.Policy) {
			p.Verbs = []string{"read", "bind"}
			p.Objects = []string{"vault://secret/payments/*"}
		}, "objects", false},
		{"bad ref pattern", func(p *store.Policy) { p.Verbs = []string{"bind"}; p.Objects = []string{"vault://secret/pay*"} }, "objects[0]", false},
		{"bind to a prefix", func(p *store.Policy) {
			p.Verbs = []string{"bind"}
			p.Objects = []string{"local://payments/*"}
			p.Subject = "spiffe://example.org/ns/payments/*"
		}, "subject", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := good
			tc.mutate(&p)
			_, err := policy.Compile(p, false)
			var verr *validate.Error
			if !errors.As(err, &verr) {
				t.Fatalf("want a validation error, got %v", err)
			}
			found := false
			for _, v := range verr.Violations {
				found = found || v.Field == tc.field
			}
			if !found {
				t.Fatalf("no violation of %s in %v", tc.field, err)
			}
			if _, err := policy.Compile(p, true); (err == nil) != tc.force {
				t.Fatalf("with force: %v (want accepted=%v)", err, tc.force)
			}
		})
	}
	if _, err := policy.Compile(good, false); err != nil {
		t.Fatal(err)
	}
}

// newPolicies returns an engine and a manager over a fresh SQLite store,
// with root as the bootstrap admin.
func newPolicies(t *testing.T, root spiffeid.ID) (*sqlite.Store, *policy.Engine, *policy.Manager) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := policy.NewEngine(st, []spiffeid.ID{root}, slog.New(slog.DiscardHandler))
	return st, e, policy.NewManager(st, e)
}

func TestEngineDecides(t *testing.T) {
	ctx := context.Background()
	root := spiffeid.RequireFromString("spiffe://example.org/ops/root")
	st, e, m := newPolicies(t, root)
	for _, p := range []store.Policy{
		{Name: "payments-read", Subject: "spiffe://example.org/payments/*", Verbs: []string{"read", "watch"}, Objects: []string{"payments/*"}},
		{Name: "payments-admin", Subject: "spiffe://example.org/payments/lead", Verbs: []string{"admin"}, Objects: []string{"payments/*"}},
		{Name: "gateway-tls", Subject: "spiffe://example.org/gw/envoy", Verbs: []string{"read"}, Objects: []string{"shared/tls"}},
	} {
		if _, _, err := m.Put(ctx, p, policy.Write{}); err != nil {
			t.Fatal(err)
		}
	}
	api := spiffeid.RequireFromString("spiffe://example.org/payments/api")
	lead := spiffeid.RequireFromString("spiffe://example.org/payments/lead")
	gw := spiffeid.RequireFromString("spiffe://example.org/gw/envoy")
	cases := []struct {
		id     spiffeid.ID
		verb   policy.Verb
		object string
		grant  string // "" = denied
	}{
		{api, policy.Read, "payments/db", "payments-read"},
		{api, policy.Watch, "payments/db", "payments-read"},
		{api, policy.Rotate, "payments/db", ""},
		{api, policy.Read, "billing/db", ""},
		{api, policy.Admin, "payments/db", ""},
		{lead, policy.Admin, "payments/db", "payments-admin"},
		{lead, policy.Read, "payments/db", "payments-read"},
		{lead, policy.Admin, "billing/db", ""},
		{gw, policy.Read, "shared/tls", "gateway-tls"},
		{gw, policy.Read, "shared/tls-old", ""},
		{root, policy.Admin, "anything/at-all", policy.BootstrapGrant},
		{root, policy.Read, "payments/db", ""},
	}
	for _, tc := range cases {
		d := e.Decide(tc.id, tc.verb, tc.object)
		if d.Allowed != (tc.grant != "") || d.Grant != tc.grant {
			t.Errorf("Decide(%s, %s, %s) = %+v; want grant %q", tc.id, tc.verb, tc.object, d, tc.grant)
		}
	}
	if d := e.DecidePrefix(lead, policy.Admin, "payments/"); !d.Allowed {
		t.Error("lead should list payments/")
	}
	if d := e.DecidePrefix(lead, policy.Admin, ""); d.Allowed {
		t.Error("lead should not list everything")
	}
	if err := m.Delete(ctx, "gateway-tls", 0); err != nil {
		t.Fatal(err)
	}
	if d := e.Decide(gw, policy.Read, "shared/tls"); d.Allowed {
		t.Error("deleted grant still allows")
	}
	// Another engine over the same store sees the policies after Load.
	e2 := policy.NewEngine(st, nil, slog.New(slog.DiscardHandler))
	if err := e2.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if d := e2.Decide(api, policy.Read, "payments/x"); d.Grant != "payments-read" {
		t.Errorf("second engine: %+v", d)
	}
}

func TestBind(t *testing.T) {
	ctx := context.Background()
	root := spiffeid.RequireFromString("spiffe://example.org/ops/root")
	st, e, m := newPolicies(t, root)
	for _, p := range []store.Policy{
		{Name: "payments-admin", Subject: "spiffe://example.org/payments/lead", Verbs: []string{"admin", "bind"},
			Objects: []string{"payments/*", "local://payments/*", "vault://secret/payments/*", "aws-sm://prod/payments/*"}},
		{Name: "billing-admin", Subject: "spiffe://example.org/billing/lead", Verbs: []string{"admin"}, Objects: []string{"billing/*"}},
		{Name: "billing-bind", Subject: "spiffe://example.org/billing/lead", Verbs: []string{"bind"}, Objects: []string{"vault://secret/billing/db#password"}},
		{Name: "ops-admin", Subject: "spiffe://example.org/ops/*", Verbs: []string{"admin"}, Objects: []string{"ops/*"}},
		{Name: "ops-bind", Subject: "spiffe://example.org/ops/*", Verbs: []string{"bind"}, Objects: []string{"vault://*"}},
	} {
		if _, _, err := m.Put(ctx, p, policy.Write{Force: true}); err != nil {
			t.Fatal(err)
		}
	}
	lead := spiffeid.RequireFromString("spiffe://example.org/payments/lead")
	billing := spiffeid.RequireFromString("spiffe://example.org/billing/lead")
	opsA := spiffeid.RequireFromString("spiffe://example.org/ops/a")
	cases := []struct {
		id    spiffeid.ID
		ref   string
		grant string
	}{
		{lead, "local://payments/db#password", "payments-admin"},
		{lead, "local://payments/stripe?version=3#api_key", "payments-admin"},
		{lead, "vault://secret/payments/db?version=2#password", "payments-admin"},
		{lead, "aws-sm://prod/payments/db?stage=AWSPREVIOUS#password", "payments-admin"},
		{lead, "local://canary/value#k", ""},
		{lead, "local://payments-old/db#k", ""},
		{lead, "vault://secret/billing/db#password", ""},
		{lead, "aws-sm://prod/payments/db?region=eu-west-1", ""},
		{billing, "vault://secret/billing/db#password", "billing-bind"},
		{billing, "vault://secret/billing/db?version=7#password", "billing-bind"},
		{billing, "vault://secret/billing/db#username", ""},
		{opsA, "vault://anything/at/all", "ops-bind"},
		{opsA, "local://ops/x#k", ""},
		{root, "aws-sm://anything", policy.BootstrapGrant},
	}
	for _, tc := range cases {
		d := e.DecideBind(tc.id, secretref.MustParse(tc.ref))
		if d.Allowed != (tc.grant != "") || d.Grant != tc.grant {
			t.Errorf("DecideBind(%s, %s) = %+v; want grant %q", tc.id, tc.ref, d, tc.grant)
		}
	}
	// A bind grant on names is not an admin grant, nor the reverse.
	if d := e.Decide(lead, policy.Bind, "payments/db"); d.Allowed {
		t.Errorf("bind on a name: %+v", d)
	}
	if d := e.Decide(billing, policy.Admin, "vault://secret/billing/db#password"); d.Allowed {
		t.Errorf("admin on a ref: %+v", d)
	}

	// The upgrade check: existing bindings whose admins lack bind.
	for _, sec := range []store.Secret{
		{Name: "payments/db", Ref: "local://payments/db#password"},
		{Name: "payments/steal", Ref: "local://canary/value#k"},
		{Name: "billing/db", Ref: "vault://secret/billing/db#password"},
		{Name: "billing/api", Ref: "vault://secret/billing/api#token"},
		{Name: "ops/vault", Ref: "vault://secret/ops/x#k"},
		{Name: "ops/local", Ref: "local://ops/x#k"},
	} {
		if _, err := st.PutSecret(ctx, sec, store.Precondition{}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := m.AuditBindings(ctx)
	if err != nil || got.Total != 3 {
		t.Fatal(got, err)
	}
	if _, err := st.PutConfig(ctx, store.ConfigDocument{Name: "payments/api", Entries: []store.ConfigEntry{
		{Key: "A", Ref: "local://payments/db#password"}, {Key: "B", Ref: "local://canary/value#k"}, {Key: "C", Literal: "x"}}}, store.Precondition{}); err != nil {
		t.Fatal(err)
	}
	got, err = m.AuditBindings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, f := range got.Findings {
		lines = append(lines, f.Kind+" "+f.Object+" "+f.Policy)
	}
	want := []string{"secret billing/api billing-admin", "secret ops/local ops-admin", "secret payments/steal payments-admin", "config payments/api payments-admin"}
	if strings.Join(lines, ";") != strings.Join(want, ";") || got.Total != 4 || got.Secrets != 6 || got.Configs != 1 {
		t.Fatalf("AuditBindings = %+v; want %v", got, want)
	}
}

func TestSubjectCovers(t *testing.T) {
	p := func(s string) policy.Subject {
		sub, err := policy.ParseSubject(s)
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"spiffe://td/a", "spiffe://td/a", true},
		{"spiffe://td/a", "spiffe://td/a/*", false},
		{"spiffe://td/a/*", "spiffe://td/a/b", true},
		{"spiffe://td/a/*", "spiffe://td/a/b/*", true},
		{"spiffe://td/a/*", "spiffe://td/a/*", true},
		{"spiffe://td/a/*", "spiffe://td/ab", false},
		{"spiffe://td/a/*", "spiffe://td/a", false},
		{"spiffe://td/*", "spiffe://td/x/*", true},
		{"spiffe://td/*", "spiffe://other/x", false},
	} {
		if got := p(tc.a).Covers(p(tc.b)); got != tc.want {
			t.Errorf("%s covers %s = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// Policy changes reach the bus: a put and a delete by name, and a change
// another replica made when a refresh finds it (nothing when unchanged).
func TestPolicyChangesArePublished(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bus := events.New()
	sub := bus.Subscribe("test", 16)
	e := policy.NewEngine(st, nil, slog.New(slog.DiscardHandler), policy.WithEvents(bus))
	m := policy.NewManager(st, e)
	p := store.Policy{Name: "api-read", Subject: "spiffe://example.org/api", Verbs: []string{"read"}, Objects: []string{"a/*"}}
	if _, _, err := m.Put(ctx, p, policy.Write{}); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, "api-read", 0); err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { e.Refresh(rctx, 20*time.Millisecond); close(done) }()
	defer func() { stop(); <-done }()
	time.Sleep(100 * time.Millisecond)                                                       // refreshes that find nothing new
	other := policy.NewManager(st, policy.NewEngine(st, nil, slog.New(slog.DiscardHandler))) // another replica
	if _, _, err := other.Put(ctx, p, policy.Write{}); err != nil {
		t.Fatal(err)
	}
	want := []events.PolicyChanged{{Name: "api-read"}, {Name: "api-read", Deleted: true}, {}}
	for i, w := range want {
		select {
		case got := <-sub.C():
			if got != w {
				t.Fatalf("event %d: %+v, want %+v", i, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d missing; want %+v", i, w)
		}
	}
	time.Sleep(100 * time.Millisecond)
	select {
	case got := <-sub.C():
		t.Fatalf("extra event %+v", got)
	default:
	}
}
