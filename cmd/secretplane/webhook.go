package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func newWebhookCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "webhook", Short: "Show the webhooks that hear of rotations and their deliveries (needs admin on *)"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the webhooks: URL (without its query string), deliveries by state, last delivery and last error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				resp, err := spv1.NewWebhookServiceClient(c.conn).ListWebhooks(ctx, &spv1.ListWebhooksRequest{})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				rows := make([][]string, len(resp.GetWebhooks()))
				for i, w := range resp.GetWebhooks() {
					url := w.GetUrl()
					if !w.GetConfigured() {
						url = "(no longer configured)"
					}
					rows[i] = []string{w.GetName(), url, fmt.Sprint(w.GetPending()), fmt.Sprint(w.GetDelivered()), fmt.Sprint(w.GetDead()),
						formatTime(w.GetLastDeliveryTime()), w.GetLastError()}
				}
				return table(cmd.OutOrStdout(), []string{"NAME", "URL", "PENDING", "DELIVERED", "DEAD", "LAST DELIVERY", "LAST ERROR"}, rows)
			})
		},
	}
	var (
		limit int32
		state string
	)
	deliveries := &cobra.Command{
		Use:     "deliveries NAME",
		Short:   "List a webhook's deliveries, newest first: event, rotation, state, attempts, last error (never a body)",
		Example: `  secretplane webhook deliveries ops --state dead`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				resp, err := spv1.NewWebhookServiceClient(c.conn).ListDeliveries(ctx, &spv1.ListDeliveriesRequest{Webhook: args[0], Limit: limit, State: state})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				rows := make([][]string, len(resp.GetDeliveries()))
				for i, d := range resp.GetDeliveries() {
					rows[i] = []string{d.GetEventId(), d.GetEventType(), d.GetSecret(), d.GetRotationId(), d.GetState(), fmt.Sprint(d.GetAttempts()),
						formatTime(d.GetNextAttemptTime()), formatTime(d.GetCreateTime()), formatTime(d.GetUpdateTime()), d.GetLastError()}
				}
				return table(cmd.OutOrStdout(), []string{"EVENT", "TYPE", "SECRET", "ROTATION", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "QUEUED", "UPDATED", "LAST ERROR"}, rows)
			})
		},
	}
	deliveries.Flags().Int32Var(&limit, "limit", 50, "at most this many (up to 1000)")
	deliveries.Flags().StringVar(&state, "state", "", "only those in this state: pending, delivered or dead")
	cmd.AddCommand(list, deliveries)
	return cmd
}
