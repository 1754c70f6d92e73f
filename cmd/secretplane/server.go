package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/secretplane/secretplane/controlplane/api"
	"github.com/secretplane/secretplane/controlplane/audit"
	"github.com/secretplane/secretplane/controlplane/catalog"
	"github.com/secretplane/secretplane/controlplane/consumers"
	"github.com/secretplane/secretplane/controlplane/logging"
	"github.com/secretplane/secretplane/controlplane/policy"
	"github.com/secretplane/secretplane/controlplane/resolve"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/controlplane/watch"
	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/store"
	"github.com/secretplane/secretplane/store/postgres"
	"github.com/secretplane/secretplane/store/sqlite"
)

// Dev defaults.
const (
	defaultListen      = "127.0.0.1:7443"
	defaultTrustDomain = "secretplane.test"
	devEndpointFile    = "dev.json"
	devStoreFile       = "secretplane.db"
)

// serverConfig is the server's configuration: a YAML file (--config) with
// flags on top. It holds no secret: identities are files, the PostgreSQL
// password comes from a passfile or client certificate, never the DSN.
type serverConfig struct {
	Dev         bool     `yaml:"dev"`
	DataDir     string   `yaml:"data_dir"`
	Listen      string   `yaml:"listen"`
	Store       string   `yaml:"store"`
	TrustDomain string   `yaml:"trust_domain"`
	Admins      []string `yaml:"admins"`
	// AcceptTrustDomains are the trust domains whose workloads may connect
	// (default: the server's own). Peers of other trust domains need their
	// bundle: from SPIRE federation with the Workload API, or FederatedBundles.
	AcceptTrustDomains []string `yaml:"accept_trust_domains"`
	// FederatedBundles maps a trust domain to a bundle file (file identity).
	FederatedBundles map[string]string `yaml:"federated_bundles"`
	Identity         struct {
		// WorkloadAPI is the SPIFFE Workload API address (a SPIRE agent),
		// e.g. unix:///run/spire/agent.sock. Alternative to the files.
		WorkloadAPI string `yaml:"workload_api"`
		// WorkloadAPITimeout bounds the wait for the first SVID at startup.
		WorkloadAPITimeout time.Duration `yaml:"workload_api_timeout"`
		Cert               string        `yaml:"cert"`
		Key                string        `yaml:"key"`
		Bundle             string        `yaml:"bundle"`
	} `yaml:"identity"`
	Log struct {
		Format string `yaml:"format"`
		Level  string `yaml:"level"`
	} `yaml:"log"`
	Backends struct {
		Local struct {
			// KeyFile holds the 32-byte key (raw or base64, mode 0600); the
			// environment variable SECRETPLANE_LOCAL_KEY may give it instead.
			KeyFile     string `yaml:"key_file"`
			SecretsFile string `yaml:"secrets_file"`
		} `yaml:"local"`
		AWS struct {
			// Region enables the AWS Secrets Manager backend; credentials
			// come from the SDK's default chain.
			Region   string `yaml:"region"`
			Endpoint string `yaml:"endpoint"`
		} `yaml:"aws_sm"`
		Vault struct {
			Address           string `yaml:"address"`
			CACert            string `yaml:"ca_cert"`
			TokenFile         string `yaml:"token_file"`
			AppRoleID         string `yaml:"approle_role_id"`
			AppRoleSecretFile string `yaml:"approle_secret_id_file"`
			CertRole          string `yaml:"cert_role"`
			JWTRole           string `yaml:"jwt_role"`
			JWTAudience       string `yaml:"jwt_audience"`
			JWTMount          string `yaml:"jwt_mount"`
			CertFile          string `yaml:"cert_file"`
			KeyFile           string `yaml:"key_file"`
		} `yaml:"vault"`
	} `yaml:"backends"`
	Cache struct {
		TTL      time.Duration `yaml:"ttl"`
		MaxStale time.Duration `yaml:"max_stale"`
		// MaxEntries and MaxBytes bound the cache; least recently used
		// values go first.
		MaxEntries int   `yaml:"max_entries"`
		MaxBytes   int64 `yaml:"max_bytes"`
		// FingerprintKeyFile keys value fingerprints, so they stay stable
		// across restarts and replicas (random per process when unset).
		FingerprintKeyFile string `yaml:"fingerprint_key_file"`
	} `yaml:"cache"`
	Audit struct {
		// File mirrors every committed audit event as a JSON line.
		File string `yaml:"file"`
		// FailOpen lets requests proceed when the audit log cannot be
		// written. Dev mode only.
		FailOpen bool `yaml:"fail_open"`
	} `yaml:"audit"`
}

