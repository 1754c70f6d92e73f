package main

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"

	"github.com/secretplane/secretplane/internal/server"
)

// setting is one server setting: its key in the configuration file (the
// koanf tag path of server.Config), its flag, and its help. Its type and
// default come from server.Config and server.Defaults; its environment
// variable is SECRETPLANE_ and the flag in capitals (SECRETPLANE_CACHE_TTL).
// The file, the environment and the flags are merged from this one table,
// file < environment < flags, and a key absent from one never clears what
// an earlier one (or the default) set.
type setting struct {
	key  string
	flag string
	help string
}

// settings are every server setting, in the order of --help.
func settings() []setting {
	return []setting{
		{"dev", "dev", "dev mode: embedded store, built-in CA, admin identity for the CLI"},
		{"data_dir", "data-dir", "data directory (dev mode's store, CA and identities; the CLI's --data-dir)"},
		{"listen", "listen", "listen address (dev default " + server.DevListen + ")"},
		{"store", "store", "store: sqlite:PATH or postgres://... (dev default: SQLite in the data directory)"},
		{"trust_domain", "trust-domain", "trust domain (dev default " + server.DevTrustDomain + ")"},
		{"admins", "admin", "SPIFFE ID holding admin, bind and rotate on everything, whatever the policies say (repeatable)"},
		{"accept_trust_domains", "accept-trust-domain", "trust domain whose workloads may connect (repeatable; default the server's own)"},
		{"federated_bundles", "federated-bundle", "TRUST_DOMAIN=bundle.pem of a federated trust domain (repeatable; file identity)"},
		{"identity.workload_api", "workload-api", "SPIFFE Workload API address of a SPIRE agent (unix:///path/agent.sock): the server's SVID and bundles, rotated live"},
		{"identity.workload_api_timeout", "workload-api-timeout", "how long startup waits for the first SVID from the Workload API"},
		{"identity.cert", "svid-cert", "server SVID certificate PEM"},
		{"identity.key", "svid-key", "server SVID private key PEM"},
		{"identity.bundle", "bundle-file", "trust bundle PEM"},
		{"backends.local.key_file", "local-key-file", "key of the embedded local backend (dev default: in the data directory; or env " + server.EnvLocalBackendKey + ")"},
		{"backends.local.secrets_file", "local-secrets-file", "secrets file of the embedded local backend (dev default: in the data directory)"},
		{"backends.aws_sm.region", "aws-region", "enable AWS Secrets Manager in this default region (credentials: the AWS SDK's default chain)"},
		{"backends.aws_sm.endpoint", "aws-endpoint", "AWS Secrets Manager endpoint override (VPC endpoint)"},
		{"backends.vault.address", "vault-addr", "HashiCorp Vault address (https://...)"},
		{"backends.vault.ca_cert", "vault-ca-cert", "CA certificate that signs Vault's TLS certificate"},
		{"backends.vault.token_file", "vault-token-file", "file holding a Vault token"},
		{"backends.vault.approle_role_id", "vault-approle-role-id", "Vault AppRole role id"},
		{"backends.vault.approle_secret_id_file", "vault-approle-secret-id-file", "file holding the Vault AppRole secret id"},
		{"backends.vault.cert_file", "vault-cert-file", "client certificate for Vault's cert auth (needs a subject common name)"},
		{"backends.vault.key_file", "vault-key-file", "private key of --vault-cert-file"},
		{"backends.vault.cert_role", "vault-cert-role", "Vault cert auth role to log in as (optional)"},
		{"backends.vault.jwt_role", "vault-jwt-role", "log in to Vault's JWT auth as this role with a JWT-SVID from the Workload API"},
		{"backends.vault.jwt_audience", "vault-jwt-audience", "audience of the JWT-SVID for Vault"},
		{"backends.vault.jwt_mount", "vault-jwt-mount", "mount path of Vault's JWT auth method"},
		{"cache.ttl", "cache-ttl", "how long a resolved value is fresh"},
		{"cache.max_stale", "max-stale", "how long past its TTL a value serves while its backend fails; then fail closed"},
		{"cache.max_entries", "cache-max-entries", "bound on cached values (least recently used go first)"},
		{"cache.max_bytes", "cache-max-bytes", "bound on the bytes of cached values"},
		{"cache.fingerprint_key_file", "fingerprint-key-file", "key for value fingerprints (dev default: in the data directory)"},
		{"audit.file", "audit-file", "also append every audit event to this JSON-lines file"},
		{"audit.fail_open", "audit-fail-open", "dev mode only: serve requests even when the audit log cannot be written"},
		{"log.format", "log-format", "log format: text or json"},
		{"log.level", "log-level", "log level: debug, info, warn, error"},
		{"policy_refresh", "policy-refresh", "how often policies are reloaded from the store (changes through other replicas)"},
		{"watch_retry", "watch-retry", "how soon a watched secret whose refresh failed is tried again"},
		{"sds.listen", "sds-listen", "also serve Envoy SDS (and nothing else) on this address; SDS is always served on --listen"},
		{"sds.max_names", "sds-max-names", "bound on the secrets one SDS or ADS stream holds"},
		{"sds.bundle_refresh", "sds-bundle-refresh", "how often trust bundles served over SDS are re-read for changes"},
		{"sds.hold_retry", "sds-hold-retry", "how often SDS names that do not exist yet are looked up again"},
		{"rotation.deadline", "rotation-deadline", "how long a rotation waits for every consumer to acknowledge the new version before it fails"},
		{"rotation.horizon", "rotation-horizon", "consumers not seen for this long are not waited for by rotations"},
		{"rotation.auto_rollback", "rotation-auto-rollback", "a failed rotation puts every consumer back on the previous version"},
		{"rotation.check_interval", "rotation-check-interval", "how often rotation policies are looked at for rotations due (cadence, certificate renewal)"},
		{"rotation.observe", "rotation-observe", "a new backend version made outside secretplane becomes a recorded rotation, verified as any other"},
		{"rotation.hooks", "rotation-hook", "NAME=https://host/path or NAME=exec:/absolute/path: an external rotation hook, selected by a policy of method hook with --param hook=NAME (repeatable; https hooks are signed with --webhook-key-file)"},
		{"webhooks", "webhook", "NAME=https://... receiving every rotation step as a signed CloudEvent (repeatable)"},
		{"webhook_key_file", "webhook-key-file", "file holding the HMAC-SHA256 key webhooks are signed with (at least 16 bytes)"},
		{"webhook_ca_file", "webhook-ca-file", "CA certificate(s) that sign webhook receivers' TLS certificates (default: the system's)"},
		{"max_streams_per_connection", "max-streams-per-connection", "bound on one connection's concurrent calls and streams (HTTP/2 MAX_CONCURRENT_STREAMS)"},
		{"metrics.listen", "metrics-listen", "serve Prometheus /metrics and the /healthz and /readyz probes over HTTP on this address (off unless set; dev default " + server.DevMetricsListen + ")"},
		{"metrics.refresh", "metrics-refresh", "how often per-secret figures (expiry, rotations, lagging consumers, required secrets) are gathered for metrics, /readyz and expiry alerts"},
		{"alerts.lead_times", "alert-lead-time", "how long before a secret expires its owner's webhook is told (repeatable; once for each)"},
		{"alerts.routes", "alert-route", "OWNER=WEBHOOK: the webhook (of --webhook) that gets the alerts of secrets this owner owns (repeatable)"},
		{"alerts.default_route", "alert-default-route", "the webhook that gets the alerts of secrets whose owner has no route"},
		{"startup.required_timeout", "startup-required-timeout", "bound on resolving every required secret before serving; those not resolved by then refuse the start"},
		{"shutdown.delay", "shutdown-delay", "on shutdown, how long health checks answer NOT_SERVING while calls are still served (for load balancers)"},
		{"shutdown.timeout", "shutdown-timeout", "on shutdown, how long calls in flight may finish before they are cut off"},
	}
}

