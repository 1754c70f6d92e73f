// Package hook is the external hook rotator: the rotation of a database
// user or a third-party API key is done by a program the operator runs,
// called at each step, as AWS's rotation Lambdas are (create, set, test,
// finish). It is a rotation.Rotator (create) and a rotation.Stepper (set,
// test, finish): set and test run before any consumer is given the new
// value, finish once every consumer has acknowledged it.
//
// Hooks are configured on the server only (rotation.hooks: name → target),
// never in a policy: a policy parameter naming a command or a URL would let
// anyone allowed to rotate run code. A policy selects one by name with the
// parameter hook=NAME; its other parameters are passed to the hook. A
// target is one of
//
//	https://host/path           POSTed the request as JSON; a 2xx answer
//	                            is success, its body the response. Signed
//	                            as webhooks are (X-Secretplane-Signature:
//	                            t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">)
//	                            when the server has a webhook key;
//	                            redirects are not followed.
//	exec:/absolute/path         run with the step as its single argument,
//	                            the request on standard input, the response
//	                            on standard output; exit status 0 is
//	                            success. It runs in a process group of its
//	                            own, killed when the step's time is up,
//	                            with an environment of PATH, HOME, LANG, TZ
//	                            and TMPDIR only (the server's own variables
//	                            may hold keys).
//
// The request, one JSON object:
//
//	{"rotation_id": "rot-…",        the idempotency key
//	 "secret": "payments/db",
//	 "step": "create|set|test|finish",
//	 "params": {"k": "v"},          the policy's parameters but hook
//	 "current_version": "…",        create: the version being replaced;
//	                                set, test: the new version
//	 "value": "<base64>"}           set and test only: the new value
//
// The response: {"value": "<base64>"} for create (the new value, at most
// backend.MaxValueBytes); anything, or nothing, for the other steps. A
// response is at most 1 MiB.
//
// Every step must be idempotent under its rotation id: a server that stops
// runs the step again when it resumes the rotation. Create called again for
// a rotation id may return the credential it made before or a fresh one
// (the hook decides; the server keeps the first it wrote when it has one);
// set and test may see the same value twice; finish (revoking the previous
// credential, say) may run twice.
//
// A failed step's error names the hook, the step and what went wrong (the
// exit status, the HTTP status, a response that is not what it should be)
// but never the output: a hook's standard error or answer body may hold a
// value, so only its length is told. No value is logged or put in an error.
package hook

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/notify"
	"github.com/secretplane/secretplane/controlplane/rotation"
	"github.com/secretplane/secretplane/controlplane/validate"
)

// Steps, as the request's step and an exec hook's argument.
const (
	Create = "create"
	Set    = "set"
	Test   = "test"
	Finish = "finish"
)

// MaxOutput bounds a hook's response (and what of its standard error or
// an error answer's body is read, to be counted).
const MaxOutput = 1 << 20

// DefaultTimeout bounds a step whose context has no earlier deadline (the
// rotation manager's step timeout is one).
const DefaultTimeout = 30 * time.Second

// ParamHook is the policy parameter that selects a hook.
const ParamHook = "hook"

// Options configure a Rotator.
type Options struct {
	// Hooks maps a name to a target: https://host/path or
	// exec:/absolute/path (rotation.hooks).
	Hooks map[string]string
	// Client calls https hooks; default a client requiring TLS 1.2. Its
	// redirects are never followed.
	Client *http.Client
	// Key, when set, signs https requests (notify.Signature).
	Key []byte
	// Timeout bounds a step whose context ends later; default
	// DefaultTimeout.
	Timeout time.Duration
	Now     func() time.Time
}

// Rotator calls the configured hooks. Safe for concurrent use.
type Rotator struct {
	hooks   map[string]target
	client  *http.Client
	key     []byte
	timeout time.Duration
	now     func() time.Time
}

var (
	_ rotation.Rotator = (*Rotator)(nil)
	_ rotation.Stepper = (*Rotator)(nil)
)

type target struct {
	url  string // https
	path string // exec
}

// CheckTarget says what is wrong with hook name's target, if anything,
// naming the hook but not the target (a URL may carry a token).
func CheckTarget(name, t string) error {
	_, err := parseTarget(name, t)
	return err
}

func checkName(name string) error {
	if strings.Contains(name, "/") {
		return fmt.Errorf("hook name %.64q: has a \"/\"; names are lower-case letters, digits, \".\", \"_\" and \"-\"", name)
	}
	if len(name) > 64 {
		return fmt.Errorf("hook name %.64q…: is longer than 64 bytes", name)
	}
	if err := validate.Name(name); err != nil {
		return fmt.Errorf("hook name %.64q: %w", name, err)
	}
	return nil
}

