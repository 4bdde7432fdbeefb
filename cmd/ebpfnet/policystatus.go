package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agent"
)

// newPolicyStatusCmd is `policy status`: per NetworkPolicy, how many nodes enforce its version.
func newPolicyStatusCmd(g *globals, t *target) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "per NetworkPolicy, how many nodes enforce its current version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			st, err := c.PolicyStatus(cmd.Context())
			if err != nil {
				return err
			}
			var rows [][]string
			for _, p := range st {
				rows = append(rows, []string{p.Namespace + "/" + p.Name, p.Version,
					fmt.Sprintf("%d/%d", p.Enforcing, p.Nodes), strings.Join(p.Behind, ",")})
			}
			return printOut(cmd.OutOrStdout(), g, st, []string{"POLICY", "VERSION", "ENFORCING", "BEHIND"}, rows)
		},
	}
}

// newPolicyWaitCmd is `policy wait`: returns once every node has programmed what the store
// held when it started (policies, pods, labels, namespaces), as after a `kubectl apply`.
func newPolicyWaitCmd(t *target) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait [--timeout D]",
		Short: "return once every node has programmed everything the store holds now, or fail naming those that have not",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if timeout <= 0 {
				return usageError{fmt.Errorf("--timeout %s must be positive", timeout)}
			}
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			start := time.Now()
			if err := c.Wait(cmd.Context(), timeout); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "every node is programmed (%s)\n", time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", agent.ProgrammedTimeout, "how long to wait")
	return cmd
}
