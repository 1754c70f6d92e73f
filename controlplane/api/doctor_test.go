package api_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/secretref"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// Diagnose over the assembled server: each case seeds the store (and the
// local backend) and expects exactly these findings.
func TestDiagnose(t *testing.T) {
	const value = "pw-doctor-Zq8vW3xR"
	api := "spiffe://test.example/workload/payments-api"
	cases := []struct {
		name      string
		secrets   []store.Secret
		values    []string // local refs written
		policies  []store.Policy
		consumers []store.Consumer
		want      []string // check/severity/subject
	}{
		{name: "fresh server is clean"},
		{name: "owned, read, exact grant",
			secrets:   []store.Secret{{Name: "payments/db", Ref: "local://payments/db#password", Owner: "payments"}},
			values:    []string{"local://payments/db#password"},
			policies:  []store.Policy{{Name: "api", Subject: api, Verbs: []string{"read"}, Objects: []string{"payments/db"}}},
			consumers: []store.Consumer{{Secret: "payments/db", Identity: api, Channel: "resolve"}},
		},
		{name: "unowned, inaccessible and a broad grant",
			secrets: []store.Secret{
				{Name: "payments/db", Ref: "local://payments/db#password"},
				{Name: "payments/gone", Ref: "local://payments/gone#password", Owner: "payments"},
			},
			values:    []string{"local://payments/db#password"},
			policies:  []store.Policy{{Name: "api", Subject: api, Verbs: []string{"read"}, Objects: []string{"payments/*"}}},
			consumers: []store.Consumer{{Secret: "payments/db", Identity: api, Channel: "resolve"}},
			want: []string{"ref-accessible/failure/payments/gone", "secret-owner/warning/payments/db",
				"secret-never-read/warning/payments/gone", "grant-breadth/warning/" + api},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := ctxT(t)
			for _, r := range tc.values {
				if _, err := e.local.Write(ctx, secretref.MustParse(r), []byte(value)); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range tc.secrets { // straight into the store: a ref that went away after its put
				if _, err := e.store.PutSecret(ctx, s, store.Precondition{}); err != nil {
					t.Fatal(err)
				}
			}
			for _, p := range tc.policies {
				if _, err := e.store.PutPolicy(ctx, p, store.Precondition{}); err != nil {
					t.Fatal(err)
				}
			}
			now := time.Now()
			for i := range tc.consumers {
				tc.consumers[i].FirstSeen, tc.consumers[i].LastSeen = now, now
			}
			if err := e.store.UpsertConsumers(ctx, tc.consumers); err != nil {
				t.Fatal(err)
			}
			resp, err := spv1.NewDoctorServiceClient(e.dial(t, e.admin)).Diagnose(ctx, &spv1.DiagnoseRequest{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range resp.GetFindings() {
				got = append(got, fmt.Sprintf("%s/%s/%s", f.GetCheck(), f.GetSeverity(), f.GetSubject()))
				if strings.Contains(f.GetMessage(), value) {
					t.Fatalf("finding holds the value: %v", f)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("findings %v, want %v\n%v", got, tc.want, resp.GetFindings())
			}
			if !slices.Contains(resp.GetChecks(), "ref-accessible") {
				t.Fatalf("checks %v", resp.GetChecks())
			}
		})
	}
}

// A workload, or a team's admin, may not diagnose the server.
func TestDiagnoseNeedsAdminOnEverything(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	lead := issueFor(t, e, "/payments/lead")
	if _, err := e.store.PutPolicy(ctx, store.Policy{Name: "lead", Subject: lead.ID().String(), Verbs: []string{"admin"}, Objects: []string{"payments/*"}}, store.Precondition{}); err != nil {
		t.Fatal(err)
	}
	if err := e.engine.Load(ctx); err != nil {
		t.Fatal(err)
	}
	for _, who := range []struct {
		name string
		dial func() spv1.DoctorServiceClient
	}{
		{"workload", func() spv1.DoctorServiceClient { return spv1.NewDoctorServiceClient(e.dial(t, e.workload)) }},
		{"team admin", func() spv1.DoctorServiceClient { return spv1.NewDoctorServiceClient(e.dial(t, lead)) }},
	} {
		t.Run(who.name, func(t *testing.T) {
			_, err := who.dial().Diagnose(ctx, &spv1.DiagnoseRequest{})
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("got %v, want PermissionDenied", err)
			}
		})
	}
}
