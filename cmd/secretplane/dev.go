package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/identity"
)

func newDevCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Dev-mode helpers (the built-in CA in the data directory)"}
	var (
		out string
		id  string
		ttl time.Duration
	)
	issue := &cobra.Command{
		Use:   "issue [NAME]",
		Short: "Issue an X.509-SVID from the dev CA and write svid.pem, svid_key.pem and bundle.pem",
		Long: `Issue an X.509-SVID from the dev CA of the data directory. NAME gives the ID
spiffe://<trust domain>/workload/NAME; --spiffe-id gives any ID of the trust domain.`,
		Example: `  secretplane dev issue payments-api --out ./payments-api-svid
  secretplane dev issue --spiffe-id spiffe://secretplane.test/ns/prod/sa/gateway --out ./gw`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ca, err := identity.LoadCA(g.dataDir + "/" + identity.DevCADir)
			if err != nil {
				return fmt.Errorf("%w (run `secretplane server --dev` once to create the dev CA)", err)
			}
			var sid spiffeid.ID
			switch {
			case id != "" && len(args) == 1:
				return fmt.Errorf("give NAME or --spiffe-id, not both")
			case id != "":
				if sid, err = spiffeid.FromString(id); err != nil {
					return fmt.Errorf("--spiffe-id: %w", err)
				}
			case len(args) == 1:
				if sid, err = identity.DevWorkloadID(ca.TrustDomain(), args[0]); err != nil {
					return fmt.Errorf("NAME: %w", err)
				}
			default:
				return fmt.Errorf("give NAME or --spiffe-id")
			}
			if out == "" {
				out = strings.NewReplacer("/", "_").Replace(strings.TrimPrefix(sid.Path(), "/")) + "-svid"
			}
			svid, err := ca.IssueToDir(out, sid, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s, valid until %s\nwrote %s/{%s,%s,%s}\n", sid, svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339),
				out, identity.SVIDCertFile, identity.SVIDKeyFile, identity.BundleFile)
			return nil
		},
	}
	issue.Flags().StringVar(&out, "out", "", "output folder (default NAME-svid)")
	issue.Flags().StringVar(&id, "spiffe-id", "", "full SPIFFE ID instead of NAME")
	issue.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "lifetime of the SVID")
	cmd.AddCommand(issue, newDevLocalPutCommand(g))
	return cmd
}