// delim separates a key's parts inside koanf: not ".", which trust domain
// names (federated_bundles' keys) hold.
const delim = "/"

// path is the setting's key as koanf spells it.
func (s setting) path() string { return strings.ReplaceAll(s.key, ".", delim) }

// envName is a setting's environment variable.
func (s setting) envName() string {
	return "SECRETPLANE_" + strings.ToUpper(strings.ReplaceAll(s.flag, "-", "_"))
}

// field finds the server.Config field of a dotted koanf key.
func field(key string) (reflect.StructField, bool) {
	t := reflect.TypeFor[server.Config]()
	var f reflect.StructField
	for _, part := range strings.Split(key, ".") {
		found := false
		for i := 0; i < t.NumField(); i++ {
			if t.Field(i).Tag.Get("koanf") == part {
				f, t, found = t.Field(i), t.Field(i).Type, true
				break
			}
		}
		if !found {
			return reflect.StructField{}, false
		}
	}
	return f, true
}

// defaultOf is the server.Defaults value of a dotted koanf key (one that
// field found).
func defaultOf(key string) any {
	v := reflect.ValueOf(server.Defaults())
	for _, part := range strings.Split(key, ".") {
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).Tag.Get("koanf") == part {
				v = v.Field(i)
				break
			}
		}
	}
	return v.Interface()
}

