package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/postgres"
)

// Severity is how bad a Problem is: a failure stops the server from
// starting, a warning is logged (and shown by doctor).
type Severity string

// Severities.
const (
	Failure Severity = "failure"
	Warning Severity = "warning"
)

// Checks a Problem may come from (Problem.Check).
const (
	CheckBackendTLS       = "backend-tls"
	CheckStoreTLS         = "store-tls"
	CheckStoreSecret      = "store-secret"
	CheckKeyFile          = "key-file"
	CheckConfigLiteral    = "config-literal"
	CheckPermissions      = "permissions"
	CheckStartup          = "startup"
	CheckRequiredSecret   = "required-secret"
	requiredParallelism   = 16
	requiredListPage      = 500
	startupTimeoutSetting = "startup.required_timeout"
)

// Problem is one thing wrong with a configuration: the check that found it,
// what it is about (a setting, a file, a secret's name) and what is wrong.
// It names settings, files, secrets and refs, never a value.
type Problem struct {
	Check    string
	Subject  string
	Message  string
	Severity Severity
}

func (p Problem) String() string { return p.Subject + ": " + p.Message }

// Preflight runs the checks of a configuration that need nothing opened:
// backends reached without TLS outside dev mode, a PostgreSQL store without
// sslmode=verify-full (unless dev mode on loopback) or with a password in
// its DSN, the local backend's or the fingerprint key file missing or open
// to group or others, literal secret values in the configuration file, and
// the data directory, the audit journal or the audit mirror writable by
// group or others. It reports every problem found, in a stable order, and
// has no side effect: it creates, changes and opens for writing nothing
// (New runs it before anything else; secretplane doctor runs it against a
// configuration file).
func Preflight(ctx context.Context, cfg Config) []Problem {
	cfg = withDevDefaults(cfg)
	var ps []Problem
	add := func(check, subject string, sev Severity, format string, args ...any) {
		ps = append(ps, Problem{Check: check, Subject: subject, Message: fmt.Sprintf(format, args...), Severity: sev})
	}
	if cfg.Startup.RequiredTimeout <= 0 {
		add(CheckStartup, startupTimeoutSetting, Failure, "must be positive (it bounds the resolution of required secrets at startup)")
	}
	checkBackendTLS(cfg, add)
	checkStoreDSN(cfg, add)
	checkKeyFiles(cfg, add)
	if cfg.ConfigFile != "" {
		checkConfigFile(ctx, cfg.ConfigFile, add)
	}
	checkPermissions(cfg, add)
	return ps
}

type addFunc func(check, subject string, sev Severity, format string, args ...any)

