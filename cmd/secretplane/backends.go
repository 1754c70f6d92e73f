package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/controlplane/backend/awssm"
	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/backend/vault"
	"github.com/secretplane/secretplane/identity"
)

// Dev-mode files of the local backend and the fingerprint key.
const (
	devLocalKeyFile     = "local.key"
	devLocalSecrets     = "local-secrets.json"
	devFingerprintKey   = "fingerprint.key"
	envLocalBackendKey  = "SECRETPLANE_LOCAL_KEY"
	fingerprintKeyBytes = 32
)

// openBackends configures the secret managers: the embedded local backend
// (always in dev mode; otherwise when its key is given) and Vault (when an
// address is given).
// jwtFetcher gives JWT-SVIDs (identity.WorkloadSource).
type jwtFetcher interface {
	FetchJWTSVID(ctx context.Context, audience string) (string, error)
}

func openBackends(ctx context.Context, cfg *serverConfig, source identity.Source, log *slog.Logger) (*backend.Registry, error) {
	var bs []backend.Backend
	lc := cfg.Backends.Local
	if cfg.Dev {
		if lc.KeyFile == "" && os.Getenv(envLocalBackendKey) == "" {
			lc.KeyFile = filepath.Join(cfg.DataDir, devLocalKeyFile)
			if err := local.EnsureKeyFile(lc.KeyFile); err != nil {
				return nil, err
			}
		}
		if lc.SecretsFile == "" {
			lc.SecretsFile = filepath.Join(cfg.DataDir, devLocalSecrets)
		}
	}
	if lc.KeyFile != "" || os.Getenv(envLocalBackendKey) != "" {
		var (
			key []byte
			err error
		)
		if lc.KeyFile != "" {
			key, err = local.LoadKey(lc.KeyFile)
		} else {
			key, err = local.ParseKey([]byte(os.Getenv(envLocalBackendKey)))
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
			jwt, ok := source.(jwtFetcher)
			if !ok {
				return nil, fmt.Errorf("vault: JWT-SVID auth needs the SPIFFE Workload API as the identity source (--workload-api)")
			}
			c.JWT = &vault.JWTAuth{Mount: vc.JWTMount, Role: vc.JWTRole, Audience: vc.JWTAudience, Fetch: jwt.FetchJWTSVID}
		}
		b, err := vault.New(ctx, c, log)
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
	return backend.NewRegistry(bs...), nil
}

// fingerprintKey reads the fingerprint key (dev: created in the data
// directory), or makes a random one for this process.
func fingerprintKey(cfg *serverConfig) ([]byte, error) {
	path := cfg.Cache.FingerprintKeyFile
	if path == "" && cfg.Dev {
		path = filepath.Join(cfg.DataDir, devFingerprintKey)
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
