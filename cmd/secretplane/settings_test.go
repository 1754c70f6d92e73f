package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/secretplane/secretplane/internal/server"
)

// Every setting names a field of server.Config, flags and variables are
// unique, and every field a file can set has a setting.
func TestEverySettingHasAField(t *testing.T) {
	flags, envs, keys := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, s := range settings() {
		if _, ok := field(s.key); !ok {
			t.Errorf("setting %s names no field", s.key)
		}
		if flags[s.flag] || envs[s.envName()] || keys[s.key] {
			t.Errorf("setting %s repeats a flag, variable or key", s.key)
		}
		flags[s.flag], envs[s.envName()], keys[s.key] = true, true, true
	}
	var walk func(t reflect.Type, prefix string)
	walk = func(typ reflect.Type, prefix string) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			tag := f.Tag.Get("koanf")
			if tag == "-" {
				continue
			}
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Duration]() {
				walk(f.Type, prefix+tag+".")
				continue
			}
			if !keys[prefix+tag] {
				t.Errorf("server.Config field %s%s has no setting", prefix, tag)
			}
		}
	}
	walk(reflect.TypeFor[server.Config](), "")
	registerSettings(pflag.NewFlagSet("server", pflag.ContinueOnError)) // panics on a type flags cannot take
}

func noEnv(string) string { return "" }

// With no file, no environment and no flags, every setting has its
// default, and the flags show the same defaults.
func TestSettingDefaults(t *testing.T) {
	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	registerSettings(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	got, err := loadSettings("", noEnv, fs)
	if err != nil {
		t.Fatal(err)
	}
	if want := server.Defaults(); !reflect.DeepEqual(normalised(got), normalised(want)) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", got, want)
	}
	// What the defaults are, written out: each setting's, independently
	// of server.Defaults.
	want := map[string]any{
		"policy_refresh": 10 * time.Second, "watch_retry": 5 * time.Second,
		"identity.workload_api_timeout": 30 * time.Second,
		"log.format":                    "text", "log.level": "info",
		"backends.vault.jwt_audience": "vault", "backends.vault.jwt_mount": "jwt",
		"cache.ttl": 5 * time.Minute, "cache.max_stale": time.Hour,
		"cache.max_entries": 100_000, "cache.max_bytes": int64(256 << 20),
		"shutdown.timeout": 10 * time.Second, "shutdown.delay": time.Duration(0),
		"dev": false, "audit.fail_open": false,
		"sds.max_names": 1000, "sds.bundle_refresh": 5 * time.Second, "sds.hold_retry": 10 * time.Second,
		"max_streams_per_connection": 1000,
		"rotation.deadline":          2 * time.Minute, "rotation.horizon": 10 * time.Minute, "rotation.auto_rollback": false,
		"rotation.check_interval": 30 * time.Second, "rotation.observe": true,
		"alerts.lead_times":        []time.Duration{720 * time.Hour, 168 * time.Hour, 24 * time.Hour},
		"startup.required_timeout": 30 * time.Second,
		"metrics.refresh":          30 * time.Second,
	}
	for _, st := range settings() {
		v := fieldValue(got, st.key)
		if w, ok := want[st.key]; ok {
			if !reflect.DeepEqual(v, w) {
				t.Errorf("default of %s = %#v, want %#v", st.key, v, w)
			}
		} else if !reflect.ValueOf(v).IsZero() {
			t.Errorf("default of %s = %#v, want none", st.key, v)
		}
	}
	for _, s := range settings() {
		f, _ := field(s.key)
		def := fieldValue(server.Defaults(), s.key)
		if fs.Lookup(s.flag).DefValue != flagString(def, f.Type) {
			t.Errorf("--%s shows default %q, the setting's is %v", s.flag, fs.Lookup(s.flag).DefValue, def)
		}
	}
}

// For every setting: file < environment < flag, and each source leaves
// every other setting at its default (a key absent never clears one).
func TestSettingPrecedence(t *testing.T) {
	for _, s := range settings() {
		t.Run(s.key, func(t *testing.T) {
			f, _ := field(s.key)
			vals := samples(t, f.Type)
			file := writeYAML(t, s.key, vals.file)
			env := func(name string) string {
				if name == s.envName() {
					return vals.env
				}
				return ""
			}
			cases := []struct {
				name  string
				file  string
				env   func(string) string
				flags []string
				want  any
			}{
				{"file", file, noEnv, nil, vals.fileWant},
				{"environment", "", env, nil, vals.envWant},
				{"flag", "", noEnv, vals.flag(s.flag), vals.flagWant},
				{"environment over file", file, env, nil, vals.envWant},
				{"flag over environment and file", file, env, vals.flag(s.flag), vals.flagWant},
			}
			for _, tc := range cases {
				fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
				registerSettings(fs)
				if err := fs.Parse(tc.flags); err != nil {
					t.Fatalf("%s: parse %v: %v", tc.name, tc.flags, err)
				}
				got, err := loadSettings(tc.file, tc.env, fs)
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if v := fieldValue(got, s.key); !reflect.DeepEqual(v, tc.want) {
					t.Fatalf("%s: %s = %#v, want %#v", tc.name, s.key, v, tc.want)
				}
				// Everything else is at its default.
				setField(&got, s.key, fieldValue(server.Defaults(), s.key))
				if !reflect.DeepEqual(normalised(got), normalised(server.Defaults())) {
					t.Fatalf("%s: other settings moved:\n got %+v\nwant %+v", tc.name, got, server.Defaults())
				}
			}
		})
	}
}

