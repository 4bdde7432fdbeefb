package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/lab/kube"
	"github.com/ebpfnet/ebpfnet/lab/peers"
)

func newLabCmd(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{Use: "lab", Short: "a cluster of nodes and pods made of network namespaces"}
	cmd.PersistentFlags().StringVar(&name, "name", "lab", "which lab")
	cmd.AddCommand(newLabUpCmd(g, &name), newLabDownCmd(&name), newLabKubeconfigCmd(&name), newLabKubectlCmd(&name), newLabAPIWhoamiCmd(), newLabNodesCmd(g, &name),
		newLabNodeCmd(g, &name), newLabPodsCmd(g, &name), newLabProbeCmd(&name), newLabMatrixCmd(g, &name), newLabLabelCmd(&name),
		newLabBirdcCmd(&name), newLabServeCmd())
	return cmd
}

func newLabUpCmd(g *globals, name *string) *cobra.Command {
	var file string
	var kubernetes bool
	var cni string
	cmd := &cobra.Command{
		Use:   "up -f LAB.yaml [--kubernetes] [--cni cilium]",
		Short: "build the lab and return when every pod serves its ports",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageError{errors.New("lab up needs -f LAB.yaml")}
			}
			if err := lab.CheckName(*name); err != nil {
				return usageError{err}
			}
			spec, err := lab.ReadSpec(file)
			if err != nil {
				return err
			}
			spec.Kubernetes = spec.Kubernetes || kubernetes || cni == lab.CNICilium
			if cni != "" {
				spec.CNI = cni
			}
			if err := spec.Validate(); err != nil {
				return usageError{err}
			}
			if spec.Kubernetes {
				if err := kube.EnsureBinaries(cmd.Context(), cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			if spec.CNI == lab.CNICilium {
				if err := peers.EnsureCilium(cmd.Context(), cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			st, err := lab.Up(cmd.Context(), *name, spec, lab.Options{})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "lab %q is up: %d nodes, %d pods, mode %s\n\n", st.Name, len(st.Nodes), len(st.Pods), st.Mode)
			if err := printNodes(out, g, st); err != nil {
				return err
			}
			fmt.Fprintln(out)
			if err := printPods(out, g, st); err != nil {
				return err
			}
			printRouter(out, st)
			fmt.Fprintf(out, "\nnext: ebpfnet lab matrix --name %s --port P --protocol TCP; ebpfnet lab down --name %s\n", st.Name, st.Name)
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "lab file (or a NetworkPolicy case file with a lab: block)")
	cmd.Flags().BoolVar(&kubernetes, "kubernetes", false, "run a real Kubernetes (as kubernetes: true in the file)")
	cmd.Flags().StringVar(&cni, "cni", "", "what networks the pods (as cni: in the file): ebpfnet, or cilium, the peer it is measured against, built from source once (implies --kubernetes)")
	return cmd
}

func newLabDownCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "remove every namespace, link, pin and process of the lab (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Down(*name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %q is down\n", *name)
			return nil
		},
	}
}

func newLabNodesCmd(g *globals, name *string) *cobra.Command {
	return &cobra.Command{
		Use: "nodes", Short: "list the lab's nodes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			return printNodes(cmd.OutOrStdout(), g, st)
		},
	}
}

// newLabNodeCmd is `lab node add|remove`: nodes joining and leaving a running lab.
func newLabNodeCmd(g *globals, name *string) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "add a node to a running lab, or remove one"}
	var spec lab.NodeSpec
	add := &cobra.Command{
		Use: "add NODE [--rack RACK] [--pod-cidr CIDR]", Short: "join a new node to the lab (in a lab with racks, in --rack)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			spec.Name = args[0]
			if _, err := st.AddNode(cmd.Context(), spec, lab.Options{}); err != nil {
				return err
			}
			return printNodes(cmd.OutOrStdout(), g, st)
		},
	}
	add.Flags().StringVar(&spec.Rack, "rack", "", "the node's rack (a new one makes a new segment)")
	add.Flags().StringVar(&spec.PodCIDR, "pod-cidr", "", "the node's pod CIDR (default: allocated)")
	remove := &cobra.Command{
		Use: "remove NODE", Short: "take a node out of the lab for good: its pods, agent, namespace and BGP session",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			if err := st.RemoveNode(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s removed from lab %q\n", args[0], st.Name)
			return nil
		},
	}
	cmd.AddCommand(add, remove)
	return cmd
}

