package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/events"
	"github.com/secretplane/secretplane/controlplane/validate"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/sqlite"
)

func newCatalog(t *testing.T) *catalog.Catalog {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return catalog.New(s)
}

func violations(err error) map[string]string {
	var verr *validate.Error
	out := map[string]string{}
	if errors.As(err, &verr) {
		for _, v := range verr.Violations {
			out[v.Field] = v.Description
		}
	}
	return out
}

func TestPutSecretNormalisesAndValidates(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	out, created, err := c.PutSecret(ctx, store.Secret{Name: "payments/db", Ref: "VAULT://secret/payments/db?version=2#password", Revision: 99}, catalog.Write{})
	if err != nil || !created {
		t.Fatal(err, created)
	}
	if out.Ref != "vault://secret/payments/db?version=2#password" || out.Revision == 99 || out.Kind != "generic" {
		t.Fatalf("not normalised: %+v", out)
	}
	_, created, err = c.PutSecret(ctx, store.Secret{Name: "payments/db", Ref: "vault://secret/payments/db#password"}, catalog.Write{})
	if err != nil || created {
		t.Fatalf("replace: created=%v err=%v", created, err)
	}
	if _, _, err := c.PutSecret(ctx, store.Secret{Name: "gw/tls", Ref: "local://gw#tls", Kind: "tls_certificate"}, catalog.Write{}); err != nil {
		t.Fatal(err)
	}
	if k, err := c.LookupKind(ctx, "gw/tls"); err != nil || k != "tls_certificate" {
		t.Fatalf("kind %q %v", k, err)
	}
	_, _, err = c.PutSecret(ctx, store.Secret{Name: "Bad//Name", Ref: "nope", Owner: "ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT", Kind: "certificate"}, catalog.Write{})
	v := violations(err)
	for _, f := range []string{"name", "ref", "owner", "kind"} {
		if v[f] == "" {
			t.Errorf("no violation for %s: %v", f, err)
		}
	}
	if _, _, err := c.PutSecret(ctx, store.Secret{Name: "a/b", Ref: "local://x"}, catalog.Write{CreateOnly: true, IfRevision: 3}); violations(err)["etag"] == "" {
		t.Errorf("create_only with etag accepted: %v", err)
	}
}

func TestPutConfigChecksEntries(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	doc := store.ConfigDocument{
		Name:     "payments/api",
		Identity: "spiffe://example.org/payments/api",
		Entries: []store.ConfigEntry{
			{Key: "Z_LAST", Literal: "1"},
			{Key: "DB", Ref: "vault://secret/db#password"},
			{Key: "A_FIRST", Literal: "db.internal"},
		},
	}
	out, _, err := c.PutConfig(ctx, doc, catalog.Write{})
	if err != nil {
		t.Fatal(err)
	}
	if keys := []string{out.Entries[0].Key, out.Entries[1].Key, out.Entries[2].Key}; strings.Join(keys, ",") != "A_FIRST,DB,Z_LAST" {
		t.Fatalf("entries not sorted: %v", keys)
	}
	bad := store.ConfigDocument{
		Name:     "payments/api",
		Identity: "not-a-spiffe-id",
		Entries: []store.ConfigEntry{
			{Key: "1BAD", Literal: "x"},
			{Key: "TOKEN", Literal: "ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT"},
			{Key: "REFLIKE", Literal: "vault://secret/a#b"},
			{Key: "BOTH", Literal: "x", Ref: "vault://secret/a#b"},
			{Key: "TOKEN", Literal: "y"},
			{Key: "BADREF", Ref: "vault://u:pw@secret/a"},
			{Key: "BIG", Literal: strings.Repeat("x", catalog.MaxLiteralLen+1)},
		},
	}
	_, _, err = c.PutConfig(ctx, bad, catalog.Write{})
	v := violations(err)
	for _, f := range []string{"identity", "entries[0].key", "entries[1].literal", "entries[2].literal", "entries[3]", "entries[4].key", "entries[5].ref", "entries[6].literal"} {
		if v[f] == "" {
			t.Errorf("no violation for %s (got %v)", f, v)
		}
	}
	if strings.Contains(err.Error(), "ghp_") || strings.Contains(err.Error(), ":pw@") {
		t.Fatalf("error echoes a value: %v", err)
	}
	got, err := c.GetConfig(ctx, "payments/api")
	if err != nil || len(got.Entries) != 3 {
		t.Fatalf("refused put changed the document: %+v %v", got, err)
	}
}

