package api_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
	"github.com/secretplane/secretplane/store"
)

// The token in a webhook's URL, the markers only deliveries' bodies
// carry: none may appear in an answer.
const (
	hookToken  = "s3cr3t-hook-token-0123456789"
	bodyMarker = "only-in-the-body-7f3a"
)

// newWebhookEnv starts a server with two webhooks, "ops" (a token in its
// query string) and "sink", and seeds the outbox through the store:
// ops has delivered, dead and pending deliveries, sink none, and
// "retired", no longer configured, one dead delivery. Every pending
// delivery's next attempt is an hour away, so the running notifier
// leaves them alone.
func newWebhookEnv(t *testing.T) *env {
	t.Helper()
	key := filepath.Join(t.TempDir(), "webhook.key")
	if err := os.WriteFile(key, []byte("webhook-signing-key-for-tests"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnvWith(t, slog.LevelDebug, func(c *server.Config) {
		c.Webhooks = map[string]string{
			"ops":  "https://hooks.example.com/ops/events?token=" + hookToken + "#frag",
			"sink": "https://sink.example.net:8443/in",
		}
		c.WebhookKeyFile = key
	})
	ctx := ctxT(t)
	later := time.Now().Add(time.Hour)
	body := func(ev, rotation, secret string) []byte {
		return fmt.Appendf(nil, `{"specversion":"1.0","id":%q,"source":"spiffe://test.example/secretplane/server","type":"io.secretplane.rotation.completed",`+
			`"subject":%q,"datacontenttype":"application/json","data":{"rotation":%q,"secret":%q,"state":"completed","step":"completed",`+
			`"from_version":"3","to_version":"4","detail":%q,"actor":"system"}}`, ev, secret, rotation, secret, bodyMarker)
	}
	seed := []struct {
		ev, hook, rotation, secret string
	}{
		{"ev1", "ops", "rot-1", "payments/db"},
		{"ev2", "ops", "rot-2", "payments/api-key"},
		{"ev3", "ops", "rot-3", "billing/db"},
		{"ev4", "ops", "rot-4", "billing/db"},
		{"ev0", "retired", "rot-0", "payments/db"},
	}
	for _, s := range seed {
		d := store.Delivery{ID: s.ev + "/" + s.hook, Webhook: s.hook, EventType: "io.secretplane.rotation.completed", Body: body(s.ev, s.rotation, s.secret), NextAttempt: later}
		if err := e.store.EnqueueDeliveries(ctx, []store.Delivery{d}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // create times order them
	}
	for _, d := range []store.Delivery{
		{ID: "ev1/ops", State: store.DeliveryDelivered, Attempts: 1},
		{ID: "ev2/ops", State: store.DeliveryDead, Attempts: 8,
			LastError: `POST: Post "https://hooks.example.com/ops/events?token=` + hookToken + `": dial tcp: lookup hooks.example.com: no such host`},
		{ID: "ev3/ops", State: store.DeliveryPending, Attempts: 2, LastError: "POST answered HTTP 503", NextAttempt: later},
		{ID: "ev0/retired", State: store.DeliveryDead, Attempts: 8, LastError: "webhook retired is no longer configured"},
	} {
		time.Sleep(2 * time.Millisecond) // update times order them
		if err := e.store.UpdateDelivery(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func webhookClient(t *testing.T, e *env, src identity.Source) spv1.WebhookServiceClient {
	return spv1.NewWebhookServiceClient(e.dial(t, src))
}

// noLeak fails when an answer carries the URL's token or fragment, or a
// body.
func noLeak(t *testing.T, what, text string) {
	t.Helper()
	for _, s := range []string{hookToken, bodyMarker, "#frag", "specversion"} {
		if strings.Contains(text, s) {
			t.Fatalf("%s carries %q:\n%s", what, s, text)
		}
	}
}

func TestListWebhooks(t *testing.T) {
	e := newWebhookEnv(t)
	ctx := ctxT(t)
	resp, err := webhookClient(t, e, e.admin).ListWebhooks(ctx, &spv1.ListWebhooksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	noLeak(t, "ListWebhooks", prototext.Format(resp))
	type row struct {
		name, url                string
		configured               bool
		pending, delivered, dead int64
		lastError                string
		errorTime, deliveryTime  bool
	}
	var got []row
	for _, w := range resp.GetWebhooks() {
		got = append(got, row{w.GetName(), w.GetUrl(), w.GetConfigured(), w.GetPending(), w.GetDelivered(), w.GetDead(), w.GetLastError(),
			w.GetLastErrorTime() != nil, w.GetLastDeliveryTime() != nil})
	}
	want := []row{
		// ev3's error was recorded after ev2's.
		{"ops", "https://hooks.example.com/ops/events", true, 2, 1, 1, "POST answered HTTP 503", true, true},
		{"sink", "https://sink.example.net:8443/in", true, 0, 0, 0, "", false, false},
		{"retired", "", false, 0, 0, 1, "webhook retired is no longer configured", true, false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("webhooks:\n got %+v\nwant %+v", got, want)
	}
	ops := resp.GetWebhooks()[0]
	if !ops.GetLastDeliveryTime().AsTime().Before(ops.GetLastErrorTime().AsTime()) {
		t.Fatalf("ops: delivered at %v, last error at %v", ops.GetLastDeliveryTime().AsTime(), ops.GetLastErrorTime().AsTime())
	}
}

func TestListDeliveries(t *testing.T) {
	e := newWebhookEnv(t)
	ctx := ctxT(t)
	c := webhookClient(t, e, e.admin)
	cases := []struct {
		name  string
		req   *spv1.ListDeliveriesRequest
		code  codes.Code
		field string   // the violation of an InvalidArgument
		want  []string // delivery ids, in order
	}{
		{"a webhook's deliveries, newest first", &spv1.ListDeliveriesRequest{Webhook: "ops"}, codes.OK, "", []string{"ev4/ops", "ev3/ops", "ev2/ops", "ev1/ops"}},
		{"limit", &spv1.ListDeliveriesRequest{Webhook: "ops", Limit: 2}, codes.OK, "", []string{"ev4/ops", "ev3/ops"}},
		{"pending", &spv1.ListDeliveriesRequest{Webhook: "ops", State: "pending"}, codes.OK, "", []string{"ev4/ops", "ev3/ops"}},
		{"pending, limit 1", &spv1.ListDeliveriesRequest{Webhook: "ops", State: "pending", Limit: 1}, codes.OK, "", []string{"ev4/ops"}},
		{"delivered", &spv1.ListDeliveriesRequest{Webhook: "ops", State: "delivered"}, codes.OK, "", []string{"ev1/ops"}},
		{"dead", &spv1.ListDeliveriesRequest{Webhook: "ops", State: "dead", Limit: 1000}, codes.OK, "", []string{"ev2/ops"}},
		{"configured, nothing queued", &spv1.ListDeliveriesRequest{Webhook: "sink"}, codes.OK, "", nil},
		{"no longer configured, still queued", &spv1.ListDeliveriesRequest{Webhook: "retired"}, codes.OK, "", []string{"ev0/retired"}},
		{"unknown webhook", &spv1.ListDeliveriesRequest{Webhook: "nobody"}, codes.NotFound, "", nil},
		{"no webhook", &spv1.ListDeliveriesRequest{}, codes.InvalidArgument, "webhook", nil},
		{"unknown state", &spv1.ListDeliveriesRequest{Webhook: "ops", State: "failed"}, codes.InvalidArgument, "state", nil},
		{"state in capitals", &spv1.ListDeliveriesRequest{Webhook: "ops", State: "DEAD"}, codes.InvalidArgument, "state", nil},
		{"negative limit", &spv1.ListDeliveriesRequest{Webhook: "ops", Limit: -1}, codes.InvalidArgument, "limit", nil},
		{"limit too large", &spv1.ListDeliveriesRequest{Webhook: "ops", Limit: 1001}, codes.InvalidArgument, "limit", nil},
		{"bad input before an unknown name", &spv1.ListDeliveriesRequest{Webhook: "nobody", State: "lost"}, codes.InvalidArgument, "state", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := c.ListDeliveries(ctx, tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			if tc.field != "" && !hasViolation(status.Convert(err), tc.field) {
				t.Fatalf("no violation of %s in %v", tc.field, err)
			}
			if tc.code == codes.NotFound && !strings.Contains(status.Convert(err).Message(), "nobody") {
				t.Fatalf("NotFound does not name the webhook: %v", err)
			}
			var ids []string
			for _, d := range resp.GetDeliveries() {
				ids = append(ids, d.GetId())
			}
			if !reflect.DeepEqual(ids, tc.want) {
				t.Fatalf("deliveries %v, want %v", ids, tc.want)
			}
			noLeak(t, "ListDeliveries", prototext.Format(resp))
		})
	}

	// What one delivery shows: names read out of the event, its attempts,
	// the error with the URL's query string left out.
	resp, err := c.ListDeliveries(ctx, &spv1.ListDeliveriesRequest{Webhook: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]*spv1.Delivery{}
	for _, d := range resp.GetDeliveries() {
		byID[d.GetId()] = d
	}
	dead, pending, delivered := byID["ev2/ops"], byID["ev3/ops"], byID["ev1/ops"]
	if dead.GetWebhook() != "ops" || dead.GetEventId() != "ev2" || dead.GetEventType() != "io.secretplane.rotation.completed" ||
		dead.GetRotationId() != "rot-2" || dead.GetSecret() != "payments/api-key" || dead.GetState() != "dead" || dead.GetAttempts() != 8 ||
		dead.GetNextAttemptTime() != nil || dead.GetCreateTime() == nil || !dead.GetUpdateTime().AsTime().After(dead.GetCreateTime().AsTime()) {
		t.Fatalf("dead delivery: %v", dead)
	}
	if want := `POST: Post "https://hooks.example.com/ops/events": dial tcp: lookup hooks.example.com: no such host`; dead.GetLastError() != want {
		t.Fatalf("dead delivery's error:\n got %s\nwant %s", dead.GetLastError(), want)
	}
	if pending.GetState() != "pending" || pending.GetAttempts() != 2 || pending.GetLastError() != "POST answered HTTP 503" ||
		pending.GetNextAttemptTime() == nil || !pending.GetNextAttemptTime().AsTime().After(time.Now()) {
		t.Fatalf("pending delivery: %v", pending)
	}
	if delivered.GetState() != "delivered" || delivered.GetAttempts() != 1 || delivered.GetLastError() != "" || delivered.GetNextAttemptTime() != nil {
		t.Fatalf("delivered delivery: %v", delivered)
	}
}

// Webhooks are operator-level: admin on "*". A team's admin, a workload
// and an unauthenticated client are refused; refusals and the admin's
// calls are audited, naming the webhook.
func TestWebhookAuthorization(t *testing.T) {
	e := newWebhookEnv(t)
	ctx := ctxT(t)
	td := e.admin.ID().TrustDomain().IDString()
	if _, err := spv1.NewPolicyServiceClient(e.dial(t, e.admin)).PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: &spv1.Policy{
		Name: "payments-admin", Subject: td + "/payments/lead", Verbs: []string{"admin", "rotate"}, Objects: []string{"payments/*"}}}); err != nil {
		t.Fatal(err)
	}
	lead := issueFor(t, e, "/payments/lead")
	noTLSCert := identity.ClientTLSConfig(e.admin, e.serverID)
	noTLSCert.GetClientCertificate = nil
	callers := []struct {
		name string
		c    spv1.WebhookServiceClient
		code codes.Code
	}{
		{"root admin", webhookClient(t, e, e.admin), codes.OK},
		{"team admin", webhookClient(t, e, lead), codes.PermissionDenied},
		{"workload", webhookClient(t, e, e.workload), codes.PermissionDenied},
		// mutual TLS refuses it at the handshake, before any handler
		{"no client certificate", spv1.NewWebhookServiceClient(e.dialTLS(t, noTLSCert)), codes.Unavailable},
	}
	for _, caller := range callers {
		t.Run(caller.name, func(t *testing.T) {
			_, err := caller.c.ListWebhooks(ctx, &spv1.ListWebhooksRequest{})
			if status.Code(err) != caller.code {
				t.Fatalf("ListWebhooks: got %v, want %v", err, caller.code)
			}
			_, err = caller.c.ListDeliveries(ctx, &spv1.ListDeliveriesRequest{Webhook: "ops"})
			if status.Code(err) != caller.code {
				t.Fatalf("ListDeliveries: got %v, want %v", err, caller.code)
			}
			if caller.code == codes.PermissionDenied && !strings.Contains(err.Error(), "admin on *") {
				t.Fatalf("the refusal does not name what is missing: %v", err)
			}
		})
	}
	for _, who := range []struct {
		actor, decision string
	}{{e.admin.ID().String(), "allow"}, {lead.ID().String(), "deny"}} {
		ev, err := e.audit.QueryAudit(ctx, store.AuditQuery{Actor: who.actor, Action: "WebhookService.ListDeliveries", Limit: 1, Newest: true})
		if err != nil || len(ev) != 1 || ev[0].Decision != who.decision || ev[0].Target != "webhook:ops" {
			t.Fatalf("audit of %s's ListDeliveries: %+v %v", who.actor, ev, err)
		}
	}
}
