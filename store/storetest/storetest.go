// Package storetest is the conformance suite that every store.Store
// implementation passes. Backends call Run from their tests.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/secretplane/secretplane/store"
)

// Opener returns a fresh, empty store for one subtest.
type Opener func(t *testing.T) store.Store

// Run runs the conformance suite.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"SecretLifecycle", testSecretLifecycle},
		{"ConfigLifecycle", testConfigLifecycle},
		{"Preconditions", testPreconditions},
		{"RevisionsIncreaseAcrossKinds", testRevisions},
		{"RoundTripExact", testRoundTrip},
		{"ListPagination", testListPagination},
		{"ListPrefixIsLiteral", testListPrefixLiteral},
		{"ConcurrentConditionalUpdates", testConcurrentConditional},
		{"ConcurrentCreates", testConcurrentCreates},
		{"CanceledContext", testCanceledContext},
		{"InvalidListLimit", testInvalidLimit},
		{"PolicyLifecycle", testPolicyLifecycle},
		{"AuditAppendQuery", testAuditAppendQuery},
		{"AuditConcurrentAppends", testAuditConcurrentAppends},
		{"Consumers", testConsumers},
		{"Rotations", testRotations},
		{"RotationPolicies", testRotationPolicies},
		{"Deliveries", testDeliveries},
		{"DeliveryReads", testDeliveryReads},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			tc.fn(t, s)
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func secret(name string) store.Secret {
	return store.Secret{Name: name, Ref: "vault://secret/" + name + "#password", Owner: "team-a", Description: "db password", Labels: map[string]string{"team": "a"}, Kind: "tls_certificate"}
}