func parseTarget(name, t string) (target, error) {
	if err := checkName(name); err != nil {
		return target{}, err
	}
	if path, ok := strings.CutPrefix(t, "exec:"); ok {
		if !filepath.IsAbs(path) || filepath.Clean(path) != path {
			return target{}, fmt.Errorf("hook %s: exec: wants an absolute, clean path to an executable file", name)
		}
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			return target{}, fmt.Errorf("hook %s: exec: %w", name, err)
		case !fi.Mode().IsRegular():
			return target{}, fmt.Errorf("hook %s: exec: %s is not a regular file", name, path)
		case fi.Mode().Perm()&0o111 == 0:
			return target{}, fmt.Errorf("hook %s: exec: %s is not executable", name, path)
		case fi.Mode().Perm()&0o002 != 0:
			return target{}, fmt.Errorf("hook %s: exec: %s is writable by anyone, who could make the server run their code", name, path)
		}
		return target{path: path}, nil
	}
	u, err := url.Parse(t)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Opaque != "" {
		return target{}, fmt.Errorf("hook %s: wants an https:// URL without credentials, or exec:/absolute/path", name)
	}
	return target{url: u.String()}, nil
}

// New checks every hook's target and returns the rotator; the error names
// every hook whose target is wrong.
func New(opts Options) (*Rotator, error) {
	r := &Rotator{hooks: map[string]target{}, client: opts.Client, key: opts.Key, timeout: opts.Timeout, now: opts.Now}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(opts.Hooks)) {
		t, err := parseTarget(name, opts.Hooks[name])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		r.hooks[name] = t
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if r.client == nil {
		r.client = &http.Client{Transport: &http.Transport{TLSClientConfig: defaultTLS(), Proxy: http.ProxyFromEnvironment}}
	}
	// A copy that never follows a redirect: a value POSTed once must not
	// be POSTed again where the hook's answer says.
	c := *r.client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	r.client = &c
	if r.timeout <= 0 {
		r.timeout = DefaultTimeout
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r, nil
}

// names lists the configured hooks, for messages.
func (r *Rotator) names() string {
	if len(r.hooks) == 0 {
		return "none: set rotation.hooks"
	}
	return strings.Join(slices.Sorted(maps.Keys(r.hooks)), ", ")
}

// Check implements rotation.Rotator: the hook parameter names a configured
// hook. The other parameters are the hook's.
func (r *Rotator) Check(params map[string]string) error {
	_, err := r.lookup(params)
	return err
}

func (r *Rotator) lookup(params map[string]string) (string, error) {
	name, ok := params[ParamHook]
	switch {
	case len(r.hooks) == 0:
		return "", errors.New("hook: no hooks are configured on this server (rotation.hooks, --rotation-hook NAME=TARGET)")
	case !ok:
		return "", fmt.Errorf("hook: the hook parameter is required (configured: %s)", r.names())
	case r.hooks[name] == (target{}):
		return "", fmt.Errorf("hook: hook %.32q is not configured on this server (configured: %s)", name, r.names())
	}
	return name, nil
}

// Next implements rotation.Rotator: the create step.
func (r *Rotator) Next(ctx context.Context, req rotation.Request) ([]byte, error) {
	name, out, err := r.call(ctx, Create, req, nil)
	if err != nil {
		return nil, err
	}
	defer clear(out)
	var resp struct {
		Value []byte `json:"value"` // base64, decoded by encoding/json
	}
	// Neither the output nor the decoder's message (which quotes it) goes
	// into the error.
	if err := json.Unmarshal(out, &resp); err != nil {
		clear(resp.Value)
		return nil, fmt.Errorf(`hook %s: %s: the response is not JSON {"value": base64}`, name, Create)
	}
	switch {
	case len(resp.Value) == 0:
		return nil, fmt.Errorf(`hook %s: %s: the response's value is empty (want JSON {"value": base64})`, name, Create)
	case len(resp.Value) > backend.MaxValueBytes:
		n := len(resp.Value)
		clear(resp.Value)
		return nil, fmt.Errorf("hook %s: %s: the value is %d bytes; the limit is %d", name, Create, n, backend.MaxValueBytes)
	}
	return resp.Value, nil
}

// Set implements rotation.Stepper.
func (r *Rotator) Set(ctx context.Context, req rotation.Request, value []byte) error {
	return r.step(ctx, Set, req, value)
}

// Test implements rotation.Stepper.
func (r *Rotator) Test(ctx context.Context, req rotation.Request, value []byte) error {
	return r.step(ctx, Test, req, value)
}

// Finish implements rotation.Stepper.
func (r *Rotator) Finish(ctx context.Context, req rotation.Request) error {
	return r.step(ctx, Finish, req, nil)
}

// step runs a step whose response is not used.
func (r *Rotator) step(ctx context.Context, step string, req rotation.Request, value []byte) error {
	_, out, err := r.call(ctx, step, req, value)
	clear(out)
	return err
}

// request is what a hook is sent.
type request struct {
	RotationID     string            `json:"rotation_id"`
	Secret         string            `json:"secret"`
	Step           string            `json:"step"`
	Params         map[string]string `json:"params"`
	CurrentVersion string            `json:"current_version"`
	Value          []byte            `json:"value,omitempty"` // base64
}

// call sends step's request to the policy's hook and returns its name and
// response. Errors name the hook and the step.
func (r *Rotator) call(ctx context.Context, step string, req rotation.Request, value []byte) (string, []byte, error) {
	name, err := r.lookup(req.Params)
	if err != nil {
		return "", nil, err
	}
	params := map[string]string{}
	for k, v := range req.Params {
		if k != ParamHook {
			params[k] = v
		}
	}
	body, err := json.Marshal(request{RotationID: req.RotationID, Secret: req.Secret, Step: step, Params: params,
		CurrentVersion: req.Current.Version, Value: value})
	if err != nil {
		return "", nil, fmt.Errorf("hook %s: %s: encode the request: %w", name, step, err)
	}
	defer clear(body)
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	t := r.hooks[name]
	var out []byte
	if t.path != "" {
		out, err = r.exec(ctx, t.path, step, body)
	} else {
		out, err = r.post(ctx, t.url, body)
	}
	if err != nil {
		return "", nil, fmt.Errorf("hook %s: %s: %w", name, step, err)
	}
	return name, out, nil
}

var errTooLong = fmt.Errorf("the response is over %d bytes", MaxOutput)

// exec runs the command with step as its argument and body on stdin.
func (r *Rotator) exec(ctx context.Context, path, step string, body []byte) ([]byte, error) {
	cmd := exec.CommandContext(ctx, path, step)
	stdout, stderr := &capped{max: MaxOutput}, &counter{}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(body), stdout, stderr
	cmd.Env = environment()
	cmd.WaitDelay = time.Second // then the pipes close, whoever holds them
	inGroup(cmd)
	err := cmd.Run()
	if err == nil && !stdout.over {
		return stdout.buf, nil
	}
	clear(stdout.buf)
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("the command did not finish in time (%v); its process group was killed%s", context.Cause(ctx), stderr)
	case stdout.over:
		return nil, errTooLong
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return nil, fmt.Errorf("the command exited with status %d%s", exit.ExitCode(), stderr)
	case errors.As(err, &exit):
		return nil, fmt.Errorf("the command was ended by a signal (%s)%s", exit.String(), stderr)
	case errors.Is(err, exec.ErrWaitDelay):
		return nil, fmt.Errorf("the command exited but left a process holding its output open%s", stderr)
	}
	return nil, fmt.Errorf("the command could not be run: %w", err)
}

