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

func testPolicyLifecycle(t *testing.T, s store.Store) {
	c := ctx(t)
	p := store.Policy{Name: "payments-read", Description: "payments API reads its secrets", Subject: "spiffe://example.org/payments/api",
		Verbs: []string{"read", "watch"}, Objects: []string{"payments/*", "shared/tls"}}
	created, err := s.PutPolicy(c, p, store.Precondition{MustNotExist: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetPolicy(c, "payments-read")
	if err != nil || !reflect.DeepEqual(got, created) || !reflect.DeepEqual(got.Verbs, p.Verbs) || !reflect.DeepEqual(got.Objects, p.Objects) {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := s.PutPolicy(c, p, store.Precondition{IfRevision: created.Revision + 100}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale update: %v", err)
	}
	list, err := s.ListPolicies(c, store.ListQuery{Limit: 10})
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	if err := s.DeletePolicy(c, "payments-read", store.Precondition{IfRevision: created.Revision}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPolicy(c, "payments-read"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

// chain fills in Seq and hashes the way a writer would (the real hash is
// controlplane/audit's; the store only keeps what it is given).
func chain(head store.AuditChainHead, n int, actor string) []store.AuditEvent {
	out := make([]store.AuditEvent, n)
	prev := head.Hash
	for i := range out {
		seq := head.Seq + int64(i) + 1
		out[i] = store.AuditEvent{Seq: seq, Time: time.Now().UTC().Truncate(time.Microsecond), Actor: actor, Action: "test.append", Target: fmt.Sprint(seq),
			Decision: "allow", Outcome: "ok", RequestID: "r", PrevHash: prev, Hash: fmt.Sprintf("h%d", seq)}
		if seq%2 == 0 { // what it acted on, kept like every other field
			out[i].Ref, out[i].Refused = "vault://secret/a/b#c", fmt.Sprintf("x/%d", seq)
		}
		prev = out[i].Hash
	}
	return out
}

func testAuditAppendQuery(t *testing.T, s store.Store) {
	c := ctx(t)
	var appended []store.AuditEvent
	for i := 0; i < 3; i++ {
		err := s.AppendAudit(c, func(head store.AuditChainHead) ([]store.AuditEvent, error) {
			evs := chain(head, 4, fmt.Sprintf("actor-%d", i%2))
			appended = append(appended, evs...)
			return evs, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// A failing writer appends nothing and leaves the head alone.
	boom := errors.New("boom")
	if err := s.AppendAudit(c, func(head store.AuditChainHead) ([]store.AuditEvent, error) {
		return chain(head, 2, "x"), boom
	}); !errors.Is(err, boom) {
		t.Fatalf("failing writer: %v", err)
	}
	// A context that ends after the chain head is read, before any row
	// is written, appends nothing either (store/sqlite ends one part-way
	// through a batch).
	cc, cancel := context.WithCancel(c)
	if err := s.AppendAudit(cc, func(head store.AuditChainHead) ([]store.AuditEvent, error) {
		cancel()
		return chain(head, 2, "x"), nil
	}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled writer: %v", err)
	}
	all, err := s.QueryAudit(c, store.AuditQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(all, appended) {
		t.Fatalf("query returned %d events, differing from the %d appended", len(all), len(appended))
	}
	newest, err := s.QueryAudit(c, store.AuditQuery{Limit: 2, Newest: true})
	if err != nil || len(newest) != 2 || newest[0].Seq != 11 || newest[1].Seq != 12 {
		t.Fatalf("newest: %+v %v", newest, err)
	}
	byActor, err := s.QueryAudit(c, store.AuditQuery{Actor: "actor-1", Limit: 100})
	if err != nil || len(byActor) != 4 {
		t.Fatalf("by actor: %d %v", len(byActor), err)
	}
	after, err := s.QueryAudit(c, store.AuditQuery{AfterSeq: 10, Limit: 100})
	if err != nil || len(after) != 2 {
		t.Fatalf("after: %d %v", len(after), err)
	}
	if _, err := s.QueryAudit(c, store.AuditQuery{}); err == nil {
		t.Fatal("limit 0 accepted")
	}
	// A large batch (more rows than one multi-row statement takes) lands
	// whole and in order.
	var big []store.AuditEvent
	if err := s.AppendAudit(c, func(head store.AuditChainHead) ([]store.AuditEvent, error) {
		big = chain(head, 600, "bulk")
		return big, nil
	}); err != nil {
		t.Fatal(err)
	}
	got, err := s.QueryAudit(c, store.AuditQuery{Actor: "bulk", Limit: 1000})
	if err != nil || !reflect.DeepEqual(got, big) {
		t.Fatalf("large batch: %d of %d events back, err %v", len(got), len(big), err)
	}
}

// Concurrent appenders (think replicas) extend one gap-free chain.
func testAuditConcurrentAppends(t *testing.T, s store.Store) {
	c := ctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				if err := s.AppendAudit(c, func(head store.AuditChainHead) ([]store.AuditEvent, error) {
					return chain(head, 3, fmt.Sprintf("w%d", w)), nil
				}); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all, err := s.QueryAudit(c, store.AuditQuery{Limit: 1000})
	if err != nil || len(all) != 8*5*3 {
		t.Fatalf("%d events, %v", len(all), err)
	}
	for i, e := range all {
		if e.Seq != int64(i+1) || (i > 0 && e.PrevHash != all[i-1].Hash) {
			t.Fatalf("chain broken at %d: %+v", i, e)
		}
	}
}

func testConsumers(t *testing.T, s store.Store) {
	c := ctx(t)
	at := func(sec int) time.Time { return time.Unix(1_800_000_000+int64(sec), 0).UTC() }
	api, worker := "spiffe://example.org/payments/api", "spiffe://example.org/payments/worker"
	if got, err := s.ListConsumers(c, "payments/db"); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v %v", got, err)
	}
	// Two replicas report out of order; the merge keeps the earliest first
	// sighting, the newest sighting's version and the newest ack.
	steps := [][]store.Consumer{
		{{Secret: "payments/db", Identity: api, Channel: "watch", FirstSeen: at(10), LastSeen: at(20), Version: "3", AckedVersion: "3", AckTime: at(20)},
			{Secret: "payments/db", Identity: worker, Channel: "resolve", FirstSeen: at(5), LastSeen: at(5), Version: "3"},
			{Secret: "other/x", Identity: api, Channel: "resolve", FirstSeen: at(1), LastSeen: at(1), Version: "1"}},
		{{Secret: "payments/db", Identity: api, Channel: "watch", FirstSeen: at(2), LastSeen: at(15), Version: "2", AckedVersion: "2", AckTime: at(15)}},
		{{Secret: "payments/db", Identity: api, Channel: "watch", FirstSeen: at(30), LastSeen: at(30), Version: "4", AckedVersion: "3", AckError: "bad key", AckTime: at(30)},
			{Secret: "payments/db", Identity: api, Channel: "resolve", FirstSeen: at(31), LastSeen: at(31), Version: "4"}},
		// Two Envoys sharing one identity are two consumers.
		{{Secret: "payments/db", Identity: worker, Channel: "sds", Node: "gw-a", FirstSeen: at(40), LastSeen: at(40), Version: "5", AckedVersion: "5", AckTime: at(40)},
			{Secret: "payments/db", Identity: worker, Channel: "sds", Node: "gw-b", FirstSeen: at(41), LastSeen: at(41), Version: "5"}},
	}
	for _, cs := range steps {
		if err := s.UpsertConsumers(c, cs); err != nil {
			t.Fatal(err)
		}
	}
	want := []store.Consumer{
		{Secret: "payments/db", Identity: api, Channel: "resolve", FirstSeen: at(31), LastSeen: at(31), Version: "4"},
		{Secret: "payments/db", Identity: api, Channel: "watch", FirstSeen: at(2), LastSeen: at(30), Version: "4", AckedVersion: "3", AckError: "bad key", AckTime: at(30)},
		{Secret: "payments/db", Identity: worker, Channel: "resolve", FirstSeen: at(5), LastSeen: at(5), Version: "3"},
		{Secret: "payments/db", Identity: worker, Channel: "sds", Node: "gw-a", FirstSeen: at(40), LastSeen: at(40), Version: "5", AckedVersion: "5", AckTime: at(40)},
		{Secret: "payments/db", Identity: worker, Channel: "sds", Node: "gw-b", FirstSeen: at(41), LastSeen: at(41), Version: "5"},
	}
	got, err := s.ListConsumers(c, "payments/db")
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("consumers:\n got %+v %v\nwant %+v", got, err, want)
	}
	// Large batches span several statements.
	many := make([]store.Consumer, 450)
	for i := range many {
		many[i] = store.Consumer{Secret: "bulk/s", Identity: fmt.Sprintf("spiffe://example.org/w/%03d", i), Channel: "resolve", FirstSeen: at(1), LastSeen: at(1)}
	}
	if err := s.UpsertConsumers(c, many); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ListConsumers(c, "bulk/s"); err != nil || len(got) != 450 || got[0].Identity != many[0].Identity {
		t.Fatalf("bulk: %d %v", len(got), err)
	}
}

func testRotations(t *testing.T, s store.Store) {
	c := ctx(t)
	r := store.Rotation{ID: "rot-1", Secret: "payments/db", Ref: "local://payments/db#v", Method: "random", State: "pending",
		Actor: "spiffe://example.org/ops/admin", FromVersion: "3", Deadline: time.Unix(1_800_000_100, 0).UTC()}
	created, err := s.CreateRotation(c, r)
	if err != nil || created.CreateTime.IsZero() || created.Trigger != "manual" {
		t.Fatalf("create: %+v %v", created, err)
	}
	// One active rotation per secret; other secrets are free.
	if _, err := s.CreateRotation(c, store.Rotation{ID: "rot-2", Secret: "payments/db", State: "pending"}); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("second active rotation: %v", err)
	}
	if _, err := s.CreateRotation(c, store.Rotation{ID: "rot-3", Secret: "billing/db", State: "pending"}); err != nil {
		t.Fatal(err)
	}
	// Advancing needs the state it was in.
	next := created
	next.State, next.ToVersion, next.Detail = "propagating", "4", "pushing"
	got, err := s.UpdateRotation(c, next, "pending")
	if err != nil || got.State != "propagating" || got.ToVersion != "4" || got.Detail != "pushing" || got.FromVersion != "3" || !got.Deadline.Equal(r.Deadline) || got.Emergency {
		t.Fatalf("update: %+v %v", got, err)
	}
	if _, err := s.UpdateRotation(c, next, "pending"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale update: %v", err)
	}
	if _, err := s.UpdateRotation(c, store.Rotation{ID: "nope", State: "failed"}, "pending"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of a missing rotation: %v", err)
	}
	active, err := s.ListRotations(c, store.RotationQuery{Secret: "payments/db", ActiveOnly: true, Limit: 10})
	if err != nil || len(active) != 1 || active[0].ID != "rot-1" {
		t.Fatalf("active: %+v %v", active, err)
	}
	// Once final, a new rotation of the secret may start.
	next.State = "completed"
	if _, err := s.UpdateRotation(c, next, "propagating"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateRotation(c, store.Rotation{ID: "rot-4", Secret: "payments/db", State: "pending"}); err != nil {
		t.Fatalf("new rotation after completion: %v", err)
	}
	all, err := s.ListRotations(c, store.RotationQuery{Secret: "payments/db", Limit: 10})
	if err != nil || len(all) != 2 {
		t.Fatalf("all: %+v %v", all, err)
	}
	if active, _ := s.ListRotations(c, store.RotationQuery{ActiveOnly: true, Limit: 10}); len(active) != 2 {
		t.Fatalf("active across secrets: %+v", active)
	}
	if _, err := s.GetRotation(c, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if _, err := s.ListRotations(c, store.RotationQuery{}); err == nil {
		t.Fatal("list without a limit accepted")
	}
}

func testDeliveries(t *testing.T, s store.Store) {
	c := ctx(t)
	at := func(sec int) time.Time { return time.Unix(1_800_000_000+int64(sec), 0).UTC() }
	ds := []store.Delivery{
		{ID: "ev1/hook-a", Webhook: "hook-a", EventType: "io.secretplane.rotation.completed", Body: []byte(`{"id":"ev1"}`), NextAttempt: at(0)},
		{ID: "ev1/hook-b", Webhook: "hook-b", EventType: "io.secretplane.rotation.completed", Body: []byte(`{"id":"ev1"}`), NextAttempt: at(5)},
	}
	if err := s.EnqueueDeliveries(c, ds); err != nil {
		t.Fatal(err)
	}
	if err := s.EnqueueDeliveries(c, ds[:1]); err != nil { // again: left as it is
		t.Fatal(err)
	}
	due, err := s.DueDeliveries(c, at(1), 10)
	if err != nil || len(due) != 1 || due[0].ID != "ev1/hook-a" || due[0].State != "pending" || string(due[0].Body) != `{"id":"ev1"}` {
		t.Fatalf("due: %+v %v", due, err)
	}
	d := due[0]
	d.State, d.Attempts, d.LastError, d.NextAttempt = "pending", 1, "HTTP 500", at(10)
	if err := s.UpdateDelivery(c, d); err != nil {
		t.Fatal(err)
	}
	if due, _ := s.DueDeliveries(c, at(6), 10); len(due) != 1 || due[0].ID != "ev1/hook-b" {
		t.Fatalf("due after a failed attempt: %+v", due)
	}
	d.State = "dead"
	if err := s.UpdateDelivery(c, d); err != nil {
		t.Fatal(err)
	}
	if due, _ := s.DueDeliveries(c, at(100), 10); len(due) != 1 {
		t.Fatalf("a dead delivery is due: %+v", due)
	}
	all, err := s.ListDeliveries(c, "hook-a", 10)
	if err != nil || len(all) != 1 || all[0].State != "dead" || all[0].Attempts != 1 || all[0].LastError != "HTTP 500" {
		t.Fatalf("list: %+v %v", all, err)
	}
	if all, _ := s.ListDeliveries(c, "", 10); len(all) != 2 {
		t.Fatalf("list all: %+v", all)
	}
	if err := s.UpdateDelivery(c, store.Delivery{ID: "missing"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of a missing delivery: %v", err)
	}
}

func testRotationPolicies(t *testing.T, s store.Store) {
	c := ctx(t)
	if _, err := s.GetRotationPolicy(c, "web/tls"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get before put: %v", err)
	}
	p := store.RotationPolicy{Secret: "web/tls", Method: "certificate", Params: map[string]string{"issuer": "vault", "path": "pki/issue/web"},
		Every: 720 * time.Hour, Window: "02:00-04:00", RenewAt: 2.0 / 3}
	created, err := s.PutRotationPolicy(c, p)
	if err != nil || created.CreateTime.IsZero() || created.Every != p.Every || created.Window != p.Window || created.RenewAt != p.RenewAt ||
		!reflect.DeepEqual(created.Params, p.Params) {
		t.Fatalf("put: %+v %v", created, err)
	}
	p.Method, p.Params, p.Every, p.Window, p.RenewAt = "random", nil, 0, "", 0
	time.Sleep(2 * time.Millisecond)
	replaced, err := s.PutRotationPolicy(c, p)
	if err != nil || replaced.Method != "random" || replaced.Params != nil || replaced.Every != 0 || !replaced.CreateTime.Equal(created.CreateTime) || !replaced.UpdateTime.After(created.UpdateTime) {
		t.Fatalf("replace: %+v %v", replaced, err)
	}
	if _, err := s.PutRotationPolicy(c, store.RotationPolicy{Secret: "x"}); err == nil {
		t.Fatal("a policy without a method was stored")
	}
	for _, name := range []string{"a/1", "b/2", "c/3"} {
		if _, err := s.PutRotationPolicy(c, store.RotationPolicy{Secret: name, Method: "random"}); err != nil {
			t.Fatal(err)
		}
	}
	page, err := s.ListRotationPolicies(c, "", 2)
	if err != nil || len(page) != 2 || page[0].Secret != "a/1" || page[1].Secret != "b/2" {
		t.Fatalf("first page: %+v %v", page, err)
	}
	page, err = s.ListRotationPolicies(c, "b/2", 10)
	if err != nil || len(page) != 2 || page[0].Secret != "c/3" || page[1].Secret != "web/tls" {
		t.Fatalf("second page: %+v %v", page, err)
	}
	if _, err := s.ListRotationPolicies(c, "", 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
	if err := s.DeleteRotationPolicy(c, "web/tls"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRotationPolicy(c, "web/tls"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	r, err := s.CreateRotation(c, store.Rotation{ID: "rot-x", Secret: "web/tls", State: "pending", Trigger: "expiry"})
	if err != nil || r.Trigger != "expiry" {
		t.Fatalf("trigger: %+v %v", r, err)
	}
	if got, err := s.GetRotation(c, "rot-x"); err != nil || got.Trigger != "expiry" {
		t.Fatalf("trigger read back: %+v %v", got, err)
	}
}