func testSecretLifecycle(t *testing.T, s store.Store) {
	c := ctx(t)
	created, err := s.PutSecret(c, secret("payments/db"), store.Precondition{MustNotExist: true})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if created.Revision <= 0 || created.CreateTime.IsZero() || !created.CreateTime.Equal(created.UpdateTime) {
		t.Fatalf("create metadata: %+v", created)
	}
	got, err := s.GetSecret(c, "payments/db")
	if err != nil || !reflect.DeepEqual(got, created) {
		t.Fatalf("get after create: %+v, %v; want %+v", got, err, created)
	}
	upd := created
	upd.Owner, upd.Required = "team-b", true
	time.Sleep(2 * time.Millisecond)
	updated, err := s.PutSecret(c, upd, store.Precondition{IfRevision: created.Revision})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if updated.Revision <= created.Revision || !updated.CreateTime.Equal(created.CreateTime) || !updated.UpdateTime.After(created.UpdateTime) {
		t.Fatalf("update metadata: %+v after %+v", updated, created)
	}
	got, _ = s.GetSecret(c, "payments/db")
	if got.Owner != "team-b" || !got.Required || !reflect.DeepEqual(got, updated) {
		t.Fatalf("get after update: %+v", got)
	}
	byRef, err := s.SecretsByRef(c, created.Ref)
	if err != nil || len(byRef) != 1 || byRef[0].Name != "payments/db" {
		t.Fatalf("by ref: %+v %v", byRef, err)
	}
	if none, err := s.SecretsByRef(c, "vault://secret/none#x"); err != nil || len(none) != 0 {
		t.Fatalf("by unknown ref: %+v %v", none, err)
	}
	if err := s.DeleteSecret(c, "payments/db", store.Precondition{}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.GetSecret(c, "payments/db"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := s.DeleteSecret(c, "payments/db", store.Precondition{}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete of missing: %v", err)
	}
}

func testConfigLifecycle(t *testing.T, s store.Store) {
	c := ctx(t)
	doc := store.ConfigDocument{
		Name:     "payments/api",
		Identity: "spiffe://example.org/payments/api",
		Entries: []store.ConfigEntry{
			{Key: "DB_HOST", Literal: "db.internal"},
			{Key: "DB_PASSWORD", Ref: "vault://secret/payments/db#password"},
		},
		Labels: map[string]string{"team": "payments"},
	}
	created, err := s.PutConfig(c, doc, store.Precondition{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetConfig(c, "payments/api")
	if err != nil || !reflect.DeepEqual(got, created) {
		t.Fatalf("get: %+v, %v; want %+v", got, err, created)
	}
	if !reflect.DeepEqual(got.Entries, doc.Entries) {
		t.Fatalf("entries: %+v", got.Entries)
	}
	if _, err := s.PutConfig(c, doc, store.Precondition{MustNotExist: true}); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("create-only over existing: %v", err)
	}
	if err := s.DeleteConfig(c, "payments/api", store.Precondition{IfRevision: created.Revision + 1000}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete with stale revision: %v", err)
	}
	if err := s.DeleteConfig(c, "payments/api", store.Precondition{IfRevision: created.Revision}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetConfig(c, "payments/api"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func testPreconditions(t *testing.T, s store.Store) {
	c := ctx(t)
	base, err := s.PutSecret(c, secret("a/b"), store.Precondition{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		put     store.Secret
		pre     store.Precondition
		wantErr error
	}{
		{"create-only on existing", secret("a/b"), store.Precondition{MustNotExist: true}, store.ErrAlreadyExists},
		{"if-revision on missing", secret("a/missing"), store.Precondition{IfRevision: base.Revision}, store.ErrNotFound},
		{"if-revision stale", secret("a/b"), store.Precondition{IfRevision: base.Revision + 1000}, store.ErrConflict},
		{"unconditional on missing creates", secret("a/new"), store.Precondition{}, nil},
		{"create-only on missing creates", secret("a/new2"), store.Precondition{MustNotExist: true}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.PutSecret(c, tc.put, tc.pre)
			if !errors.Is(err, tc.wantErr) && !(err == nil && tc.wantErr == nil) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
	// A refused write changed nothing.
	got, err := s.GetSecret(c, "a/b")
	if err != nil || !reflect.DeepEqual(got, base) {
		t.Fatalf("after refused writes: %+v, %v", got, err)
	}
	if _, err := s.GetSecret(c, "a/missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("refused conditional write created the object: %v", err)
	}
}

func testRevisions(t *testing.T, s store.Store) {
	c := ctx(t)
	var last int64
	for i := 0; i < 5; i++ {
		sec, err := s.PutSecret(c, secret(fmt.Sprintf("r/%d", i%2)), store.Precondition{})
		if err != nil {
			t.Fatal(err)
		}
		doc, err := s.PutConfig(c, store.ConfigDocument{Name: fmt.Sprintf("r/%d", i%2)}, store.Precondition{})
		if err != nil {
			t.Fatal(err)
		}
		if sec.Revision <= last || doc.Revision <= sec.Revision {
			t.Fatalf("revisions not increasing: last %d, secret %d, config %d", last, sec.Revision, doc.Revision)
		}
		last = doc.Revision
	}
	// A deleted and re-created object gets a revision never used before.
	if err := s.DeleteSecret(c, "r/0", store.Precondition{}); err != nil {
		t.Fatal(err)
	}
	again, err := s.PutSecret(c, secret("r/0"), store.Precondition{})
	if err != nil || again.Revision <= last {
		t.Fatalf("re-created revision %d not above %d (%v)", again.Revision, last, err)
	}
}

func testRoundTrip(t *testing.T, s store.Store) {
	c := ctx(t)
	cases := []store.Secret{
		{Name: "empty/labels", Ref: "local://x"},
		{Name: "nil/labels", Ref: "local://x", Labels: map[string]string{}},
		{Name: "unicode/ünï", Ref: "local://x", Description: "Grüße, 秘密 ✓", Owner: "équipe", Labels: map[string]string{"k": "välue", "a/b.c-d": ""}},
		{Name: "quotes/x", Ref: `vault://secret/a#b`, Description: `it's "quoted" \ and 100% _under_`},
	}
	for _, in := range cases {
		t.Run(in.Name, func(t *testing.T) {
			out, err := s.PutSecret(c, in, store.Precondition{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.GetSecret(c, in.Name)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, out) {
				t.Fatalf("get %+v != put %+v", got, out)
			}
			if len(in.Labels) == 0 && got.Labels != nil {
				t.Fatalf("empty labels should read back as nil, got %#v", got.Labels)
			}
			if len(in.Labels) > 0 && !reflect.DeepEqual(got.Labels, in.Labels) {
				t.Fatalf("labels %v != %v", got.Labels, in.Labels)
			}
			if got.Description != in.Description || got.Owner != in.Owner || got.Ref != in.Ref {
				t.Fatalf("fields changed: %+v", got)
			}
		})
	}
	doc := store.ConfigDocument{Name: "cfg/empty"}
	out, err := s.PutConfig(c, doc, store.Precondition{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetConfig(c, "cfg/empty")
	if err != nil || got.Entries != nil || got.Labels != nil || !reflect.DeepEqual(got, out) {
		t.Fatalf("empty document: %+v %v", got, err)
	}
}

func testListPagination(t *testing.T, s store.Store) {
	c := ctx(t)
	const n = 250
	for i := 0; i < n; i++ {
		if _, err := s.PutSecret(c, secret(fmt.Sprintf("team-%d/svc-%03d", i%3, i)), store.Precondition{}); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			if _, err := s.PutConfig(c, store.ConfigDocument{Name: fmt.Sprintf("cfg-%03d", i)}, store.Precondition{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, size := range []int{1, 7, 100, 1000} {
		for _, prefix := range []string{"", "team-1/", "team-2/svc-1"} {
			t.Run(fmt.Sprintf("size=%d/prefix=%q", size, prefix), func(t *testing.T) {
				var names []string
				after := ""
				for {
					page, err := s.ListSecrets(c, store.ListQuery{Prefix: prefix, After: after, Limit: size})
					if err != nil {
						t.Fatal(err)
					}
					for _, p := range page {
						names = append(names, p.Name)
					}
					if len(page) < size {
						break
					}
					after = page[len(page)-1].Name
				}
				want := 0
				for i := 0; i < n; i++ {
					if name := fmt.Sprintf("team-%d/svc-%03d", i%3, i); len(name) >= len(prefix) && name[:len(prefix)] == prefix {
						want++
					}
				}
				if len(names) != want {
					t.Fatalf("listed %d, want %d", len(names), want)
				}
				for i := 1; i < len(names); i++ {
					if names[i-1] >= names[i] {
						t.Fatalf("order: %q before %q", names[i-1], names[i])
					}
				}
			})
		}
	}
	docs, err := s.ListConfigs(c, store.ListQuery{Limit: 1000})
	if err != nil || len(docs) != n/10 {
		t.Fatalf("configs: %d, %v", len(docs), err)
	}
}

func testListPrefixLiteral(t *testing.T, s store.Store) {
	c := ctx(t)
	for _, name := range []string{"a%b/x", "a_b/x", "axb/x", "a%c/x", "ab/x", "a/x"} {
		if _, err := s.PutSecret(c, secret(name), store.Precondition{}); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		prefix string
		want   []string
	}{
		{"a%", []string{"a%b/x", "a%c/x"}},
		{"a_", []string{"a_b/x"}},
		{"a%b", []string{"a%b/x"}},
		{"ab", []string{"ab/x"}},
	}
	for _, tc := range cases {
		page, err := s.ListSecrets(c, store.ListQuery{Prefix: tc.prefix, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range page {
			got = append(got, p.Name)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("prefix %q: got %v, want %v", tc.prefix, got, tc.want)
		}
	}
}

func testConcurrentConditional(t *testing.T, s store.Store) {
	c := ctx(t)
	base, err := s.PutSecret(c, secret("race/x"), store.Precondition{})
	if err != nil {
		t.Fatal(err)
	}
	const writers = 8
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		wins, conflicts int
		others          []error
	)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			upd := secret("race/x")
			upd.Owner = fmt.Sprintf("writer-%d", i)
			_, err := s.PutSecret(c, upd, store.Precondition{IfRevision: base.Revision})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrConflict):
				conflicts++
			default:
				others = append(others, err)
			}
		}(i)
	}
	wg.Wait()
	if wins != 1 || conflicts != writers-1 || len(others) > 0 {
		t.Fatalf("wins %d, conflicts %d, other errors %v", wins, conflicts, others)
	}
}

func testConcurrentCreates(t *testing.T, s store.Store) {
	c := ctx(t)
	const writers = 8
	var (
		wg            sync.WaitGroup
		mu            sync.Mutex
		wins, existed int
		others        []error
	)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.PutSecret(c, secret("race/new"), store.Precondition{MustNotExist: true})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrAlreadyExists):
				existed++
			default:
				others = append(others, err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || existed != writers-1 || len(others) > 0 {
		t.Fatalf("wins %d, already-exists %d, other errors %v", wins, existed, others)
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	c, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.PutSecret(c, secret("ctx/x"), store.Precondition{}); err == nil {
		t.Fatal("put with a canceled context succeeded")
	}
	if _, err := s.GetSecret(c, "ctx/x"); err == nil || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get with a canceled context: %v", err)
	}
	if _, err := s.GetSecret(ctx(t), "ctx/x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("canceled put wrote something: %v", err)
	}
}

func testInvalidLimit(t *testing.T, s store.Store) {
	if _, err := s.ListSecrets(ctx(t), store.ListQuery{Limit: 0}); err == nil {
		t.Fatal("limit 0 accepted")
	}
}
