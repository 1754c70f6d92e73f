package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/secretplane/secretplane/internal/server"
)

// serverGCPercent is the server's default GOGC. Its heap is mostly the
// value cache: long-lived and bounded. Go's default of 100 lets the heap
// reach twice what is live before collecting, doubling the cache's
// footprint (434 MiB RSS with 100,000 cached 1 KiB values); 50 keeps it
// near 1.5x (320 MiB) at a small GC cost, since with a large live heap
// collections are rare either way. GOGC in the environment wins.
const serverGCPercent = 50

func newServerCommand(g *globalFlags) *cobra.Command {
	var cfgFile string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the secretplane server",
		Long: `Run the secretplane server.

With --dev it runs on embedded defaults: a SQLite store and a built-in CA in
the data directory, an admin identity for the CLI, and a loopback listener.
Without --dev every setting must be given, and startup fails closed on
anything missing or unsafe.

Every setting comes from, in rising precedence: its default, the YAML file of
--config (keys as in deploy/server.example.yaml), its environment variable
(shown with each flag), and its flag.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadSettings(cfgFile, os.Getenv, cmd.Flags())
			if err != nil {
				return err
			}
			if cfg.DataDir == "" {
				cfg.DataDir = g.dataDir
			}
			cfg.ConfigFile = cfgFile
			return runServer(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&cfgFile, "config", "", "YAML configuration file (environment and flags override it)")
	registerSettings(cmd.Flags())
	return cmd
}

func runServer(ctx context.Context, cfg server.Config, out io.Writer) error {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serverGCPercent)
	}
	srv, err := server.New(ctx, cfg)
	if err != nil {
		return err
	}
	if cfg.Dev {
		printDevNextSteps(out, cfg.DataDir, srv)
	}
	return srv.Run(ctx)
}

func printDevNextSteps(out io.Writer, dataDir string, srv *server.Server) {
	fmt.Fprint(out, devNextSteps(dataDir, defaultDataDir(), srv.Addr(), srv.MetricsAddr(), srv.ID().String(), srv.DevIdentities().Admin.ID().String()))
}

// devNextSteps is the dev server's banner. The CLI finds the server by
// itself only in the default data directory (defaultDir); for any other
// the banner says what to pass.
func devNextSteps(dataDir, defaultDir, addr, metricsAddr, serverID, adminID string) string {
	dir := absDir(dataDir)
	find := "The CLI finds the dev server and its admin identity by itself (default data dir). In another terminal:\n"
	if def := absDir(defaultDir); filepath.Clean(dir) != filepath.Clean(def) {
		find = fmt.Sprintf(`The data dir is not the default (%s), so tell the CLI where it is, in every
terminal you use it from:

  export %s=%s      (or pass --data-dir %s to every command)

Then, in another terminal:
`, def, envDataDir, shellQuote(dir), shellQuote(dir))
	}
	metrics := "off"
	if metricsAddr != "" {
		metrics = "http://" + metricsAddr + "/metrics  (and /healthz, /readyz)"
	}
	return fmt.Sprintf(`
secretplane dev server
  address      %s
  metrics      %s
  server id    %s
  admin id     %s
  data dir     %s  (SQLite store, dev CA, identities)

%s
  secretplane secret put payments/db --ref 'vault://secret/payments/db#password' --owner team-payments
  secretplane secret get payments/db
  secretplane secret list
  secretplane ref check 'aws-sm://prod/db?stage=AWSPREVIOUS#password'
  secretplane dev issue payments-api      # writes %s
  secretplane policy apply -f docs/examples/policies.yaml
  secretplane audit tail
  secretplane doctor

The README's five-minute tour goes on from there: values, resolve, configuration.

(Use ./bin/secretplane if the binary is not on your PATH.) Ctrl-C stops the server; data is kept.

`, addr, metrics, serverID, adminID, dir, find, filepath.Join(dir, devSVIDsDir, "payments-api"))
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '_' || r == '-' || r == '+' || r == ':' || r == '@' || r == '=' || r == ',' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9'))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
