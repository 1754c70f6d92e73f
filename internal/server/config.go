package server

import (
	"github.com/secretplane/secretplane/controlplane/rotation"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/secretplane/secretplane/controlplane/backend"
	"github.com/secretplane/secretplane/identity"
)

// Config is everything a server is built from. cmd/secretplane fills it
// from flags, environment and a file (its koanf tags are the file's keys)
// over Defaults; tests start from Defaults too and set what they need. It
// holds no secret: identities, keys and passwords are files.
type Config struct {
	Dev     bool   `koanf:"dev"`
	DataDir string `koanf:"data_dir"`
	Listen  string `koanf:"listen"`
	// Store is "sqlite:PATH" or a postgres:// URL (dev default: SQLite in
	// the data directory).
	Store       string   `koanf:"store"`
	TrustDomain string   `koanf:"trust_domain"`
	Admins      []string `koanf:"admins"`
	// AcceptTrustDomains are the trust domains whose workloads may connect
	// (default: the server's own). Peers of other trust domains need their
	// bundle: from SPIRE federation with the Workload API, or FederatedBundles.
	AcceptTrustDomains []string `koanf:"accept_trust_domains"`
	// FederatedBundles maps a trust domain to a bundle file (file identity).
	FederatedBundles map[string]string `koanf:"federated_bundles"`
	Identity         IdentityConfig    `koanf:"identity"`
	Log              LogConfig         `koanf:"log"`
	Backends         BackendsConfig    `koanf:"backends"`
	Cache            CacheConfig       `koanf:"cache"`
	Audit            AuditConfig       `koanf:"audit"`
	// PolicyRefresh is how often the policies are reloaded from the store,
	// to see changes made through other replicas.
	PolicyRefresh time.Duration `koanf:"policy_refresh"`
	// WatchRetry is how soon a watched secret whose refresh failed is
	// tried again.
	WatchRetry time.Duration  `koanf:"watch_retry"`
	Shutdown   ShutdownConfig `koanf:"shutdown"`
	SDS        SDSConfig      `koanf:"sds"`
	Rotation   RotationConfig `koanf:"rotation"`
	// Webhooks maps a name to an https:// URL that gets every rotation
	// step as a signed CloudEvent; WebhookKeyFile holds the HMAC key (at
	// least 16 bytes), WebhookCAFile the CA that signs the receivers'
	// certificates when not a public one.
	Webhooks       map[string]string `koanf:"webhooks"`
	WebhookKeyFile string            `koanf:"webhook_key_file"`
	WebhookCAFile  string            `koanf:"webhook_ca_file"`
	// MaxStreamsPerConn bounds one connection's concurrent calls and
	// streams (HTTP/2 MAX_CONCURRENT_STREAMS): an Envoy holds one SDS
	// stream per secret without ADS.
	MaxStreamsPerConn int           `koanf:"max_streams_per_connection"`
	Metrics           MetricsConfig `koanf:"metrics"`
	Alerts            AlertsConfig  `koanf:"alerts"`
	Startup           StartupConfig `koanf:"startup"`

	// Set in code only.

	// Listener, when set, is served instead of listening on Listen.
	Listener net.Listener `koanf:"-"`
	// Logger, when set, is used instead of one built from Log.
	Logger *slog.Logger `koanf:"-"`
	// ConfigFile is the YAML file the settings were read from, if any:
	// Preflight looks in it for literal secret values.
	ConfigFile string `koanf:"-"`
}

// MetricsConfig is the operations listener: Prometheus metrics on
// /metrics and Kubernetes probes on /healthz and /readyz, over plain HTTP
// (it serves no secret). Off when Listen is empty; dev mode's default is
// DevMetricsListen.
type MetricsConfig struct {
	Listen string `koanf:"listen"`
	// Refresh is how often the per-secret figures (expiry, renewal,
	// rotations, lagging consumers, required secrets) are gathered; the
	// readiness probe and expiry alerts read the same figures.
	Refresh time.Duration `koanf:"refresh"`
}

// AlertsConfig is the server's own alerting, for teams without Prometheus:
// a signed CloudEvent to the owner's webhook at each lead time before a
// secret expires and on every failed rotation.
type AlertsConfig struct {
	// LeadTimes are how long before a secret's expiry its owner is told,
	// once for each.
	LeadTimes []time.Duration `koanf:"lead_times"`
	// Routes maps a secret's owner to the name of a webhook (of Webhooks).
	Routes map[string]string `koanf:"routes"`
	// DefaultRoute is the webhook of secrets whose owner has no route
	// ("" tells nobody of those).
	DefaultRoute string `koanf:"default_route"`
}