// A file key that names no setting is refused, naming it (masked when it
// looks like a secret).
func TestSettingsRefuseUnknownKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.yaml")
	raw := "listen: 0.0.0.0:7443\ncache:\n  ttl: 1m\n  tll: 2m\ntoken-5d41402abc4b2a76b9719d911017c592: x\n"
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadSettings(path, noEnv, nil)
	if err == nil || !strings.Contains(err.Error(), `"cache.tll"`) || strings.Contains(err.Error(), "5d41402abc") || strings.Contains(err.Error(), "listen") {
		t.Fatalf("unknown keys: %v", err)
	}
	// Values are strictly typed, and an empty key is absent.
	for _, tc := range []struct{ file, want string }{
		{"cache:\n  ttl: 300\n", "needs a unit"},
		{"dev: 1\n", "dev"},
		{"cache:\n  max_entries: lots\n", "max_entries"},
	} {
		if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadSettings(path, noEnv, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error about %s", tc.file, err, tc.want)
		}
	}
	if err := os.WriteFile(path, []byte("cache:\n  ttl:\nshutdown:\n  # timeout: 5s\nlog:\n  level: null\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := loadSettings(path, noEnv, nil); err != nil || cfg.Cache.TTL != 5*time.Minute || cfg.Shutdown.Timeout != 10*time.Second || cfg.Log.Level != "info" {
		t.Fatalf("empty keys: %+v %v", cfg, err)
	}
	// The shipped example loads.
	cfg, err := loadSettings(filepath.Join("..", "..", "deploy", "server.example.yaml"), noEnv, nil)
	if err != nil || cfg.Identity.WorkloadAPI == "" || len(cfg.Admins) != 1 || cfg.Log.Format != "json" {
		t.Fatalf("deploy/server.example.yaml: %+v %v", cfg, err)
	}
	// Trust domain names keep their dots as map keys.
	if err := os.WriteFile(path, []byte("federated_bundles:\n  partner.example.org: /etc/partner.pem\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := loadSettings(path, noEnv, nil); err != nil || cfg.FederatedBundles["partner.example.org"] != "/etc/partner.pem" {
		t.Fatalf("federated bundles: %+v %v", cfg.FederatedBundles, err)
	}
}

// sample values of a setting's type, as each source writes them and as
// they read back.
type sample struct {
	file                        any
	env                         string
	flagArgs                    []string
	fileWant, envWant, flagWant any
}

func (s sample) flag(name string) []string {
	out := make([]string, len(s.flagArgs))
	for i, a := range s.flagArgs {
		out[i] = "--" + name + "=" + a
	}
	return out
}

func samples(t *testing.T, typ reflect.Type) sample {
	switch typ {
	case reflect.TypeFor[string]():
		return sample{"from-file", "from-env", []string{"from-flag"}, "from-file", "from-env", "from-flag"}
	case reflect.TypeFor[bool]():
		return sample{true, "false", []string{"true"}, true, false, true}
	case reflect.TypeFor[time.Duration]():
		return sample{"11s", "22s", []string{"33s"}, 11 * time.Second, 22 * time.Second, 33 * time.Second}
	case reflect.TypeFor[int]():
		return sample{11, "22", []string{"33"}, 11, 22, 33}
	case reflect.TypeFor[int64]():
		return sample{11, "22", []string{"33"}, int64(11), int64(22), int64(33)}
	case reflect.TypeFor[[]string]():
		return sample{[]string{"f1", "f2"}, "e1,e2", []string{"c1", "c2"}, []string{"f1", "f2"}, []string{"e1", "e2"}, []string{"c1", "c2"}}
	case reflect.TypeFor[[]time.Duration]():
		return sample{[]string{"1h", "2h"}, "3h,4h", []string{"5h", "6h"}, []time.Duration{time.Hour, 2 * time.Hour}, []time.Duration{3 * time.Hour, 4 * time.Hour}, []time.Duration{5 * time.Hour, 6 * time.Hour}}
	case reflect.TypeFor[map[string]string]():
		return sample{map[string]string{"file.test": "/f.pem"}, "env.test=/e.pem", []string{"flag.test=/c.pem"},
			map[string]string{"file.test": "/f.pem"}, map[string]string{"env.test": "/e.pem"}, map[string]string{"flag.test": "/c.pem"}}
	}
	t.Fatalf("no samples for %s", typ)
	return sample{}
}

// writeYAML writes a file setting key (dotted) to v.
func writeYAML(t *testing.T, key string, v any) string {
	t.Helper()
	parts := strings.Split(key, ".")
	var doc any = v
	for i := len(parts) - 1; i >= 0; i-- {
		doc = map[string]any{parts[i]: doc}
	}
	raw, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func fieldValue(c server.Config, key string) any {
	return fieldRef(reflect.ValueOf(&c).Elem(), key).Interface()
}

func setField(c *server.Config, key string, v any) {
	fieldRef(reflect.ValueOf(c).Elem(), key).Set(reflect.ValueOf(v))
}

func fieldRef(v reflect.Value, key string) reflect.Value {
	for _, part := range strings.Split(key, ".") {
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).Tag.Get("koanf") == part {
				v = v.Field(i)
				break
			}
		}
	}
	return v
}

