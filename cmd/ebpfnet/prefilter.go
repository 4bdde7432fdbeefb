package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newPrefilterCmd(g *globals) *cobra.Command {
	t := &target{}
	cmd := &cobra.Command{Use: "prefilter", Short: "the XDP deny list of source CIDRs, on every node's underlay"}
	t.add(cmd)
	cmd.AddCommand(&cobra.Command{
		Use: "add CIDR", Short: "drop traffic from CIDR at XDP on every node; returns once every node does", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			st, err := c.PrefilterAdd(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "prefilter %s added; XDP runs in %s mode on node %s\n", args[0], st.PrefilterMode, st.Node)
			return nil
		},
	}, &cobra.Command{
		Use: "delete CIDR", Short: "stop dropping traffic from CIDR", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			if err := c.PrefilterDelete(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "prefilter %s deleted\n", args[0])
			return nil
		},
	}, &cobra.Command{
		Use: "list", Short: "list the denied CIDRs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			var cidrs []string
			if err := c.Get(cmd.Context(), "/v1/prefilter", &cidrs); err != nil {
				return err
			}
			var rows [][]string
			for _, p := range cidrs {
				rows = append(rows, []string{p})
			}
			return printOut(cmd.OutOrStdout(), g, cidrs, []string{"CIDR"}, rows)
		},
	})
	return cmd
}