// StartupConfig tunes the checks run before serving.
type StartupConfig struct {
	// RequiredTimeout bounds the time spent resolving every secret marked
	// required before the server serves: past it, those not resolved are
	// reported as failures and the server refuses to start. It bounds each
	// backend's login at startup too.
	RequiredTimeout time.Duration `koanf:"required_timeout"`
}

// RotationConfig tunes rotations.
type RotationConfig struct {
	// Deadline bounds the wait for every consumer's acknowledgement.
	Deadline time.Duration `koanf:"deadline"`
	// Horizon: consumers not seen for longer are not waited for.
	Horizon time.Duration `koanf:"horizon"`
	// AutoRollback pins a failed rotation's secret back at its previous
	// version and pushes it to every consumer.
	AutoRollback bool `koanf:"auto_rollback"`
	// CheckInterval is how often rotation policies are looked at for
	// rotations due (cadence, certificate renewal).
	CheckInterval time.Duration `koanf:"check_interval"`
	// Observe records a rotation, verified as any other, for every new
	// backend version made outside secretplane that the cache sees.
	Observe bool `koanf:"observe"`
	// Hooks maps a name to an external hook, the method hook's policies
	// select with --param hook=NAME: https://host/path (POSTed each step
	// as JSON, signed with the webhook key when there is one) or
	// exec:/absolute/path/to/command (run with the step as its argument).
	// Configured here only: a policy never names a command or a URL.
	Hooks map[string]string `koanf:"hooks"`
	// Issuers adds certificate issuers to those the server builds (Vault
	// PKI, the dev CA), by name: for embedding and tests.
	Issuers map[string]rotation.Issuer `koanf:"-"`
}

// SDSConfig tunes Envoy SDS, served on the API listener and, when Listen
// is set, on a listener of its own that serves nothing else.
type SDSConfig struct {
	Listen string `koanf:"listen"`
	// MaxNames bounds the secrets one SDS or ADS stream holds.
	MaxNames int `koanf:"max_names"`
	// BundleRefresh is how often trust bundles are re-read for changes.
	BundleRefresh time.Duration `koanf:"bundle_refresh"`
	// HoldRetry is how often names that do not exist yet are looked up
	// again (a name created through this replica is served at once).
	HoldRetry time.Duration `koanf:"hold_retry"`
}

// IdentityConfig says where the server's SVID comes from outside dev mode.
type IdentityConfig struct {
	// WorkloadAPI is the SPIFFE Workload API address (a SPIRE agent),
	// e.g. unix:///run/spire/agent.sock. Alternative to the files.
	WorkloadAPI string `koanf:"workload_api"`
	// WorkloadAPITimeout bounds the wait for the first SVID at startup.
	WorkloadAPITimeout time.Duration `koanf:"workload_api_timeout"`
	Cert               string        `koanf:"cert"`
	Key                string        `koanf:"key"`
	Bundle             string        `koanf:"bundle"`
	// Source, when set (tests, embedding), is the server's identity
	// instead of any of the above, dev mode's included.
	Source identity.Source `koanf:"-"`
}

// LogConfig is the server log's shape.
type LogConfig struct {
	Format string `koanf:"format"` // text or json
	Level  string `koanf:"level"`  // debug, info, warn, error
	// Out is where the log goes; default standard error.
	Out io.Writer `koanf:"-"`
}

// BackendsConfig configures the secret managers.
type BackendsConfig struct {
	Local LocalConfig `koanf:"local"`
	AWS   AWSConfig   `koanf:"aws_sm"`
	Vault VaultConfig `koanf:"vault"`
	// Extra are backends built by the caller (tests, embedding), added to
	// those configured.
	Extra []backend.Backend `koanf:"-"`
}

// LocalConfig is the embedded encrypted backend.
type LocalConfig struct {
	// KeyFile holds the 32-byte key (raw or base64, mode 0600); the
	// environment variable SECRETPLANE_LOCAL_KEY may give it instead.
	KeyFile     string `koanf:"key_file"`
	SecretsFile string `koanf:"secrets_file"`
}

// AWSConfig is AWS Secrets Manager; a region enables it. Credentials come
// from the AWS SDK's default chain.
type AWSConfig struct {
	Region   string `koanf:"region"`
	Endpoint string `koanf:"endpoint"`
}

