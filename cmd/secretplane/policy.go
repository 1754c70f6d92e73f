package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func newPolicyCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Manage least-privilege grants (deny by default)"}
	cmd.AddCommand(newPolicyApplyCommand(g), newPolicyListCommand(g), newPolicyGetCommand(g), newPolicyExplainCommand(g), newPolicyAuditBindingsCommand(g),
		newDeleteCommand(g, "policy", "Delete a policy", func(ctx context.Context, c *connection, name, etag string) error {
			_, err := spv1.NewPolicyServiceClient(c.conn).DeletePolicy(ctx, &spv1.DeletePolicyRequest{Name: name, Etag: etag})
			return err
		}))
	return cmd
}

// policyFile is the document `policy apply` reads.
type policyFile struct {
	Policies []policyDoc `yaml:"policies"`
}

type policyDoc struct {
	Name        string   `yaml:"name"`
	Description string   `yaml:"description"`
	Subject     string   `yaml:"subject"`
	Verbs       []string `yaml:"verbs"`
	Objects     []string `yaml:"objects"`
}

// parsePolicies reads `policies: [...]` in YAML or JSON; unknown fields and
// repeated names are errors.
func parsePolicies(raw []byte) ([]*spv1.Policy, error) {
	var f policyFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("policy file is empty")
		}
		return nil, fmt.Errorf("parse policy file: %s", yamlErrorWithoutValue(err))
	}
	if len(f.Policies) == 0 {
		return nil, errors.New("policy file has no policies (want a top-level \"policies:\" list)")
	}
	seen := map[string]bool{}
	out := make([]*spv1.Policy, 0, len(f.Policies))
	for i, p := range f.Policies {
		if p.Name == "" {
			return nil, fmt.Errorf("policies[%d]: name is required", i)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("policies[%d]: name %s is used twice", i, shown(p.Name))
		}
		seen[p.Name] = true
		out = append(out, &spv1.Policy{Name: p.Name, Description: p.Description, Subject: p.Subject, Verbs: p.Verbs, Objects: p.Objects})
	}
	return out, nil
}

func newPolicyApplyCommand(g *globalFlags) *cobra.Command {
	var (
		file  string
		force bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace the policies of a YAML or JSON file (- for stdin)",
		Example: `  secretplane policy apply -f docs/examples/policies.yaml
  secretplane policy apply -f broad.yaml --force     # accept deliberately broad grants`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := readInput(cmd.InOrStdin(), file)
			if err != nil {
				return err
			}
			policies, err := parsePolicies(raw)
			if err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				pc := spv1.NewPolicyServiceClient(c.conn)
				for _, p := range policies {
					resp, err := pc.PutPolicy(ctx, &spv1.PutPolicyRequest{Policy: p, Force: force})
					if err != nil {
						return fmt.Errorf("policy %s: %w", p.GetName(), err)
					}
					verb := "updated"
					if resp.GetCreated() {
						verb = "created"
					}
					fmt.Fprintf(cmd.OutOrStdout(), "policy %s %s (etag %s)\n", p.GetName(), verb, resp.GetPolicy().GetEtag())
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "policy file, or - for standard input (required)")
	cmd.Flags().BoolVar(&force, "force", false, "accept grants broader than usual (admin to many identities, everything to a trust domain)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func newPolicyListCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List policies",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				pc := spv1.NewPolicyServiceClient(c.conn)
				var items []*spv1.Policy
				next := ""
				for {
					resp, err := pc.ListPolicies(ctx, &spv1.ListPoliciesRequest{PageToken: next})
					if err != nil {
						return err
					}
					items = append(items, resp.GetPolicies()...)
					if next = resp.GetNextPageToken(); next == "" {
						break
					}
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), &spv1.ListPoliciesResponse{Policies: items})
				}
				rows := make([][]string, len(items))
				for i, p := range items {
					rows[i] = []string{p.GetName(), p.GetSubject(), strings.Join(p.GetVerbs(), ","), strings.Join(p.GetObjects(), ","), p.GetEtag()}
				}
				return table(cmd.OutOrStdout(), []string{"NAME", "SUBJECT", "VERBS", "OBJECTS", "ETAG"}, rows)
			})
		},
	}
}

func newPolicyGetCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				p, err := spv1.NewPolicyServiceClient(c.conn).GetPolicy(ctx, &spv1.GetPolicyRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), p)
				}
				return fields(cmd.OutOrStdout(), [][2]string{
					{"name", p.GetName()}, {"description", p.GetDescription()}, {"subject", p.GetSubject()},
					{"verbs", strings.Join(p.GetVerbs(), ", ")}, {"objects", strings.Join(p.GetObjects(), ", ")},
					{"etag", p.GetEtag()}, {"updated", formatTime(p.GetUpdateTime())},
				})
			})
		},
	}
}

func newPolicyExplainCommand(g *globalFlags) *cobra.Command {
	var verb string
	cmd := &cobra.Command{
		Use:   "explain SPIFFE_ID OBJECT",
		Short: "Say which policy allows an identity a verb on a secret or configuration (or bind on a ref), if any",
		Example: `  secretplane policy explain spiffe://secretplane.test/workload/payments-api payments/db --verb read
  secretplane policy explain spiffe://secretplane.test/workload/payments-lead 'local://payments/db#password' --verb bind`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				r, err := spv1.NewPolicyServiceClient(c.conn).Explain(ctx, &spv1.ExplainRequest{SpiffeId: args[0], Object: args[1], Verb: verb})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), r)
				}
				// The server refuses secret-looking arguments; scrub is the
				// second line.
				if r.GetAllowed() {
					fmt.Fprintln(cmd.OutOrStdout(), scrub(fmt.Sprintf("allowed: %s may %s %s, granted by policy %q", args[0], verb, args[1], r.GetPolicy())))
				} else {
					fmt.Fprintln(cmd.OutOrStdout(), scrub(fmt.Sprintf("denied: no policy grants %s %s on %s (deny by default)", args[0], verb, args[1])))
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&verb, "verb", "read", "read, watch, rotate, admin, or bind (OBJECT is then a SecretRef)")
	return cmd
}

func newPolicyAuditBindingsCommand(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "audit-bindings",
		Short: "List existing bindings whose admins could not make them again (admin on the name, no bind on the ref)",
		Long: `List existing bindings whose admins could not make them again.

Binding a ref to a secret's name, or putting a configuration document with
refs, needs admin on the name and bind on each ref. Bindings made before the
bind verb existed may not satisfy it: each line is a grant of admin on a
secret or document whose holders lack bind on its ref. Grant bind on a ref
pattern covering it (policy apply), or bind a ref the team owns. Exits 1 when
there is anything to fix.`,
		Example: `  secretplane policy audit-bindings
  secretplane policy audit-bindings -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				r, err := spv1.NewPolicyServiceClient(c.conn).AuditBindings(ctx, &spv1.AuditBindingsRequest{})
				if err != nil {
					return err
				}
				if g.output == "json" {
					if err := printJSON(cmd.OutOrStdout(), r); err != nil {
						return err
					}
				} else if len(r.GetFindings()) > 0 {
					rows := make([][]string, len(r.GetFindings()))
					for i, f := range r.GetFindings() {
						rows[i] = []string{f.GetKind(), f.GetObject(), f.GetRef(), f.GetPolicy(), f.GetSubject()}
					}
					if err := table(cmd.OutOrStdout(), []string{"KIND", "NAME", "REF", "POLICY", "SUBJECT (admin, no bind)"}, rows); err != nil {
						return err
					}
				}
				if r.GetTotal() == 0 {
					if g.output != "json" {
						fmt.Fprintf(cmd.OutOrStdout(), "every binding of the %d secrets and %d configuration documents checked is covered by its admins' bind grants\n", r.GetSecrets(), r.GetConfigs())
					}
					return nil
				}
				more := ""
				if int(r.GetTotal()) > len(r.GetFindings()) {
					more = fmt.Sprintf(" (the first %d shown)", len(r.GetFindings()))
				}
				return silentError{msg: fmt.Sprintf("%d grants of admin lack bind on refs the objects they cover bind%s: grant bind on the refs, or bind others", r.GetTotal(), more)}
			})
		},
	}
}