// isLoopbackHost: localhost, a loopback IP, or a unix socket path.
func isLoopbackHost(host string) bool {
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkBackendTLS: Vault's address, and AWS's endpoint when one is given,
// must be https:// outside dev mode (dev mode: http on loopback too).
func checkBackendTLS(cfg Config, add addFunc) {
	check := func(setting, what, addr string) {
		if addr == "" {
			return
		}
		u, err := url.Parse(addr)
		if err != nil || u.Host == "" {
			add(CheckBackendTLS, setting, Failure, "%s's address is not a URL (want https://HOST:PORT)", what)
			return
		}
		if u.Scheme == "https" {
			return
		}
		if cfg.Dev && isLoopbackHost(u.Hostname()) {
			return
		}
		add(CheckBackendTLS, setting, Failure, "%s at %s is reached over %s://, not TLS: use https:// (plain http is allowed only on loopback in --dev)", what, u.Host, u.Scheme)
	}
	check("backends.vault.address", "Vault", cfg.Backends.Vault.Address)
	check("backends.aws_sm.endpoint", "AWS Secrets Manager", cfg.Backends.AWS.Endpoint)
}

// checkStoreDSN: a PostgreSQL DSN holds no password and asks for
// sslmode=verify-full, unless dev mode with every host on loopback.
func checkStoreDSN(cfg Config, add addFunc) {
	dsn := cfg.Store
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return
	}
	if postgres.HasPassword(dsn) {
		add(CheckStoreSecret, "store", Failure, "the PostgreSQL DSN carries a password; configuration must hold no secret: use PGPASSFILE or a client certificate")
	}
	u, err := url.Parse(dsn)
	if err != nil {
		add(CheckStoreTLS, "store", Failure, "the PostgreSQL DSN is not a valid URL")
		return
	}
	q := u.Query()
	mode := q.Get("sslmode")
	if mode == "" {
		mode = os.Getenv("PGSSLMODE")
	}
	if mode == "verify-full" {
		return
	}
	var hosts []string
	for h := range strings.SplitSeq(u.Host, ",") {
		if h == "" {
			continue
		}
		if name, _, err := net.SplitHostPort(h); err == nil {
			h = name
		}
		hosts = append(hosts, strings.Trim(h, "[]"))
	}
	if h := q.Get("host"); h != "" {
		hosts = append(hosts, h)
	}
	if len(hosts) == 0 {
		hosts = append(hosts, "localhost") // libpq's default: a local socket
	}
	loopback := !slices.ContainsFunc(hosts, func(h string) bool { return !isLoopbackHost(h) })
	if cfg.Dev && loopback {
		return
	}
	shown := "sslmode=" + mode
	if mode == "" {
		shown = "no sslmode (libpq's default, prefer, falls back to plaintext)"
	}
	add(CheckStoreTLS, "store", Failure, "PostgreSQL at %s is reached with %s: set sslmode=verify-full with sslrootcert (plaintext or unverified TLS is allowed only on loopback in --dev)",
		strings.Join(hosts, ","), shown)
}

// checkKeyFiles: the local backend's key file, when given, exists and is
// open to its owner only; so is the fingerprint key file. Dev mode's
// default files may not exist yet (the server creates them, 0600).
func checkKeyFiles(cfg Config, add addFunc) {
	check := func(setting, what, path string, mustExist bool) {
		st, err := os.Stat(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if mustExist {
				add(CheckKeyFile, setting, Failure, "%s %s is missing", what, path)
			}
		case err != nil:
			add(CheckKeyFile, setting, Failure, "%s %s cannot be read: %v", what, path, errors.Unwrap(err))
		case !st.Mode().IsRegular():
			add(CheckKeyFile, setting, Failure, "%s %s is not a regular file", what, path)
		case st.Mode().Perm()&0o077 != 0:
			add(CheckKeyFile, setting, Failure, "%s %s is open to group or others (mode %#o): chmod 600 it", what, path, st.Mode().Perm())
		}
	}
	lc := cfg.Backends.Local
	switch {
	case lc.KeyFile != "":
		check("backends.local.key_file", "the local backend's key file", lc.KeyFile, true)
	case os.Getenv(EnvLocalBackendKey) != "":
		if !cfg.Dev {
			add(CheckKeyFile, EnvLocalBackendKey, Warning, "the local backend's key is given in the environment, which child processes and crash reports may see: prefer backends.local.key_file (mode 0600)")
		}
	case cfg.Dev && cfg.DataDir != "":
		check("backends.local.key_file", "the local backend's key file", filepath.Join(cfg.DataDir, DevLocalKeyFile), false)
	}
	switch {
	case cfg.Cache.FingerprintKeyFile != "":
		check("cache.fingerprint_key_file", "the fingerprint key file", cfg.Cache.FingerprintKeyFile, true)
	case cfg.Dev && cfg.DataDir != "":
		check("cache.fingerprint_key_file", "the fingerprint key file", filepath.Join(cfg.DataDir, DevFingerprintKey), false)
	}
}

