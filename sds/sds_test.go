package sds_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/envoysim"
	"github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/internal/testcert"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/sds"
	"github.com/secretplane/secretplane/store"
)

const (
	td      = "test.example"
	gateway = "/gateway/edge"
	adminID = "/ops/admin"
)

type fixture struct {
	t     *testing.T
	ca    *identity.CA
	srv   *server.Server
	local *local.Backend
	admin spv1.AdminServiceClient
	id    spiffeid.ID
}

func start(t *testing.T, tune ...func(*server.Config)) *fixture {
	t.Helper()
	trust := spiffeid.RequireTrustDomainFromString(td)
	ca, err := identity.NewCA(trust, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	id := spiffeid.RequireFromPath(trust, "/secretplane/server")
	svid, err := ca.IssueSVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := local.New(filepath.Join(dir, "local.json"), []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Defaults()
	cfg.Store = "sqlite:" + filepath.Join(dir, "store.db")
	cfg.Admins = []string{"spiffe://" + td + adminID}
	cfg.Identity.Source = identity.NewStaticSource(svid, ca.Bundle())
	cfg.Backends.Extra = []backend.Backend{lb}
	cfg.Cache.TTL = 2 * time.Second // a backend change is seen within about 1.5s
	cfg.SDS.HoldRetry = 500 * time.Millisecond
	cfg.Log.Out, cfg.Log.Level = os.Stderr, "error"
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = lis
	for _, fn := range tune {
		fn(&cfg)
	}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	f := &fixture{t: t, ca: ca, srv: srv, local: lb, id: id}
	f.admin = spv1.NewAdminServiceClient(f.dial(adminID))
	f.grant("gateway", "spiffe://"+td+gateway, "gateway/*")
	return f
}

func (f *fixture) dial(path string) *grpc.ClientConn { return f.dialAt(f.srv.Addr(), path) }

func (f *fixture) dialAt(addr, path string) *grpc.ClientConn {
	f.t.Helper()
	svid, err := f.ca.IssueSVID(spiffeid.RequireFromString("spiffe://"+td+path), time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(identity.NewStaticSource(svid, f.ca.Bundle()), f.id))))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { conn.Close() })
	return conn
}

func (f *fixture) grant(name, subject string, objects ...string) {
	f.t.Helper()
	ctx := context.Background()
	if _, err := f.srv.Store().PutPolicy(ctx, store.Policy{Name: name, Subject: subject, Verbs: []string{"read"}, Objects: objects}, store.Precondition{}); err != nil {
		f.t.Fatal(err)
	}
	if err := f.srv.Policy().Load(ctx); err != nil {
		f.t.Fatal(err)
	}
}

// put writes value to the local backend and registers name bound to it.
func (f *fixture) put(name, kind string, value []byte) {
	f.t.Helper()
	ctx := context.Background()
	ref := "local://" + name + "#v"
	f.write(name, value)
	if _, err := f.admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &spv1.Secret{Name: name, Ref: ref, Kind: kind}}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) write(name string, value []byte) {
	f.t.Helper()
	if _, err := f.local.Write(context.Background(), secretref.MustParse("local://"+name+"#v"), value); err != nil {
		f.t.Fatal(err)
	}
}

// cert returns a PEM bundle (chain and key) for cn, valid from an hour ago.
func cert(t testing.TB, cn string, serial int64, valid time.Duration) []byte {
	return testcert.New(t, testcert.Options{CommonName: cn, Serial: serial, NotAfter: time.Now().Add(valid)}).Bundle()
}

func serialOf(t testing.TB, a envoysim.Applied) int64 {
	t.Helper()
	leaf, err := envoysim.Leaf(a.Secret)
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Int64()
}

func waitCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// The conformance cases, over every protocol variant Envoy speaks: a
// granted certificate is served and ACKed (the ACK with its node id in the
// consumer registry); an ungranted name is refused (SotW: PermissionDenied
// ends its stream; ADS and Delta: never served, while the granted names
// keep flowing); a certificate changed in the backend reaches the Envoy
// within the refresh interval; an invalid one is never sent; a name that
// does not exist yet is held (no empty response), then served once
// registered; the trust bundle is served as spiffe://<td>.
func TestConformance(t *testing.T) {
	f := start(t)
	f.put("gateway/tls", "tls_certificate", cert(t, "gw.example.org", 1, time.Hour))
	f.put("billing/tls", "tls_certificate", cert(t, "billing.example.org", 2, time.Hour))
	f.put("gateway/hmac", "generic", []byte("hmac-key-material"))
	serial := int64(1) // the certificate in the backend
	for i, mode := range envoysim.Modes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := f.dial(gateway)
			node := "gw-" + mode.String()
			c := envoysim.New(conn, envoysim.Options{Mode: mode, NodeID: node})
			defer c.Close()
			ctx := waitCtx(t, 20*time.Second)
			late := "gateway/late-" + mode.String()
			c.Subscribe(ctx, "gateway/tls", "gateway/hmac", "billing/tls", "spiffe://"+td, late)

			got, err := c.Wait(ctx, "gateway/tls", nil)
			if err != nil {
				t.Fatal(err)
			}
			if serialOf(t, got) != serial {
				t.Fatalf("serial %d, want %d", serialOf(t, got), serial)
			}
			if _, err := c.Wait(ctx, "gateway/hmac", nil); err != nil {
				t.Fatal(err)
			}
			bundle, err := c.Wait(ctx, "spiffe://"+td, nil)
			if err != nil {
				t.Fatal(err)
			}
			if bundle.Secret.GetValidationContext().GetCustomValidatorConfig().GetName() != "envoy.tls.cert_validator.spiffe" {
				t.Fatalf("an Envoy 1.32 gets the SPIFFE validator form: %v", bundle.Secret.GetValidationContext())
			}
			// The ungranted name.
			if mode == envoysim.SotW {
				deadline := time.Now().Add(5 * time.Second)
				for c.StreamErr("billing/tls") == nil && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if st := status.Convert(c.StreamErr("billing/tls")); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "billing/tls") {
					t.Fatalf("ungranted SotW stream: %v", st)
				}
			}
			if _, ok := c.Get("billing/tls"); ok {
				t.Fatal("an ungranted secret was served")
			}
			// Held, not answered empty; served once registered.
			if _, ok := c.Get(late); ok {
				t.Fatal("a name that does not exist was answered")
			}
			f.put(late, "generic", []byte("late-value"))
			if _, err := c.Wait(ctx, late, nil); err != nil {
				t.Fatal(err)
			}

			// A new certificate in the backend arrives within the refresh.
			f.write("gateway/tls", cert(t, "gw.example.org", 3, time.Hour))
			if _, err := c.Wait(ctx, "gateway/tls", func(a envoysim.Applied) bool { return serialOf(t, a) == 3 }); err != nil {
				t.Fatal(err)
			}
			// An invalid one is never sent: the Envoy keeps the last good.
			f.write("gateway/tls", []byte("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"))
			time.Sleep(2500 * time.Millisecond)
			if a, _ := c.Get("gateway/tls"); serialOf(t, a) != 3 {
				t.Fatalf("after an invalid write the Envoy holds serial %d", serialOf(t, a))
			}
			_, _, nacks := c.Counts()
			if nacks != 0 {
				t.Fatalf("%d NACKs: the server sent something Envoy rejects", nacks)
			}
			serial = int64(100 + i) // the next mode starts from a valid certificate
			f.write("gateway/tls", cert(t, "gw.example.org", serial, time.Hour))

			// The ACK is in the registry, with the node id.
			resp, err := f.admin.ListConsumers(ctx, &spv1.ListConsumersRequest{Name: "gateway/tls"})
			if err != nil {
				t.Fatal(err)
			}
			found := false
			held, _ := c.Get("gateway/tls")
			for _, cs := range resp.GetConsumers() {
				if cs.GetChannel() == "sds" && cs.GetNode() == node && cs.GetIdentity() == "spiffe://"+td+gateway && cs.GetAckedVersion() != "" && cs.GetAckError() == "" {
					found = true
					if mode == envoysim.Delta || mode == envoysim.DeltaADS {
						if cs.GetAckedVersion() != held.Version {
							t.Errorf("acked %s, holds %s", cs.GetAckedVersion(), held.Version)
						}
					}
				}
			}
			if !found {
				t.Fatalf("no SDS ACK from node %s in %v", node, resp.GetConsumers())
			}
		})
	}
	// Every refusal was audited as a denial naming the resource.
	evs, err := f.srv.Audit().QueryAudit(context.Background(), store.AuditQuery{Actor: "spiffe://" + td + gateway, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	denials := 0
	for _, e := range evs {
		if e.Decision == "deny" && e.Target == "billing/tls" {
			denials++
		}
	}
	if denials < len(envoysim.Modes) {
		t.Fatalf("%d audited denials of billing/tls, want one per mode", denials)
	}
}

// After a NACK of content that has not changed, nothing is sent for that
// resource for 5 seconds (naive servers resend at once: an endless loop
// with a real Envoy); the NACK is in the registry with its text.
func TestNACKIsNotAnsweredWithTheSameContent(t *testing.T) {
	f := start(t)
	f.put("gateway/tls", "tls_certificate", cert(t, "gw.example.org", 1, time.Hour))
	for _, mode := range envoysim.Modes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: mode, NodeID: "nacker-" + mode.String(),
				Reject: func(string, *tlsv3.Secret) error { return errors.New("cluster not ready") }})
			defer c.Close()
			c.Subscribe(waitCtx(t, 10*time.Second), "gateway/tls")
			deadline := time.Now().Add(5 * time.Second)
			for {
				if _, _, n := c.Counts(); n > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no response to NACK")
				}
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(5 * time.Second)
			if got, _, nacks := c.Counts(); got != 1 || nacks != 1 {
				t.Fatalf("after one NACK: %d responses, %d NACKs in 5s", got, nacks)
			}
			resp, err := f.admin.ListConsumers(context.Background(), &spv1.ListConsumersRequest{Name: "gateway/tls"})
			if err != nil {
				t.Fatal(err)
			}
			for _, cs := range resp.GetConsumers() {
				if cs.GetNode() == "nacker-"+mode.String() && cs.GetAckError() == "cluster not ready" {
					return
				}
			}
			t.Fatalf("NACK not recorded: %v", resp.GetConsumers())
		})
	}
}

