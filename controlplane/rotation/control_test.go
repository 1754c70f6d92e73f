package rotation_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/envoysim"
	"github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/internal/testcert"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// Every format draws from its alphabet at the length asked; passwords hold
// every class; parameters that make no sense are refused by name.
func TestRandomFormats(t *testing.T) {
	alphabets := map[string]string{
		"":             "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
		"alphanumeric": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
		"hex":          "0123456789abcdef",
		"base64":       "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
		"base32":       "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
		"password":     "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#%+-.:=?@^_~",
	}
	for format, alphabet := range alphabets {
		for _, length := range []string{"", "16", "100"} {
			t.Run(format+"/"+length, func(t *testing.T) {
				params := map[string]string{}
				if format != "" {
					params["format"] = format
				}
				if length != "" {
					params["length"] = length
				}
				want := map[string]int{"": 32, "16": 16, "100": 100}[length]
				seen := map[string]bool{}
				for range 50 {
					v, err := rotation.Random{}.Next(context.Background(), rotation.Request{Params: params})
					if err != nil {
						t.Fatal(err)
					}
					if len(v) != want || strings.Trim(string(v), alphabet) != "" || seen[string(v)] {
						t.Fatalf("value of %d characters outside %q or repeated", len(v), alphabet)
					}
					seen[string(v)] = true
					if format == "password" {
						for _, class := range []string{"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "0123456789", "!#%+-.:=?@^_~"} {
							if !strings.ContainsAny(string(v), class) {
								t.Fatalf("a password lacks one of %q", class)
							}
						}
					}
				}
			})
		}
	}
	for _, tc := range []struct {
		params map[string]string
		want   string
	}{
		{map[string]string{"format": "emoji"}, "format"},
		{map[string]string{"length": "8"}, "length"},
		{map[string]string{"length": "lots"}, "length"},
		{map[string]string{"charset": "abc"}, "unknown parameter"},
	} {
		if err := (rotation.Random{}).Check(tc.params); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check(%v) = %v, want an error naming %s", tc.params, err, tc.want)
		}
	}
}

// A policy is refused, naming what is wrong, when its method, parameters,
// cadence, window or renewal point make no sense, or it names a secret
// that does not exist; nothing is stored then.
func TestPolicyBadInput(t *testing.T) {
	f := newFixture(t, nil)
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	m := f.srv.Rotations()
	for _, tc := range []struct {
		name string
		p    store.RotationPolicy
		want string
	}{
		{"unknown method", store.RotationPolicy{Method: "magic"}, "unknown rotation method"},
		{"bad param", store.RotationPolicy{Params: map[string]string{"length": "3"}}, "length"},
		{"a value as a param", store.RotationPolicy{Params: map[string]string{"format": "ghp_0123456789abcdefghijABCDEFGHIJ012345"}}, "looks like a secret value"},
		{"cadence too short", store.RotationPolicy{Every: 10 * time.Second}, "at least 1m0s"},
		{"window without cadence", store.RotationPolicy{Window: "02:00-04:00"}, "set every too"},
		{"bad window", store.RotationPolicy{Every: time.Hour, Window: "2-4"}, "HH:MM-HH:MM"},
		{"empty window", store.RotationPolicy{Every: time.Hour, Window: "02:00-02:00"}, "HH:MM-HH:MM"},
		{"renew_at past the end", store.RotationPolicy{RenewAt: 1.5}, "renew_at"},
		{"certificate without issuer", store.RotationPolicy{Method: "certificate", Params: map[string]string{"common_name": "gw"}}, "issuer"},
		{"unknown secret", store.RotationPolicy{Secret: "payments/none"}, "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.p.Secret == "" {
				tc.p.Secret = "payments/db"
			}
			_, err := m.SetPolicy(ctx, tc.p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "ghp_") {
				t.Fatalf("SetPolicy = %v, want an error naming %q (and no value)", err, tc.want)
			}
			if _, err := m.Policy(ctx, tc.p.Secret); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("a refused policy was stored: %v", err)
			}
		})
	}
	p, err := m.SetPolicy(ctx, store.RotationPolicy{Secret: "payments/db", Params: map[string]string{"format": "hex", "length": "64"}, Every: 720 * time.Hour, Window: "22:00-02:00"})
	if err != nil || p.Method != "random" {
		t.Fatalf("valid policy: %+v %v", p, err)
	}
	// A manual start takes the policy's method and parameters.
	r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Actor: "spiffe://" + td + "/ops/admin"})
	if err != nil {
		t.Fatal(err)
	}
	done := wait(t, m, r.ID)
	v, err := f.local.Read(ctx, secretref.MustParse("local://payments/db#v"))
	if err != nil || done.State != rotation.Completed || done.Trigger != "manual" || len(v.Data) != 64 || strings.Trim(string(v.Data), "0123456789abcdef") != "" {
		t.Fatalf("rotation %+v; new value of %d bytes (%v)", done, len(v.Data), err)
	}
}