// devEndpoint is written by a dev server so the CLI can find it.
type devEndpoint struct {
	Address  string `json:"address"`
	ServerID string `json:"server_id"`
}

func newServerCommand(g *globalFlags) *cobra.Command {
	var cfgFile string
	cfg := &serverConfig{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the secretplane server",
		Long: `Run the secretplane server.

With --dev it runs on embedded defaults: a SQLite store and a built-in CA in
the data directory, an admin identity for the CLI, and a loopback listener.
Without --dev every setting must be given (flags or --config FILE), and
startup fails closed on anything missing or unsafe.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgFile != "" {
				if err := loadServerConfig(cfgFile, cfg, cmd); err != nil {
					return err
				}
			}
			if cfg.DataDir == "" || cmd.Flags().Changed("data-dir") {
				cfg.DataDir = g.dataDir
			}
			return runServer(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgFile, "config", "", "YAML configuration file (flags override it)")
	f.BoolVar(&cfg.Dev, "dev", false, "dev mode: embedded store, built-in CA, admin identity for the CLI")
	f.StringVar(&cfg.Listen, "listen", "", "listen address (dev default "+defaultListen+")")
	f.StringVar(&cfg.Store, "store", "", "store: sqlite:PATH or postgres://... (dev default: SQLite in the data directory)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "", "trust domain (dev default "+defaultTrustDomain+")")
	f.StringSliceVar(&cfg.Admins, "admin", nil, "SPIFFE ID holding admin on everything, whatever the policies say (repeatable)")
	f.StringSliceVar(&cfg.AcceptTrustDomains, "accept-trust-domain", nil, "trust domain whose workloads may connect (repeatable; default the server's own)")
	f.StringToStringVar(&cfg.FederatedBundles, "federated-bundle", nil, "TRUST_DOMAIN=bundle.pem of a federated trust domain (repeatable; file identity)")
	f.StringVar(&cfg.Identity.WorkloadAPI, "workload-api", "", "SPIFFE Workload API address of a SPIRE agent (unix:///path/agent.sock): the server's SVID and bundles, rotated live")
	f.DurationVar(&cfg.Identity.WorkloadAPITimeout, "workload-api-timeout", 30*time.Second, "how long startup waits for the first SVID from the Workload API")
	f.StringVar(&cfg.Identity.Cert, "svid-cert", "", "server SVID certificate PEM")
	f.StringVar(&cfg.Identity.Key, "svid-key", "", "server SVID private key PEM")
	f.StringVar(&cfg.Identity.Bundle, "bundle-file", "", "trust bundle PEM")
	f.StringVar(&cfg.Backends.Local.KeyFile, "local-key-file", "", "key of the embedded local backend (dev default: in the data directory; or env SECRETPLANE_LOCAL_KEY)")
	f.StringVar(&cfg.Backends.Local.SecretsFile, "local-secrets-file", "", "secrets file of the embedded local backend (dev default: in the data directory)")
	f.StringVar(&cfg.Backends.AWS.Region, "aws-region", "", "enable AWS Secrets Manager in this default region (credentials: the AWS SDK's default chain)")
	f.StringVar(&cfg.Backends.AWS.Endpoint, "aws-endpoint", "", "AWS Secrets Manager endpoint override (VPC endpoint)")
	f.StringVar(&cfg.Backends.Vault.Address, "vault-addr", "", "HashiCorp Vault address (https://...)")
	f.StringVar(&cfg.Backends.Vault.CACert, "vault-ca-cert", "", "CA certificate that signs Vault's TLS certificate")
	f.StringVar(&cfg.Backends.Vault.TokenFile, "vault-token-file", "", "file holding a Vault token")
	f.StringVar(&cfg.Backends.Vault.AppRoleID, "vault-approle-role-id", "", "Vault AppRole role id")
	f.StringVar(&cfg.Backends.Vault.AppRoleSecretFile, "vault-approle-secret-id-file", "", "file holding the Vault AppRole secret id")
	f.StringVar(&cfg.Backends.Vault.CertFile, "vault-cert-file", "", "client certificate for Vault's cert auth (needs a subject common name)")
	f.StringVar(&cfg.Backends.Vault.KeyFile, "vault-key-file", "", "private key of --vault-cert-file")
	f.StringVar(&cfg.Backends.Vault.CertRole, "vault-cert-role", "", "Vault cert auth role to log in as (optional)")
	f.StringVar(&cfg.Backends.Vault.JWTRole, "vault-jwt-role", "", "log in to Vault's JWT auth as this role with a JWT-SVID from the Workload API")
	f.StringVar(&cfg.Backends.Vault.JWTAudience, "vault-jwt-audience", "vault", "audience of the JWT-SVID for Vault")
	f.StringVar(&cfg.Backends.Vault.JWTMount, "vault-jwt-mount", "jwt", "mount path of Vault's JWT auth method")
	f.DurationVar(&cfg.Cache.TTL, "cache-ttl", 5*time.Minute, "how long a resolved value is fresh")
	f.DurationVar(&cfg.Cache.MaxStale, "max-stale", time.Hour, "how long past its TTL a value serves while its backend fails; then fail closed")
	f.IntVar(&cfg.Cache.MaxEntries, "cache-max-entries", 100_000, "bound on cached values (least recently used go first)")
	f.Int64Var(&cfg.Cache.MaxBytes, "cache-max-bytes", 256<<20, "bound on the bytes of cached values")
	f.StringVar(&cfg.Cache.FingerprintKeyFile, "fingerprint-key-file", "", "key for value fingerprints (dev default: in the data directory)")
	f.StringVar(&cfg.Audit.File, "audit-file", "", "also append every audit event to this JSON-lines file")
	f.BoolVar(&cfg.Audit.FailOpen, "audit-fail-open", false, "dev mode only: serve requests even when the audit log cannot be written")
	f.StringVar(&cfg.Log.Format, "log-format", "", "log format: text or json (default text)")
	f.StringVar(&cfg.Log.Level, "log-level", "", "log level: debug, info, warn, error (default info)")
	return cmd
}

// loadServerConfig reads a YAML file into cfg, keeping values of flags the
// user set. Unknown keys are refused.
func loadServerConfig(path string, cfg *serverConfig, cmd *cobra.Command) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read server config: %w", err)
	}
	var file serverConfig
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		return fmt.Errorf("parse server config %s: %w", path, err)
	}
	set := cmd.Flags().Changed
	pick := func(flag string, dst *string, v string) {
		if !set(flag) {
			*dst = v
		}
	}
	if !set("dev") {
		cfg.Dev = file.Dev
	}
	cfg.DataDir = file.DataDir
	pick("listen", &cfg.Listen, file.Listen)
	pick("store", &cfg.Store, file.Store)
	pick("trust-domain", &cfg.TrustDomain, file.TrustDomain)
	pick("workload-api", &cfg.Identity.WorkloadAPI, file.Identity.WorkloadAPI)
	if !set("workload-api-timeout") && file.Identity.WorkloadAPITimeout > 0 {
		cfg.Identity.WorkloadAPITimeout = file.Identity.WorkloadAPITimeout
	}
	pick("svid-cert", &cfg.Identity.Cert, file.Identity.Cert)
	pick("svid-key", &cfg.Identity.Key, file.Identity.Key)
	pick("bundle-file", &cfg.Identity.Bundle, file.Identity.Bundle)
	pick("log-format", &cfg.Log.Format, file.Log.Format)
	pick("log-level", &cfg.Log.Level, file.Log.Level)
	if !set("admin") {
		cfg.Admins = file.Admins
	}
	if !set("accept-trust-domain") {
		cfg.AcceptTrustDomains = file.AcceptTrustDomains
	}
	if !set("federated-bundle") {
		cfg.FederatedBundles = file.FederatedBundles
	}
	pick("audit-file", &cfg.Audit.File, file.Audit.File)
	pick("local-key-file", &cfg.Backends.Local.KeyFile, file.Backends.Local.KeyFile)
	pick("local-secrets-file", &cfg.Backends.Local.SecretsFile, file.Backends.Local.SecretsFile)
	pick("aws-region", &cfg.Backends.AWS.Region, file.Backends.AWS.Region)
	pick("aws-endpoint", &cfg.Backends.AWS.Endpoint, file.Backends.AWS.Endpoint)
	pick("vault-addr", &cfg.Backends.Vault.Address, file.Backends.Vault.Address)
	pick("vault-ca-cert", &cfg.Backends.Vault.CACert, file.Backends.Vault.CACert)
	pick("vault-token-file", &cfg.Backends.Vault.TokenFile, file.Backends.Vault.TokenFile)
	pick("vault-approle-role-id", &cfg.Backends.Vault.AppRoleID, file.Backends.Vault.AppRoleID)
	pick("vault-approle-secret-id-file", &cfg.Backends.Vault.AppRoleSecretFile, file.Backends.Vault.AppRoleSecretFile)
	pick("vault-cert-file", &cfg.Backends.Vault.CertFile, file.Backends.Vault.CertFile)
	pick("vault-key-file", &cfg.Backends.Vault.KeyFile, file.Backends.Vault.KeyFile)
	pick("vault-cert-role", &cfg.Backends.Vault.CertRole, file.Backends.Vault.CertRole)
	pick("vault-jwt-role", &cfg.Backends.Vault.JWTRole, file.Backends.Vault.JWTRole)
	pick("vault-jwt-audience", &cfg.Backends.Vault.JWTAudience, file.Backends.Vault.JWTAudience)
	pick("vault-jwt-mount", &cfg.Backends.Vault.JWTMount, file.Backends.Vault.JWTMount)
	pick("fingerprint-key-file", &cfg.Cache.FingerprintKeyFile, file.Cache.FingerprintKeyFile)
	if !set("cache-ttl") && file.Cache.TTL > 0 {
		cfg.Cache.TTL = file.Cache.TTL
	}
	if !set("max-stale") && file.Cache.MaxStale > 0 {
		cfg.Cache.MaxStale = file.Cache.MaxStale
	}
	if !set("cache-max-entries") && file.Cache.MaxEntries > 0 {
		cfg.Cache.MaxEntries = file.Cache.MaxEntries
	}
	if !set("cache-max-bytes") && file.Cache.MaxBytes > 0 {
		cfg.Cache.MaxBytes = file.Cache.MaxBytes
	}
	if !set("audit-fail-open") {
		cfg.Audit.FailOpen = file.Audit.FailOpen
	}
	return nil
}

// startup is everything the server needs, checked and opened.
type startup struct {
	log      *slog.Logger
	listen   string
	source   identity.Source
	serverID spiffeid.ID
	td       spiffeid.TrustDomain
	accept   []spiffeid.TrustDomain // trust domains whose clients may connect
	admins   []spiffeid.ID
	store    store.Store
	journal  string // the audit journal's directory: an embedded store's
	dev      *identity.DevIdentities
}

// serverGCPercent is the server's default GOGC. Its heap is mostly the
// value cache: long-lived and bounded. Go's default of 100 lets the heap
// reach twice what is live before collecting, doubling the cache's
// footprint (434 MiB RSS with 100,000 cached 1 KiB values); 50 keeps it
// near 1.5x (320 MiB) at a small GC cost, since with a large live heap
// collections are rare either way. GOGC in the environment wins.
const serverGCPercent = 50

func runServer(ctx context.Context, cfg *serverConfig, out interface{ Write([]byte) (int, error) }) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serverGCPercent)
	}
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(orDefault(cfg.Log.Level, "info"))); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log, err := logging.New(os.Stderr, cfg.Log.Format, level)
	if err != nil {
		return err
	}
	st, err := prepare(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer st.store.Close()

	tlsCfg, err := identity.ServerTLSConfig(st.source, st.accept...)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", st.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", st.listen, err)
	}
	engine := policy.NewEngine(st.store, st.admins, log)
	if err := engine.Load(ctx); err != nil {
		return err
	}
	// Background work (policy refresh, watch refreshes, consumer
	// sightings) reads and writes the store: it has stopped, and the last
	// sightings are written, before the store closes.
	bg, stopBackground := context.WithCancel(context.Background())
	var background sync.WaitGroup
	defer func() { stopBackground(); background.Wait() }()
	background.Go(func() { engine.Refresh(bg, 10*time.Second) })
	auditOpts := audit.Options{FailOpen: cfg.Audit.FailOpen, Log: log}
	if cfg.Audit.File != "" {
		f, err := os.OpenFile(cfg.Audit.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("audit file: %w", err)
		}
		defer f.Close()
		auditOpts.Mirror = f
	}
	auditLog, err := openAuditLog(ctx, st, auditOpts)
	if err != nil {
		return err
	}
	go auditLog.Run(bg)
	defer func() { // what is journaled reaches the store before it closes
		stopBackground()
		<-auditLog.Done()
		if err := auditLog.Close(); err != nil {
			log.Error("closing the audit journal", "error", err)
		}
	}()
	registry, err := openBackends(bg, cfg, st.source, log)
	if err != nil {
		return err
	}
	fpKey, err := fingerprintKey(cfg)
	if err != nil {
		return err
	}
	var hub *watch.Hub
	resolver, err := resolve.New(registry, resolve.Options{
		TTL: cfg.Cache.TTL, MaxStale: cfg.Cache.MaxStale, FingerprintKey: fpKey,
		MaxEntries: cfg.Cache.MaxEntries, MaxBytes: cfg.Cache.MaxBytes,
		// A change seen while resolving reaches watchers at once.
		OnChange: func(ref secretref.Ref, _, _ string) { hub.Changed(ref) },
	})
	if err != nil {
		return err
	}
	cat := catalog.New(st.store, catalog.WithAccessCheck(registry, engine))
	hub = watch.NewHub(cat, resolver, watch.Options{Log: log})
	background.Go(func() { hub.Run(bg) })
	deps := consumers.New(st.store, consumers.Options{Log: log})
	background.Go(func() { deps.Run(bg) })
	srv := api.NewServer(api.Config{
		TLS:      tlsCfg,
		Log:      log,
		Catalog:  cat,
		Policies: policy.NewManager(st.store, engine),
		Policy:   engine,
		Audit:    auditLog,
		AuditLog: auditLog,
		Resolver: resolver,
		Watch:    hub,
		Consumer: deps,
	})
	addr := lis.Addr().String()
	if cfg.Dev {
		if err := writeDevEndpoint(cfg.DataDir, devEndpoint{Address: addr, ServerID: st.serverID.String()}); err != nil {
			return err
		}
		printDevNextSteps(out, cfg.DataDir, addr, st)
	}
	log.Info("secretplane server listening", "address", addr, "spiffe_id", st.serverID.String(), "dev", cfg.Dev, "admins", len(st.admins))

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	return nil
}

// prepare checks the configuration and opens what the server needs. Every
// problem is reported at once, naming settings, never values.
func prepare(ctx context.Context, cfg *serverConfig, log *slog.Logger) (*startup, error) {
	var problems []string
	st := &startup{listen: orDefault(cfg.Listen, defaultListen), log: log}

	if cfg.Dev {
		td, err := spiffeid.TrustDomainFromString(orDefault(cfg.TrustDomain, defaultTrustDomain))
		if err != nil {
			return nil, fmt.Errorf("--trust-domain: %w", err)
		}
		if err := identity.EnsureDir(cfg.DataDir); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
		dev, err := identity.BootstrapDev(cfg.DataDir, td, time.Now())
		if err != nil {
			return nil, fmt.Errorf("dev identities: %w", err)
		}
		st.dev, st.source, st.td, st.serverID = dev, dev.Server, td, dev.Server.ID()
		st.admins = append(st.admins, dev.Admin.ID())
		if cfg.Store == "" {
			cfg.Store = "sqlite:" + filepath.Join(cfg.DataDir, devStoreFile)
		}
	} else {
		if cfg.Listen == "" {
			problems = append(problems, "listen: required outside --dev")
		}
		files := cfg.Identity.Cert != "" || cfg.Identity.Key != "" || cfg.Identity.Bundle != ""
		switch {
		case cfg.Identity.WorkloadAPI != "" && files:
			problems = append(problems, "identity: give --workload-api or the SVID files, not both")
		case cfg.Identity.WorkloadAPI != "":
			src, err := identity.NewWorkloadSource(ctx, cfg.Identity.WorkloadAPI, cfg.Identity.WorkloadAPITimeout, log)
			if err != nil {
				problems = append(problems, "identity: "+err.Error())
			} else {
				st.source, st.serverID, st.td = src, src.ID(), src.ID().TrustDomain()
			}
		case cfg.Identity.Cert == "" || cfg.Identity.Key == "" || cfg.Identity.Bundle == "":
			problems = append(problems, "identity: --workload-api, or --svid-cert, --svid-key and --bundle-file, is required outside --dev")
		default:
			federated := map[spiffeid.TrustDomain]string{}
			for name, file := range cfg.FederatedBundles {
				td, err := spiffeid.TrustDomainFromString(name)
				if err != nil {
					problems = append(problems, "federated_bundles: "+err.Error())
					continue
				}
				federated[td] = file
			}
			// Files rotated in place (spiffe-helper, cert-manager) are
			// picked up for new connections without a restart.
			if src, err := identity.WatchFiles(cfg.Identity.Cert, cfg.Identity.Key, cfg.Identity.Bundle, identity.FileOptions{Federated: federated, Log: log}); err != nil {
				problems = append(problems, "identity: "+err.Error())
			} else {
				st.source, st.serverID, st.td = src, src.ID(), src.ID().TrustDomain()
			}
		}
		if len(cfg.FederatedBundles) > 0 && cfg.Identity.WorkloadAPI != "" {
			problems = append(problems, "federated_bundles: with the Workload API, SPIRE federation supplies the bundles")
		}
		if cfg.Store == "" {
			problems = append(problems, "store: required outside --dev (sqlite:PATH or postgres://...)")
		}
		if len(cfg.Admins) == 0 {
			problems = append(problems, "admins: at least one admin SPIFFE ID is required outside --dev")
		}
	}
	for _, name := range cfg.AcceptTrustDomains {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			problems = append(problems, fmt.Sprintf("accept_trust_domains: %q: %v", name, err))
			continue
		}
		st.accept = append(st.accept, td)
	}
	if len(st.accept) == 0 && !st.td.IsZero() {
		st.accept = []spiffeid.TrustDomain{st.td}
	}
	if cfg.Cache.TTL <= 0 || cfg.Cache.MaxStale < 0 {
		problems = append(problems, "cache: ttl must be positive and max_stale not negative")
	}
	if cfg.Cache.MaxEntries <= 0 || cfg.Cache.MaxBytes <= 0 {
		problems = append(problems, "cache: max_entries and max_bytes must be positive (they bound the server's memory)")
	}
	if cfg.Audit.FailOpen && !cfg.Dev {
		problems = append(problems, "audit: fail_open is allowed in --dev only; production refuses requests it cannot audit")
	}
	for _, a := range cfg.Admins {
		id, err := spiffeid.FromString(a)
		if err != nil {
			problems = append(problems, fmt.Sprintf("admins: %q is not a SPIFFE ID: %v", a, err))
			continue
		}
		st.admins = append(st.admins, id)
	}
	if cfg.Store != "" && len(problems) == 0 {
		s, journal, err := openStore(ctx, cfg.Store, cfg.Dev)
		if err != nil {
			problems = append(problems, "store: "+err.Error())
		} else {
			st.store, st.journal = s, journal
		}
	}
	if len(problems) > 0 {
		if st.store != nil {
			st.store.Close()
		}
		return nil, fmt.Errorf("refusing to start:\n  - %s", strings.Join(problems, "\n  - "))
	}
	return st, nil
}

// openAuditLog returns the audit log for the store: through its journal
// for an embedded store, a transaction per batch otherwise.
func openAuditLog(ctx context.Context, st *startup, opts audit.Options) (*audit.Log, error) {
	if st.journal == "" {
		return audit.New(st.store, opts), nil
	}
	return audit.OpenJournaled(ctx, st.store, st.journal, opts)
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
		if dsnHasPassword(spec) {
			return nil, "", errors.New("postgres: the DSN carries a password; configuration must hold no secret: use PGPASSFILE or a client certificate")
		}
		s, err := postgres.Open(ctx, spec, postgres.Options{AllowInsecureLoopback: dev})
		return s, "", err
	default:
		return nil, "", errors.New("unknown store: want sqlite:PATH or postgres://...")
	}
}

// dsnHasPassword reports whether a PostgreSQL URL carries a password, in its
// userinfo or as a password query parameter.
func dsnHasPassword(dsn string) bool {
	u, err := url.Parse(dsn)
	if err != nil {
		return strings.Contains(dsn, ":") && strings.Contains(dsn, "@")
	}
	if _, set := u.User.Password(); set {
		return true
	}
	return u.Query().Has("password")
}

func writeDevEndpoint(dataDir string, ep devEndpoint) error {
	raw, err := json.MarshalIndent(ep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dataDir, devEndpointFile), append(raw, '\n'), 0o600); err != nil {
		return fmt.Errorf("write dev endpoint: %w", err)
	}
	return nil
}

func printDevNextSteps(out interface{ Write([]byte) (int, error) }, dataDir, addr string, st *startup) {
	fmt.Fprintf(out, `
secretplane dev server
  address      %s
  server id    %s
  admin id     %s
  data dir     %s  (SQLite store, dev CA, identities)

The CLI finds the dev server and its admin identity by itself. In another terminal:

  secretplane secret put payments/db --ref 'vault://secret/payments/db#password' --owner team-payments
  secretplane secret get payments/db
  secretplane secret list
  secretplane ref check 'aws-sm://prod/db?stage=AWSPREVIOUS#password'
  secretplane dev issue payments-api --out ./payments-api-svid
  secretplane policy apply -f docs/examples/policies.yaml
  secretplane audit tail

The README's five-minute tour goes on from there: values, resolve, configuration.

(Use ./bin/secretplane if the binary is not on your PATH.) Ctrl-C stops the server; data is kept.

`, addr, st.serverID, st.dev.Admin.ID(), dataDir)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