// Reconnecting with the versions it holds, the Envoy is sent nothing new;
// a deleted secret is removed over Delta and kept over SotW.
func TestReconnectAndDelete(t *testing.T) {
	f := start(t)
	f.put("gateway/a", "generic", []byte("value-a"))
	for _, mode := range envoysim.Modes {
		t.Run(mode.String(), func(t *testing.T) {
			c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: mode})
			defer c.Close()
			ctx := waitCtx(t, 10*time.Second)
			c.Subscribe(ctx, "gateway/a")
			if _, err := c.Wait(ctx, "gateway/a", nil); err != nil {
				t.Fatal(err)
			}
			before, _, _ := c.Counts()
			c.Reconnect(ctx)
			time.Sleep(700 * time.Millisecond)
			after, _, _ := c.Counts()
			if after != before {
				t.Fatalf("%d responses after a reconnect holding the current version", after-before)
			}
		})
	}
	c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: envoysim.Delta})
	defer c.Close()
	ctx := waitCtx(t, 10*time.Second)
	c.Subscribe(ctx, "gateway/a")
	if _, err := c.Wait(ctx, "gateway/a", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.admin.DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: "gateway/a"}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, ok := c.Get("gateway/a"); !ok {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("a deleted secret was not removed over Delta")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Bad input: a wrong or empty type URL, an empty name list, garbage and
// stale nonces, a client that never reads, and thousands of streams opened
// and dropped. Each gets a clear status or is ignored, and leaves nothing
// behind.
func TestBadInput(t *testing.T) {
	f := start(t)
	f.put("gateway/tls", "tls_certificate", cert(t, "gw.example.org", 1, time.Hour))
	conn := f.dial(gateway)
	sdsc := secretv3.NewSecretDiscoveryServiceClient(conn)
	adsc := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	ctx := waitCtx(t, 60*time.Second)
	first := func(req *discoveryv3.DiscoveryRequest, ads bool) error {
		var (
			s interface {
				Send(*discoveryv3.DiscoveryRequest) error
				Recv() (*discoveryv3.DiscoveryResponse, error)
			}
			err error
		)
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if ads {
			s, err = adsc.StreamAggregatedResources(sctx)
		} else {
			s, err = sdsc.StreamSecrets(sctx)
		}
		if err != nil {
			return err
		}
		if err := s.Send(req); err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	for _, tc := range []struct {
		name string
		req  *discoveryv3.DiscoveryRequest
		ads  bool
		code codes.Code
		msg  string
	}{
		{"wrong type", &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", ResourceNames: []string{"gateway/tls"}}, false, codes.InvalidArgument, "not served here"},
		{"empty type over ADS", &discoveryv3.DiscoveryRequest{ResourceNames: []string{"gateway/tls"}}, true, codes.InvalidArgument, "type_url"},
		{"no names", &discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretType}, false, codes.InvalidArgument, "resource_names"},
		{"empty name", &discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretType, ResourceNames: []string{""}}, false, codes.InvalidArgument, ""},
		{"malformed name", &discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretType, ResourceNames: []string{"Not A Name"}}, false, codes.InvalidArgument, ""},
		{"garbage nonce is ignored", &discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretType, ResourceNames: []string{"gateway/tls"}, ResponseNonce: "garbage"}, false, codes.DeadlineExceeded, ""},
		{"empty type on SDS is the secret type", &discoveryv3.DiscoveryRequest{ResourceNames: []string{"gateway/tls"}}, false, codes.OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := first(tc.req, tc.ads)
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("got %v, want %v %q", st, tc.code, tc.msg)
			}
		})
	}
	// FetchSecrets: the current content, NotFound for a name not there.
	resp, err := sdsc.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"gateway/tls"}})
	if err != nil || len(resp.GetResources()) != 1 || resp.GetVersionInfo() == "" {
		t.Fatalf("fetch: %v %v", resp, err)
	}
	if _, err := sdsc.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"gateway/none"}}); status.Code(err) != codes.NotFound {
		t.Fatalf("fetch of a missing name: %v", err)
	}
	if _, err := sdsc.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: []string{"billing/x"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("fetch of an ungranted name: %v", err)
	}

	// A client that never reads does not hold up another's pushes.
	stuck, err := sdsc.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stuck.Send(&discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretType, ResourceNames: []string{"gateway/tls"}})
	c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: envoysim.SotW})
	defer c.Close()
	c.Subscribe(ctx, "gateway/tls")
	f.write("gateway/tls", cert(t, "gw.example.org", 9, time.Hour))
	if _, err := c.Wait(ctx, "gateway/tls", func(a envoysim.Applied) bool { return serialOf(t, a) == 9 }); err != nil {
		t.Fatal(err)
	}

	// Churn: 2,000 streams opened and dropped leave no goroutine behind.
	settle := func() int {
		time.Sleep(500 * time.Millisecond)
		return runtime.NumGoroutine()
	}
	base := settle()
	conns := []*grpc.ClientConn{f.dial(gateway), f.dial(gateway), f.dial(gateway), f.dial(gateway)}
	for round := 0; round < 10; round++ {
		var cs []*envoysim.Client
		for i := 0; i < 200; i++ {
			cl := envoysim.New(conns[i%len(conns)], envoysim.Options{Mode: envoysim.Modes[i%len(envoysim.Modes)], NodeID: fmt.Sprintf("churn-%d", i)})
			cl.Subscribe(ctx, "gateway/tls")
			cs = append(cs, cl)
		}
		for _, cl := range cs {
			if _, err := cl.Wait(ctx, "gateway/tls", nil); err != nil {
				t.Fatal(err)
			}
			cl.Close()
		}
	}
	if after := settle(); after > base+50 {
		t.Fatalf("goroutines: %d before churn, %d after", base, after)
	}
}

