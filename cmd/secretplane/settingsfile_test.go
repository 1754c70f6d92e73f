package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A settings file with an unknown key, an over-long one included, is
// refused naming its line and that the key is unknown (and longer than any
// setting's), never the key when it cannot be shown, nor a value.
func TestSettingsFileLongKeyMessage(t *testing.T) {
	const value = "ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT"
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"200 characters", "dev: true\n" + strings.Repeat("k", 200) + ": " + value + "\n",
			[]string{"unknown keys a key of 200 characters (line 2: not shown; longer than any setting's key"}},
		{"nested", "dev: true\nbackends:\n  local:\n    " + strings.Repeat("k", 200) + ": 1\n",
			[]string{"unknown keys a key of 215 characters (line 4:"}},
		{"short unknown", "dev: true\ncache:\n  tll: 1m\n", []string{`unknown keys "cache.tll" (line 3)`}},
	} {
		t.Run(tc.name, func(t *testing.T) { refusedConfig(t, tc.file, tc.want) })
	}
}

// refusedConfig loads a server config file of content file and checks the
// refusal names each of want and echoes neither an over-long key nor the
// planted value.
func refusedConfig(t *testing.T, file string, want []string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadSettings(path, noEnv, nil)
	if err == nil {
		t.Fatal("loaded")
	}
	msg := describeError(err)
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message lacks %q: %s", w, msg)
		}
	}
	if strings.Contains(msg, "kkkkkkkk") || strings.Contains(msg, "Zq8vW3") {
		t.Errorf("message echoes input: %s", msg)
	}
}
