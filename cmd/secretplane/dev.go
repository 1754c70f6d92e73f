package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/secretplane/secretplane/identity"
)

// devSVIDsDir is the folder of the data directory where `dev issue` writes
// SVIDs by default.
const devSVIDsDir = "svids"

// devSVIDDir is the default folder of an SVID: <data dir>/svids/<the ID's
// path, slashes made underscores> (workload/payments-api for NAME
// payments-api is written as svids/payments-api).
func devSVIDDir(dataDir string, sid spiffeid.ID) string {
	name := strings.TrimPrefix(sid.Path(), "/")
	if rest, ok := strings.CutPrefix(name, "workload/"); ok && !strings.Contains(rest, "/") {
		name = rest
	}
	return filepath.Join(dataDir, devSVIDsDir, strings.ReplaceAll(name, "/", "_"))
}

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
		Example: `  secretplane dev issue payments-api              # into <data dir>/svids/payments-api
  secretplane dev issue --spiffe-id spiffe://secretplane.test/ns/prod/sa/gateway --out /secure/gw`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ca, err := identity.LoadCA(filepath.Join(g.dataDir, identity.DevCADir))
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
			dir := out
			if dir == "" {
				// Under the data directory, not the working tree: the
				// folder holds a private key, which must not end up in
				// a commit.
				dir = devSVIDDir(g.dataDir, sid)
			}
			svid, err := ca.IssueToDir(dir, sid, ttl)
			if err != nil {
				return err
			}
			dir = absDir(dir)
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s, valid until %s\nwrote %s/{%s,%s,%s}\nuse it: secretplane --cert %s --key %s --bundle %s ...\n",
				sid, svid.Certificates[0].NotAfter.UTC().Format(time.RFC3339),
				dir, identity.SVIDCertFile, identity.SVIDKeyFile, identity.BundleFile,
				filepath.Join(dir, identity.SVIDCertFile), filepath.Join(dir, identity.SVIDKeyFile), filepath.Join(dir, identity.BundleFile))
			return nil
		},
	}
	issue.Flags().StringVar(&out, "out", "", "output folder (default <data dir>/"+devSVIDsDir+"/NAME, out of the working tree)")
	issue.Flags().StringVar(&id, "spiffe-id", "", "full SPIFFE ID instead of NAME")
	issue.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "lifetime of the SVID")
	cmd.AddCommand(issue, newDevLocalPutCommand(g))
	return cmd
}
