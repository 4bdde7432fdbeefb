package main

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/maps"
)

func openPinned(g *globals, name string) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(maps.PinPath(g.pinDir, name), nil)
	if err != nil {
		return nil, fmt.Errorf("open map %s in %s (is the datapath installed?): %w", name, g.pinDir, err)
	}
	return m, nil
}

// counterRow is one datapath counter as scripts see it.
type counterRow struct {
	Reason    string `json:"reason"`
	Direction string `json:"direction"`
	Verdict   string `json:"verdict"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

func newMetricsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "metrics",
		Short: "datapath counters by reason and direction",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := openPinned(g, maps.MetricsName)
			if err != nil {
				return err
			}
			defer m.Close()
			all, err := maps.NewMetrics(m).All()
			if err != nil {
				return err
			}
			out := []counterRow{}
			var rows [][]string
			for _, c := range all {
				verdict := "forward"
				if maps.IsDrop(c.Reason) {
					verdict = "drop"
				}
				r := counterRow{maps.ReasonName(c.Reason), maps.DirectionName(c.Direction), verdict, c.Packets, c.Bytes}
				out = append(out, r)
				rows = append(rows, []string{r.Direction, r.Verdict, r.Reason, fmt.Sprint(r.Packets), fmt.Sprint(r.Bytes)})
			}
			return printOut(cmd.OutOrStdout(), g, out, []string{"DIRECTION", "VERDICT", "REASON", "PACKETS", "BYTES"}, rows)
		},
	}
}

func newEndpointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "endpoint", Short: "endpoints in the datapath"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "list the endpoints map",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := openPinned(g, maps.EndpointsName)
			if err != nil {
				return err
			}
			defer m.Close()
			eps, err := maps.NewEndpoints(m).List()
			if err != nil {
				return err
			}
			if eps == nil {
				eps = []maps.Endpoint{}
			}
			var rows [][]string
			for _, e := range eps {
				rows = append(rows, []string{fmt.Sprint(e.ID), e.IP.String(), fmt.Sprint(e.Ifindex), e.MAC.String(), fmt.Sprint(e.Identity), fmt.Sprint(e.Local)})
			}
			return printOut(cmd.OutOrStdout(), g, eps, []string{"ID", "IP", "IFINDEX", "MAC", "IDENTITY", "LOCAL"}, rows)
		},
	})
	return cmd
}
