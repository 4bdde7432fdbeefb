package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/maps"
)

// newNATCmd lists the nat map of the node at --pin-dir: Service and masquerade translations.
func newNATCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "nat", Short: "translated flows (Services, masquerading)"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "list translations (this node's pinned nat map), both directions of each flow", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := openPinned(g, maps.NATName)
			if err != nil {
				return err
			}
			defer m.Close()
			ts, err := maps.NewNAT(m).List()
			if err != nil {
				return err
			}
			if ts == nil {
				ts = []maps.Translation{}
			}
			sort.Slice(ts, func(i, j int) bool { return ts[i].From[0].String() < ts[j].From[0].String() })
			var rows [][]string
			for _, t := range ts {
				var kind []string
				if t.Service {
					kind = append(kind, "service")
				}
				if t.Masquerade {
					kind = append(kind, "masquerade")
				}
				dir := "original"
				if t.Reply {
					dir = "reply"
				}
				rows = append(rows, []string{protoName[t.Protocol], t.From[0].String() + " > " + t.From[1].String(),
					t.To[0].String() + " > " + t.To[1].String(), strings.Join(kind, ","), dir, fmt.Sprint(t.Packets)})
			}
			return printOut(cmd.OutOrStdout(), g, ts, []string{"PROTO", "PACKET", "BECOMES", "KIND", "DIRECTION", "PACKETS"}, rows)
		},
	})
	return cmd
}