// checkConfigFile reports every value of the YAML configuration file that
// looks like a secret (secretref.DetectLiteral): by line and key, with the
// kind of secret it looks like, never the value.
func checkConfigFile(ctx context.Context, path string, add addFunc) {
	raw, err := os.ReadFile(path)
	if err != nil {
		add(CheckConfigLiteral, path, Failure, "the configuration file cannot be read: %v", errors.Unwrap(err))
		return
	}
	var root yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(raw)).Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return
		}
		add(CheckConfigLiteral, path, Failure, "the configuration file is not valid YAML")
		return
	}
	var walk func(n *yaml.Node, key string)
	walk = func(n *yaml.Node, key string) {
		if ctx.Err() != nil {
			return
		}
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, key)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if f, ok := secretref.DetectLiteral(k); ok {
					add(CheckConfigLiteral, path, Failure, "line %d: a key under %s is a literal secret value (%s): configuration holds no secret",
						n.Content[i].Line, shownKey(key), f.Kind)
					k = "(a key)"
				}
				if key != "" {
					k = key + "." + k
				}
				walk(n.Content[i+1], k)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", key, i))
			}
		case yaml.ScalarNode:
			if f, ok := secretref.DetectLiteral(n.Value); ok {
				add(CheckConfigLiteral, path, Failure, "line %d: %s holds a literal secret value (%s): configuration holds no secret; put it in a file (mode 0600) named by a *_file setting",
					n.Line, shownKey(key), f.Kind)
			}
		case yaml.AliasNode:
			// Its anchor is walked where it is defined.
		}
	}
	walk(&root, "")
}

// shownKey is a key as shown in a message: a key that itself looks like
// a secret (a value pasted as a key) is not repeated.
func shownKey(k string) string {
	if k == "" {
		return "the document"
	}
	if _, ok := secretref.DetectLiteral(k); ok || len(k) > 120 {
		return "a key"
	}
	return k
}

// checkPermissions: the data directory, the SQLite store's directory, its
// audit journal and the audit mirror file must not be writable by group or
// others (who could then replace identities, the store or audit records).
// What does not exist yet is created by the server, owner-only.
func checkPermissions(cfg Config, add addFunc) {
	check := func(setting, what, path string) {
		st, err := os.Stat(path)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				add(CheckPermissions, setting, Failure, "%s %s cannot be checked: %v", what, path, errors.Unwrap(err))
			}
			return
		}
		if st.Mode().Perm()&0o022 != 0 {
			add(CheckPermissions, setting, Failure, "%s %s is writable by group or others (mode %#o): chmod go-w it", what, path, st.Mode().Perm())
		}
	}
	if cfg.Dev && cfg.DataDir != "" {
		check("data_dir", "the data directory", cfg.DataDir)
	}
	spec := cfg.Store
	if spec == "" && cfg.Dev && cfg.DataDir != "" {
		spec = "sqlite:" + filepath.Join(cfg.DataDir, DevStoreFile)
	}
	if path, ok := strings.CutPrefix(spec, "sqlite:"); ok {
		path = strings.TrimPrefix(path, "//")
		if path != "" {
			if real, err := filepath.EvalSymlinks(path); err == nil {
				path = real
			}
			if dir := filepath.Dir(path); !cfg.Dev || dir != filepath.Clean(cfg.DataDir) {
				check("store", "the store's directory", dir)
			}
			check("store", "the store", path)
			check("store", "the audit journal directory", path+"-audit")
		}
	}
	if cfg.Audit.File != "" {
		check("audit.file", "the audit mirror file", cfg.Audit.File)
	}
}

// Error classes of a required secret that did not resolve.
const (
	classNotFound    = "not found"
	classDenied      = "denied"
	classUnreachable = "unreachable"
	classTimedOut    = "timed out"
	classInvalid     = "invalid value"
	classBadRef      = "invalid ref"
	classFailed      = "failed"
)

// requiredSecrets lists every secret marked required, by name.
func requiredSecrets(ctx context.Context, st store.Store) ([]store.Secret, error) {
	var out []store.Secret
	q := store.ListQuery{Limit: requiredListPage}
	for {
		page, err := st.ListSecrets(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("list secrets for the required-secrets check: %w", err)
		}
		for _, s := range page {
			if s.Required {
				out = append(out, s)
			}
		}
		if len(page) < q.Limit {
			return out, nil
		}
		q.After = page[len(page)-1].Name
	}
}

// refLookup gives the ref a secret is served at (catalog.Catalog: a pinned
// version included).
type refLookup interface {
	LookupBinding(ctx context.Context, name string) (secretref.Ref, string, error)
}

