package hook_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/controlplane/rotation/hook"
)

// request is a hook's request as the tests read it back.
type request struct {
	RotationID     string            `json:"rotation_id"`
	Secret         string            `json:"secret"`
	Step           string            `json:"step"`
	Params         map[string]string `json:"params"`
	CurrentVersion *string           `json:"current_version"`
	Value          *string           `json:"value"`
}

// rig is a configured hook "db" over one transport, and what it was sent.
type rig struct {
	rot *hook.Rotator
	dir string // exec: where the script keeps what it did
	// last returns the last request of each step.
	last func(t *testing.T) map[string]request
	// steps returns the steps called, in order.
	steps func(t *testing.T) []string
	// bad counts requests that were not correctly signed (https).
	bad func() int
}

// script copies testdata/hook.sh into a directory of its own and returns
// its path.
func script(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "hook.sh"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "hook.sh")
	if err := os.WriteFile(path, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return path
}

func execRig(t *testing.T) *rig {
	path := script(t)
	dir := filepath.Dir(path)
	rot, err := hook.New(hook.Options{Hooks: map[string]string{"db": "exec:" + path}})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{
		rot: rot, dir: dir,
		last: func(t *testing.T) map[string]request {
			out := map[string]request{}
			for _, step := range []string{hook.Create, hook.Set, hook.Test, hook.Finish} {
				raw, err := os.ReadFile(filepath.Join(dir, step+".json"))
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				var r request
				if err != nil || json.Unmarshal(raw, &r) != nil {
					t.Fatalf("%s request %q: %v", step, raw, err)
				}
				out[step] = r
			}
			return out
		},
		steps: func(t *testing.T) []string {
			raw, _ := os.ReadFile(filepath.Join(dir, "steps.log"))
			var out []string
			for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
				if l != "" {
					out = append(out, strings.Fields(l)[0])
				}
			}
			return out
		},
		bad: func() int { return 0 },
	}
}