func newLabPodsCmd(g *globals, name *string) *cobra.Command {
	return &cobra.Command{
		Use: "pods", Short: "list the lab's pods", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			return printPods(cmd.OutOrStdout(), g, st)
		},
	}
}

// labNode and labPod are the JSON shapes `lab nodes|pods -o json` print.
type labNode struct {
	Name string `json:"name"`
	// IP is the node's underlay address: NodePort services answer on it (probed from the
	// underlay namespace, `lab probe underlay node/NAME`).
	IP string `json:"ip"`
	// IPv6 is its IPv6 underlay address in a dual-stack lab, where IPv6 node ports answer.
	IPv6    string `json:"ipv6,omitempty"`
	PodCIDR string `json:"podCIDR"`
	// PodCIDRv6 is the node's IPv6 pod CIDR in a dual-stack lab.
	PodCIDRv6 string `json:"podCIDRv6,omitempty"`
	// Rack is the node's rack, "" in a lab without racks.
	Rack   string `json:"rack"`
	Netns  string `json:"netns"`
	PinDir string `json:"pinDir"`
}

type labPod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Node      string            `json:"node"`
	IP        string            `json:"ip"`
	IPs       []string          `json:"ips"` // every address, IPv4 first
	Labels    map[string]string `json:"labels"`
	Ports     []lab.Port        `json:"ports"`
	Netns     string            `json:"netns"`
}

func printNodes(w interface{ Write([]byte) (int, error) }, g *globals, st *lab.State) error {
	out := []labNode{}
	var rows [][]string
	for _, n := range st.Nodes {
		cidrs, ips := []string{n.PodCIDR.String()}, []string{n.IP.String()}
		v6, ip6 := "", ""
		if n.PodCIDRv6.IsValid() {
			v6 = n.PodCIDRv6.String()
			cidrs = append(cidrs, v6)
		}
		if n.IPv6.IsValid() {
			ip6 = n.IPv6.String()
			ips = append(ips, ip6)
		}
		out = append(out, labNode{n.Name, n.IP.String(), ip6, n.PodCIDR.String(), v6, n.Rack, n.Netns, n.PinDir})
		rack := n.Rack
		if rack == "" {
			rack = "-"
		}
		rows = append(rows, []string{n.Name, strings.Join(ips, ","), strings.Join(cidrs, ","), rack, n.Netns})
	}
	return printOut(w, g, out, []string{"NODE", "UNDERLAY IP", "POD CIDR", "RACK", "NETNS"}, rows)
}

func printPods(w interface{ Write([]byte) (int, error) }, g *globals, st *lab.State) error {
	out := []labPod{}
	var rows [][]string
	for _, p := range st.Pods {
		labels := p.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		ports := p.Ports
		if ports == nil {
			ports = []lab.Port{}
		}
		ips := []string{p.IP.String()}
		if p.IPv6.IsValid() {
			ips = append(ips, p.IPv6.String())
		}
		out = append(out, labPod{p.Namespace, p.Name, p.Node, p.IP.String(), ips, labels, ports, p.Netns})
		var ps []string
		for _, pt := range p.Ports {
			ps = append(ps, fmt.Sprintf("%d/%s", pt.Port, pt.Protocol))
		}
		rows = append(rows, []string{p.Key(), p.Node, strings.Join(ips, ","), formatLabels(labels), strings.Join(ps, ",")})
	}
	return printOut(w, g, out, []string{"POD", "NODE", "IP", "LABELS", "PORTS"}, rows)
}

