// Package vault reads and writes HashiCorp Vault KV v2 secrets for
// secretplane, through the official API client. Auth by token, AppRole, TLS
// certificate or JWT-SVID; tokens are renewed while the backend runs, and
// logged in again when they can no longer be. TLS to Vault
// is required unless AllowInsecure (dev mode on loopback).
package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/secretref"
)

// Config configures the backend. It holds no secret: tokens and secret ids
// are read from files.
type Config struct {
	Address       string // https://vault.internal:8200
	CACert        string // PEM file of the CA that signs Vault's certificate
	AllowInsecure bool   // allow http:// on loopback (dev mode only)

	// Exactly one auth method.
	TokenFile string // a file holding a Vault token
	AppRole   *AppRoleAuth
	Cert      *CertAuth
	JWT       *JWTAuth
}

// AppRoleAuth logs in with a role id and a secret id read from a file.
type AppRoleAuth struct {
	Mount        string // default "approle"
	RoleID       string
	SecretIDFile string
}

// CertAuth logs in with a TLS client certificate (auth/cert).
type CertAuth struct {
	Mount    string // default "cert"
	Name     string // the cert role, optional
	CertFile string
	KeyFile  string
}

// JWTAuth logs in with a JWT-SVID (auth/jwt). Fetch returns a fresh token
// for the audience at every login: JWT-SVIDs are short-lived, so a re-login
// after the Vault token's max TTL gets a new one. The token is a credential
// and is never logged.
type JWTAuth struct {
	Mount    string // default "jwt"
	Role     string // the Vault role; required
	Audience string // the aud claim the role is bound to; default "vault"
	Fetch    func(ctx context.Context, audience string) (string, error)
}

// Backend is the vault backend.
type Backend struct {
	client *api.Client
	log    *slog.Logger
	login  func(ctx context.Context) (*api.Secret, error) // nil for a static token
	mu     sync.Mutex
	lease  *api.Secret // the token to keep renewed; nil when it need not be
}

var _ backend.Backend = (*Backend)(nil)

// New connects and authenticates; Run keeps the token renewed.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Backend, error) {
	u, err := url.Parse(cfg.Address)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("vault: address %q is not a URL", cfg.Address)
	}
	if u.Scheme != "https" {
		host := u.Hostname()
		ip := net.ParseIP(host)
		loop := host == "localhost" || (ip != nil && ip.IsLoopback())
		if !cfg.AllowInsecure || !loop {
			return nil, errors.New("vault: TLS is required (https://); plain http is allowed only on loopback in dev mode")
		}
	}
	vc := api.DefaultConfig()
	vc.Address = cfg.Address
	vc.MaxRetries = 0 // the resolver decides about retries and staleness
	tlsCfg := &api.TLSConfig{CACert: cfg.CACert}
	if cfg.Cert != nil {
		tlsCfg.ClientCert, tlsCfg.ClientKey = cfg.Cert.CertFile, cfg.Cert.KeyFile
	}
	if u.Scheme == "https" {
		if err := vc.ConfigureTLS(tlsCfg); err != nil {
			return nil, fmt.Errorf("vault: TLS: %w", err)
		}
	}
	client, err := api.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault: client: %w", err)
	}
	client.ClearToken() // never pick up VAULT_TOKEN from the environment
	b := &Backend{client: client, log: log}
	methods := 0
	switch {
	case cfg.TokenFile != "":
		methods++
		raw, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("vault: token file: %w", err)
		}
		client.SetToken(strings.TrimSpace(string(raw)))
	}
	if cfg.AppRole != nil {
		methods++
		b.login = b.appRoleLogin(*cfg.AppRole)
	}
	if cfg.Cert != nil {
		methods++
		b.login = b.certLogin(*cfg.Cert)
	}
	if cfg.JWT != nil {
		methods++
		if cfg.JWT.Role == "" || cfg.JWT.Fetch == nil {
			return nil, errors.New("vault: JWT auth needs a role and a JWT-SVID source")
		}
		b.login = b.jwtLogin(*cfg.JWT)
	}
	if methods != 1 {
		return nil, errors.New("vault: configure exactly one auth method (token file, AppRole, certificate or JWT-SVID)")
	}
	if err := b.authenticate(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// authenticate logs in (AppRole, cert, JWT-SVID) or checks the token, and
// notes the token for Run to renew.
func (b *Backend) authenticate(ctx context.Context) error {
	var secret *api.Secret
	if b.login != nil {
		s, err := b.login(ctx)
		if err != nil {
			return err
		}
		secret = s
	} else {
		s, err := b.client.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return fmt.Errorf("vault: token lookup: %w%s", classify(err), vaultSays(err))
		}
		if renewable, _ := s.TokenIsRenewable(); !renewable {
			return nil // root or non-renewable token: nothing to renew
		}
		secret = &api.Secret{Auth: &api.SecretAuth{ClientToken: b.client.Token(), Renewable: true}}
		if ttl, err := s.TokenTTL(); err == nil {
			secret.Auth.LeaseDuration = int(ttl.Seconds())
		}
	}
	b.mu.Lock()
	b.lease = nil
	if secret != nil && secret.Auth != nil && secret.Auth.Renewable {
		b.lease = secret
	}
	b.mu.Unlock()
	return nil
}