// normalised makes empty and nil lists and maps compare equal.
func normalised(c server.Config) server.Config {
	if len(c.Admins) == 0 {
		c.Admins = nil
	}
	if len(c.AcceptTrustDomains) == 0 {
		c.AcceptTrustDomains = nil
	}
	if len(c.FederatedBundles) == 0 {
		c.FederatedBundles = nil
	}
	return c
}

// flagString is how pflag shows a default of typ.
func flagString(v any, typ reflect.Type) string {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	switch typ {
	case reflect.TypeFor[string]():
		fs.String("f", v.(string), "")
	case reflect.TypeFor[bool]():
		fs.Bool("f", v.(bool), "")
	case reflect.TypeFor[time.Duration]():
		fs.Duration("f", v.(time.Duration), "")
	case reflect.TypeFor[int]():
		fs.Int("f", v.(int), "")
	case reflect.TypeFor[int64]():
		fs.Int64("f", v.(int64), "")
	case reflect.TypeFor[[]string]():
		fs.StringSlice("f", v.([]string), "")
	case reflect.TypeFor[[]time.Duration]():
		fs.DurationSlice("f", v.([]time.Duration), "")
	case reflect.TypeFor[map[string]string]():
		fs.StringToString("f", v.(map[string]string), "")
	}
	return fs.Lookup("f").DefValue
}

// --rotation-hook is repeatable, as --webhook is; a file's rotation.hooks
// and the environment's NAME=TARGET list give the same map, exec: paths
// and URLs whole.
func TestRotationHookSetting(t *testing.T) {
	want := map[string]string{"db": "exec:/usr/local/bin/rotate-db", "api-keys": "https://hooks.example.com/rotate?team=ops"}
	fs := pflag.NewFlagSet("server", pflag.ContinueOnError)
	registerSettings(fs)
	if err := fs.Parse([]string{"--rotation-hook=db=exec:/usr/local/bin/rotate-db", "--rotation-hook", "api-keys=https://hooks.example.com/rotate?team=ops"}); err != nil {
		t.Fatal(err)
	}
	if cfg, err := loadSettings("", noEnv, fs); err != nil || !reflect.DeepEqual(cfg.Rotation.Hooks, want) {
		t.Fatalf("flags: %v %v", cfg.Rotation.Hooks, err)
	}
	path := filepath.Join(t.TempDir(), "server.yaml")
	raw := "rotation:\n  hooks:\n    db: exec:/usr/local/bin/rotate-db\n    api-keys: https://hooks.example.com/rotate?team=ops\n"
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	if cfg, err := loadSettings(path, noEnv, nil); err != nil || !reflect.DeepEqual(cfg.Rotation.Hooks, want) {
		t.Fatalf("file: %v %v", cfg.Rotation.Hooks, err)
	}
	env := func(name string) string {
		if name == "SECRETPLANE_ROTATION_HOOK" {
			return "db=exec:/usr/local/bin/rotate-db,api-keys=https://hooks.example.com/rotate?team=ops"
		}
		return ""
	}
	if cfg, err := loadSettings("", env, nil); err != nil || !reflect.DeepEqual(cfg.Rotation.Hooks, want) {
		t.Fatalf("environment: %v %v", cfg.Rotation.Hooks, err)
	}
}
