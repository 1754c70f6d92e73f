package main

import (
	"context"

	"github.com/spf13/cobra"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func newRefCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "ref", Short: "Work with SecretRefs"}
	cmd.AddCommand(&cobra.Command{
		Use:   "check REF",
		Short: "Validate a SecretRef and print its canonical form",
		Example: `  secretplane ref check 'vault://secret/payments/db?version=3#password'
  secretplane ref check 'aws-sm://prod/db?stage=AWSPREVIOUS#password'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				r, err := c.admin.CheckRef(ctx, &spv1.CheckRefRequest{Ref: args[0]})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), r)
				}
				return fields(cmd.OutOrStdout(), [][2]string{
					{"canonical", r.GetCanonical()},
					{"scheme", r.GetScheme()},
					{"path", r.GetPath()},
					{"field", r.GetField()},
					{"version", r.GetVersion()},
					{"stage", r.GetStage()},
					{"namespace", r.GetNamespace()},
					{"region", r.GetRegion()},
				})
			})
		},
	})
	return cmd
}
