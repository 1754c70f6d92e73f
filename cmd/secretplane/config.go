package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func newConfigCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Manage service configuration documents (literals and SecretRefs)"}
	cmd.AddCommand(newConfigPutCommand(g), newConfigGetCommand(g), newConfigListCommand(g), newConfigDeleteCommand(g))
	return cmd
}

func newConfigPutCommand(g *globalFlags) *cobra.Command {
	var (
		file       string
		createOnly bool
		dryRun     bool
	)
	cmd := &cobra.Command{
		Use:   "put -f FILE",
		Short: "Create or replace a configuration document from YAML or JSON (- for stdin)",
		Example: `  secretplane config put -f docs/examples/payments-api.yaml
  secretplane config get payments/api -o json | secretplane config put -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			raw, err := readInput(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			doc, err := parseConfigDocument(raw)
			if err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				resp, err := c.admin.PutConfig(ctx, &spv1.PutConfigRequest{Config: doc, CreateOnly: createOnly, DryRun: dryRun})
				if err != nil {
					return err
				}
				if dryRun && g.output != "json" {
					fmt.Fprintf(cmd.OutOrStdout(), "config %s: every check passed (dry run, nothing stored)\n", resp.GetConfig().GetName())
					return nil
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				verb := "updated"
				if resp.GetCreated() {
					verb = "created"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "config %s %s (%d entries, etag %s)\n", resp.GetConfig().GetName(), verb, len(resp.GetConfig().GetEntries()), resp.GetConfig().GetEtag())
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "document file, or - for standard input (required)")
	cmd.Flags().BoolVar(&createOnly, "create", false, "fail if the document exists")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "run every check (refs, backend visibility, grants) and store nothing")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// maxInputBytes bounds a document read by the CLI; the server refuses
// requests over 1 MiB anyway.
const maxInputBytes = 4 << 20

func readInput(stdin io.Reader, file string) ([]byte, error) {
	var r io.Reader = stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", file, err)
		}
		defer f.Close()
		r = f
	}
	raw, err := io.ReadAll(io.LimitReader(r, maxInputBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read document: %w", err)
	}
	if len(raw) > maxInputBytes {
		return nil, fmt.Errorf("document is larger than %d bytes", maxInputBytes)
	}
	return raw, nil
}

func newConfigGetCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a configuration document (refs, never values)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				d, err := c.admin.GetConfig(ctx, &spv1.GetConfigRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), d)
				}
				if err := fields(cmd.OutOrStdout(), [][2]string{
					{"name", d.GetName()},
					{"identity", d.GetIdentity()},
					{"labels", formatLabels(d.GetLabels())},
					{"etag", d.GetEtag()},
					{"updated", formatTime(d.GetUpdateTime())},
				}); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout())
				rows := make([][]string, len(d.GetEntries()))
				for i, e := range d.GetEntries() {
					kind, v := "literal", e.GetLiteral()
					if e.GetRef() != "" {
						kind, v = "ref", e.GetRef()
					}
					rows[i] = []string{e.GetKey(), kind, v}
				}
				return table(cmd.OutOrStdout(), []string{"KEY", "KIND", "VALUE"}, rows)
			})
		},
	}
}

func newConfigListCommand(g *globalFlags) *cobra.Command {
	var prefix string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List configuration documents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				var items []*spv1.ConfigDocument
				next := ""
				for {
					resp, err := c.admin.ListConfigs(ctx, &spv1.ListConfigsRequest{Prefix: prefix, PageToken: next})
					if err != nil {
						return err
					}
					items = append(items, resp.GetConfigs()...)
					if next = resp.GetNextPageToken(); next == "" {
						break
					}
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), &spv1.ListConfigsResponse{Configs: items})
				}
				rows := make([][]string, len(items))
				for i, d := range items {
					rows[i] = []string{d.GetName(), d.GetIdentity(), fmt.Sprint(len(d.GetEntries())), d.GetEtag()}
				}
				return table(cmd.OutOrStdout(), []string{"NAME", "IDENTITY", "ENTRIES", "ETAG"}, rows)
			})
		},
	}
	cmd.Flags().StringVar(&prefix, "prefix", "", "only names starting with this")
	return cmd
}

func newConfigDeleteCommand(g *globalFlags) *cobra.Command {
	return newDeleteCommand(g, "config", "Delete a configuration document",
		func(ctx context.Context, c *connection, name, etag string) error {
			_, err := c.admin.DeleteConfig(ctx, &spv1.DeleteConfigRequest{Name: name, Etag: etag})
			return err
		})
}