// Cancel stops a rotation waiting for a consumer and puts every consumer
// back on the previous value; an ended rotation cannot be cancelled.
// Rollback of the newest completed rotation restores the previous value;
// a superseded one (a later rotation, or the backend moved on outside) is
// refused, naming the current version.
func TestCancelAndRollback(t *testing.T) {
	f := newFixture(t, func(c *server.Config) { c.Rotation.Deadline = time.Minute })
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	m := f.srv.Rotations()
	var applied atomic.Int64
	_, w := f.watcher(ctx, "/app/one", "payments/db", &applied)
	stuck := envoysim.New(f.dial("/app/stuck"), envoysim.Options{Mode: envoysim.SotW, NodeID: "stuck-1"})
	stuck.Subscribe(ctx, "payments/db")
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := stuck.Wait(wctx, "payments/db", nil); err != nil {
		t.Fatal(err)
	}
	stuck.Close() // seen, never acknowledges what follows
	admin := "spiffe://" + td + "/ops/admin"
	r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Actor: admin})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, m, r.ID, rotation.Verifying)
	cancelled, err := m.Cancel(ctx, r.ID, admin)
	if err != nil || cancelled.State != rotation.RolledBack || !strings.Contains(cancelled.Detail, "cancelled by "+admin+" in verifying") {
		t.Fatalf("cancel: %+v %v", cancelled, err)
	}
	valueIs := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if got, _ := w.Get("payments/db"); string(got.Value) == want {
				return
			}
			if time.Now().After(deadline) {
				got, _ := w.Get("payments/db")
				t.Fatalf("the watcher holds version %s, not the value wanted", got.Version)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	valueIs("initial-value")
	if _, err := m.Cancel(ctx, r.ID, admin); !errors.Is(err, rotation.ErrFinal) {
		t.Fatalf("second cancel: %v", err)
	}
	if _, err := m.Rollback(ctx, r.ID, admin); !errors.Is(err, rotation.ErrFinal) {
		t.Fatalf("rollback of a rolled-back rotation: %v", err)
	}

	// The stuck consumer is past the horizon for what follows.
	f.stop()
	f.cfg.Rotation.Horizon = time.Millisecond
	f.start()
	m = f.srv.Rotations()
	_, w = f.watcher(ctx, "/app/one", "payments/db", &applied)
	valueIs("initial-value")
	r1, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Actor: admin})
	if err != nil {
		t.Fatal(err)
	}
	if done := wait(t, m, r1.ID); done.State != rotation.Completed {
		t.Fatalf("first rotation: %+v", done)
	}
	r2, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Actor: admin})
	if err != nil {
		t.Fatal(err)
	}
	done2 := wait(t, m, r2.ID)
	if _, err := m.Rollback(ctx, r1.ID, admin); !errors.Is(err, rotation.ErrSuperseded) || !strings.Contains(err.Error(), r2.ID) {
		t.Fatalf("rollback of a superseded rotation: %v", err)
	}
	before, _ := w.Get("payments/db")
	back, err := m.Rollback(ctx, r2.ID, admin)
	if err != nil || back.State != rotation.RolledBack {
		t.Fatalf("rollback: %+v %v", back, err)
	}
	prev, err := f.local.Read(ctx, secretref.MustParse("local://payments/db?version="+done2.FromVersion+"#v"))
	if err != nil {
		t.Fatal(err)
	}
	valueIs(string(prev.Data))
	if got, _ := w.Get("payments/db"); got.Version == before.Version {
		t.Fatal("the rollback was not pushed")
	}
	// The backend moves on outside: the newest rotation is superseded.
	r3, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Actor: admin})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, m, r3.ID)
	outside, err := f.local.Write(ctx, secretref.MustParse("local://payments/db#v"), []byte("written-outside"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Rollback(ctx, r3.ID, admin); !errors.Is(err, rotation.ErrSuperseded) || !strings.Contains(err.Error(), outside) {
		t.Fatalf("rollback after an outside write: %v", err)
	}
	// An emergency rotation replaced a leaked version: no rollback to it.
	r4, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Actor: admin, Emergency: true})
	if err != nil {
		t.Fatal(err)
	}
	if done := wait(t, m, r4.ID); done.State != rotation.Completed {
		t.Fatalf("emergency rotation: %+v", done)
	}
	if _, err := m.Rollback(ctx, r4.ID, admin); !errors.Is(err, rotation.ErrEmergencyRollback) {
		t.Fatalf("rollback of an emergency rotation: %v", err)
	}
	evs, err := f.srv.Audit().QueryAudit(ctx, store.AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var cancels, rollbacks int
	for _, e := range evs {
		switch {
		case e.Action == "rotation.cancel" && e.Actor == admin:
			cancels++
		case e.Action == "rotation.rollback" && e.Actor == admin:
			rollbacks++
		}
	}
	if cancels != 1 || rollbacks != 1 {
		t.Fatalf("audited %d cancels and %d rollbacks, want 1 each", cancels, rollbacks)
	}
}

