package main

import (
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
)

// Environment variables the CLI reads; flags override them.
const (
	envDataDir  = "SECRETPLANE_DATA_DIR"
	envAddr     = "SECRETPLANE_ADDR"
	envCert     = "SECRETPLANE_CERT"
	envKey      = "SECRETPLANE_KEY"
	envBundle   = "SECRETPLANE_BUNDLE"
	envServerID = "SECRETPLANE_SERVER_ID"
	envRequest  = "SECRETPLANE_REQUEST_ID"
)

// globalFlags are shared by every client command.
type globalFlags struct {
	dataDir  string
	addr     string
	cert     string
	key      string
	bundle   string
	serverID string
	output   string
	timeout  time.Duration
	// requestID is sent as every call's x-request-id, to find the calls in
	// the server's log and audit (the server keeps it when it is short and
	// plain, and answers with the id it used).
	requestID string
}

func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "secretplane",
		Short:         "secretplane: a secrets control plane (references, least privilege, rotation, delivery)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.dataDir, "data-dir", envOr(envDataDir, defaultDataDir()), "data directory of the dev server (env "+envDataDir+")")
	pf.StringVar(&g.addr, "addr", os.Getenv(envAddr), "server address host:port (env "+envAddr+"; default: the dev server's)")
	pf.StringVar(&g.cert, "cert", os.Getenv(envCert), "client SVID certificate PEM (env "+envCert+"; default: the dev admin's)")
	pf.StringVar(&g.key, "key", os.Getenv(envKey), "client SVID private key PEM (env "+envKey+")")
	pf.StringVar(&g.bundle, "bundle", os.Getenv(envBundle), "trust bundle PEM (env "+envBundle+")")
	pf.StringVar(&g.serverID, "server-id", os.Getenv(envServerID), "SPIFFE ID the server must present (env "+envServerID+")")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&g.timeout, "timeout", 10*time.Second, "deadline for each call")
	pf.StringVar(&g.requestID, "request-id", os.Getenv(envRequest), "request id to send with each call, as found in the server's log and audit (env "+envRequest+")")

	root.AddCommand(
		newServerCommand(g),
		newSecretCommand(g),
		newConfigCommand(g),
		newRefCommand(g),
		newPolicyCommand(g),
		newAuditCommand(g),
		newResolveCommand(g),
		newRotateCommand(g),
		newWebhookCommand(g),
		newDoctorCommand(g),
		newDevCommand(g),
	)
	return root
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// defaultDataDir is $XDG_DATA_HOME/secretplane, else ~/.local/share/secretplane.
func defaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "secretplane")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "secretplane")
	}
	return filepath.Join(os.TempDir(), "secretplane")
}