// registerSettings adds a flag for every setting to fs, typed and
// defaulted from server.Config and server.Defaults. (The server's
// --data-dir shadows every command's, with the same meaning, so that it
// takes its place in the merge.)
func registerSettings(fs *pflag.FlagSet) {
	defaults := koanf.New(delim)
	_ = defaults.Load(structs.Provider(server.Defaults(), "koanf"), nil)
	for _, s := range settings() {
		f, ok := field(s.key)
		if !ok {
			panic("setting " + s.key + " has no server.Config field") // caught by TestEverySettingHasAField
		}
		help := s.help + " (env " + s.envName() + ")"
		switch f.Type {
		case reflect.TypeFor[string]():
			fs.String(s.flag, defaults.String(s.path()), help)
		case reflect.TypeFor[bool]():
			fs.Bool(s.flag, defaults.Bool(s.path()), help)
		case reflect.TypeFor[time.Duration]():
			fs.Duration(s.flag, defaults.Duration(s.path()), help)
		case reflect.TypeFor[int]():
			fs.Int(s.flag, defaults.Int(s.path()), help)
		case reflect.TypeFor[int64]():
			fs.Int64(s.flag, defaults.Int64(s.path()), help)
		case reflect.TypeFor[[]string]():
			fs.StringSlice(s.flag, defaults.Strings(s.path()), help)
		case reflect.TypeFor[[]time.Duration]():
			fs.DurationSlice(s.flag, defaultOf(s.key).([]time.Duration), help)
		case reflect.TypeFor[map[string]string]():
			fs.StringToString(s.flag, defaults.StringMap(s.path()), help)
		default:
			panic("setting " + s.key + " has a type flags cannot take: " + f.Type.String())
		}
	}
}

// loadSettings merges, for every setting, its default < the file (when
// path is set) < its environment variable < its flag when given on the
// command line, into a server.Config. A file key that names no setting is
// an error, as is a value of the wrong type.
func loadSettings(path string, getenv func(string) string, fs *pflag.FlagSet) (server.Config, error) {
	ko := koanf.New(delim)
	if err := ko.Load(structs.Provider(server.Defaults(), "koanf"), nil); err != nil {
		return server.Config{}, fmt.Errorf("defaults: %w", err)
	}
	byPath, byEnv, byFlag := map[string]setting{}, map[string]setting{}, map[string]setting{}
	for _, s := range settings() {
		byPath[s.path()], byEnv[s.envName()], byFlag[s.flag] = s, s, s
	}
	if path != "" {
		fileKo, err := loadFile(path, byPath)
		if err == nil {
			err = ko.Merge(fileKo)
		}
		if err != nil {
			return server.Config{}, err
		}
	}
	// Only the variables of settings; SECRETPLANE_ADDR and the like are
	// the CLI's.
	envKo := koanf.New(delim)
	err := envKo.Load(env.Provider(delim, env.Opt{
		Prefix: "SECRETPLANE_",
		TransformFunc: func(k, v string) (string, any) {
			s, ok := byEnv[k]
			if !ok || v == "" {
				return "", nil
			}
			switch f, _ := field(s.key); f.Type {
			case reflect.TypeFor[[]string](), reflect.TypeFor[[]time.Duration]():
				return s.path(), splitList(v)
			case reflect.TypeFor[map[string]string]():
				return s.path(), splitMap(v)
			}
			return s.path(), v
		},
		EnvironFunc: environ(getenv),
	}), nil)
	if err == nil {
		err = override(ko, envKo)
	}
	if err != nil {
		return server.Config{}, fmt.Errorf("environment: %w", err)
	}
	if fs != nil {
		// Only flags given on the command line: an unset flag's default is
		// the setting's default, which the file or environment may change.
		flagKo := koanf.New(delim)
		err := flagKo.Load(posflag.ProviderWithFlag(fs, delim, nil, func(f *pflag.Flag) (string, any) {
			s, ok := byFlag[f.Name]
			if !ok || !f.Changed {
				return "", nil
			}
			return s.path(), posflag.FlagVal(fs, f)
		}), nil)
		if err == nil {
			err = override(ko, flagKo)
		}
		if err != nil {
			return server.Config{}, fmt.Errorf("flags: %w", err)
		}
	}
	var cfg server.Config
	// Strictly typed: a file's "dev: 1" or "ttl: 300" (300 what?) is an
	// error, not a guess; strings (the environment's) are parsed.
	dec := &mapstructure.DecoderConfig{
		TagName: "koanf",
		Result:  &cfg,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			durationsWithUnits,
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToBasicTypeHookFunc(),
		),
	}
	if err := ko.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{Tag: "koanf", DecoderConfig: dec}); err != nil {
		return server.Config{}, fmt.Errorf("server settings: %s", scrub(err.Error()))
	}
	return cfg, nil
}