// A tls_certificate secret with a certificate policy is re-issued by the
// schedule (actor system, trigger expiry) once its certificate reaches the
// renewal point (2/3 of its lifetime, less up to 5% jitter), not before,
// and the Envoy receives the new certificate over SDS.
func TestCertificateReissuedAtItsRenewalPoint(t *testing.T) {
	f := newFixture(t, func(c *server.Config) {
		c.Rotation.CheckInterval = 100 * time.Millisecond
	})
	f.stop()
	f.cfg.Rotation.Issuers = map[string]rotation.Issuer{"test-ca": server.CAIssuer{CA: f.ca}}
	f.start()
	ctx := context.Background()
	const lifetime = 9 * time.Second
	issued := time.Now()
	pair := testcert.New(t, testcert.Options{CommonName: "gw.test.example", NotBefore: issued, NotAfter: issued.Add(lifetime)})
	first, _ := json.Marshal(map[string]string{"certificate": string(pair.Cert), "private_key": string(pair.Key)})
	ref := "local://payments/gw-tls#v"
	if _, err := f.local.Write(ctx, secretref.MustParse(ref), first); err != nil {
		t.Fatal(err)
	}
	admin := spv1.NewAdminServiceClient(f.dial("/ops/admin"))
	if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/gw-tls", Ref: ref, Kind: "tls_certificate"}}); err != nil {
		t.Fatal(err)
	}
	f.seed("payments/db", "unrelated") // the policy the apps read with
	env := envoysim.New(f.dial("/app/gateway"), envoysim.Options{Mode: envoysim.SotW, NodeID: "gw-1"})
	defer env.Close()
	env.Subscribe(ctx, "payments/gw-tls")
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	got, err := env.Wait(wctx, "payments/gw-tls", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.srv.Rotations().SetPolicy(ctx, store.RotationPolicy{Secret: "payments/gw-tls", Method: "certificate",
		Params: map[string]string{"issuer": "test-ca", "common_name": "gw.test.example", "alt_names": "gw-alt.test.example", "ttl": "1h"}}); err != nil {
		t.Fatal(err)
	}
	if p, _ := f.srv.Rotations().Policy(ctx, "payments/gw-tls"); p.RenewAt != rotation.DefaultRenewAt {
		t.Fatalf("renew_at defaults to %g", p.RenewAt)
	}
	next, err := env.Wait(wctx, "payments/gw-tls", func(a envoysim.Applied) bool { return a.Version != got.Version })
	if err != nil {
		t.Fatal(err)
	}
	rs, err := f.srv.Rotations().List(ctx, store.RotationQuery{Secret: "payments/gw-tls", Limit: 10})
	if err != nil || len(rs) != 1 {
		t.Fatalf("rotations: %+v %v", rs, err)
	}
	r := wait(t, f.srv.Rotations(), rs[0].ID)
	// X.509 times have whole seconds: the point is the certificate's own.
	old := leafOf(t, pair.Cert)
	earliest := old.NotBefore.Add(time.Duration(float64(old.NotAfter.Sub(old.NotBefore)) * (rotation.DefaultRenewAt - 0.05)))
	if r.State != rotation.Completed || r.Trigger != "expiry" || r.Actor != "" && r.Actor != "system" || r.Method != "certificate" || r.CreateTime.Before(earliest) {
		t.Fatalf("rotation %+v (earliest %s)", r, earliest)
	}
	leaf := leafOf(t, []byte(next.Secret.GetTlsCertificate().GetCertificateChain().GetInlineBytes()))
	if leaf.Subject.CommonName != "gw.test.example" || len(leaf.DNSNames) != 2 || leaf.NotAfter.Sub(leaf.NotBefore) < 59*time.Minute {
		t.Fatalf("re-issued certificate: CN %s, names %v, valid %s", leaf.Subject.CommonName, leaf.DNSNames, leaf.NotAfter.Sub(leaf.NotBefore))
	}
	// It is not re-issued again: the new certificate is far from its point.
	time.Sleep(500 * time.Millisecond)
	if rs, _ := f.srv.Rotations().List(ctx, store.RotationQuery{Secret: "payments/gw-tls", Limit: 10}); len(rs) != 1 {
		t.Fatalf("%d rotations", len(rs))
	}
}