func TestListPagesAndTokens(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	for _, n := range []string{"a/1", "a/2", "a/3", "b/1"} {
		if _, _, err := c.PutSecret(ctx, store.Secret{Name: n, Ref: "local://x"}, catalog.Write{}); err != nil {
			t.Fatal(err)
		}
	}
	page, next, err := c.ListSecrets(ctx, catalog.ListRequest{Prefix: "a/", PageSize: 2})
	if err != nil || len(page) != 2 || next == "" {
		t.Fatalf("first page: %d %q %v", len(page), next, err)
	}
	page, next, err = c.ListSecrets(ctx, catalog.ListRequest{Prefix: "a/", PageSize: 2, PageToken: next})
	if err != nil || len(page) != 1 || next != "" || page[0].Name != "a/3" {
		t.Fatalf("second page: %v %q %v", page, next, err)
	}
	for _, tok := range []string{"!!", "bm9wZQ", "cDEAYgBh"} {
		if _, _, err := c.ListSecrets(ctx, catalog.ListRequest{Prefix: "a/", PageToken: tok}); violations(err)["page_token"] == "" {
			t.Errorf("token %q accepted: %v", tok, err)
		}
	}
	if _, _, err := c.ListSecrets(ctx, catalog.ListRequest{PageSize: -1}); violations(err)["page_size"] == "" {
		t.Errorf("negative page size accepted: %v", err)
	}
}

func TestLookupRefCachesAndInvalidates(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	if _, _, err := c.PutSecret(ctx, store.Secret{Name: "a/b", Ref: "local://x#k"}, catalog.Write{}); err != nil {
		t.Fatal(err)
	}
	ref, err := c.LookupRef(ctx, "a/b")
	if err != nil || ref.String() != "local://x#k" {
		t.Fatalf("lookup: %s %v", ref, err)
	}
	if _, _, err := c.PutSecret(ctx, store.Secret{Name: "a/b", Ref: "local://y#k"}, catalog.Write{}); err != nil {
		t.Fatal(err)
	}
	if ref, _ := c.LookupRef(ctx, "a/b"); ref.String() != "local://y#k" {
		t.Fatalf("a write through the catalog did not invalidate: %s", ref)
	}
	if _, err := c.DeleteSecret(ctx, "a/b", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LookupRef(ctx, "a/b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted secret still resolvable: %v", err)
	}
}

// A lookup racing a put never keeps the binding the put replaced: after
// each put returns, the next lookup on this replica sees its ref, however
// many lookups ran meanwhile.
func TestPutRacingLookupsNeverCachesTheOldRef(t *testing.T) {
	c := newCatalog(t)
	ctx := context.Background()
	if _, _, err := c.PutSecret(ctx, store.Secret{Name: "payments/db", Ref: "local://payments/v0#k"}, catalog.Write{}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					_, _ = c.LookupRef(ctx, "payments/db")
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	for i := 1; i <= 200; i++ {
		want := fmt.Sprintf("local://payments/v%d#k", i)
		if _, _, err := c.PutSecret(ctx, store.Secret{Name: "payments/db", Ref: want}, catalog.Write{}); err != nil {
			t.Fatal(err)
		}
		ref, err := c.LookupRef(ctx, "payments/db")
		if err != nil || ref.String() != want {
			t.Fatalf("put %d: lookup returned %s (%v), want %s", i, ref, err, want)
		}
	}
}

// The catalog tells the bus what changed, once the store has it.
func TestCatalogPublishesChanges(t *testing.T) {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bus := events.New()
	sub := bus.Subscribe("test", 16)
	c := catalog.New(s, catalog.WithEvents(bus))
	ctx := context.Background()
	steps := []func() error{
		func() error {
			_, _, err := c.PutSecret(ctx, store.Secret{Name: "a/b", Ref: "local://a/b#k"}, catalog.Write{})
			return err
		},
		func() error {
			_, _, err := c.PutSecret(ctx, store.Secret{Name: "a/b", Ref: "local://a/b#k", Owner: "team"}, catalog.Write{})
			return err
		},
		func() error {
			_, _, err := c.PutSecret(ctx, store.Secret{Name: "a/b", Ref: "local://a/c#k"}, catalog.Write{})
			return err
		},
		func() error { _, err := c.DeleteSecret(ctx, "a/b", 0); return err },
		func() error { _, err := c.DeleteSecret(ctx, "a/b", 0); return err }, // not found: no event
	}
	for i, step := range steps {
		if err := step(); err != nil && i != 4 {
			t.Fatal(err)
		}
	}
	want := []events.Event{
		events.SecretPut{Name: "a/b", Ref: "local://a/b#k", Created: true},
		events.SecretPut{Name: "a/b", Ref: "local://a/b#k"},
		events.SecretRebound{Name: "a/b", OldRef: "local://a/b#k", NewRef: "local://a/c#k"},
		events.SecretDeleted{Name: "a/b", Ref: "local://a/c#k"},
	}
	for i, w := range want {
		select {
		case got := <-sub.C():
			if got != w {
				t.Fatalf("event %d: %+v, want %+v", i, got, w)
			}
		default:
			t.Fatalf("event %d missing; want %+v", i, w)
		}
	}
	select {
	case got := <-sub.C():
		t.Fatalf("extra event %+v", got)
	default:
	}
}