// Run keeps the token renewed until ctx ends, logging in again when it can
// no longer be renewed (a token of a login method), retrying a failed
// login with backoff. The server runs it as one of its tasks.
func (b *Backend) Run(ctx context.Context) {
	wait := time.Second
	// pause waits out the backoff and doubles it; false when ctx ended.
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
			wait = min(2*wait, time.Minute)
			return true
		}
	}
	for ctx.Err() == nil {
		b.mu.Lock()
		lease := b.lease
		b.mu.Unlock()
		if lease == nil {
			return // a root or non-renewable token: nothing to renew
		}
		began := time.Now()
		b.renew(ctx, lease)
		if ctx.Err() != nil || b.login == nil {
			return
		}
		if time.Since(began) >= time.Minute {
			wait = time.Second // a renewal that lasted: back off afresh
		} else if !pause() {
			// Renewal ended at once (a watcher that could not start, a
			// token with no life left): do not spin logging in.
			return
		}
		for err := b.authenticate(ctx); err != nil; err = b.authenticate(ctx) {
			b.log.Error("vault re-login failed; retrying", "error", err, "in", wait)
			if !pause() {
				return
			}
		}
	}
}

// renew renews lease until ctx ends or it can be renewed no more.
func (b *Backend) renew(ctx context.Context, lease *api.Secret) {
	w, err := b.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: lease})
	if err != nil {
		b.log.Error("vault token renewal not started", "error", err)
		return
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-w.DoneCh():
			if err != nil {
				b.log.Warn("vault token renewal stopped", "error", err)
			}
			return
		case <-w.RenewCh():
			b.log.Debug("vault token renewed")
		}
	}
}

func (b *Backend) appRoleLogin(a AppRoleAuth) func(context.Context) (*api.Secret, error) {
	mount := orDefault(a.Mount, "approle")
	return func(ctx context.Context) (*api.Secret, error) {
		raw, err := os.ReadFile(a.SecretIDFile)
		if err != nil {
			return nil, fmt.Errorf("vault: AppRole secret id file: %w", err)
		}
		return b.loginAt(ctx, mount, "AppRole login", map[string]any{
			"role_id": a.RoleID, "secret_id": strings.TrimSpace(string(raw)),
		})
	}
}

func (b *Backend) certLogin(c CertAuth) func(context.Context) (*api.Secret, error) {
	mount := orDefault(c.Mount, "cert")
	return func(ctx context.Context) (*api.Secret, error) {
		body := map[string]any{}
		if c.Name != "" {
			body["name"] = c.Name
		}
		return b.loginAt(ctx, mount, "certificate login", body)
	}
}

func (b *Backend) jwtLogin(j JWTAuth) func(context.Context) (*api.Secret, error) {
	mount, aud := orDefault(j.Mount, "jwt"), orDefault(j.Audience, "vault")
	what := fmt.Sprintf("JWT-SVID login as role %q", j.Role)
	return func(ctx context.Context) (*api.Secret, error) {
		token, err := j.Fetch(ctx, aud)
		if err != nil {
			return nil, fmt.Errorf("vault: %s: %w", what, err)
		}
		return b.loginAt(ctx, mount, what, map[string]any{"role": j.Role, "jwt": token})
	}
}