func leafOf(t *testing.T, chain []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(chain)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A new version written outside secretplane, once the cache sees it,
// becomes a recorded rotation (method observe, trigger observed, actor
// system) verified as any other: it completes when the consumer has it.
// Versions a rotation here made current are not taken for outside ones.
func TestOutsideChangeIsObservedAndVerified(t *testing.T) {
	f := newFixture(t, func(c *server.Config) { c.Cache.TTL = 300 * time.Millisecond })
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	m := f.srv.Rotations()
	var applied atomic.Int64
	_, w := f.watcher(ctx, "/app/one", "payments/db", &applied)
	r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db"})
	if err != nil {
		t.Fatal(err)
	}
	if done := wait(t, m, r.ID); done.State != rotation.Completed {
		t.Fatalf("rotation %+v", done)
	}
	time.Sleep(time.Second) // the cache refreshed past it: nothing observed
	if rs, _ := m.List(ctx, store.RotationQuery{Secret: "payments/db", Limit: 10}); len(rs) != 1 {
		t.Fatalf("a rotation of ours was observed as an outside change: %+v", rs)
	}
	outside, err := f.local.Write(ctx, secretref.MustParse("local://payments/db#v"), []byte("written-outside"))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	var obs store.Rotation
	for {
		rs, err := m.List(ctx, store.RotationQuery{Secret: "payments/db", Limit: 10})
		if err == nil && len(rs) == 2 && rs[0].State == rotation.Completed {
			obs = rs[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotations: %+v %v", rs, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if obs.Method != rotation.Observe || obs.Trigger != "observed" || obs.Actor != "system" || obs.ToVersion != outside ||
		obs.FromVersion == "" || !strings.Contains(obs.Detail, "acknowledged") {
		t.Fatalf("observed rotation %+v", obs)
	}
	if got, _ := w.Get("payments/db"); string(got.Value) != "written-outside" {
		t.Fatalf("the watcher holds version %s", got.Version)
	}
	if _, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Method: rotation.Observe}); !errors.Is(err, rotation.ErrUnknownMethod) {
		t.Fatalf("observe started by hand: %v", err)
	}
}

// Replicas of one service (one SPIFFE ID, two instances) are each a
// consumer: the rotation completes only once the slower one has applied
// the new version too.
func TestReplicasSharingAnIdentityAreEachWaitedFor(t *testing.T) {
	f := newFixture(t, nil)
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	var slowApplied atomic.Int64
	for _, inst := range []string{"pod-a", "pod-b"} {
		c, err := client.New(ctx, client.Config{Address: f.srv.Addr(), ServerID: f.id, Source: f.source("/app/one"), Instance: inst})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		w, err := c.Watch(ctx, []string{"payments/db"}, func(_ context.Context, old, _ client.Secret) error {
			if inst == "pod-b" && old.Version != "" {
				time.Sleep(1500 * time.Millisecond) // applies slowly
				slowApplied.Store(time.Now().UnixNano())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Close)
	}
	m := f.srv.Rotations()
	r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db"})
	if err != nil {
		t.Fatal(err)
	}
	done := wait(t, m, r.ID)
	if done.State != rotation.Completed || !strings.Contains(done.Detail, "all 2 consumers acknowledged") {
		t.Fatalf("rotation %+v", done)
	}
	if at := slowApplied.Load(); at == 0 || done.UpdateTime.UnixNano() < at {
		t.Fatalf("completed at %s, before the slow replica applied (%d)", done.UpdateTime, at)
	}
	cs, err := f.srv.Store().ListConsumers(ctx, "payments/db")
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]bool{}
	for _, c := range cs {
		nodes[c.Node] = true
	}
	if !nodes["pod-a"] || !nodes["pod-b"] {
		t.Fatalf("consumers %+v", cs)
	}
}
