package main

import (
	"fmt"
	"sort"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/maps"
)

func newIdentityCmd(g *globals) *cobra.Command {
	t := &target{}
	cmd := &cobra.Command{Use: "identity", Short: "security identities"}
	t.add(cmd)
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "list identities and the labels that define them", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			var ids map[uint32]string
			if err := c.Get(cmd.Context(), "/v1/identities", &ids); err != nil {
				return err
			}
			keys := make([]uint32, 0, len(ids))
			for k := range ids {
				keys = append(keys, k)
			}
			sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
			type row struct {
				ID     uint32 `json:"id"`
				Labels string `json:"labels"`
			}
			out := []row{{maps.IdentityHost, "reserved:host"}, {maps.IdentityWorld, "reserved:world"}, {maps.IdentityRemoteNode, "reserved:remote-node"}}
			for _, k := range keys {
				out = append(out, row{k, ids[k]})
			}
			var rows [][]string
			for _, r := range out {
				rows = append(rows, []string{fmt.Sprint(r.ID), r.Labels})
			}
			return printOut(cmd.OutOrStdout(), g, out, []string{"ID", "LABELS"}, rows)
		},
	})
	return cmd
}

// newPolicyGetCmd shows the compiled entries of one local pod.
func newPolicyGetCmd(g *globals, t *target) *cobra.Command {
	return &cobra.Command{
		Use: "get NAMESPACE/POD", Short: "the policy map entries of a pod, on its node", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			clients, err := t.allClients(cmd)
			if err != nil {
				return err
			}
			for _, c := range clients {
				var res agentapi.PodPolicy
				if err := c.Get(cmd.Context(), "/v1/pod-policy?pod="+args[0], &res); err != nil {
					continue // not this node's pod
				}
				if g.output == "json" {
					return printOut(cmd.OutOrStdout(), g, res, nil, nil)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s on %s: endpoint %d, identity %d, ingress enforced %v, egress enforced %v\n",
					args[0], res.Node, res.Endpoint, res.Identity, res.IngressEnforced, res.EgressEnforced)
				var rows [][]string
				for _, e := range res.Entries {
					rows = append(rows, []string{e.Direction, e.Peer, e.Protocol, e.Ports, e.Rule})
				}
				return printOut(cmd.OutOrStdout(), g, nil, []string{"DIRECTION", "PEER", "PROTO", "PORTS", "RULE"}, rows)
			}
			return fmt.Errorf("no node has a pod %s", args[0])
		},
	}
}