// The authorisation matrix: for each caller and each kind of name, over
// every variant, whether it is served. A workload has its grants; a
// bootstrap admin manages secrets but reads no value; trust bundles go to any authenticated
// caller. A grant withdrawn is enforced at the next push: Delta is told
// the name was removed, a SotW stream of its own ends.
func TestAuthorizationMatrix(t *testing.T) {
	f := start(t)
	f.put("gateway/tls", "tls_certificate", cert(t, "gw.example.org", 1, time.Hour))
	f.put("billing/tls", "tls_certificate", cert(t, "billing.example.org", 2, time.Hour))
	bundle := "spiffe://" + td
	names := []string{"gateway/tls", "billing/tls", bundle}
	callers := []struct {
		path   string
		served map[string]bool
	}{
		{gateway, map[string]bool{"gateway/tls": true, bundle: true}},
		{"/workload/other", map[string]bool{bundle: true}},
		// Admin manages secrets; it does not read their values.
		{adminID, map[string]bool{bundle: true}},
	}
	for _, caller := range callers {
		for _, mode := range envoysim.Modes {
			t.Run(strings.TrimPrefix(caller.path, "/")+"/"+mode.String(), func(t *testing.T) {
				c := envoysim.New(f.dial(caller.path), envoysim.Options{Mode: mode})
				defer c.Close()
				ctx := waitCtx(t, 10*time.Second)
				c.Subscribe(ctx, names...)
				for _, n := range names {
					if caller.served[n] {
						if _, err := c.Wait(ctx, n, nil); err != nil {
							t.Fatalf("%s not served: %v", n, err)
						}
					}
				}
				time.Sleep(300 * time.Millisecond)
				for _, n := range names {
					_, got := c.Get(n)
					if got != caller.served[n] {
						t.Errorf("%s served: %v, want %v", n, got, caller.served[n])
					}
					if !caller.served[n] && mode == envoysim.SotW {
						if st := status.Convert(c.StreamErr(n)); st.Code() != codes.PermissionDenied {
							t.Errorf("%s: SotW stream ended with %v, want PermissionDenied", n, st)
						}
					}
				}
			})
		}
	}

	// Withdrawn: the next push is refused.
	clients := map[envoysim.Mode]*envoysim.Client{}
	ctx := waitCtx(t, 20*time.Second)
	for _, mode := range envoysim.Modes {
		c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: mode})
		defer c.Close()
		c.Subscribe(ctx, "gateway/tls", bundle)
		if _, err := c.Wait(ctx, "gateway/tls", nil); err != nil {
			t.Fatal(err)
		}
		clients[mode] = c
	}
	if err := f.srv.Store().DeletePolicy(context.Background(), "gateway", store.Precondition{}); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Policy().Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.write("gateway/tls", cert(t, "gw.example.org", 7, time.Hour))
	time.Sleep(3 * time.Second) // past the refresh (3/4 of the 2s TTL, with jitter)
	for mode, c := range clients {
		a, held := c.Get("gateway/tls")
		switch mode {
		case envoysim.SotW:
			if status.Code(c.StreamErr("gateway/tls")) != codes.PermissionDenied || serialOf(t, a) != 1 {
				t.Errorf("sotw after withdrawal: %v, serial %d", c.StreamErr("gateway/tls"), serialOf(t, a))
			}
		case envoysim.Delta, envoysim.DeltaADS:
			if held {
				t.Errorf("%s still holds the secret after its grant was withdrawn", mode)
			}
		default:
			if serialOf(t, a) != 1 {
				t.Errorf("%s got the new version after its grant was withdrawn", mode)
			}
		}
		if _, ok := c.Get(bundle); !ok {
			t.Errorf("%s lost the trust bundle", mode)
		}
	}
}

