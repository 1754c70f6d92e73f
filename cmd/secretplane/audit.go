package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func newAuditCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read and verify the hash-chained audit log"}
	var n int32
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Show the newest audit events",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return queryAudit(cmd, g, &spv1.AuditQueryRequest{Limit: n, Newest: true})
		},
	}
	tail.Flags().Int32VarP(&n, "lines", "n", 20, "how many events")
	q := &spv1.AuditQueryRequest{}
	query := &cobra.Command{
		Use:     "query",
		Short:   "Show audit events matching filters, oldest first",
		Example: `  secretplane audit query --actor spiffe://secretplane.test/workload/payments-api --action AdminService.GetSecret`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return queryAudit(cmd, g, q)
		},
	}
	query.Flags().StringVar(&q.Actor, "actor", "", "SPIFFE ID of the caller")
	query.Flags().StringVar(&q.Action, "action", "", "action, e.g. AdminService.PutSecret")
	query.Flags().Int64Var(&q.AfterSeq, "after", 0, "only events after this sequence number")
	query.Flags().Int32Var(&q.Limit, "limit", 100, "at most this many (up to 1000)")
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check the whole hash chain: modified, deleted or reordered events are reported",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				r, err := spv1.NewAuditServiceClient(c.conn).Verify(ctx, &spv1.AuditVerifyRequest{})
				if err != nil {
					return err
				}
				if len(r.GetProblems()) == 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "audit log verified: %d events, chain intact\n", r.GetEvents())
					return nil
				}
				for _, p := range r.GetProblems() {
					fmt.Fprintln(cmd.OutOrStdout(), p)
				}
				return silentError{msg: fmt.Sprintf("audit log verification FAILED: %d problems in %d events", len(r.GetProblems()), r.GetEvents())}
			})
		},
	}
	cmd.AddCommand(tail, query, verify)
	return cmd
}

func queryAudit(cmd *cobra.Command, g *globalFlags, req *spv1.AuditQueryRequest) error {
	if err := checkOutput(g.output); err != nil {
		return err
	}
	return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
		r, err := spv1.NewAuditServiceClient(c.conn).Query(ctx, req)
		if err != nil {
			return err
		}
		if g.output == "json" {
			return printJSON(cmd.OutOrStdout(), r)
		}
		rows := make([][]string, len(r.GetEvents()))
		for i, e := range r.GetEvents() {
			rows[i] = []string{fmt.Sprint(e.GetSeq()), formatTime(e.GetTime()), e.GetActor(), e.GetAction(), e.GetTarget(), e.GetDecision(), e.GetPolicy(), e.GetOutcome(), e.GetRef(), e.GetRefused()}
		}
		return table(cmd.OutOrStdout(), []string{"SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "DECISION", "POLICY", "OUTCOME", "REF", "REFUSED"}, rows)
	})
}