// checkRequired resolves every secret marked required, a few at a time,
// all within timeout, and reports those that did not resolve by name, ref
// and error class (never a value). A backend that hangs costs the timeout,
// not the startup.
func checkRequired(ctx context.Context, st store.Store, refs refLookup, res *resolve.Resolver, timeout time.Duration) ([]Problem, int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	secrets, err := requiredSecrets(ctx, st)
	if err != nil {
		return nil, 0, err
	}
	problems := make([]Problem, len(secrets))
	sem := make(chan struct{}, requiredParallelism)
	var wg sync.WaitGroup
	for i, sec := range secrets {
		wg.Go(func() {
			fail := func(ref, class string) {
				if ref == "" {
					ref = sec.Ref
				}
				problems[i] = Problem{Check: CheckRequiredSecret, Subject: "required secret " + sec.Name,
					Message: fmt.Sprintf("%s: %s", ref, class), Severity: Failure}
			}
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				fail("", classTimedOut)
				return
			}
			ref, canonical, err := refs.LookupBinding(ctx, sec.Name)
			if err != nil {
				fail("", classOf(ctx, err))
				return
			}
			// The resolver's read runs detached from its callers; the
			// wait for it is bounded here.
			done := make(chan error, 1)
			go func() {
				got, err := res.Get(ctx, ref)
				clear(got.Data) // only whether it resolves matters here
				done <- err
			}()
			select {
			case err = <-done:
			case <-ctx.Done():
				err = ctx.Err()
			}
			if err != nil {
				fail(canonical, classOf(ctx, err))
			}
		})
	}
	wg.Wait()
	var out []Problem
	for _, p := range problems {
		if p.Check != "" {
			out = append(out, p)
		}
	}
	return out, len(secrets), nil
}

// classOf names the kind of failure of a required secret's resolution.
func classOf(ctx context.Context, err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), ctx.Err() != nil && errors.Is(err, backend.ErrUnavailable):
		return classTimedOut
	case errors.Is(err, backend.ErrNotFound), errors.Is(err, store.ErrNotFound):
		return classNotFound
	case errors.Is(err, backend.ErrPermissionDenied):
		return classDenied
	case errors.Is(err, backend.ErrUnavailable):
		return classUnreachable
	case errors.Is(err, backend.ErrInvalidValue):
		return classInvalid
	case errors.Is(err, secretref.ErrInvalid):
		return classBadRef
	default:
		return classFailed
	}
}

// refusal is the error of a server that will not start, every problem
// listed.
func refusal(problems []string) error {
	return fmt.Errorf("refusing to start:\n  - %s", strings.Join(problems, "\n  - "))
}

// requireSecrets is New's last check before serving: every secret marked
// required resolves within cfg.Startup.RequiredTimeout, or the server
// refuses to start, naming each that did not. (The audit log's writer
// runs only once the server serves, so the outcome is logged, not
// audited.)
func (s *Server) requireSecrets(ctx context.Context, refs refLookup, res *resolve.Resolver) error {
	start := time.Now()
	problems, n, err := checkRequired(ctx, s.store, refs, res, s.cfg.Startup.RequiredTimeout)
	if err != nil {
		return err
	}
	if len(problems) == 0 {
		if n > 0 {
			s.log.Info("required secrets resolved", "secrets", n, "took", time.Since(start).Round(time.Millisecond))
		}
		return nil
	}
	lines := make([]string, len(problems))
	for i, p := range problems {
		lines[i] = p.String()
	}
	s.log.Error("required secrets did not resolve at startup", "failed", len(problems), "required", n, "timeout", s.cfg.Startup.RequiredTimeout)
	return refusal(lines)
}

// preflight runs Preflight for prepare: failures are returned as
// problems, warnings logged.
func (s *Server) preflight(ctx context.Context) []string {
	var failures []string
	for _, p := range Preflight(ctx, s.cfg) {
		if p.Severity == Failure {
			failures = append(failures, p.String())
			continue
		}
		s.log.Warn("configuration warning", "check", p.Check, "subject", p.Subject, "problem", p.Message)
	}
	return failures
}