// VaultConfig is HashiCorp Vault KV v2; an address enables it.
type VaultConfig struct {
	Address           string `koanf:"address"`
	CACert            string `koanf:"ca_cert"`
	TokenFile         string `koanf:"token_file"`
	AppRoleID         string `koanf:"approle_role_id"`
	AppRoleSecretFile string `koanf:"approle_secret_id_file"`
	CertRole          string `koanf:"cert_role"`
	CertFile          string `koanf:"cert_file"`
	KeyFile           string `koanf:"key_file"`
	JWTRole           string `koanf:"jwt_role"`
	JWTAudience       string `koanf:"jwt_audience"`
	JWTMount          string `koanf:"jwt_mount"`
}

// CacheConfig bounds and times the value cache.
type CacheConfig struct {
	TTL      time.Duration `koanf:"ttl"`
	MaxStale time.Duration `koanf:"max_stale"`
	// MaxEntries and MaxBytes bound the cache; least recently used
	// values go first.
	MaxEntries int   `koanf:"max_entries"`
	MaxBytes   int64 `koanf:"max_bytes"`
	// FingerprintKeyFile keys value fingerprints, so they stay stable
	// across restarts and replicas (random per process when unset).
	FingerprintKeyFile string `koanf:"fingerprint_key_file"`
}

// AuditConfig is the audit log's.
type AuditConfig struct {
	// File mirrors every committed audit event as a JSON line.
	File string `koanf:"file"`
	// FailOpen lets requests proceed when the audit log cannot be
	// written. Dev mode only.
	FailOpen bool `koanf:"fail_open"`
}

// ShutdownConfig times the drain.
type ShutdownConfig struct {
	// Delay is how long the server keeps serving, its health checks
	// answering NOT_SERVING, before it stops taking calls: time for load
	// balancers and Kubernetes to stop sending it any.
	Delay time.Duration `koanf:"delay"`
	// Timeout bounds the wait for calls in flight once it stops taking
	// new ones; those still running then are cut off.
	Timeout time.Duration `koanf:"timeout"`
}

// Dev mode's defaults for what outside it must be given.
const (
	DevListen      = "127.0.0.1:7443"
	DevTrustDomain = "secretplane.test"
	// DevMetricsListen is dev mode's metrics and probes listener.
	DevMetricsListen = "127.0.0.1:7444"
)

// Defaults returns the settings a zero Config field takes: the one place
// they are written (cmd/secretplane loads its flag and file defaults from
// it).
func Defaults() Config {
	return Config{
		PolicyRefresh: 10 * time.Second,
		WatchRetry:    5 * time.Second,
		Identity:      IdentityConfig{WorkloadAPITimeout: 30 * time.Second},
		Log:           LogConfig{Format: "text", Level: "info"},
		Backends:      BackendsConfig{Vault: VaultConfig{JWTAudience: "vault", JWTMount: "jwt"}},
		Cache:         CacheConfig{TTL: 5 * time.Minute, MaxStale: time.Hour, MaxEntries: 100_000, MaxBytes: 256 << 20},
		Shutdown:      ShutdownConfig{Timeout: 10 * time.Second},
		SDS:           SDSConfig{MaxNames: 1000, BundleRefresh: 5 * time.Second, HoldRetry: 10 * time.Second},
		Rotation:      RotationConfig{Deadline: 2 * time.Minute, Horizon: 10 * time.Minute, CheckInterval: 30 * time.Second, Observe: true},
		Metrics:       MetricsConfig{Refresh: 30 * time.Second},
		Alerts:        AlertsConfig{LeadTimes: []time.Duration{30 * 24 * time.Hour, 7 * 24 * time.Hour, 24 * time.Hour}},
		Startup:       StartupConfig{RequiredTimeout: 30 * time.Second},

		MaxStreamsPerConn: 1000,
	}
}

// withDevDefaults gives a dev-mode configuration dev mode's Listen and
// TrustDomain when they are not set. Every other setting is taken as it
// is: callers start from Defaults (cmd/secretplane's settings do), so an
// explicit zero (an unbounded cache) is refused rather than replaced.
func withDevDefaults(c Config) Config {
	if c.Dev {
		if c.Listen == "" {
			c.Listen = DevListen
		}
		if c.TrustDomain == "" {
			c.TrustDomain = DevTrustDomain
		}
		if c.Metrics.Listen == "" {
			c.Metrics.Listen = DevMetricsListen
		}
	}
	return c
}
