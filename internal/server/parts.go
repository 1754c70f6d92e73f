package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/backend/vault"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/postgres"
	"github.com/secretplane/secretplane/store/sqlite"
)

// Dev-mode files of the local backend and the fingerprint key, and the
// environment variable that may hold the local backend's key.
const (
	DevLocalKeyFile     = "local.key"
	DevLocalSecrets     = "local-secrets.json"
	DevFingerprintKey   = "fingerprint.key"
	EnvLocalBackendKey  = "SECRETPLANE_LOCAL_KEY"
	fingerprintKeyBytes = 32
)

// jwtFetcher gives JWT-SVIDs (identity.WorkloadSource), for Vault's JWT
// auth.
type jwtFetcher interface {
	FetchJWTSVID(ctx context.Context, audience string) (string, error)
}

// openBackends configures the secret managers: the embedded local backend
// (always in dev mode; otherwise when its key is given), Vault (when an
// address is given), AWS Secrets Manager (when a region is given), and the
// caller's own.
func (s *Server) openBackends(ctx context.Context) (*backend.Registry, error) {
	cfg := s.cfg
	bs := append([]backend.Backend(nil), cfg.Backends.Extra...)
	lc := cfg.Backends.Local
	if cfg.Dev {
		if lc.KeyFile == "" && os.Getenv(EnvLocalBackendKey) == "" {
			lc.KeyFile = filepath.Join(cfg.DataDir, DevLocalKeyFile)
			if err := local.EnsureKeyFile(lc.KeyFile); err != nil {
				return nil, err
			}
		}
		if lc.SecretsFile == "" {
			lc.SecretsFile = filepath.Join(cfg.DataDir, DevLocalSecrets)
		}
	}
	if lc.KeyFile != "" || os.Getenv(EnvLocalBackendKey) != "" {
		var (
			key []byte
			err error
		)
		if lc.KeyFile != "" {
			key, err = local.LoadKey(lc.KeyFile)
		} else {
			key, err = local.ParseKey([]byte(os.Getenv(EnvLocalBackendKey)))
		}
		if err != nil {
			return nil, err
		}
		if lc.SecretsFile == "" {
			return nil, fmt.Errorf("local backend: --local-secrets-file is required with a key")
		}
		b, err := local.New(lc.SecretsFile, key)
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	if vc := cfg.Backends.Vault; vc.Address != "" {
		c := vault.Config{Address: vc.Address, CACert: vc.CACert, AllowInsecure: cfg.Dev, TokenFile: vc.TokenFile}
		if vc.AppRoleID != "" {
			c.AppRole = &vault.AppRoleAuth{RoleID: vc.AppRoleID, SecretIDFile: vc.AppRoleSecretFile}
		}
		if vc.CertFile != "" || vc.KeyFile != "" {
			c.Cert = &vault.CertAuth{Name: vc.CertRole, CertFile: vc.CertFile, KeyFile: vc.KeyFile}
		}
		if vc.JWTRole != "" {
			jwt, ok := s.source.(jwtFetcher)
			if !ok {
				return nil, fmt.Errorf("vault: JWT-SVID auth needs the SPIFFE Workload API as the identity source (--workload-api)")
			}
			c.JWT = &vault.JWTAuth{Mount: vc.JWTMount, Role: vc.JWTRole, Audience: vc.JWTAudience, Fetch: jwt.FetchJWTSVID}
		}
		// A Vault that accepts connections and never answers must not
		// hold startup for the client's own minute.
		login, cancel := context.WithTimeout(ctx, cfg.Startup.RequiredTimeout)
		b, err := vault.New(login, c, s.log)
		cancel()
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	if ac := cfg.Backends.AWS; ac.Region != "" {
		b, err := awssm.New(ctx, awssm.Config{Region: ac.Region, Endpoint: ac.Endpoint})
		if err != nil {
			return nil, err
		}
		bs = append(bs, b)
	}
	s.backends = bs
	schemes := make([]string, 0, len(bs))
	for _, b := range bs {
		schemes = append(schemes, string(b.Scheme()))
	}
	if s.cfg.Metrics.Listen == "" {
		return backend.NewRegistry(bs), nil
	}
	s.ops.metrics.BackendsConfigured(schemes)
	return backend.NewRegistry(bs, backend.WithObserver(s.ops.metrics)), nil
}

// fingerprintKey reads the fingerprint key (dev: created in the data
// directory), or makes a random one for this process.
func fingerprintKey(cfg Config) ([]byte, error) {
	path := cfg.Cache.FingerprintKeyFile
	if path == "" && cfg.Dev {
		path = filepath.Join(cfg.DataDir, DevFingerprintKey)
		if err := local.EnsureKeyFile(path); err != nil {
			return nil, err
		}
	}
	if path == "" {
		k := make([]byte, fingerprintKeyBytes)
		_, err := rand.Read(k)
		return k, err
	}
	k, err := local.LoadKey(path)
	if err != nil {
		return nil, fmt.Errorf("fingerprint key: %s", strings.TrimPrefix(err.Error(), "local backend key"))
	}
	return k, nil
}

// openStore opens the store named by spec: "sqlite:PATH" or a PostgreSQL
// URL. A PostgreSQL DSN must not carry a password (use a passfile or a
// client certificate) and must use TLS unless dev mode on loopback. An
// embedded store comes with the directory of its audit journal (PATH-audit,
// beside SQLite's own PATH-wal); PostgreSQL, which replicas share, has
// none.
func openStore(ctx context.Context, spec string, dev bool) (store.Store, string, error) {
	switch {
	case strings.HasPrefix(spec, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(spec, "sqlite:"), "//")
		if path == "" {
			return nil, "", errors.New("sqlite: path is empty")
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, "", fmt.Errorf("sqlite: create directory: %w", err)
		}
		s, err := sqlite.Open(ctx, path)
		if err != nil {
			return nil, "", err
		}
		// The journal sits beside the database file itself, so that every
		// name for the database (a symlink) leads to the one journal and
		// its lock.
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			s.Close()
			return nil, "", fmt.Errorf("sqlite: %w", err)
		}
		return s, real + "-audit", nil
	case strings.HasPrefix(spec, "postgres://"), strings.HasPrefix(spec, "postgresql://"):
		if postgres.HasPassword(spec) {
			return nil, "", errors.New("postgres: the DSN carries a password; configuration must hold no secret: use PGPASSFILE or a client certificate")
		}
		s, err := postgres.Open(ctx, spec, postgres.Options{AllowInsecureLoopback: dev})
		return s, "", err
	default:
		return nil, "", errors.New("unknown store: want sqlite:PATH or postgres://...")
	}
}
