package rotation_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/secretplane/secretplane/client"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/internal/server"
	"github.com/secretplane/secretplane/store"
)

// hookScript copies the hook package's test script into a directory of
// its own (where it keeps steps.log and the credentials it made) and
// returns its path.
func hookScript(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("hook", "testdata", "hook.sh"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "hook.sh")
	if err := os.WriteFile(path, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// syncBuffer is the server's log, written from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// An exec hook rotates a local-backend secret: it is called for create,
// set, test and finish in that order with the rotation id, and the watcher
// gets the value it made, each hook step audited. A hook whose test step
// fails makes the rotation fail in propagating, naming the step, with no
// consumer given the new value; the secret is rotated again after. The
// values the hook made appear in no log line, rotation detail or audit
// event.
func TestHookRotation(t *testing.T) {
	path := hookScript(t)
	dir := filepath.Dir(path)
	logs := &syncBuffer{}
	f := newFixture(t, func(c *server.Config) {
		c.Rotation.Hooks = map[string]string{"db": "exec:" + path}
		c.Log.Out, c.Log.Level = logs, "debug"
	})
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	m := f.srv.Rotations()
	policy := func(mode string) {
		t.Helper()
		if _, err := m.SetPolicy(ctx, store.RotationPolicy{Secret: "payments/db", Method: "hook", Params: map[string]string{"hook": "db", "mode": mode, "pool": "primary"}}); err != nil {
			t.Fatal(err)
		}
	}
	var applied atomic.Int64
	_, w := f.watcher(ctx, "/app/one", "payments/db", &applied)
	holds := func(want []byte) client.Secret {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; {
			got, _ := w.Get("payments/db")
			if bytes.Equal(got.Value, want) {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("the watcher holds %s, not the value wanted", got.Version)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	holds([]byte("initial-value"))
	made := func(id string) []byte { // the credential the hook made for rotation id
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, id+".value"))
		if err != nil {
			t.Fatal(err)
		}
		v, err := base64.StdEncoding.DecodeString(string(raw))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	logged := func(id string) []string { // the hook's log of rotation id's steps
		raw, _ := os.ReadFile(filepath.Join(dir, "steps.log"))
		var out []string
		for _, l := range strings.Split(string(raw), "\n") {
			if fs := strings.Fields(l); len(fs) == 3 && fs[1] == id {
				out = append(out, fs[0]+" "+fs[2])
			}
		}
		return out
	}
	audited := func(id string, until string) []string { // rotation id's audited steps, once until is
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; {
			evs, err := f.srv.Audit().QueryAudit(ctx, store.AuditQuery{Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			var steps []string
			for _, e := range evs {
				if strings.HasPrefix(e.Action, "rotation.") && strings.Contains(e.Target, id) {
					steps = append(steps, strings.TrimPrefix(e.Action, "rotation.")+"="+e.Outcome)
				}
			}
			if slices.Contains(steps, until) || time.Now().After(deadline) {
				return steps
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// A rotation through every step.
	policy("ok")
	r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Actor: "spiffe://" + td + "/ops/admin"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != "hook" {
		t.Fatalf("the policy's method is not the rotation's: %+v", r)
	}
	done := wait(t, m, r.ID)
	if done.State != rotation.Completed {
		t.Fatalf("rotation: %+v", done)
	}
	if got, want := logged(r.ID), []string{"create value=no", "set value=yes", "test value=yes", "finish value=no"}; !slices.Equal(got, want) {
		t.Fatalf("the hook was called for %v, want %v", got, want)
	}
	first := made(r.ID)
	if got := holds(first); got.Version != done.ToVersion {
		t.Fatalf("the watcher holds the hook's value as %s, the rotation made %s", got.Version, done.ToVersion)
	}
	want := []string{"start=ok", "create_version=ok", "propagating=ok", "hook_set=ok", "hook_test=ok", "verifying=ok", "hook_finish=ok", "completed=ok"}
	if got := audited(r.ID, "completed=ok"); !slices.Equal(got, want) {
		t.Fatalf("audited %v, want %v", got, want)
	}

	// A hook whose test step fails: nothing new is served, and the new
	// version (already the local backend's latest) is rolled back.
	policy("fail-test")
	before := applied.Load()
	r2, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db"})
	if err != nil {
		t.Fatal(err)
	}
	failed := wait(t, m, r2.ID, rotation.RolledBack)
	if !strings.Contains(failed.Detail, "hook rotator, test step: hook db: test: the command exited with status 4") {
		t.Fatalf("rotation with a failing test step: %+v", failed)
	}
	if got, want := logged(r2.ID), []string{"create value=no", "set value=yes", "test value=yes"}; !slices.Equal(got, want) {
		t.Fatalf("the hook was called for %v, want %v", got, want)
	}
	if got := audited(r2.ID, "failed=Failed"); !slices.Contains(got, "hook_set=ok") || !slices.Contains(got, "hook_test=Failed") || slices.Contains(got, "verifying=ok") || slices.Contains(got, "hook_finish=ok") {
		t.Fatalf("audited %v", got)
	}
	time.Sleep(500 * time.Millisecond) // what a push would have taken
	if got, _ := w.Get("payments/db"); !bytes.Equal(got.Value, first) || applied.Load() != before {
		t.Fatalf("after the failed test step the watcher holds %s (applied %d times, %d before), not the previous value", got.Version, applied.Load(), before)
	}
	second := made(r2.ID)
	if bytes.Equal(second, first) {
		t.Fatal("the hook made the same credential for two rotations")
	}

	// And again, with a hook that works.
	policy("ok")
	r3, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db"})
	if err != nil {
		t.Fatalf("rotate after a failed one: %v", err)
	}
	if again := wait(t, m, r3.ID); again.State != rotation.Completed {
		t.Fatalf("rotation after a failed one: %+v", again)
	}
	third := made(r3.ID)
	holds(third)

	// Canaries: the values the hook made, and what it wrote to stderr.
	rots, err := m.List(ctx, store.RotationQuery{Secret: "payments/db", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := f.srv.Audit().QueryAudit(ctx, store.AuditQuery{Limit: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	for _, x := range rots {
		seen.WriteString(x.Detail + "\n")
	}
	for _, e := range evs {
		seen.WriteString(strings.Join([]string{e.Actor, e.Action, e.Target, e.Decision, e.Policy, e.Outcome, e.Ref, e.Refused}, " ") + "\n")
	}
	out := logs.String()
	if !strings.Contains(out, r2.ID) {
		t.Fatalf("the server's log was not captured (no mention of the failed rotation):\n%s", out)
	}
	for i, v := range [][]byte{first, second, third} {
		for _, form := range []string{string(v), base64.StdEncoding.EncodeToString(v), base64.RawURLEncoding.EncodeToString(v), hex.EncodeToString(v), strings.TrimPrefix(string(v), "canary-")} {
			if strings.Contains(out, form) {
				t.Errorf("value %d is in the server's log", i+1)
			}
			if strings.Contains(seen.String(), form) {
				t.Errorf("value %d is in a rotation's detail or the audit log", i+1)
			}
		}
	}
	if strings.Contains(out, "canary") || strings.Contains(seen.String(), "canary") {
		t.Error("the hook's output (its stderr) is in the server's log, a rotation's detail or the audit log")
	}
}

// A hook whose test step fails leaves consumers on the previous value
// after the cache has expired too, not only while it holds the value read
// before the rotation.
func TestHookTestFailureServesNothingNewAfterTheCacheExpires(t *testing.T) {
	path := hookScript(t)
	f := newFixture(t, func(c *server.Config) {
		c.Rotation.Hooks = map[string]string{"db": "exec:" + path}
		c.Cache.TTL = 200 * time.Millisecond
	})
	f.seed("payments/db", "initial-value")
	ctx := context.Background()
	m := f.srv.Rotations()
	if _, err := m.SetPolicy(ctx, store.RotationPolicy{Secret: "payments/db", Method: "hook", Params: map[string]string{"hook": "db", "mode": "fail-test"}}); err != nil {
		t.Fatal(err)
	}
	var applied atomic.Int64
	_, w := f.watcher(ctx, "/app/one", "payments/db", &applied)
	r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db"})
	if err != nil {
		t.Fatal(err)
	}
	wait(t, m, r.ID, rotation.RolledBack)
	time.Sleep(time.Second) // the cache expires, and the watch polls
	if got, _ := w.Get("payments/db"); string(got.Value) != "initial-value" {
		t.Fatalf("after the failed test step the watcher was given version %s", got.Version)
	}
}

// An emergency rotation that fails on its way out is not rolled back, nor
// can it be cancelled or rolled back by hand: the version it replaced is
// treated as leaked and never served again.
func TestEmergencyRotationIsNeverRolledBack(t *testing.T) {
	path := hookScript(t)
	f := newFixture(t, func(c *server.Config) {
		c.Rotation.Hooks = map[string]string{"db": "exec:" + path}
		c.Rotation.AutoRollback = true
	})
	f.seed("payments/db", "leaked-value")
	ctx := context.Background()
	m := f.srv.Rotations()
	if _, err := m.SetPolicy(ctx, store.RotationPolicy{Secret: "payments/db", Method: "hook", Params: map[string]string{"hook": "db", "mode": "fail-test"}}); err != nil {
		t.Fatal(err)
	}
	var applied atomic.Int64
	_, w := f.watcher(ctx, "/app/one", "payments/db", &applied)
	r, err := m.Start(ctx, rotation.StartRequest{Secret: "payments/db", Emergency: true, Actor: "spiffe://" + td + "/ops/admin"})
	if err != nil {
		t.Fatal(err)
	}
	done := wait(t, m, r.ID, rotation.Failed)
	if !strings.Contains(done.Detail, "not rolled back") {
		t.Fatalf("detail %q does not say it was not rolled back", done.Detail)
	}
	time.Sleep(500 * time.Millisecond) // a rollback would have been pushed by now
	if got, _ := w.Get("payments/db"); string(got.Value) == "leaked-value" {
		t.Fatal("the leaked value is served again after the emergency rotation failed")
	}
	if _, err := m.Rollback(ctx, r.ID, "spiffe://"+td+"/ops/admin"); !errors.Is(err, rotation.ErrEmergencyRollback) {
		t.Fatalf("rollback of a failed emergency rotation: %v", err)
	}
}
