package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func newSecretCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "secret", Short: "Manage secrets: names bound to SecretRefs (never values)"}
	cmd.AddCommand(newSecretPutCommand(g), newSecretGetCommand(g), newSecretListCommand(g), newSecretDeleteCommand(g), newSecretConsumersCommand(g))
	return cmd
}

func newSecretPutCommand(g *globalFlags) *cobra.Command {
	var (
		s          spv1.Secret
		labels     []string
		createOnly bool
	)
	cmd := &cobra.Command{
		Use:   "put NAME --ref REF",
		Short: "Create or replace a secret",
		Example: `  secretplane secret put payments/db --ref 'vault://secret/payments/db#password' --owner team-payments
  secretplane secret put payments/db --ref 'vault://secret/payments/db?version=3#password' --etag 17`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			s.Name = args[0]
			l, err := parseLabels(labels)
			if err != nil {
				return err
			}
			s.Labels = l
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				resp, err := c.admin.PutSecret(ctx, &spv1.PutSecretRequest{Secret: &s, CreateOnly: createOnly})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				verb := "updated"
				if resp.GetCreated() {
					verb = "created"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "secret %s %s (etag %s)\n", resp.GetSecret().GetName(), verb, resp.GetSecret().GetEtag())
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Ref, "ref", "", "SecretRef, e.g. vault://secret/payments/db#password (required)")
	f.StringVar(&s.Description, "description", "", "what the secret is for")
	f.StringVar(&s.Owner, "owner", "", "owning team or on-call route")
	f.BoolVar(&s.Required, "required", false, "the server must resolve it at startup")
	f.StringVar(&s.Kind, "kind", "", "what the value is: generic (default), tls_certificate, validation_context or session_ticket_keys (how Envoy SDS serves it)")
	f.StringSliceVar(&labels, "label", nil, "label key=value (repeatable)")
	f.StringVar(&s.Etag, "etag", "", "only replace this version (optimistic concurrency)")
	f.BoolVar(&createOnly, "create", false, "fail if the secret exists")
	_ = cmd.MarkFlagRequired("ref")
	return cmd
}

func newSecretGetCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a secret's reference and metadata (never its value)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				s, err := c.admin.GetSecret(ctx, &spv1.GetSecretRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), s)
				}
				return fields(cmd.OutOrStdout(), [][2]string{
					{"name", s.GetName()},
					{"ref", s.GetRef()},
					{"description", s.GetDescription()},
					{"owner", s.GetOwner()},
					{"required", fmt.Sprint(s.GetRequired())},
					{"kind", s.GetKind()},
					{"labels", formatLabels(s.GetLabels())},
					{"etag", s.GetEtag()},
					{"created", formatTime(s.GetCreateTime())},
					{"updated", formatTime(s.GetUpdateTime())},
				})
			})
		},
	}
}

func newSecretListCommand(g *globalFlags) *cobra.Command {
	var (
		prefix   string
		pageSize int32
		token    string
		all      bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List secrets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				var (
					items []*spv1.Secret
					next  = token
				)
				for {
					resp, err := c.admin.ListSecrets(ctx, &spv1.ListSecretsRequest{Prefix: prefix, PageSize: pageSize, PageToken: next})
					if err != nil {
						return err
					}
					items = append(items, resp.GetSecrets()...)
					next = resp.GetNextPageToken()
					if next == "" || !all {
						break
					}
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), &spv1.ListSecretsResponse{Secrets: items, NextPageToken: next})
				}
				rows := make([][]string, len(items))
				for i, s := range items {
					rows[i] = []string{s.GetName(), s.GetRef(), s.GetOwner(), fmt.Sprint(s.GetRequired()), s.GetEtag()}
				}
				if err := table(cmd.OutOrStdout(), []string{"NAME", "REF", "OWNER", "REQUIRED", "ETAG"}, rows); err != nil {
					return err
				}
				if next != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "more results: --page-token %s (or --all)\n", next)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&prefix, "prefix", "", "only names starting with this")
	f.Int32Var(&pageSize, "page-size", 0, "results per page (server default 100, max 1000)")
	f.StringVar(&token, "page-token", "", "continue a previous listing")
	f.BoolVar(&all, "all", true, "follow every page")
	return cmd
}

func newSecretDeleteCommand(g *globalFlags) *cobra.Command {
	return newDeleteCommand(g, "secret", "Delete a secret (the value in its manager is untouched)",
		func(ctx context.Context, c *connection, name, etag string) error {
			_, err := c.admin.DeleteSecret(ctx, &spv1.DeleteSecretRequest{Name: name, Etag: etag})
			return err
		})
}

// newDeleteCommand builds `KIND delete NAME [--etag E]`.
func newDeleteCommand(g *globalFlags, kind, short string, del func(ctx context.Context, c *connection, name, etag string) error) *cobra.Command {
	var etag string
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				if err := del(ctx, c, args[0], etag); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s deleted\n", kind, args[0])
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&etag, "etag", "", "only delete this version")
	return cmd
}

// parseLabels turns key=value flags into a map; a repeated key is an error.
func parseLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want key=value", k)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--label %s given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

func newSecretConsumersCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "consumers NAME",
		Short: "Show who reads or watches a secret, and the version each last acknowledged",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				resp, err := c.admin.ListConsumers(ctx, &spv1.ListConsumersRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				rows := make([][]string, len(resp.GetConsumers()))
				for i, c := range resp.GetConsumers() {
					acked := c.GetAckedVersion()
					if c.GetAckError() != "" {
						acked += " (failed: " + c.GetAckError() + ")"
					}
					node := c.GetNode()
					if node == "" {
						node = "-"
					}
					rows[i] = []string{c.GetIdentity(), c.GetChannel(), node, c.GetVersion(), acked, formatTime(c.GetLastSeenTime())}
				}
				return table(cmd.OutOrStdout(), []string{"IDENTITY", "CHANNEL", "NODE", "VERSION", "ACKED", "LAST SEEN"}, rows)
			})
		},
	}
}
