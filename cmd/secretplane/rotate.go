package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	spv1 "github.com/secretplane/secretplane/proto/secretplane/v1"
)

func newRotateCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "rotate", Short: "Rotate secrets: a rotation completes only when every consumer has acknowledged the new version"}
	var (
		method    string
		emergency bool
		wait      time.Duration
	)
	start := &cobra.Command{
		Use:   "start NAME",
		Short: "Start a rotation of a secret (needs rotate on it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				rc := spv1.NewRotationServiceClient(c.conn)
				r, err := rc.StartRotation(ctx, &spv1.StartRotationRequest{Secret: args[0], Method: method, Emergency: emergency})
				if err != nil {
					return err
				}
				for deadline := time.Now().Add(wait); wait > 0 && !final(r.GetState()) && time.Now().Before(deadline); {
					time.Sleep(250 * time.Millisecond)
					if r, err = rc.GetRotation(ctx, &spv1.GetRotationRequest{Secret: args[0], Id: r.GetId()}); err != nil {
						return err
					}
				}
				return showRotation(cmd, g, r)
			})
		},
	}
	start.Flags().StringVar(&method, "method", "", "rotator (default random)")
	start.Flags().BoolVar(&emergency, "emergency", false, "push at once and complete without waiting for consumers")
	start.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the rotation to end, then show it")
	var id string
	status := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a secret's newest rotation (or --id): its state, versions and what it waits for",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				r, err := spv1.NewRotationServiceClient(c.conn).GetRotation(ctx, &spv1.GetRotationRequest{Secret: args[0], Id: id})
				if err != nil {
					return err
				}
				return showRotation(cmd, g, r)
			})
		},
	}
	status.Flags().StringVar(&id, "id", "", "rotation id (default: the newest)")
	list := &cobra.Command{
		Use:   "list NAME",
		Short: "List a secret's rotations, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				resp, err := spv1.NewRotationServiceClient(c.conn).ListRotations(ctx, &spv1.ListRotationsRequest{Secret: args[0]})
				if err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				rows := make([][]string, len(resp.GetRotations()))
				for i, r := range resp.GetRotations() {
					rows[i] = []string{r.GetId(), r.GetState(), r.GetFromVersion(), r.GetToVersion(), formatTime(r.GetCreateTime()), r.GetActor()}
				}
				return table(cmd.OutOrStdout(), []string{"ID", "STATE", "FROM", "TO", "STARTED", "BY"}, rows)
			})
		},
	}
	cmd.AddCommand(start, status, list)
	return cmd
}

func final(state string) bool {
	return state == "completed" || state == "failed" || state == "rolled_back"
}

func showRotation(cmd *cobra.Command, g *globalFlags, r *spv1.Rotation) error {
	if g.output == "json" {
		return printJSON(cmd.OutOrStdout(), r)
	}
	return fields(cmd.OutOrStdout(), [][2]string{
		{"id", r.GetId()},
		{"secret", r.GetSecret()},
		{"state", r.GetState()},
		{"method", r.GetMethod()},
		{"from version", r.GetFromVersion()},
		{"to version", r.GetToVersion()},
		{"detail", r.GetDetail()},
		{"emergency", fmt.Sprint(r.GetEmergency())},
		{"started by", r.GetActor()},
		{"started", formatTime(r.GetCreateTime())},
		{"updated", formatTime(r.GetUpdateTime())},
		{"deadline", formatTime(r.GetDeadline())},
	})
}