// A stream holds at most --sds-max-names names; SDS's own listener serves
// SDS and nothing else.
func TestLimitsAndOwnListener(t *testing.T) {
	f := start(t, func(c *server.Config) { c.SDS.Listen = "127.0.0.1:0" })
	f.put("gateway/tls", "tls_certificate", cert(t, "gw.example.org", 1, time.Hour))
	own := f.dialAt(f.srv.SDSAddr(), gateway)
	c := envoysim.New(own, envoysim.Options{Mode: envoysim.SotW})
	defer c.Close()
	c.Subscribe(waitCtx(t, 10*time.Second), "gateway/tls")
	if _, err := c.Wait(waitCtx(t, 10*time.Second), "gateway/tls", nil); err != nil {
		t.Fatalf("SDS on its own listener: %v", err)
	}
	if _, err := spv1.NewAdminServiceClient(f.dialAt(f.srv.SDSAddr(), adminID)).ListSecrets(context.Background(), &spv1.ListSecretsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("the admin API on SDS's own listener: %v", err)
	}
	conn := f.dial(gateway)
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(waitCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	many := make([]string, 1001)
	for i := range many {
		many[i] = fmt.Sprintf("gateway/s%04d", i)
	}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretType, ResourceNames: many}); err != nil {
		t.Fatal(err)
	}
	if _, err := ads.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("1001 names on one stream: %v", err)
	}
}

