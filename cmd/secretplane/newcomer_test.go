package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/identity"
	"github.com/secretplane/secretplane/internal/server"
)

// A dev server in a data directory other than the default is not found by
// the CLI by itself: the banner says what to pass, and the CLI's error names
// the directory it looked in and both ways to name another.
func TestDevBannerNamesNonDefaultDataDir(t *testing.T) {
	for _, tc := range []struct {
		name, dataDir, defaultDir string
		want, notWant             []string
	}{
		{"default", "/home/u/.local/share/secretplane", "/home/u/.local/share/secretplane",
			[]string{"finds the dev server and its admin identity by itself", "# writes /home/u/.local/share/secretplane/svids/payments-api"},
			[]string{"export SECRETPLANE_DATA_DIR", "--out ./"}},
		{"other", "/tmp/sp", "/home/u/.local/share/secretplane",
			[]string{"export SECRETPLANE_DATA_DIR=/tmp/sp", "--data-dir /tmp/sp to every command", "# writes /tmp/sp/svids/payments-api"},
			[]string{"by itself", "--out ./"}},
		{"spaces", "/tmp/my data", "/home/u/.local/share/secretplane",
			[]string{"export SECRETPLANE_DATA_DIR='/tmp/my data'", "--data-dir '/tmp/my data'"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := devNextSteps(tc.dataDir, tc.defaultDir, "127.0.0.1:7443", "127.0.0.1:7444", "spiffe://secretplane.test/secretplane/server", "spiffe://secretplane.test/secretplane/admin")
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("banner lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(got, w) {
					t.Errorf("banner has %q:\n%s", w, got)
				}
			}
		})
	}
}

func TestNoDevServerErrorNamesDataDirFlagAndEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  string
	}{
		{"flag", []string{"--data-dir", "DIR"}, ""},
		{"env", nil, "DIR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "elsewhere")
			for _, k := range []string{envAddr, envCert, envKey, envBundle, envServerID, envDataDir} {
				t.Setenv(k, "")
			}
			if tc.env != "" {
				t.Setenv(envDataDir, dir)
			}
			args := make([]string, 0, len(tc.args)+2)
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "DIR", dir))
			}
			root := newRootCommand()
			root.SetArgs(append(args, "secret", "list"))
			root.SetOut(&bytes.Buffer{})
			err := root.ExecuteContext(context.Background())
			if err == nil {
				t.Fatal("secret list without a server succeeded")
			}
			for _, w := range []string{dir, "--data-dir", envDataDir, "DATA_DIR=", "--addr"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
}

// `dev issue` writes the SVID, private key included, under the data
// directory unless --out says otherwise, never into the working tree, and
// says where it wrote.
func TestDevIssueWritesUnderDataDir(t *testing.T) {
	dataDir := t.TempDir()
	if _, err := identity.BootstrapDev(dataDir, spiffeid.RequireTrustDomainFromString(server.DevTrustDomain), time.Now()); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	t.Chdir(work)
	explicit := filepath.Join(t.TempDir(), "chosen")
	for _, tc := range []struct {
		name    string
		args    []string
		wantDir string
	}{
		{"default", []string{"dev", "issue", "payments-api"}, filepath.Join(dataDir, "svids", "payments-api")},
		{"spiffe-id", []string{"dev", "issue", "--spiffe-id", "spiffe://secretplane.test/ns/prod/sa/gw"}, filepath.Join(dataDir, "svids", "ns_prod_sa_gw")},
		{"out", []string{"dev", "issue", "payments-api", "--out", explicit}, explicit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			root := newRootCommand()
			root.SetArgs(append([]string{"--data-dir", dataDir}, tc.args...))
			root.SetOut(&out)
			if err := root.ExecuteContext(context.Background()); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{identity.SVIDCertFile, identity.SVIDKeyFile, identity.BundleFile} {
				if _, err := os.Stat(filepath.Join(tc.wantDir, f)); err != nil {
					t.Errorf("%s: %v", f, err)
				}
			}
			if !strings.Contains(out.String(), "wrote "+tc.wantDir+"/") || !strings.Contains(out.String(), "--key "+filepath.Join(tc.wantDir, identity.SVIDKeyFile)) {
				t.Errorf("output does not say where it wrote (%s):\n%s", tc.wantDir, out.String())
			}
			if entries, _ := os.ReadDir(work); len(entries) != 0 {
				t.Errorf("wrote into the working directory: %v", entries)
			}
		})
	}
}

// A settings file YAML cannot parse is refused with a whole message (a key
// past YAML's 1024 characters: the line and what the missing ':' means),
// never the key or a value.
func TestSettingsFileSyntaxMessageWhole(t *testing.T) {
	const value = "ghp_Zq8vW3xRpL2mN7kT9sY4Zq8vW3xRpL2mN7kT"
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"past 1024", "dev: true\n" + strings.Repeat("k", 1100) + ": " + value + "\n",
			[]string{"line 2:", "could not find expected ':'", "longer than YAML's 1024 characters"}},
		{"flow", "dev: true\nadmins: [a, " + value + "\n", []string{"did not find expected ',' or ']'"}},
	} {
		t.Run(tc.name, func(t *testing.T) { refusedConfig(t, tc.file, tc.want) })
	}
}
