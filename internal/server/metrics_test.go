package server_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/store"
)

// receiver is a webhook receiver (TLS, as webhooks must be) that keeps
// every CloudEvent it gets.
type receiver struct {
	srv    *httptest.Server
	caFile string
	mu     sync.Mutex
	events []map[string]any
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var ev map[string]any
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, "bad event", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	r.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(r.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

// ofType returns the events of type typ received so far.
func (r *receiver) ofType(typ string) []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for _, e := range r.events {
		if e["type"] == typ {
			out = append(out, e)
		}
	}
	return out
}

// scrape reads the metrics listener's families.
func scrape(t *testing.T, addr string) map[string]*familyT {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	out := map[string]*familyT{}
	for name, f := range fams {
		ft := &familyT{}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			ft.samples = append(ft.samples, sampleT{labels, v})
		}
		out[name] = ft
	}
	return out
}

type sampleT struct {
	labels map[string]string
	value  float64
}

type familyT struct{ samples []sampleT }

// value is the sample whose labels include want (ok false when none).
func (f *familyT) value(want map[string]string) (float64, bool) {
	if f == nil {
		return 0, false
	}
next:
	for _, s := range f.samples {
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		return s.value, true
	}
	return 0, false
}

func eventually(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A certificate inside its warning window is in the expiry metric and its
// owner's webhook is told once for the lead time crossed (not again at
// later refreshes); a failed rotation is counted, shows as the latest
// rotation's state, and reaches the owner's webhook; a required secret
// that stops resolving makes /readyz answer 503 naming it.
func TestMetricsAlertsAndReadiness(t *testing.T) {
	f := newFixture(t)
	f.listen(t)
	rcv := newReceiver(t)
	keyFile := filepath.Join(f.dir, "webhook.key")
	if err := os.WriteFile(keyFile, []byte("0123456789abcdef-webhook-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.cfg.Webhooks = map[string]string{"payments-oncall": rcv.srv.URL + "/alerts", "platform": rcv.srv.URL + "/platform"}
	f.cfg.WebhookKeyFile, f.cfg.WebhookCAFile = keyFile, rcv.caFile
	f.cfg.Alerts.Routes = map[string]string{"team-payments": "payments-oncall"}
	f.cfg.Alerts.LeadTimes = []time.Duration{7 * 24 * time.Hour, 24 * time.Hour}
	f.cfg.Metrics.Listen = "127.0.0.1:0"
	f.cfg.Metrics.Refresh = 100 * time.Millisecond
	f.cfg.Rotation.Deadline = 500 * time.Millisecond
	srv, err := server.New(context.Background(), f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(ctx) }()
	t.Cleanup(func() { stop(); <-ran })

	// A certificate that expires within the hour (the test CA's lifetime
	// bounds it): inside both leads, so its owner gets the tightest one's
	// alert only, not the 7-day one as well.
	chain, key, err := f.ca.IssueCertificate(time.Now(), "gw.payments.test", []string{"gw.payments.test"}, 72*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bg := context.Background()
	if _, err := f.local.Write(bg, secretref.MustParse("local://payments/gw#pem"), append(chain, key...)); err != nil {
		t.Fatal(err)
	}
	put := func(s store.Secret) {
		t.Helper()
		if _, err := srv.Store().PutSecret(bg, s, store.Precondition{}); err != nil {
			t.Fatal(err)
		}
	}
	put(store.Secret{Name: "payments/gw", Ref: "local://payments/gw#pem", Kind: "tls_certificate", Owner: "team-payments"})
	block, _ := pem.Decode(chain)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}

	eventually(t, "the expiry alert", 10*time.Second, func() bool { return len(rcv.ofType(notify.AlertSecretExpiring)) > 0 })
	m := scrape(t, srv.MetricsAddr())
	got, ok := m["secretplane_secret_expiration_timestamp_seconds"].value(map[string]string{"secret": "payments/gw"})
	if !ok || int64(got) != leaf.NotAfter.Unix() {
		t.Fatalf("expiration metric = %v (present %v), want %d", got, ok, leaf.NotAfter.Unix())
	}
	time.Sleep(600 * time.Millisecond) // several refreshes more
	alerts := rcv.ofType(notify.AlertSecretExpiring)
	if len(alerts) != 1 {
		t.Fatalf("%d expiry alerts, want exactly one, for the 1-day lead: %v", len(alerts), alerts)
	}
	data, _ := alerts[0]["data"].(map[string]any)
	if alerts[0]["subject"] != "payments/gw" || data["lead_time"] != (24*time.Hour).String() || data["owner"] != "team-payments" {
		t.Fatalf("expiry alert = %v", alerts[0])
	}

	// A rotation that fails: a consumer seen on the current version never
	// acknowledges the new one before the deadline.
	if _, err := f.local.Write(bg, secretref.MustParse("local://payments/db#password"), []byte("pw-first-Jq2")); err != nil {
		t.Fatal(err)
	}
	put(store.Secret{Name: "payments/db", Ref: "local://payments/db#password", Owner: "team-payments"})
	srv.Consumers().Seen("spiffe://test.example/payments/api", "payments/db", "watch", "1")
	r, err := srv.Rotations().Start(bg, rotation.StartRequest{Secret: "payments/db", Actor: "spiffe://test.example/ops/admin"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the failed-rotation alert", 15*time.Second, func() bool { return len(rcv.ofType(notify.AlertRotationFailed)) > 0 })
	failed := rcv.ofType(notify.AlertRotationFailed)[0]
	if d, _ := failed["data"].(map[string]any); d["rotation"] != r.ID || failed["subject"] != "payments/db" {
		t.Fatalf("failed-rotation alert = %v", failed)
	}
	eventually(t, "the failed state in metrics", 5*time.Second, func() bool {
		m := scrape(t, srv.MetricsAddr())
		st, _ := m["secretplane_rotation_state"].value(map[string]string{"secret": "payments/db", "state": "failed"})
		n, _ := m["secretplane_rotation_failures_total"].value(map[string]string{"secret": "payments/db"})
		lag, _ := m["secretplane_consumers_lagging"].value(map[string]string{"secret": "payments/db"})
		return st == 1 && n == 1 && lag == 1 // the consumer that never acknowledged
	})

	// Ready, until a required secret does not resolve.
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + srv.MetricsAddr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz = %d %q, want 200", code, body)
	}
	put(store.Secret{Name: "billing/api-key", Ref: "local://billing/api#key", Required: true})
	eventually(t, "/readyz to fail", 5*time.Second, func() bool {
		code, body := readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "billing/api-key") && strings.Contains(body, "not found")
	})
	if v, ok := scrape(t, srv.MetricsAddr())["secretplane_required_secret_resolvable"].value(map[string]string{"secret": "billing/api-key"}); !ok || v != 0 {
		t.Fatalf("required_secret_resolvable = %v (present %v), want 0", v, ok)
	}
	if resp, err := http.Get("http://" + srv.MetricsAddr() + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
}

// A route to a webhook that is not configured, and a lead time that is
// not positive, refuse the start, each named.
func TestAlertRoutesAreChecked(t *testing.T) {
	f := newFixture(t)
	f.listen(t)
	keyFile := filepath.Join(f.dir, "webhook.key")
	if err := os.WriteFile(keyFile, []byte("0123456789abcdef-webhook-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.cfg.Webhooks = map[string]string{"ops": "https://hooks.example.test/ops"}
	f.cfg.WebhookKeyFile = keyFile
	f.cfg.Alerts.Routes = map[string]string{"team-payments": "payments-oncall"}
	f.cfg.Alerts.DefaultRoute = "nobody"
	f.cfg.Alerts.LeadTimes = []time.Duration{-time.Hour}
	_, err := server.New(context.Background(), f.cfg)
	if err == nil {
		t.Fatal("started with routes to unknown webhooks")
	}
	for _, want := range []string{`team-payments routes to webhook "payments-oncall"`, `alerts.default_route: webhook "nobody"`, "alerts.lead_times: -1h0m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// The metrics listener takes a port of its own; a taken one refuses the
// start, naming it.
func TestMetricsListenerTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	f := newFixture(t)
	f.listen(t)
	f.cfg.Metrics.Listen = taken.Addr().String()
	if _, err := server.New(context.Background(), f.cfg); err == nil || !strings.Contains(err.Error(), "listen for metrics on "+taken.Addr().String()) {
		t.Fatalf("New = %v, want the taken metrics address named", err)
	}
}
