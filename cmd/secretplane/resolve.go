package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/secretplane/secretplane/controlplane/backend/local"
	"github.com/secretplane/secretplane/controlplane/secretref"
	"github.com/secretplane/secretplane/internal/server"
	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func newResolveCommand(g *globalFlags) *cobra.Command {
	var raw bool
	cmd := &cobra.Command{
		Use:   "resolve NAME...",
		Short: "Print the values of secrets this identity is granted (read)",
		Long: `Resolve secrets as a workload: the values of the named secrets, if a policy
grants the calling identity read on them. Values are printed to standard
output only.`,
		Example: `  secretplane --cert svid.pem --key svid_key.pem --bundle bundle.pem resolve payments/db
  secretplane resolve payments/db --raw > db-password`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if raw && len(args) != 1 {
				return fmt.Errorf("--raw prints one value: give one NAME")
			}
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				resp, err := spv1.NewSecretsServiceClient(c.conn).Resolve(ctx, &spv1.ResolveRequest{Names: args})
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				switch {
				case raw:
					_, err = out.Write(resp.GetValues()[0].GetValue())
					return err
				case g.output == "json":
					return printJSON(out, resp)
				}
				rows := make([][]string, len(resp.GetValues()))
				for i, v := range resp.GetValues() {
					rows[i] = []string{v.GetName(), v.GetVersion(), string(v.GetValue())}
				}
				return table(out, []string{"NAME", "VERSION", "VALUE"}, rows)
			})
		},
	}
	cmd.Flags().BoolVar(&raw, "raw", false, "print the one value alone, no newline")
	return cmd
}

// newDevLocalPutCommand writes a value into the dev server's embedded local
// backend, from standard input (never from an argument: arguments end up in
// shell history and process lists).
func newDevLocalPutCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "local-put REF",
		Short:   "Store a value, read from standard input, in the dev data directory's local backend",
		Example: `  printf %s "$DB_PASSWORD" | secretplane dev local-put 'local://payments/db#password'`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := secretref.Parse(args[0])
			if err != nil {
				return err
			}
			if ref.Scheme != secretref.SchemeLocal {
				return fmt.Errorf("REF must be a local:// ref")
			}
			key, err := local.LoadKey(filepath.Join(g.dataDir, server.DevLocalKeyFile))
			if err != nil {
				return fmt.Errorf("%w (run `secretplane server --dev` once to create it)", err)
			}
			b, err := local.New(filepath.Join(g.dataDir, server.DevLocalSecrets), key)
			if err != nil {
				return err
			}
			value, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			if err != nil {
				return err
			}
			if len(value) == 0 {
				return fmt.Errorf("no value on standard input")
			}
			version, err := b.Write(cmd.Context(), ref, value)
			clear(value)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: version %s stored\n", ref, version)
			return nil
		},
	}
}
