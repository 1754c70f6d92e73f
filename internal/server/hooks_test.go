package server_test

import (
	"context"
	"strings"
	"testing"

	"github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/store"
)

// Every rotation hook whose name or target is wrong is refused at startup,
// named, without its URL; the good ones are not mentioned.
func TestNewRefusesBadRotationHooks(t *testing.T) {
	f := newFixture(t)
	f.listen(t)
	defer f.cfg.Listener.Close()
	f.cfg.Rotation.Hooks = map[string]string{
		"good":      "exec:/bin/sh",
		"api":       "https://hooks.example.com/rotate",
		"plaintext": "http://hooks.example.com/rotate?token=t0ps3cret",
		"creds":     "https://ops:hunter2@hooks.example.com/",
		"relative":  "exec:bin/hook",
		"missing":   "exec:/nonexistent/hook",
		"Upper":     "exec:/bin/sh",
	}
	_, err := server.New(context.Background(), f.cfg)
	if err == nil {
		t.Fatal("a server with bad rotation hooks started")
	}
	msg := err.Error()
	for _, want := range []string{"refusing to start", "rotation.hooks: hook plaintext:", "rotation.hooks: hook creds:", "rotation.hooks: hook relative:", "rotation.hooks: hook missing:", `rotation.hooks: hook name "Upper"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
	for _, never := range []string{"hook good", "hook api", "t0ps3cret", "hunter2", "hooks.example.com"} {
		if strings.Contains(msg, never) {
			t.Errorf("%q in:\n%s", never, msg)
		}
	}
}

// With hooks configured, the method hook is there for policies to select
// one; without, it says none is configured.
func TestHookMethodIsRegistered(t *testing.T) {
	f := newFixture(t)
	f.listen(t)
	srv, err := server.New(context.Background(), f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = srv.Run(ctx)
	}()
	_, err = srv.Rotations().SetPolicy(context.Background(), store.RotationPolicy{Secret: "payments/db", Method: "hook", Params: map[string]string{"hook": "db"}})
	if err == nil || !strings.Contains(err.Error(), "no hooks are configured") {
		t.Fatalf("policy with no hooks configured: %v", err)
	}
}