// loginAt logs in at auth/<mount>/login with body (which holds
// credentials and is never logged) and makes the token the client's. what
// names the login in errors, which keep Vault's own text of a server error:
// they reach operators, at startup or re-login, never workloads.
func (b *Backend) loginAt(ctx context.Context, mount, what string, body map[string]any) (*api.Secret, error) {
	s, err := b.client.Logical().WriteWithContext(ctx, "auth/"+mount+"/login", body)
	if err != nil {
		return nil, fmt.Errorf("vault: %s: %w%s", what, classify(err), vaultSays(err))
	}
	if s == nil || s.Auth == nil {
		return nil, fmt.Errorf("vault: %s returned no token", what)
	}
	b.client.SetToken(s.Auth.ClientToken)
	return s, nil
}

// TokenInfo is what Vault says of the backend's own token
// (auth/token/lookup-self): its lifetime figures, never the token.
type TokenInfo struct {
	// TTL is the time left before the token expires; 0 for a token that
	// does not expire (a root token).
	TTL time.Duration
	// CreationTTL is the TTL it was created with.
	CreationTTL time.Duration
	// ExplicitMaxTTL caps its life from IssueTime however it is renewed
	// (0: no explicit cap; the mount's or system's max TTL still applies).
	ExplicitMaxTTL time.Duration
	IssueTime      time.Time
	Renewable      bool
	// Relogin is true when the backend logs in again as the token ends
	// (AppRole, certificate, JWT-SVID), false for a static token file.
	Relogin bool
}

// TokenInfo looks the backend's token up (auth/token/lookup-self).
func (b *Backend) TokenInfo(ctx context.Context) (TokenInfo, error) {
	s, err := b.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return TokenInfo{}, fmt.Errorf("vault: token lookup: %w", classify(err))
	}
	if s == nil || s.Data == nil {
		return TokenInfo{}, fmt.Errorf("vault: token lookup: empty answer: %w", backend.ErrUnavailable)
	}
	info := TokenInfo{Relogin: b.login != nil}
	seconds := func(key string) (time.Duration, error) {
		v, ok := s.Data[key]
		if !ok || v == nil {
			return 0, nil
		}
		n, ok := v.(json.Number)
		if !ok {
			return 0, fmt.Errorf("vault: token lookup: %s is not a number", key)
		}
		i, err := n.Int64()
		if err != nil {
			return 0, fmt.Errorf("vault: token lookup: %s: %w", key, err)
		}
		return time.Duration(i) * time.Second, nil
	}
	if info.TTL, err = seconds("ttl"); err != nil {
		return TokenInfo{}, err
	}
	if info.CreationTTL, err = seconds("creation_ttl"); err != nil {
		return TokenInfo{}, err
	}
	if info.ExplicitMaxTTL, err = seconds("explicit_max_ttl"); err != nil {
		return TokenInfo{}, err
	}
	info.Renewable, _ = s.Data["renewable"].(bool)
	if t, ok := s.Data["issue_time"].(string); ok && t != "" {
		if info.IssueTime, err = time.Parse(time.RFC3339Nano, t); err != nil {
			return TokenInfo{}, fmt.Errorf("vault: token lookup: issue_time: %w", err)
		}
	}
	return info, nil
}

// Scheme implements backend.Backend.
func (b *Backend) Scheme() secretref.Scheme { return secretref.SchemeVault }

// clientFor returns a client scoped to ref's namespace (Vault Enterprise).
func (b *Backend) clientFor(ref secretref.Ref) *api.Client {
	if ref.Namespace == "" {
		return b.client
	}
	return b.client.WithNamespace(ref.Namespace)
}

// Read implements backend.Backend.
func (b *Backend) Read(ctx context.Context, ref secretref.Ref) (backend.Value, error) {
	kv := b.clientFor(ref).KVv2(ref.VaultMount())
	var (
		s   *api.KVSecret
		err error
	)
	if ref.Version != "" {
		v, _ := strconv.Atoi(ref.Version)
		s, err = kv.GetVersion(ctx, ref.VaultPath(), v)
	} else {
		s, err = kv.Get(ctx, ref.VaultPath())
	}
	if err != nil {
		b.logVault("read", ref, err)
		return backend.Value{}, fmt.Errorf("%s: %w", ref, classify(err))
	}
	if s == nil || s.Data == nil {
		return backend.Value{}, fmt.Errorf("%s: %w", ref, backend.ErrNotFound)
	}
	var raw []byte
	if ref.Field == "" {
		if raw, err = json.Marshal(s.Data); err != nil {
			return backend.Value{}, fmt.Errorf("%s: encode value: %w", ref, backend.ErrInvalidValue)
		}
	}
	data, err := backend.SelectField(ref, s.Data, raw)
	if err != nil {
		return backend.Value{}, err
	}
	out := backend.Value{Data: data}
	if s.VersionMetadata != nil {
		out.Version = strconv.Itoa(s.VersionMetadata.Version)
		out.CreatedAt = s.VersionMetadata.CreatedTime
	}
	return out, nil
}