// httpsRig is a TLS hook server that behaves as testdata/hook.sh does,
// and refuses requests whose signature is not the webhook key's.
func httpsRig(t *testing.T) *rig {
	key := []byte("hook-signing-key-for-the-tests!")
	var (
		mu    sync.Mutex
		last  = map[string]request{}
		steps []string
		made  = map[string]string{} // rotation id → base64 value
		bad   int
	)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sig := r.Header.Get(notify.Signature)
		ts, _, _ := strings.Cut(strings.TrimPrefix(sig, "t="), ",")
		sec, _ := strconv.ParseInt(ts, 10, 64)
		var req request
		mu.Lock()
		if sig == "" || notify.Sign(key, time.Unix(sec, 0), body) != sig || r.Header.Get("Content-Type") != "application/json" || r.URL.Path != "/rotate" {
			bad++
			mu.Unlock()
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if json.Unmarshal(body, &req) != nil {
			bad++
		}
		last[req.Step] = req
		steps = append(steps, req.Step)
		mu.Unlock()
		value := ""
		if req.Value != nil {
			value = *req.Value
		}
		switch req.Params["mode"] {
		case "garbage":
			io.WriteString(w, "canary-garbage-output: not JSON")
			return
		case "fail":
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, "canary-body-text")
			return
		case "hang":
			<-r.Context().Done()
			return
		case "big":
			w.Write(bytes.Repeat([]byte("c"), 2_000_000))
			return
		case "redirect":
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
			return
		case "toobig":
			if req.Step == hook.Create {
				json.NewEncoder(w).Encode(map[string][]byte{"value": bytes.Repeat([]byte("c"), 600_000)})
				return
			}
		case "fail-test":
			if req.Step == hook.Test {
				w.WriteHeader(http.StatusInternalServerError)
				io.WriteString(w, "canary-body-text: the new credential does not work")
				return
			}
		}
		mu.Lock()
		defer mu.Unlock()
		switch req.Step {
		case hook.Create:
			if made[req.RotationID] == "" {
				made[req.RotationID] = base64.StdEncoding.EncodeToString([]byte("canary-" + strconv.Itoa(len(made)) + "-" + req.RotationID))
			}
			json.NewEncoder(w).Encode(map[string]string{"value": made[req.RotationID]})
		case hook.Set, hook.Test:
			if value != made[req.RotationID] {
				w.WriteHeader(http.StatusConflict)
			}
		}
	}))
	t.Cleanup(srv.Close)
	rot, err := hook.New(hook.Options{Hooks: map[string]string{"db": srv.URL + "/rotate?token=canary-url-token"}, Client: srv.Client(), Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{
		rot: rot,
		last: func(*testing.T) map[string]request {
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(last)
		},
		steps: func(*testing.T) []string {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(steps)
		},
		bad: func() int {
			mu.Lock()
			defer mu.Unlock()
			return bad
		},
	}
}

var transports = []struct {
	name string
	rig  func(*testing.T) *rig
}{{"exec", execRig}, {"https", httpsRig}}

// Every step reaches the hook with the rotation id, the policy's
// parameters but hook, and the new value for set and test only; create
// called again for the rotation returns what the hook decided (here: the
// credential it made before); every https request is signed.
func TestEveryStepOverEachTransport(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			h := tr.rig(t)
			ctx := context.Background()
			params := map[string]string{"hook": "db", "mode": "ok", "pool": "primary"}
			if err := h.rot.Check(params); err != nil {
				t.Fatal(err)
			}
			req := rotation.Request{RotationID: "rot-0123abcd", Secret: "payments/db", Params: params, Current: backend.Value{Version: "v1", Data: []byte("the-old-value")}}
			v, err := h.rot.Next(ctx, req)
			if err != nil || !strings.HasPrefix(string(v), "canary-") {
				t.Fatalf("create: %q %v", v, err)
			}
			again, err := h.rot.Next(ctx, req) // as a resumed pending step
			if err != nil || !bytes.Equal(again, v) {
				t.Fatalf("create again: %q %v, want %q", again, err, v)
			}
			req.Current = backend.Value{Version: "v2"}
			if err := h.rot.Set(ctx, req, v); err != nil {
				t.Fatalf("set: %v", err)
			}
			if err := h.rot.Test(ctx, req, v); err != nil {
				t.Fatalf("test: %v", err)
			}
			if err := h.rot.Test(ctx, req, []byte("not-the-value")); err == nil {
				t.Fatal("test of another value passed: the value did not reach the hook")
			}
			req.Current = backend.Value{}
			if err := h.rot.Finish(ctx, req); err != nil {
				t.Fatalf("finish: %v", err)
			}
			if got, want := h.steps(t), []string{"create", "create", "set", "test", "test", "finish"}; !slices.Equal(got, want) {
				t.Fatalf("steps %v, want %v", got, want)
			}
			last := h.last(t)
			b64 := base64.StdEncoding.EncodeToString(v)
			for _, tc := range []struct {
				step, version, value string
			}{{"create", "v1", ""}, {"set", "v2", b64}, {"test", "v2", base64.StdEncoding.EncodeToString([]byte("not-the-value"))}, {"finish", "", ""}} {
				r, ok := last[tc.step]
				switch {
				case !ok:
					t.Fatalf("no %s request", tc.step)
				case r.RotationID != "rot-0123abcd" || r.Secret != "payments/db" || r.Step != tc.step:
					t.Errorf("%s: %+v", tc.step, r)
				case !maps.Equal(r.Params, map[string]string{"mode": "ok", "pool": "primary"}):
					t.Errorf("%s: params %v (the hook parameter is the server's, not the hook's)", tc.step, r.Params)
				case r.CurrentVersion == nil || *r.CurrentVersion != tc.version:
					t.Errorf("%s: current_version %v, want %q", tc.step, r.CurrentVersion, tc.version)
				case tc.value == "" && r.Value != nil:
					t.Errorf("%s was sent a value", tc.step)
				case tc.value != "" && (r.Value == nil || *r.Value != tc.value):
					t.Errorf("%s: value %v, want the new one", tc.step, r.Value)
				}
			}
			if n := h.bad(); n > 0 {
				t.Fatalf("%d requests were not signed with the webhook key", n)
			}
		})
	}
}

