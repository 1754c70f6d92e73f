package api_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

func subscribe(names ...string) *spv1.WatchRequest {
	return &spv1.WatchRequest{Request: &spv1.WatchRequest_Subscribe{Subscribe: &spv1.WatchSubscribe{Names: names}}}
}

func ack(name, version, errText string) *spv1.WatchRequest {
	return &spv1.WatchRequest{Request: &spv1.WatchRequest_Ack{Ack: &spv1.WatchAck{Name: name, Version: version, Error: errText}}}
}

// recv waits for the next message (or the stream's end) for at most d.
func recv(t *testing.T, st spv1.SecretsService_WatchClient, d time.Duration) (*spv1.WatchResponse, error) {
	t.Helper()
	type result struct {
		m   *spv1.WatchResponse
		err error
	}
	c := make(chan result, 1)
	go func() { m, err := st.Recv(); c <- result{m, err} }()
	select {
	case r := <-c:
		return r.m, r.err
	case <-time.After(d):
		t.Fatalf("nothing received within %v", d)
		return nil, nil
	}
}

// Watch sends the current value, pushes each new version once, records
// acks in the consumer registry, and ends when the grant is revoked.
func TestWatch(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	td := e.admin.ID().TrustDomain().IDString()
	admin := e.adminClient(t)
	ref := secretref.MustParse("local://payments/db#password")
	for _, s := range []*spv1.Secret{{Name: "payments/db", Ref: ref.String()}, {Name: "payments/gone", Ref: "local://payments/gone#password"}} {
		if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: s}); err != nil {
			t.Fatal(err)
		}
	}
	write := func(v string) {
		t.Helper()
		if _, err := e.local.Write(ctx, ref, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	write("pw-one-Zq8vW3xR")
	pc := spv1.NewPolicyServiceClient(e.dial(t, e.admin))
	if _, err := pc.PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{
		Name: "payments-watch", Subject: td + "/payments/api", Verbs: []string{"read", "watch"}, Objects: []string{"payments/*"}}}); err != nil {
		t.Fatal(err)
	}
	apiID := issueFor(t, e, "/payments/api")
	client := spv1.NewSecretsServiceClient(e.dial(t, apiID))

	st, err := client.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(subscribe("payments/db")); err != nil {
		t.Fatal(err)
	}
	m, err := recv(t, st, 5*time.Second)
	if err != nil || string(m.GetValue().GetValue()) != "pw-one-Zq8vW3xR" || m.GetValue().GetName() != "payments/db" {
		t.Fatalf("initial value: %v %v", m, err)
	}
	v1 := m.GetValue().GetVersion()
	if err := st.Send(ack("payments/db", v1, "")); err != nil {
		t.Fatal(err)
	}

	// A new version in the backend is pushed within the refresh interval
	// (TTL 1s here), once.
	write("pw-two-Zq8vW3xR")
	m, err = recv(t, st, 5*time.Second)
	if err != nil || string(m.GetValue().GetValue()) != "pw-two-Zq8vW3xR" || m.GetValue().GetVersion() == v1 {
		t.Fatalf("pushed value: %v %v", m, err)
	}
	v2 := m.GetValue().GetVersion()
	// The client reports failing to apply it, quoting the value it kept
	// (the one before): the registry keeps the ack but not the value.
	if err := st.Send(ack("payments/db", v2, "rolled back to pw-one-Zq8vW3xR")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	var watchRow *spv1.Consumer
	for watchRow == nil || watchRow.GetAckedVersion() != v2 {
		if time.Now().After(deadline) {
			t.Fatalf("ack not recorded: %v", watchRow)
		}
		time.Sleep(20 * time.Millisecond)
		resp, err := admin.ListConsumers(ctx, &spv1.ListConsumersRequest{Name: "payments/db"})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.GetConsumers() {
			if c.GetChannel() == "watch" && c.GetIdentity() == apiID.ID().String() {
				watchRow = c
			}
		}
	}
	if watchRow.GetVersion() != v2 || !strings.Contains(watchRow.GetAckError(), "withheld") {
		t.Fatalf("watch consumer: %v", watchRow)
	}

	// Bad requests end the stream with InvalidArgument.
	bad := []struct {
		name string
		req  *spv1.WatchRequest
		code codes.Code
	}{
		{"ack for an unwatched secret", ack("payments/other", "1", ""), codes.InvalidArgument},
		{"ack without a version", ack("payments/db", "", ""), codes.InvalidArgument},
		{"empty request", &spv1.WatchRequest{}, codes.InvalidArgument},
		{"no names", subscribe(), codes.InvalidArgument},
		{"too many names", subscribe(make([]string, 101)...), codes.InvalidArgument},
		{"not granted", subscribe("billing/db"), codes.PermissionDenied},
		{"missing in the backend", subscribe("payments/gone"), codes.NotFound},
		{"not registered", subscribe("payments/unknown"), codes.NotFound},
		{"instance with control characters", &spv1.WatchRequest{Request: &spv1.WatchRequest_Subscribe{Subscribe: &spv1.WatchSubscribe{Names: []string{"payments/db"}, Instance: "pod\x07"}}}, codes.InvalidArgument},
		{"instance too long", &spv1.WatchRequest{Request: &spv1.WatchRequest_Subscribe{Subscribe: &spv1.WatchSubscribe{Names: []string{"payments/db"}, Instance: strings.Repeat("p", 129)}}}, codes.InvalidArgument},
		{"instance that looks like a secret", &spv1.WatchRequest{Request: &spv1.WatchRequest_Subscribe{Subscribe: &spv1.WatchSubscribe{Names: []string{"payments/db"}, Instance: "ghp_0123456789abcdefghijABCDEFGHIJ012345"}}}, codes.InvalidArgument},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			s, err := client.Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tc.req.GetAck() != nil {
				if err := s.Send(subscribe("payments/db")); err != nil {
					t.Fatal(err)
				}
				if _, err := recv(t, s, 5*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Send(tc.req); err != nil {
				t.Fatal(err)
			}
			_, err = recv(t, s, 5*time.Second)
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
		})
	}

	// Revoking the grant ends the stream before the next value leaves.
	if _, err := pc.DeletePolicy(ctx, &spv1.DeletePolicyRequest{Name: "payments-watch"}); err != nil {
		t.Fatal(err)
	}
	write("pw-three-Zq8vW3xR")
	_, err = recv(t, st, 5*time.Second)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after revocation: %v", err)
	}
	for _, v := range []string{"pw-one", "pw-two", "pw-three"} {
		if strings.Contains(e.logs.String(), v) {
			t.Fatalf("%s in the server logs", v)
		}
	}
}

