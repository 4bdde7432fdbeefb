package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/policy"
)

// target says which cluster a command talks to: --lab N, the one lab that is up, or the
// local agent's socket.
type target struct {
	lab    string
	socket string
}

func (t *target) add(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&t.lab, "lab", "", "talk to this lab (default: the one lab that is up)")
	cmd.PersistentFlags().StringVar(&t.socket, "socket", agentapi.DefaultSocket, "the local agent's API socket (when no lab)")
}

func (t *target) client(cmd *cobra.Command) (*agentapi.Client, error) {
	name := t.lab
	if name == "" && !cmd.Flags().Changed("socket") {
		labs, err := lab.List()
		if err != nil {
			return nil, err
		}
		if len(labs) == 1 {
			name = labs[0]
		}
	}
	if name == "" {
		return agentapi.NewClient(t.socket), nil
	}
	st, err := lab.Load(name)
	if err != nil {
		return nil, err
	}
	return st.Client(), nil
}

func newPolicyCmd(g *globals) *cobra.Command {
	t := &target{}
	cmd := &cobra.Command{Use: "policy", Short: "Kubernetes NetworkPolicies (networking.k8s.io/v1)"}
	t.add(cmd)
	var file string
	apply := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "apply NetworkPolicy YAML (one or many documents; - reads stdin); returns once every node enforces it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := readApplyFile(cmd, file, "policy apply")
			if err != nil {
				return err
			}
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			names, err := c.ApplyPolicies(cmd.Context(), data)
			if err != nil {
				return err
			}
			for _, n := range names {
				fmt.Fprintf(cmd.OutOrStdout(), "networkpolicy %s applied\n", n)
			}
			return nil
		},
	}
	apply.Flags().StringVarP(&file, "file", "f", "", "YAML file")
	cmd.AddCommand(apply, &cobra.Command{
		Use:   "delete NAMESPACE/NAME",
		Short: "delete a policy; returns once every node has dropped it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, ok := strings.Cut(args[0], "/")
			if !ok || ns == "" || name == "" {
				return usageError{fmt.Errorf("%q is not NAMESPACE/NAME", args[0])}
			}
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			if err := c.DeletePolicy(cmd.Context(), ns, name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "networkpolicy %s deleted\n", args[0])
			return nil
		},
	}, newExplainCmd(g, t), newPolicyGetCmd(g, t), newPolicyStatusCmd(g, t), newPolicyWaitCmd(t), &cobra.Command{
		Use:   "list",
		Short: "list policies and the pods they select",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			var list agentapi.PolicyList
			if err := c.Get(cmd.Context(), "/v1/policies", &list); err != nil {
				return err
			}
			var rows [][]string
			for _, p := range list.Policies {
				rows = append(rows, []string{p.Namespace + "/" + p.Name, strings.Join(p.PolicyTypes, ","), strings.Join(p.Selects, ",")})
			}
			return printOut(cmd.OutOrStdout(), g, list.Policies, []string{"POLICY", "TYPES", "SELECTS"}, rows)
		},
	})
	return cmd
}

// newLabLabelCmd is `lab label pod NS/NAME k=v k- …` and `lab label namespace NS k=v …`.
func newLabLabelCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "label pod NS/NAME|namespace NS k=v... [k-]...",
		Short: "change a pod's or a namespace's labels; returns once every node enforces the result",
		Args:  cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, key := args[0], args[1]
			if kind != "pod" && kind != "namespace" {
				return usageError{fmt.Errorf("can label a pod or a namespace, not %q", kind)}
			}
			set, remove := map[string]string{}, []string{}
			for _, a := range args[2:] {
				if k, v, ok := strings.Cut(a, "="); ok {
					set[k] = v
				} else if strings.HasSuffix(a, "-") {
					remove = append(remove, strings.TrimSuffix(a, "-"))
				} else {
					return usageError{fmt.Errorf("%q is neither key=value nor key-", a)}
				}
			}
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			if err := st.Label(cmd.Context(), kind, key, set, remove); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s labeled\n", kind, key)
			return nil
		},
	}
}

func newExplainCmd(g *globals, t *target) *cobra.Command {
	pf := &probeFlags{}
	cmd := &cobra.Command{
		Use:   "explain FROM TO --port P --protocol TCP|UDP|SCTP",
		Short: "which policies select each side of a flow and which rule allows it (FROM/TO: ns/pod or IP)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			pf.protocol = strings.ToUpper(pf.protocol)
			if pf.port < 1 || pf.port > 65535 || (pf.protocol != "TCP" && pf.protocol != "UDP" && pf.protocol != "SCTP") {
				return usageError{fmt.Errorf("--port %d --protocol %s: want a port in 1-65535 and TCP, UDP or SCTP", pf.port, pf.protocol)}
			}
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			ex, err := agent.Explain(cmd.Context(), c, agentapi.ExplainRequest{From: args[0], To: args[1], Port: uint16(pf.port), Protocol: pf.protocol})
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printOut(cmd.OutOrStdout(), g, ex, nil, nil)
			}
			out := cmd.OutOrStdout()
			verdict := "DENIED"
			if ex.Allowed {
				verdict = "ALLOWED"
			}
			fmt.Fprintf(out, "%s -> %s %s/%d: %s\n", args[0], args[1], pf.protocol, pf.port, verdict)
			for _, s := range []struct {
				what string
				side policy.Side
			}{{"egress of " + args[0], ex.Egress}, {"ingress of " + args[1], ex.Ingress}} {
				switch {
				case s.side.Pod == "":
					fmt.Fprintf(out, "  %s: not a pod, no policy applies\n", s.what)
				case !s.side.Enforced:
					fmt.Fprintf(out, "  %s: no policy selects it: open\n", s.what)
				case len(s.side.AllowedBy) == 0:
					fmt.Fprintf(out, "  %s: selected by %s; no rule allows it: none\n", s.what, strings.Join(s.side.SelectedBy, ", "))
				default:
					var rules []string
					for _, r := range s.side.AllowedBy {
						rules = append(rules, fmt.Sprintf("%s %s rule %d", r.Policy, r.Direction, r.Index))
					}
					fmt.Fprintf(out, "  %s: selected by %s; allowed by %s\n", s.what, strings.Join(s.side.SelectedBy, ", "), strings.Join(rules, ", "))
				}
			}
			return nil
		},
	}
	pf.add(cmd)
	return cmd
}

// readApplyFile reads what `apply -f FILE` names: the file, or standard input for "-". It
// refuses what is over agentapi.MaxRequestBytes, the most the agent takes in one request, having
// read no more than that: a regular file by its size, unread.
func readApplyFile(cmd *cobra.Command, file, command string) ([]byte, error) {
	if file == "" {
		return nil, usageError{fmt.Errorf("%s needs -f FILE", command)}
	}
	in, name := cmd.InOrStdin(), "standard input"
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > agentapi.MaxRequestBytes {
			return nil, applyTooLarge(file)
		}
		in, name = f, file
	}
	data, err := io.ReadAll(io.LimitReader(in, agentapi.MaxRequestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > agentapi.MaxRequestBytes {
		return nil, applyTooLarge(name)
	}
	return data, nil
}

func applyTooLarge(name string) error {
	return fmt.Errorf("%s is over %d MiB, the most the agent takes in one request", name, agentapi.MaxRequestBytes>>20)
}