func formatLabels(l map[string]string) string {
	var kv []string
	for k, v := range l {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

// probeFlags are --port and --protocol, shared by probe and matrix.
type probeFlags struct {
	port     int
	protocol string
	family   string
}

func (p *probeFlags) add(cmd *cobra.Command) {
	cmd.Flags().IntVar(&p.port, "port", 0, "port to probe")
	cmd.Flags().StringVar(&p.protocol, "protocol", "TCP", "TCP or UDP")
	cmd.Flags().StringVar(&p.family, "family", "", "ipv4 or ipv6: the pods' addresses to probe (default: probe: ipv4; matrix: every family the lab has)")
}

// families are the address families to probe in st: --family, or def.
func (p *probeFlags) families(st *lab.State, def []string) ([]string, error) {
	if p.family == "" {
		return def, nil
	}
	if err := st.CheckFamily(p.family); err != nil {
		return nil, usageError{fmt.Errorf("--family: %w", err)}
	}
	if strings.EqualFold(p.family, lab.FamilyIPv6) {
		return []string{lab.FamilyIPv6}, nil
	}
	return []string{lab.FamilyIPv4}, nil
}

func (p *probeFlags) check() error {
	p.protocol = strings.ToUpper(p.protocol)
	if p.port < 1 || p.port > 65535 {
		return usageError{fmt.Errorf("--port %d is not in 1-65535", p.port)}
	}
	if p.protocol != "TCP" && p.protocol != "UDP" {
		return usageError{fmt.Errorf("--protocol %q must be TCP or UDP", p.protocol)}
	}
	if f := strings.ToLower(p.family); f != "" && f != "ipv4" && f != "ipv6" {
		return usageError{fmt.Errorf("--family %q must be ipv4 or ipv6", p.family)}
	}
	return nil
}

func newLabProbeCmd(name *string) *cobra.Command {
	pf := &probeFlags{}
	cmd := &cobra.Command{
		Use:   "probe FROM TO",
		Short: "exit 0 if pod FROM reaches TO (ns/pod or svc/ns/name) on --port/--protocol, 1 if not",
		Long: "exit 0 if pod FROM (ns/pod) reaches TO on --port/--protocol, 1 if not. TO is a pod (ns/pod) or a Service\n" +
			"(svc/ns/name, probed at its cluster IP). A node port is probed from outside the cluster, from the lab's\n" +
			"underlay namespace: FROM is \"underlay\", TO is node/NAME and --port the node port.",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			families, err := pf.families(st, []string{lab.FamilyIPv4})
			if err != nil {
				return err
			}
			if node, ok := strings.CutPrefix(args[1], "node/"); ok && args[0] == "underlay" {
				err = st.ProbeNodePortFamily(node, pf.port, pf.protocol, families[0])
			} else {
				err = st.ProbeFamily(args[0], args[1], pf.port, pf.protocol, families[0])
			}
			if err == nil {
				fmt.Fprintf(cmd.OutOrStdout(), "%s -> %s %d/%s: reachable\n", args[0], args[1], pf.port, pf.protocol)
			}
			return err
		},
	}
	pf.add(cmd)
	return cmd
}

func newLabMatrixCmd(g *globals, name *string) *cobra.Command {
	pf := &probeFlags{}
	cmd := &cobra.Command{
		Use:   "matrix",
		Short: "probe every pod from every other pod and print who reaches whom",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := pf.check(); err != nil {
				return err
			}
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			families, err := pf.families(st, st.Families())
			if err != nil {
				return err
			}
			ms := map[string]lab.Matrix{}
			for _, f := range families {
				if ms[f], err = st.MatrixFamily(pf.port, pf.protocol, f); err != nil {
					return err
				}
			}
			if g.output == "json" {
				if len(families) == 1 {
					return printOut(cmd.OutOrStdout(), g, ms[families[0]], nil, nil)
				}
				return printOut(cmd.OutOrStdout(), g, ms, nil, nil) // {"IPv4": matrix, "IPv6": matrix}
			}
			for _, f := range families {
				over := ""
				if st.DualStack() || st.IPv6Only() {
					over = " over " + f
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s/%d%s (. reachable, X blocked)\n%s", pf.protocol, pf.port, over, ms[f])
			}
			return nil
		},
	}
	pf.add(cmd)
	return cmd
}

func newLabServeCmd() *cobra.Command {
	var ports, ready string
	var drain time.Duration
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "the echo server the lab runs inside each pod",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Asked to stop, it keeps serving for --drain: a terminating pod whose
			// established connections finish while it gets no new ones.
			ctx := context.WithoutCancel(cmd.Context())
			if drain > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				go func() {
					<-cmd.Context().Done()
					time.Sleep(drain)
					cancel()
				}()
			} else {
				ctx = cmd.Context()
			}
			return lab.Serve(ctx, ports, ready)
		},
	}
	cmd.Flags().DurationVar(&drain, "drain", 0, "keep serving this long after SIGTERM")
	cmd.Flags().StringVar(&ports, "ports", "", "PORT/PROTOCOL,...")
	cmd.Flags().StringVar(&ready, "ready", "", "file to write once every port is bound")
	return cmd
}
