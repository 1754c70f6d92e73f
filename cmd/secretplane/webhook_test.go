package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/store"
)

// startDevServer runs a dev server in the process with tune applied, its
// data directory (where the CLI finds it and the dev admin) returned.
func startDevServer(t *testing.T, tune func(*server.Config)) (*server.Server, string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil { // dev mode refuses a data directory others can read
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Defaults()
	cfg.Dev, cfg.DataDir, cfg.Listener = true, dir, lis
	cfg.Metrics.Listen = "127.0.0.1:0" // not dev mode's fixed port
	cfg.Logger = slog.New(slog.DiscardHandler)
	if tune != nil {
		tune(&cfg)
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
	return srv, dir
}

// runCLI runs the CLI against the dev server of dataDir.
func runCLI(t *testing.T, dataDir string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := newRootCommand()
	root.SetArgs(append([]string{"--data-dir", dataDir, "--addr", "", "--cert", "", "--key", "", "--bundle", "", "--server-id", ""}, args...))
	root.SetOut(&out)
	root.SetErr(io.Discard)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestWebhookCommands(t *testing.T) {
	const token = "tok-0123456789abcdef"
	key := filepath.Join(t.TempDir(), "webhook.key")
	if err := os.WriteFile(key, []byte("webhook-signing-key-for-tests"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, dir := startDevServer(t, func(c *server.Config) {
		c.Webhooks = map[string]string{"ops": "https://hooks.example.com/ops?token=" + token}
		c.WebhookKeyFile = key
	})
	ctx := context.Background()
	later := time.Now().Add(time.Hour) // the notifier leaves them alone
	for _, ev := range []string{"ev1", "ev2", "ev3"} {
		body := `{"specversion":"1.0","id":"` + ev + `","type":"io.secretplane.rotation.completed","subject":"payments/db","data":{"rotation":"rot-` + ev + `","secret":"payments/db"}}`
		if err := srv.Store().EnqueueDeliveries(ctx, []store.Delivery{{ID: ev + "/ops", Webhook: "ops", EventType: "io.secretplane.rotation.completed", Body: []byte(body), NextAttempt: later}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	for _, d := range []store.Delivery{
		{ID: "ev1/ops", State: "delivered", Attempts: 1},
		{ID: "ev2/ops", State: "dead", Attempts: 8, LastError: "POST answered HTTP 500"},
	} {
		if err := srv.Store().UpdateDelivery(ctx, d); err != nil {
			t.Fatal(err)
		}
	}

	out, err := runCLI(t, dir, "webhook", "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[0], "LAST ERROR") ||
		strings.Join(strings.Fields(lines[1])[:5], " ") != "ops https://hooks.example.com/ops 1 1 1" || !strings.HasSuffix(lines[1], "POST answered HTTP 500") {
		t.Fatalf("webhook list:\n%s", out)
	}

	out, err = runCLI(t, dir, "-o", "json", "webhook", "list")
	if err != nil {
		t.Fatal(err)
	}
	var hooks struct {
		Webhooks []struct {
			Name, URL  string
			Configured bool
			Dead       string // int64: a string in protojson
		}
	}
	if err := json.Unmarshal([]byte(out), &hooks); err != nil || len(hooks.Webhooks) != 1 || hooks.Webhooks[0].Name != "ops" ||
		hooks.Webhooks[0].URL != "https://hooks.example.com/ops" || !hooks.Webhooks[0].Configured || hooks.Webhooks[0].Dead != "1" {
		t.Fatalf("webhook list -o json: %v\n%s", err, out)
	}

	cases := []struct {
		name string
		args []string
		rows []string // each row's first columns: event, type, secret, rotation, state, attempts
		code codes.Code
	}{
		{"all", []string{"ops"}, []string{
			"ev3 io.secretplane.rotation.completed payments/db rot-ev3 pending 0",
			"ev2 io.secretplane.rotation.completed payments/db rot-ev2 dead 8",
			"ev1 io.secretplane.rotation.completed payments/db rot-ev1 delivered 1",
		}, codes.OK},
		{"limit", []string{"ops", "--limit", "1"}, []string{"ev3 io.secretplane.rotation.completed payments/db rot-ev3 pending 0"}, codes.OK},
		{"state", []string{"ops", "--state", "dead"}, []string{"ev2 io.secretplane.rotation.completed payments/db rot-ev2 dead 8"}, codes.OK},
		{"unknown webhook", []string{"nobody"}, nil, codes.NotFound},
		{"bad state", []string{"ops", "--state", "gone"}, nil, codes.InvalidArgument},
		{"bad limit", []string{"ops", "--limit", "5000"}, nil, codes.InvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, dir, append([]string{"webhook", "deliveries"}, tc.args...)...)
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			if err != nil {
				return
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != len(tc.rows)+1 || !strings.HasPrefix(lines[0], "EVENT") {
				t.Fatalf("webhook deliveries %v:\n%s", tc.args, out)
			}
			for i, want := range tc.rows {
				if got := strings.Join(strings.Fields(lines[i+1])[:6], " "); got != want {
					t.Fatalf("row %d: %q, want %q\n%s", i, got, want, out)
				}
			}
		})
	}

	out, err = runCLI(t, dir, "-o", "json", "webhook", "deliveries", "ops", "--state", "dead")
	if err != nil {
		t.Fatal(err)
	}
	var ds struct {
		Deliveries []struct {
			ID, EventID, RotationID, Secret, State, LastError string
			Attempts                                          int
		}
	}
	if err := json.Unmarshal([]byte(out), &ds); err != nil || len(ds.Deliveries) != 1 {
		t.Fatalf("webhook deliveries -o json: %v\n%s", err, out)
	}
	if d := ds.Deliveries[0]; d.ID != "ev2/ops" || d.EventID != "ev2" || d.RotationID != "rot-ev2" || d.Secret != "payments/db" || d.State != "dead" ||
		d.Attempts != 8 || d.LastError != "POST answered HTTP 500" {
		t.Fatalf("webhook deliveries -o json: %+v", d)
	}
	if strings.Contains(out, "specversion") || strings.Contains(out, token) {
		t.Fatalf("the output carries a body or the URL's token:\n%s", out)
	}
}