// Describe implements backend.Backend.
func (b *Backend) Describe(ctx context.Context, ref secretref.Ref) (backend.Metadata, error) {
	m, err := b.clientFor(ref).KVv2(ref.VaultMount()).GetMetadata(ctx, ref.VaultPath())
	if err != nil {
		b.logVault("describe", ref, err)
		return backend.Metadata{}, fmt.Errorf("%s: %w", ref, classify(err))
	}
	return backend.Metadata{Version: strconv.Itoa(m.CurrentVersion), CreatedAt: m.CreatedTime, UpdatedAt: m.UpdatedTime, Versions: len(m.Versions)}, nil
}

// Write implements backend.Backend: a new KV version, with check-and-set on
// the version read so that concurrent writers cannot lose each other's
// fields. With a field, the other keys of the secret are kept.
func (b *Backend) Write(ctx context.Context, ref secretref.Ref, data []byte) (string, error) {
	if err := backend.CheckWrite(ref); err != nil {
		return "", err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	kv := b.clientFor(ref).KVv2(ref.VaultMount())
	values := map[string]any{}
	cas := 0
	if cur, err := kv.Get(ctx, ref.VaultPath()); err == nil && cur != nil {
		if cur.VersionMetadata != nil {
			cas = cur.VersionMetadata.Version
		}
		for k, v := range cur.Data {
			values[k] = v
		}
	} else if err != nil && !errors.Is(classify(err), backend.ErrNotFound) {
		return "", fmt.Errorf("%s: %w", ref, classify(err))
	}
	if ref.Field == "" {
		values = map[string]any{}
		if err := json.Unmarshal(data, &values); err != nil {
			return "", fmt.Errorf("%s: a whole-secret write needs a JSON object: %w", ref, backend.ErrInvalidValue)
		}
	} else if strings.HasPrefix(ref.Field, "/") {
		return "", fmt.Errorf("%s: writing through a JSON pointer is not supported: %w", ref, backend.ErrInvalidValue)
	} else {
		values[ref.Field] = string(data)
	}
	s, err := kv.Put(ctx, ref.VaultPath(), values, api.WithCheckAndSet(cas))
	if err != nil {
		return "", fmt.Errorf("%s: %w", ref, classify(err))
	}
	return strconv.Itoa(s.VersionMetadata.Version), nil
}

// vaultSays is Vault's own error text for a server error (5xx), which
// classify leaves out of errors that reach workloads, for errors that only
// operators see (login at startup). Vault's messages name paths and
// settings, never values.
func vaultSays(err error) string {
	var re *api.ResponseError
	if errors.As(err, &re) && re.StatusCode >= 500 && len(re.Errors) > 0 {
		return " (vault says: " + strings.Join(re.Errors, "; ") + ")"
	}
	return ""
}

// logVault keeps Vault's own text of a server error for operators, at
// debug level: the caller gets the classified error only.
func (b *Backend) logVault(op string, ref secretref.Ref, err error) {
	if says := vaultSays(err); says != "" {
		b.log.Debug("vault server error", "op", op, "ref", ref.String(), "detail", strings.TrimSpace(says))
	}
}

// classify maps Vault client errors to backend errors. Vault's own error
// texts name paths, never values.
func classify(err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%w (vault: %d)", backend.ErrNotFound, re.StatusCode)
		case http.StatusForbidden, http.StatusUnauthorized:
			return fmt.Errorf("%w (vault: %d)", backend.ErrPermissionDenied, re.StatusCode)
		case http.StatusBadRequest:
			return fmt.Errorf("%w (vault: %d %s)", backend.ErrInvalidValue, re.StatusCode, strings.Join(re.Errors, "; "))
		default:
			return fmt.Errorf("%w (vault: %d)", backend.ErrUnavailable, re.StatusCode)
		}
	}
	if errors.Is(err, api.ErrSecretNotFound) {
		return fmt.Errorf("%w (vault)", backend.ErrNotFound)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w: %w", backend.ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}