// A NACK holds back only the resource it rejected: the other names of an
// ADS or Delta stream keep being served and updated.
func TestNACKIsPerResource(t *testing.T) {
	f := start(t)
	f.put("gateway/a", "generic", []byte("value-a"))
	f.put("gateway/b", "generic", []byte("value-b1"))
	for _, mode := range []envoysim.Mode{envoysim.Delta, envoysim.ADS, envoysim.DeltaADS} {
		t.Run(mode.String(), func(t *testing.T) {
			c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: mode, Reject: func(name string, _ *tlsv3.Secret) error {
				if name == "gateway/a" {
					return errors.New("listener a is broken")
				}
				return nil
			}})
			defer c.Close()
			ctx := waitCtx(t, 15*time.Second)
			c.Subscribe(ctx, "gateway/a", "gateway/b")
			if _, err := c.Wait(ctx, "gateway/b", nil); err != nil {
				t.Fatal(err)
			}
			f.write("gateway/b", []byte("value-b2-"+mode.String()))
			if _, err := c.Wait(ctx, "gateway/b", func(a envoysim.Applied) bool {
				return string(a.Secret.GetGenericSecret().GetSecret().GetInlineBytes()) == "value-b2-"+mode.String()
			}); err != nil {
				t.Fatal(err)
			}
			if _, ok := c.Get("gateway/a"); ok {
				t.Fatal("the rejected resource is held")
			}
		})
	}
}

// A certificate not valid yet is refused until it is, then served.
func TestNotYetValidCertificateIsServedOnceValid(t *testing.T) {
	f := start(t)
	soon := testcert.New(t, testcert.Options{CommonName: "gw.example.org", Serial: 5, NotBefore: time.Now().Add(2 * time.Second)}).Bundle()
	f.put("gateway/tls", "tls_certificate", soon)
	c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: envoysim.SotW})
	defer c.Close()
	ctx := waitCtx(t, 20*time.Second)
	c.Subscribe(ctx, "gateway/tls")
	time.Sleep(time.Second)
	if _, ok := c.Get("gateway/tls"); ok {
		t.Fatal("a certificate not yet valid was served")
	}
	if _, err := c.Wait(ctx, "gateway/tls", nil); err != nil {
		t.Fatalf("the certificate was not served once valid: %v", err)
	}
}

// A Delta stream reconnecting with a secret deleted meanwhile is told it
// was removed; a policy change takes effect on open streams: a grant added
// starts serving, a grant withdrawn removes (Delta) at once.
func TestDeletedWhileAwayAndPolicyChanges(t *testing.T) {
	f := start(t)
	f.put("gateway/a", "generic", []byte("value-a"))
	f.put("billing/x", "generic", []byte("value-x"))
	ctx := waitCtx(t, 20*time.Second)
	c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: envoysim.Delta})
	defer c.Close()
	c.Subscribe(ctx, "gateway/a")
	if _, err := c.Wait(ctx, "gateway/a", nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := f.admin.DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: "gateway/a"}); err != nil {
		t.Fatal(err)
	}
	c.Reconnect(ctx)
	for _, ok := c.Get("gateway/a"); ok; _, ok = c.Get("gateway/a") {
		if ctx.Err() != nil {
			t.Fatal("a secret deleted while the Envoy was away was not removed on reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}

	policies := spv1.NewPolicyServiceClient(f.dial(adminID))
	for _, mode := range []envoysim.Mode{envoysim.Delta, envoysim.ADS} {
		c := envoysim.New(f.dial(gateway), envoysim.Options{Mode: mode})
		defer c.Close()
		c.Subscribe(ctx, "billing/x")
		time.Sleep(300 * time.Millisecond)
		if _, ok := c.Get("billing/x"); ok {
			t.Fatal("served before the grant")
		}
		if _, err := policies.PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{Name: "gw-billing", Subject: "spiffe://" + td + gateway, Verbs: []string{"read"}, Objects: []string{"billing/*"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Wait(ctx, "billing/x", nil); err != nil {
			t.Fatalf("%s: a grant added on an open stream was not served: %v", mode, err)
		}
		if _, err := policies.DeletePolicy(ctx, &spv1.DeletePolicyRequest{Name: "gw-billing"}); err != nil {
			t.Fatal(err)
		}
		if mode == envoysim.Delta {
			for _, ok := c.Get("billing/x"); ok; _, ok = c.Get("billing/x") {
				if ctx.Err() != nil {
					t.Fatal("a withdrawn grant was not removed over Delta")
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
}