// loadFile reads a settings file. A key written but left empty (null, or a
// section whose keys are all commented out) is absent: it never clears a
// default. A key that names no setting is an error.
func loadFile(path string, byPath map[string]setting) (*koanf.Koanf, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read server config: %w", err)
	}
	ko := koanf.New(delim)
	if err := ko.Load(rawbytes.Provider(raw), yaml.Parser()); err != nil {
		return nil, fmt.Errorf("parse server config %s: %s", path, yamlErrorWithoutValue(err))
	}
	for k, v := range ko.All() {
		if v == nil {
			ko.Delete(k)
		}
	}
	longest := 0
	for p := range byPath {
		longest = max(longest, len(p))
	}
	var unknown []string
	for _, k := range ko.Keys() {
		if _, ok := byPath[k]; !ok && !isMapEntry(byPath, k) {
			unknown = append(unknown, unknownKeyError(raw, k, longest))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("server config %s: unknown keys %s (see `secretplane server --help`)", path, strings.Join(unknown, ", "))
	}
	return ko, nil
}

// durationsWithUnits refuses a bare number where a duration belongs.
func durationsWithUnits(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeFor[time.Duration]() || from == to {
		return data, nil
	}
	switch from.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return nil, fmt.Errorf("a duration needs a unit (30s, 5m, 1h), not a bare number")
	}
	return data, nil
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// override merges src over ko, a map setting src holds replacing ko's
// whole (koanf would merge the two maps).
func override(ko, src *koanf.Koanf) error {
	for _, s := range settings() {
		if f, _ := field(s.key); f.Type.Kind() == reflect.Map && src.Exists(s.path()) {
			ko.Delete(s.path())
		}
	}
	return ko.Merge(src)
}

// splitMap reads "k=v,k2=v2" (a map setting in the environment).
func splitMap(v string) map[string]any {
	out := map[string]any{}
	for _, kv := range splitList(v) {
		if k, val, ok := strings.Cut(kv, "="); ok {
			out[k] = val
		}
	}
	return out
}

// environ lists the variables getenv knows of the settings' names (the
// tests' fake environments, or the process's).
func environ(getenv func(string) string) func() []string {
	return func() []string {
		var out []string
		for _, s := range settings() {
			if v := getenv(s.envName()); v != "" {
				out = append(out, s.envName()+"="+v)
			}
		}
		return out
	}
}

// isMapEntry reports whether k is an entry of a map-valued setting
// (federated_bundles, webhooks, rotation.hooks).
func isMapEntry(byPath map[string]setting, k string) bool {
	for p, s := range byPath {
		if f, ok := field(s.key); ok && f.Type == reflect.TypeFor[map[string]string]() && strings.HasPrefix(k, p+delim) {
			return true
		}
	}
	return false
}