// A hook that misbehaves fails its step with an error that names the
// hook, the step and what went wrong, and holds nothing of its output.
func TestMisbehavingHooksFailClearly(t *testing.T) {
	cases := []struct {
		name, mode, step string
		timeout          time.Duration
		exec, https      string // what the error says
	}{
		{"garbage output", "garbage", hook.Create, 0, `the response is not JSON {"value": base64}`, `the response is not JSON {"value": base64}`},
		{"non-zero exit, HTTP 500", "fail", hook.Create, 0, "the command exited with status 3 (stderr: 19 bytes, not shown)", "POST answered HTTP 500 (body: 16 bytes, not shown)"},
		{"failing set", "fail", hook.Set, 0, "the command exited with status 3", "POST answered HTTP 500"},
		{"failing finish", "fail", hook.Finish, 0, "the command exited with status 3", "POST answered HTTP 500"},
		{"failing test", "fail-test", hook.Test, 0, "the command exited with status 4 (stderr: 53 bytes, not shown)", "POST answered HTTP 500 (body: 50 bytes, not shown)"},
		{"hangs", "hang", hook.Create, 500 * time.Millisecond, "the command did not finish in time (context deadline exceeded); its process group was killed", "POST: context deadline exceeded"},
		{"oversized output", "big", hook.Create, 0, "the response is over 1048576 bytes", "the response is over 1048576 bytes"},
		{"value over the backends' limit", "toobig", hook.Create, 0, "the value is 600000 bytes; the limit is 524288", "the value is 600000 bytes; the limit is 524288"},
		{"redirect", "redirect", hook.Create, 0, "", "POST answered HTTP 307"},
	}
	for _, tr := range transports {
		for _, tc := range cases {
			want := tc.exec
			if tr.name == "https" {
				want = tc.https
			}
			if want == "" {
				continue
			}
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				h := tr.rig(t)
				ctx := context.Background()
				if tc.timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.timeout)
					defer cancel()
				}
				req := rotation.Request{RotationID: "rot-fails", Secret: "payments/db", Params: map[string]string{"hook": "db", "mode": tc.mode}}
				value := []byte("canary-the-new-value")
				start := time.Now()
				var err error
				switch tc.step {
				case hook.Create:
					var v []byte
					v, err = h.rot.Next(ctx, req)
					if v != nil {
						t.Errorf("a value came with the error: %q", v)
					}
				case hook.Set:
					err = h.rot.Set(ctx, req, value)
				case hook.Test:
					err = h.rot.Test(ctx, req, value)
				case hook.Finish:
					err = h.rot.Finish(ctx, req)
				}
				if err == nil {
					t.Fatal("no error")
				}
				msg := err.Error()
				if !strings.HasPrefix(msg, "hook db: "+tc.step+": ") || !strings.Contains(msg, want) {
					t.Fatalf("error %q, want %q about hook db's %s step", msg, want, tc.step)
				}
				if strings.Contains(msg, "canary") || strings.Contains(msg, "ccccc") || strings.Contains(msg, "Y2Nj") || strings.Contains(msg, "token") {
					t.Fatalf("the error holds output or the URL: %q", msg)
				}
				if elapsed := time.Since(start); elapsed > 5*time.Second {
					t.Fatalf("the step took %s", elapsed)
				}
			})
		}
	}
}

