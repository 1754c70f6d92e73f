package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

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
				if err := showRotation(cmd, g, r); err != nil || g.output == "json" {
					return err
				}
				return showTimeline(ctx, cmd, c, r.GetId())
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
	var cancelID string
	cancel := &cobra.Command{
		Use:   "cancel NAME --id ID",
		Short: "Stop a rotation in flight and put every consumer back on the version it started from",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				r, err := spv1.NewRotationServiceClient(c.conn).CancelRotation(ctx, &spv1.CancelRotationRequest{Secret: args[0], Id: cancelID})
				if err != nil {
					return err
				}
				return showRotation(cmd, g, r)
			})
		},
	}
	cancel.Flags().StringVar(&cancelID, "id", "", "the rotation to cancel (rotate status shows it)")
	_ = cancel.MarkFlagRequired("id")
	var rollbackID string
	rollback := &cobra.Command{
		Use:   "rollback NAME",
		Short: "Put every consumer back on the version the secret's newest rotation (or --id) started from",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				r, err := spv1.NewRotationServiceClient(c.conn).RollbackRotation(ctx, &spv1.RollbackRotationRequest{Secret: args[0], Id: rollbackID})
				if err != nil {
					return err
				}
				return showRotation(cmd, g, r)
			})
		},
	}
	rollback.Flags().StringVar(&rollbackID, "id", "", "rotation id (default: the newest)")
	cmd.AddCommand(start, status, list, cancel, rollback, newRotatePolicyCommand(g))
	return cmd
}

func newRotatePolicyCommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "How and when a secret is rotated: rotator, parameters, cadence, certificate renewal"}
	var (
		method  string
		params  map[string]string
		every   time.Duration
		window  string
		renewAt float64
	)
	set := &cobra.Command{
		Use:   "set NAME",
		Short: "Set a secret's rotation policy (needs rotate on it); parameters are never values",
		Example: `  secretplane rotate policy set payments/db --method random --param format=password --param length=40 --every 720h --window 02:00-04:00
  secretplane rotate policy set gateway/tls --method certificate --param issuer=vault --param path=pki/issue/gateway \
      --param common_name=gw.example.com --param ttl=72h --renew-at 0.66`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				p, err := spv1.NewRotationServiceClient(c.conn).SetRotationPolicy(ctx, &spv1.SetRotationPolicyRequest{Policy: &spv1.RotationPolicy{
					Secret: args[0], Method: method, Params: params, EverySeconds: int64(every / time.Second), Window: window, RenewAt: renewAt}})
				if err != nil {
					return err
				}
				return showRotationPolicy(cmd, g, p)
			})
		},
	}
	set.Flags().StringVar(&method, "method", "", "rotator: random (default) or certificate")
	set.Flags().StringToStringVar(&params, "param", nil, "rotator parameter KEY=VALUE (repeatable): random: format, length; certificate: issuer, path, common_name, alt_names, ttl")
	set.Flags().DurationVar(&every, "every", 0, "rotate on this cadence (at least 1m; 0: by hand and on expiry only)")
	set.Flags().StringVar(&window, "window", "", "HH:MM-HH:MM (UTC) a cadence rotation may start in")
	set.Flags().Float64Var(&renewAt, "renew-at", 0, "re-issue a certificate at this fraction of its lifetime (certificate default 0.667)")
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a secret's rotation policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(g.output); err != nil {
				return err
			}
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				p, err := spv1.NewRotationServiceClient(c.conn).GetRotationPolicy(ctx, &spv1.GetRotationPolicyRequest{Secret: args[0]})
				if err != nil {
					return err
				}
				return showRotationPolicy(cmd, g, p)
			})
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a secret's rotation policy: it is rotated by hand only from then on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withConn(cmd.Context(), g, func(ctx context.Context, c *connection) error {
				_, err := spv1.NewRotationServiceClient(c.conn).DeleteRotationPolicy(ctx, &spv1.DeleteRotationPolicyRequest{Secret: args[0]})
				return err
			})
		},
	}
	cmd.AddCommand(set, show, del)
	return cmd
}

func showRotationPolicy(cmd *cobra.Command, g *globalFlags, p *spv1.RotationPolicy) error {
	if g.output == "json" {
		return printJSON(cmd.OutOrStdout(), p)
	}
	keys := make([]string, 0, len(p.GetParams()))
	for k := range p.GetParams() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	ps := make([]string, len(keys))
	for i, k := range keys {
		ps[i] = k + "=" + p.GetParams()[k]
	}
	every := "none"
	if p.GetEverySeconds() > 0 {
		every = (time.Duration(p.GetEverySeconds()) * time.Second).String()
	}
	return fields(cmd.OutOrStdout(), [][2]string{
		{"secret", p.GetSecret()},
		{"method", p.GetMethod()},
		{"params", strings.Join(ps, ", ")},
		{"every", every},
		{"window", p.GetWindow()},
		{"renew at", fmt.Sprintf("%.3g", p.GetRenewAt())},
		{"updated", formatTime(p.GetUpdateTime())},
	})
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
		{"trigger", r.GetTrigger()},
		{"started by", r.GetActor()},
		{"started", formatTime(r.GetCreateTime())},
		{"updated", formatTime(r.GetUpdateTime())},
		{"deadline", formatTime(r.GetDeadline())},
	})
}

// showTimeline prints a rotation's steps from the audit log, the record of
// truth (the caller needs to read the audit; without it the timeline is
// left out, saying why).
func showTimeline(ctx context.Context, cmd *cobra.Command, c *connection, id string) error {
	resp, err := spv1.NewAuditServiceClient(c.conn).Query(ctx, &spv1.AuditQueryRequest{Limit: 1000, Newest: true})
	if err != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "\ntimeline: not shown (%s)\n", status.Convert(err).Message())
		return nil
	}
	var rows [][]string
	for _, e := range resp.GetEvents() {
		if strings.HasPrefix(e.GetAction(), "rotation.") && strings.Contains(e.GetTarget(), "rotation "+id) {
			rows = append(rows, []string{formatTime(e.GetTime()), strings.TrimPrefix(e.GetAction(), "rotation."), e.GetOutcome(), e.GetActor()})
		}
	}
	fmt.Fprintln(cmd.OutOrStdout(), "\ntimeline:")
	return table(cmd.OutOrStdout(), []string{"TIME", "STEP", "OUTCOME", "BY"}, rows)
}
