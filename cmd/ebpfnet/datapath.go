package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/loader"
)

func newDatapathCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "datapath", Short: "install, upgrade or remove the BPF datapath"}
	cmd.AddCommand(&cobra.Command{
		Use:   "install",
		Short: "load the datapath, pin its maps, and switch every pinned link and pod tc filter to the new programs in place",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dp, err := loader.Load(loader.Config{PinDir: g.pinDir})
			if err != nil {
				return err
			}
			defer dp.Close()
			n, err := dp.Upgrade()
			if err != nil {
				return err
			}
			slog.Info("datapath installed", "pinDir", g.pinDir, "linksUpgraded", n)
			return nil
		},
	}, &cobra.Command{
		Use:   "status",
		Short: "list the datapath's attachments: its pinned links, and the tc filters on pods' veths in this network namespace",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			atts, err := loader.Attachments(g.pinDir)
			if err != nil {
				return err
			}
			if atts == nil {
				atts = []loader.Attachment{}
			}
			var rows [][]string
			for _, a := range atts {
				linkID := "-"
				if a.LinkID != 0 {
					linkID = fmt.Sprint(a.LinkID)
				}
				rows = append(rows, []string{a.Interface, string(a.Hook), fmt.Sprint(a.Ifindex), a.Type, fmt.Sprint(a.ProgramID), linkID})
			}
			return printOut(cmd.OutOrStdout(), g, atts, []string{"INTERFACE", "HOOK", "IFINDEX", "TYPE", "PROGRAM", "LINK"}, rows)
		},
	}, &cobra.Command{
		Use:   "uninstall",
		Short: "detach every link and tc filter and remove every pin the datapath made",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := loader.Uninstall(g.pinDir); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "datapath removed from", g.pinDir)
			return nil
		},
	})
	return cmd
}