// A hook that hangs is killed with everything it started when the step's
// time is up.
func TestHangingHookIsKilledWithItsProcessGroup(t *testing.T) {
	h := execRig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := h.rot.Next(ctx, rotation.Request{RotationID: "rot-hang", Secret: "payments/db", Params: map[string]string{"hook": "db", "mode": "hang"}})
	if err == nil || !strings.Contains(err.Error(), "did not finish in time") {
		t.Fatalf("hang: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(h.dir, "sleep.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if !alive(pid) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hook's child %d is still running", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive says whether pid runs (a zombie does not: it is only waiting to
// be reaped by whoever adopted it).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

// Targets are https:// URLs without credentials or absolute paths to
// executable files; names are lower-case. Every bad one is named, and no
// error quotes a URL.
func TestTargets(t *testing.T) {
	dir := t.TempDir()
	good := script(t)
	plain := filepath.Join(dir, "plain")
	open := filepath.Join(dir, "open")
	for path, mode := range map[string]os.FileMode{plain: 0o644, open: 0o777} {
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name, target, want string
	}{
		{"db", "exec:" + good, ""},
		{"api-keys", "https://hooks.example.com/rotate?token=abc", ""},
		{"db.v2_x", "https://hooks.example.com:8443/", ""},
		{"db", "exec:relative/hook.sh", "absolute"},
		{"db", "exec:" + dir + "/../x", "clean"},
		{"db", "exec:" + filepath.Join(dir, "missing"), "no such file"},
		{"db", "exec:" + dir, "not a regular file"},
		{"db", "exec:" + plain, "not executable"},
		{"db", "exec:" + open, "writable by anyone"},
		{"db", "http://hooks.example.com/rotate", "https:// URL"},
		{"db", "https://user:hunter2@hooks.example.com/", "without credentials"},
		{"db", "https:///path", "https:// URL"},
		{"db", "/usr/bin/hook", "https:// URL"},
		{"db", "", "https:// URL"},
		{"DB", "exec:" + good, "lower-case"},
		{"a/b", "exec:" + good, `has a "/"`},
		{"", "exec:" + good, "required"},
	}
	for _, tc := range cases {
		err := hook.CheckTarget(tc.name, tc.target)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s=%s: %v", tc.name, tc.target, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s=%s: %v, want an error about %s", tc.name, tc.target, err, tc.want)
		case err != nil && (strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "hooks.example.com")):
			t.Errorf("%s: the error quotes the URL: %v", tc.name, err)
		}
	}
	_, err := hook.New(hook.Options{Hooks: map[string]string{"ok": "exec:" + good, "first": "http://x", "second": "exec:" + plain}})
	if err == nil || !strings.Contains(err.Error(), "hook first:") || !strings.Contains(err.Error(), "hook second:") || strings.Contains(err.Error(), "hook ok:") {
		t.Fatalf("New with two bad hooks: %v", err)
	}
}

// A policy selects a configured hook by name; it cannot name a target.
func TestCheckParams(t *testing.T) {
	none, err := hook.New(hook.Options{})
	if err != nil {
		t.Fatal(err)
	}
	some, err := hook.New(hook.Options{Hooks: map[string]string{"db": "exec:" + script(t), "api": "https://hooks.example.com/"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		rot    *hook.Rotator
		params map[string]string
		want   string
	}{
		{"no hooks configured", none, map[string]string{"hook": "db"}, "no hooks are configured"},
		{"no parameters", some, nil, "the hook parameter is required (configured: api, db)"},
		{"unknown hook", some, map[string]string{"hook": "exec:/bin/sh"}, `hook "exec:/bin/sh" is not configured on this server (configured: api, db)`},
		{"selected", some, map[string]string{"hook": "db", "pool": "primary"}, ""},
	} {
		err := tc.rot.Check(tc.params)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := some.Next(context.Background(), rotation.Request{RotationID: "rot-x", Params: map[string]string{"hook": "nope"}}); err == nil {
		t.Fatal("create with an unknown hook ran")
	}
}