// A stream holds at most MaxWatchNames secrets: names it already watches
// do not count again, one more is ResourceExhausted.
func TestWatchStreamLimit(t *testing.T) {
	e := newEnv(t)
	// A thousand values over one stream: more than ctxT's bound under -race
	// on a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	td := e.admin.ID().TrustDomain().IDString()
	admin := e.adminClient(t)
	ref := secretref.MustParse("local://payments/db#password")
	if _, err := e.local.Write(ctx, ref, []byte("pw-limit")); err != nil {
		t.Fatal(err)
	}
	// Registered straight in the store: the admin API is not under test.
	names := make([]string, api.MaxWatchNames+1)
	for i := range names {
		names[i] = fmt.Sprintf("payments/s%04d", i)
		if _, err := e.store.PutSecret(ctx, store.Secret{Name: names[i], Ref: ref.String()}, store.Precondition{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := spv1.NewPolicyServiceClient(e.dial(t, e.admin)).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{
		Name: "payments-watch", Subject: td + "/payments/api", Verbs: []string{"watch"}, Objects: []string{"payments/*"}}}); err != nil {
		t.Fatal(err)
	}
	st, err := spv1.NewSecretsServiceClient(e.dial(t, issueFor(t, e, "/payments/api"))).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	version := ""
	for i := 0; i < api.MaxWatchNames; i += api.MaxResolveNames {
		if err := st.Send(subscribe(names[i : i+api.MaxResolveNames]...)); err != nil {
			t.Fatal(err)
		}
		for range api.MaxResolveNames {
			m, err := recv(t, st, 10*time.Second)
			if err != nil {
				t.Fatalf("initial values of batch %d: %v", i/api.MaxResolveNames, err)
			}
			version = m.GetValue().GetVersion()
		}
	}
	// Already watched: accepted, nothing new to send, and the stream goes
	// on (the ack after it is recorded).
	if err := st.Send(subscribe(names[0])); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(ack(names[0], version, "")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for acked := false; !acked; {
		if time.Now().After(deadline) {
			t.Fatal("the ack after re-subscribing a watched name was not recorded: the stream ended")
		}
		time.Sleep(20 * time.Millisecond)
		resp, err := admin.ListConsumers(ctx, &spv1.ListConsumersRequest{Name: names[0]})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.GetConsumers() {
			acked = acked || (c.GetChannel() == "watch" && c.GetAckedVersion() == version)
		}
	}
	if err := st.Send(subscribe(names[api.MaxWatchNames])); err != nil {
		t.Fatal(err)
	}
	if _, err := recv(t, st, 10*time.Second); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("name %d: got %v, want ResourceExhausted", api.MaxWatchNames+1, err)
	}
}

// Watchers follow the catalog's changes as they happen, not at the next
// refresh (the cache TTL here is an hour, so only the change events can
// explain a push): a rebind pushes the new ref's value, a delete ends the
// stream with NotFound.
func TestWatchFollowsCatalogChanges(t *testing.T) {
	e := newEnvWith(t, slog.LevelInfo, func(c *server.Config) { c.Cache.TTL = time.Hour })
	ctx := ctxT(t)
	td := e.admin.ID().TrustDomain().IDString()
	admin := e.adminClient(t)
	for ref, v := range map[string]string{"local://payments/db#password": "old-Zq8vW3xR", "local://payments/db2#password": "new-Zq8vW3xR"} {
		if _, err := e.local.Write(ctx, secretref.MustParse(ref), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "local://payments/db#password"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := spv1.NewPolicyServiceClient(e.dial(t, e.admin)).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{
		Name: "api", Subject: td + "/payments/api", Verbs: []string{"read", "watch"}, Objects: []string{"payments/*"}}}); err != nil {
		t.Fatal(err)
	}
	api := spv1.NewSecretsServiceClient(e.dial(t, issueFor(t, e, "/payments/api")))
	st, err := api.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(subscribe("payments/db")); err != nil {
		t.Fatal(err)
	}
	if m, err := recv(t, st, 5*time.Second); err != nil || string(m.GetValue().GetValue()) != "old-Zq8vW3xR" {
		t.Fatalf("initial: %v %v", m, err)
	}

	// Rebind: the new ref's value, at once.
	start := time.Now()
	if _, err := admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: "payments/db", Ref: "local://payments/db2#password"}}); err != nil {
		t.Fatal(err)
	}
	if m, err := recv(t, st, 5*time.Second); err != nil || string(m.GetValue().GetValue()) != "new-Zq8vW3xR" {
		t.Fatalf("after the rebind: %v %v", m, err)
	}
	t.Logf("rebind -> push: %v", time.Since(start).Round(time.Millisecond))

	// Delete: the stream ends with NotFound, at once.
	start = time.Now()
	if _, err := admin.DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: "payments/db"}); err != nil {
		t.Fatal(err)
	}
	if _, err := recv(t, st, 5*time.Second); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "payments/db was deleted") {
		t.Fatalf("after the delete: %v", err)
	}
	t.Logf("delete -> stream end: %v", time.Since(start).Round(time.Millisecond))
}