// post POSTs body to u, signed when there is a key.
func (r *Rotator) post(ctx context.Context, u string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("request: the URL does not parse")
	}
	req.Header.Set("Content-Type", "application/json")
	if len(r.key) > 0 {
		req.Header.Set(notify.Signature, notify.Sign(r.key, r.now(), body))
	}
	resp, err := r.client.Do(req)
	if err != nil {
		// *url.Error quotes the whole URL, whose query may hold a token.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("POST: %w", err)
	}
	defer resp.Body.Close()
	out := &capped{max: MaxOutput}
	_, err = io.Copy(out, io.LimitReader(resp.Body, MaxOutput+1))
	switch {
	case resp.StatusCode/100 != 2:
		n := len(out.buf)
		clear(out.buf)
		more := ""
		if out.over {
			more = " or more"
		}
		return nil, fmt.Errorf("POST answered HTTP %d (body: %d bytes%s, not shown)", resp.StatusCode, n, more)
	case out.over:
		clear(out.buf)
		return nil, errTooLong
	case err != nil:
		clear(out.buf)
		return nil, fmt.Errorf("read the response: %w", err)
	}
	return out.buf, nil
}

func defaultTLS() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS12} }

// environment is what an exec hook runs with: the server's own variables
// may hold keys (SECRETPLANE_LOCAL_KEY), so only these are passed.
func environment() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "LANG", "TZ", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// capped keeps up to max bytes; past them it fails the write (the command
// then gets a broken pipe) and says so.
type capped struct {
	buf  []byte
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if len(c.buf)+len(p) > c.max {
		c.over = true
		return 0, errTooLong
	}
	if cap(c.buf)-len(c.buf) < len(p) {
		// Grown by hand, so that no copy of the output is left behind.
		nb := make([]byte, len(c.buf), min(max(2*cap(c.buf), len(c.buf)+len(p), 4096), c.max))
		copy(nb, c.buf)
		clear(c.buf)
		c.buf = nb
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// counter counts what it is given and keeps none of it: a hook's standard
// error may hold a value.
type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// String is how an error tells of standard error: its length only.
func (c *counter) String() string {
	if c.n == 0 {
		return ""
	}
	return fmt.Sprintf(" (stderr: %d bytes, not shown)", c.n)
}
