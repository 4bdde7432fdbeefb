package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/bgp"
)

// newBGPCmd shows the local agent's BGP speaker: its sessions and what it learned.
func newBGPCmd(g *globals) *cobra.Command {
	var socket string
	cmd := &cobra.Command{Use: "bgp", Short: "the node's BGP speaker (routing: bgp): sessions and learned routes"}
	cmd.PersistentFlags().StringVar(&socket, "socket", agentapi.DefaultSocket, "the local agent's API socket")
	cmd.AddCommand(&cobra.Command{
		Use: "peers", Short: "BGP sessions: peer, AS, state, uptime, prefixes received and advertised", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var peers []bgp.PeerStatus
			if err := agentClient(socket).Get(cmd.Context(), "/v1/bgp/peers", &peers); err != nil {
				return err
			}
			var rows [][]string
			for _, p := range peers {
				up := "-"
				if !p.Since.IsZero() {
					up = time.Since(p.Since).Truncate(time.Second).String()
				}
				kind := "peer"
				if p.Node != "" {
					kind = "node " + p.Node
				}
				rows = append(rows, []string{p.Address.String(), fmt.Sprint(p.ASN), kind, p.State, up,
					fmt.Sprint(p.Received), fmt.Sprint(p.Accepted), fmt.Sprint(p.Advertised), yesNo(p.MD5)})
			}
			return printOut(cmd.OutOrStdout(), g, peers,
				[]string{"PEER", "ASN", "KIND", "STATE", "UPTIME", "RECEIVED", "ACCEPTED", "ADVERTISED", "MD5"}, rows)
		},
	}, &cobra.Command{
		Use: "routes", Short: "learned routes: what each neighbour announced, whether it was installed, and where it went", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var routes []agent.BGPRoute
			if err := agentClient(socket).Get(cmd.Context(), "/v1/bgp/routes", &routes); err != nil {
				return err
			}
			var rows [][]string
			for _, r := range routes {
				verdict := r.Verdict
				if r.Reason != "" {
					verdict += " (" + r.Reason + ")"
				}
				if r.Stale {
					verdict += ", stale"
				}
				asPath := make([]string, len(r.ASPath))
				for i, as := range r.ASPath {
					asPath[i] = fmt.Sprint(as)
				}
				rows = append(rows, []string{r.Prefix.String(), r.NextHop.String(), r.Peer.String(), strings.Join(asPath, " "),
					verdict, orDash(r.Node), orDash(r.Kernel)})
			}
			return printOut(cmd.OutOrStdout(), g, routes,
				[]string{"PREFIX", "NEXT HOP", "PEER", "AS PATH", "VERDICT", "NODE", "KERNEL ROUTE"}, rows)
		},
	})
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
