package main

import (
	"fmt"
	"sort"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/maps"
)

var protoName = map[uint8]string{1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}

// newCTCmd lists the conntrack map of the node at --pin-dir.
func newCTCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ct", Short: "connection tracking"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "list tracked flows (this node's pinned conntrack map)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := openPinned(g, maps.ConntrackName)
			if err != nil {
				return err
			}
			defer m.Close()
			flows, err := maps.NewConntrack(m).List()
			if err != nil {
				return err
			}
			if flows == nil {
				flows = []maps.Flow{}
			}
			sort.Slice(flows, func(i, j int) bool { return flows[i].Src.String() < flows[j].Src.String() })
			var rows [][]string
			for _, f := range flows {
				state := "new"
				if f.ReplySeen {
					state = "established"
				}
				if f.Closing {
					state = "closing"
				}
				age := "-"
				if f.Age >= 0 {
					age = fmt.Sprintf("%ds", f.Age)
				}
				rows = append(rows, []string{protoName[f.Protocol], f.Src.String(), f.Dst.String(), state,
					fmt.Sprint(f.Packets), fmt.Sprint(f.Bytes), fmt.Sprint(f.ReplyPackets), fmt.Sprint(f.ReplyBytes), age, fmt.Sprintf("%ds", f.ExpiresIn)})
			}
			return printOut(cmd.OutOrStdout(), g, flows, []string{"PROTO", "SOURCE", "DESTINATION", "STATE", "PACKETS", "BYTES", "REPLY PACKETS", "REPLY BYTES", "AGE", "EXPIRES IN"}, rows)
		},
	})
	return cmd
}
