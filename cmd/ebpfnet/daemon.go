package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/store/etcdserver"
)

func newDaemonCmd(g *globals) *cobra.Command {
	var (
		file string
		cfg  agent.Config
		etcd string
	)
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "run the node agent: adopt the datapath, reconcile the store into it, serve the CNI plugin",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			base := agent.Config{}
			if file != "" {
				c, err := agent.ReadConfig(file)
				if err != nil {
					return err
				}
				base = *c
			}
			// Flags given on the command line win over the file.
			fl := cmd.Flags()
			set := func(name string, dst *string, v string) {
				if fl.Changed(name) {
					*dst = v
				}
			}
			set("node-name", &base.NodeName, cfg.NodeName)
			set("underlay", &base.UnderlayInterface, cfg.UnderlayInterface)
			set("node-ip", &base.NodeIP, cfg.NodeIP)
			set("pod-cidr", &base.PodCIDR, cfg.PodCIDR)
			set("cluster-cidr", &base.ClusterCIDR, cfg.ClusterCIDR)
			set("mode", &base.Mode, cfg.Mode)
			set("store", &base.Store.Type, cfg.Store.Type)
			set("store-path", &base.Store.Path, cfg.Store.Path)
			set("kubeconfig", &base.Store.Kubeconfig, cfg.Store.Kubeconfig)
			set("socket", &base.Socket, cfg.Socket)
			set("metrics-address", &base.MetricsAddress, cfg.MetricsAddress)
			set("node-lease-ttl", &base.NodeLeaseTTL, cfg.NodeLeaseTTL)
			if fl.Changed("etcd-endpoints") {
				base.Store.Endpoints = strings.Split(etcd, ",")
			}
			if fl.Changed("vxlan-port") {
				base.VXLANPort = cfg.VXLANPort
			}
			if fl.Changed("pin-dir") || base.PinDir == "" {
				base.PinDir = g.pinDir
			}
			return agent.Run(cmd.Context(), base)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "config", "c", "", "config file (YAML); flags override its fields")
	f.StringVar(&cfg.NodeName, "node-name", "", "this node's name (default: hostname)")
	f.StringVar(&cfg.UnderlayInterface, "underlay", "", "the underlay device, e.g. eth0")
	f.StringVar(&cfg.NodeIP, "node-ip", "", "this node's underlay address (default: the underlay device's first IPv4)")
	f.StringVar(&cfg.PodCIDR, "pod-cidr", "", "this node's pod CIDR (default: allocated from the cluster CIDR)")
	f.StringVar(&cfg.ClusterCIDR, "cluster-cidr", "", "the cluster's pod CIDR, e.g. 10.244.0.0/16")
	f.StringVar(&cfg.Mode, "mode", "", "vxlan, native or ipip")
	f.IntVar(&cfg.VXLANPort, "vxlan-port", agent.DefaultVXLANPort, "VXLAN UDP port")
	f.StringVar(&cfg.Store.Type, "store", "local", "local, etcd or kubernetes")
	f.StringVar(&cfg.Store.Kubeconfig, "kubeconfig", "", "kubeconfig of the kubernetes store (default: in-cluster)")
	f.StringVar(&cfg.Store.Path, "store-path", agent.DefaultStorePath, "local store file")
	f.StringVar(&etcd, "etcd-endpoints", "", "comma-separated etcd endpoints")
	f.StringVar(&cfg.Socket, "socket", agentapi.DefaultSocket, "API socket for the CNI plugin and the CLI")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", "", "where to serve Prometheus metrics (host:port)")
	f.StringVar(&cfg.NodeLeaseTTL, "node-lease-ttl", "", "expire this node's registration this long after the agent stops (etcd)")
	return cmd
}

// newEtcdCmd runs an embedded single-member etcd (what the lab uses); production clusters run
// their own etcd.
func newEtcdCmd() *cobra.Command {
	var dir, client, peer, ready string
	cmd := &cobra.Command{
		Use:    "etcd",
		Short:  "run a single-member embedded etcd (for the lab)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := etcdserver.Start(dir, client, peer)
			if err != nil {
				return err
			}
			defer srv.Close()
			if ready != "" {
				if err := os.WriteFile(ready, []byte(client+"\n"), 0o600); err != nil {
					return err
				}
			}
			slog.Info("etcd serving", "client", client)
			select {
			case <-cmd.Context().Done():
			case err := <-srv.Err():
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "", "data directory")
	cmd.Flags().StringVar(&client, "client-url", "http://127.0.0.1:2379", "client URL")
	cmd.Flags().StringVar(&peer, "peer-url", "http://127.0.0.1:2380", "peer URL")
	cmd.Flags().StringVar(&ready, "ready", "", "file to write once serving")
	return cmd
}

// agentClient is the local agent's API client, from --socket.
func agentClient(socket string) *agentapi.Client { return agentapi.NewClient(socket) }

func newNodeCmd(g *globals) *cobra.Command {
	var socket string
	cmd := &cobra.Command{Use: "node", Short: "nodes registered in the store"}
	cmd.PersistentFlags().StringVar(&socket, "socket", agentapi.DefaultSocket, "the local agent's API socket")
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "list the registered nodes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var nodes []struct {
				Name    string       `json:"name"`
				IP      netip.Addr   `json:"ip"`
				PodCIDR netip.Prefix `json:"podCIDR"`
			}
			if err := agentClient(socket).Get(cmd.Context(), "/v1/nodes", &nodes); err != nil {
				return err
			}
			var rows [][]string
			for _, n := range nodes {
				rows = append(rows, []string{n.Name, n.IP.String(), n.PodCIDR.String()})
			}
			return printOut(cmd.OutOrStdout(), g, nodes, []string{"NODE", "IP", "POD CIDR"}, rows)
		},
	}, &cobra.Command{
		Use: "delete NAME", Short: "deregister a node: every other node drops its routes", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := agentClient(socket).DeleteNode(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s deleted\n", args[0])
			return nil
		},
	})
	return cmd
}
