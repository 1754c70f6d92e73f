package api_test

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func TestListPagination(t *testing.T) {
	e := newEnv(t)
	c := e.adminClient(t)
	ctx := ctxT(t)
	const n = 23
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("team-%d/svc-%02d", i%2, i)
		if _, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: "vault://secret/" + name + "#password"}}); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		prefix   string
		pageSize int32
		want     int
	}{
		{"", 1, n}, {"", 5, n}, {"", 100, n}, {"team-0/", 4, 12}, {"team-1/svc-1", 2, 5}, {"none/", 3, 0},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("prefix=%q/size=%d", tc.prefix, tc.pageSize), func(t *testing.T) {
			var names []string
			token := ""
			for pages := 0; ; pages++ {
				if pages > n+1 {
					t.Fatal("pagination does not terminate")
				}
				resp, err := c.ListSecrets(ctx, &spv1.ListSecretsRequest{Prefix: tc.prefix, PageSize: tc.pageSize, PageToken: token})
				if err != nil {
					t.Fatal(err)
				}
				if len(resp.GetSecrets()) > int(tc.pageSize) {
					t.Fatalf("page of %d exceeds page_size %d", len(resp.GetSecrets()), tc.pageSize)
				}
				for _, s := range resp.GetSecrets() {
					names = append(names, s.GetName())
				}
				if token = resp.GetNextPageToken(); token == "" {
					break
				}
			}
			if len(names) != tc.want {
				t.Fatalf("got %d names, want %d: %v", len(names), tc.want, names)
			}
			for i := 1; i < len(names); i++ {
				if names[i-1] >= names[i] {
					t.Fatalf("not strictly ordered: %q then %q", names[i-1], names[i])
				}
			}
		})
	}
	t.Run("token bound to its prefix", func(t *testing.T) {
		resp, err := c.ListSecrets(ctx, &spv1.ListSecretsRequest{Prefix: "team-0/", PageSize: 2})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.ListSecrets(ctx, &spv1.ListSecretsRequest{Prefix: "team-1/", PageSize: 2, PageToken: resp.GetNextPageToken()})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("got %v, want InvalidArgument", err)
		}
	})
}

// Conditional writes: an etag from a read makes the write conditional; a
// second writer with the same etag loses with Aborted.
func TestOptimisticConcurrency(t *testing.T) {
	e := newEnv(t)
	c := e.adminClient(t)
	ctx := ctxT(t)
	created, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/payments/db#password"}, CreateOnly: true})
	if err != nil || !created.GetCreated() {
		t.Fatalf("create: %v %v", created, err)
	}
	got, err := c.GetSecret(ctx, &spv1.GetSecretRequest{Name: "payments/db"})
	if err != nil {
		t.Fatal(err)
	}
	got.Owner = "team-a"
	first, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: got})
	if err != nil || first.GetCreated() {
		t.Fatalf("first conditional update: %v %v", first, err)
	}
	got.Owner = "team-b"
	if _, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: got}); status.Code(err) != codes.Aborted {
		t.Fatalf("second writer with a stale etag: got %v, want Aborted", err)
	}
	final, err := c.GetSecret(ctx, &spv1.GetSecretRequest{Name: "payments/db"})
	if err != nil || final.GetOwner() != "team-a" || final.GetEtag() != first.GetSecret().GetEtag() {
		t.Fatalf("final state: %v %v", final, err)
	}
	if !final.GetCreateTime().AsTime().Equal(created.GetSecret().GetCreateTime().AsTime()) {
		t.Fatal("create_time changed on update")
	}
	// A deleted and re-created secret never matches an old etag.
	if _, err := c.DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: "payments/db", Etag: final.GetEtag()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "vault://secret/payments/db#password"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: "payments/db", Etag: final.GetEtag()}); status.Code(err) != codes.Aborted {
		t.Fatalf("old etag against a re-created secret: got %v, want Aborted", err)
	}
}
