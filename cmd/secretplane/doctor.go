package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

// Doctor's exit codes, for CI.
const (
	doctorClean    = 0
	doctorWarnings = 1
	doctorFailures = 2
)

// exitError ends the CLI with code, printing msg when there is one.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// doctorDiagnoseTimeout bounds the Diagnose call: the server bounds each
// backend request (5s, 8 at a time), so this is reached only with very
// many slow refs.
const doctorDiagnoseTimeout = 2 * time.Minute

func newDoctorCommand(g *globalFlags) *cobra.Command {
	var cfgFile string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check a running server (admin on *) or a configuration file; exit 0 clean, 1 warnings, 2 failures",
		Long: `doctor reports what is wrong or risky, as CHECK SEVERITY SUBJECT MESSAGE.

Against the running server (the dev server by default, else --addr and an
admin identity): the server's startup checks, and every registered ref's
accessibility (metadata only, never a value), secrets without an owner,
secrets never read, wildcard read grants broader than their holders use,
AWS secrets on the default KMS key, and Vault tokens near their end.

With --config FILE: the server's configuration file only (loaded as
"secretplane server --config FILE" would), no server needed.

Exit codes: 0 nothing found, 1 warnings only, 2 any failure, or the
server could not be asked (unreachable, TLS, not an admin).`,
		Example: "  secretplane doctor\n  secretplane doctor -o json\n  secretplane doctor --config /etc/secretplane/server.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				// A usage error is not "warnings only": CI must not pass it.
				return exitError{code: doctorFailures, msg: err.Error()}
			}
			var (
				resp *spv1.DiagnoseResponse
				err  error
			)
			if cfgFile != "" {
				resp, err = diagnoseConfig(cmd.Context(), cfgFile)
			} else {
				resp, err = diagnoseServer(cmd.Context(), g)
			}
			if err != nil {
				return exitError{code: doctorFailures, msg: err.Error()}
			}
			if err := printFindings(cmd.OutOrStdout(), g.output, resp); err != nil {
				return err
			}
			if code := doctorExit(resp); code != doctorClean {
				return exitError{code: code}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfgFile, "config", "", "check this server configuration file (YAML) instead of a running server")
	return cmd
}

// diagnoseServer asks the server: first whether it answers at all within
// --timeout (reachable, TLS), then Diagnose.
func diagnoseServer(ctx context.Context, g *globalFlags) (*spv1.DiagnoseResponse, error) {
	c, err := dial(g)
	if err != nil {
		return nil, fmt.Errorf("cannot connect: %w", err)
	}
	defer c.close()
	target := c.conn.Target()
	if err := c.call(ctx, func(ctx context.Context) error {
		_, err := healthpb.NewHealthClient(c.conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("cannot reach the server at %s within %v (is it running, and is its TLS identity the one expected?): %s", target, g.timeout, describeError(err))
	}
	ctx, cancel := context.WithTimeout(ctx, max(g.timeout, doctorDiagnoseTimeout))
	defer cancel()
	resp, err := spv1.NewDoctorServiceClient(c.conn).Diagnose(ctx, &spv1.DiagnoseRequest{})
	switch status.Code(err) {
	case codes.OK:
		return resp, nil
	case codes.PermissionDenied:
		return nil, fmt.Errorf("the server at %s refused doctor: it needs an identity with admin on \"*\" (pass --cert, --key and --bundle of one): %s", target, describeError(err))
	case codes.Unimplemented:
		return nil, fmt.Errorf("the server at %s has no doctor (an older version?): %s", target, describeError(err))
	default:
		return nil, fmt.Errorf("doctor on %s: %s", target, describeError(err))
	}
}

// diagnoseConfig checks a configuration file as the server would load it.
func diagnoseConfig(ctx context.Context, path string) (*spv1.DiagnoseResponse, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	cfg, err := loadSettings(path, os.Getenv, nil)
	if err != nil {
		return nil, fmt.Errorf("configuration %s does not load: %w", path, err)
	}
	cfg.ConfigFile = path
	resp := &spv1.DiagnoseResponse{}
	for _, f := range server.StaticFindings(ctx, cfg) {
		resp.Findings = append(resp.Findings, &spv1.Finding{Check: f.Check, Severity: string(f.Severity), Subject: f.Subject, Message: f.Message})
	}
	return resp, nil
}

func printFindings(w io.Writer, format string, resp *spv1.DiagnoseResponse) error {
	if format == "json" {
		return printJSON(w, resp)
	}
	if len(resp.GetFindings()) == 0 {
		_, err := fmt.Fprintln(w, "no problems found")
		return err
	}
	rows := make([][]string, len(resp.GetFindings()))
	for i, f := range resp.GetFindings() {
		rows[i] = []string{f.GetCheck(), f.GetSeverity(), f.GetSubject(), scrub(f.GetMessage())}
	}
	return table(w, []string{"CHECK", "SEVERITY", "SUBJECT", "MESSAGE"}, rows)
}

// doctorExit is the exit code the findings call for.
func doctorExit(resp *spv1.DiagnoseResponse) int {
	code := doctorClean
	for _, f := range resp.GetFindings() {
		switch f.GetSeverity() {
		case "failure":
			return doctorFailures
		default: // warning, or a severity this CLI does not know
			code = doctorWarnings
		}
	}
	return code
}

// exitCode is the process's exit code for an error RunE returned.
func exitCode(err error) int {
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
