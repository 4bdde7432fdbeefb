package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
)

// newServiceCmd is `service apply|list|delete`: Kubernetes Services (core/v1) and the
// EndpointSlices (discovery.k8s.io/v1) of selectorless ones.
func newServiceCmd(g *globals) *cobra.Command {
	t := &target{}
	cmd := &cobra.Command{Use: "service", Short: "Kubernetes Services (core/v1): cluster IPs and node ports load-balanced to pods"}
	t.add(cmd)
	var file string
	var timeout time.Duration
	apply := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "apply Service and EndpointSlice YAML (- reads stdin); returns once every node programmed it",
		Long: "apply Services (v1) and EndpointSlices (discovery.k8s.io/v1): one or many documents, Lists flattened, all\n" +
			"or none. Without a Kubernetes API server nobody runs an endpoint controller: a Service with a selector\n" +
			"is served by the pods it selects, a selectorless one by the EndpointSlices labelled\n" +
			"kubernetes.io/service-name: NAME, whose endpoint conditions (ready, serving, terminating) say how.\n" +
			"A Service that has EndpointSlices is served by them alone. Under the kubernetes store, write\n" +
			"EndpointSlices with kubectl. Returns once every node programmed the change.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := readApplyFile(cmd, file, "service apply")
			if err != nil {
				return err
			}
			objs, err := agent.ParseServices(data)
			if err != nil {
				return err
			}
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			stored, err := agent.ApplyServices(cmd.Context(), c, objs)
			if err != nil {
				return err
			}
			if err := c.Wait(cmd.Context(), timeout); err != nil {
				return fmt.Errorf("stored, but: %w", err)
			}
			for _, es := range stored.EndpointSlices {
				fmt.Fprintf(cmd.OutOrStdout(), "endpointslice %s/%s applied (%d endpoints)\n", es.Namespace, es.Name, len(es.Endpoints))
			}
			for _, s := range stored.Services {
				ip := s.Spec.ClusterIP
				if ip == "" {
					ip = "none"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "service %s/%s applied (cluster IP %s)\n", s.Namespace, s.Name, ip)
			}
			return nil
		},
	}
	apply.Flags().StringVarP(&file, "file", "f", "", "YAML file")
	apply.Flags().DurationVar(&timeout, "timeout", agent.ProgrammedTimeout, "how long to wait for every node")
	var delTimeout time.Duration
	var slice bool
	del := &cobra.Command{
		Use:   "delete [--endpointslice] NAMESPACE/NAME",
		Short: "delete a service (or with --endpointslice an EndpointSlice); returns once every node dropped it",
		Long: "delete the service NAMESPACE/NAME and free its cluster IP and node ports; its EndpointSlices stay, as in\n" +
			"Kubernetes. With --endpointslice, delete the EndpointSlice NAMESPACE/NAME instead (local and etcd stores;\n" +
			"under the kubernetes store use kubectl). Returns once every node dropped it.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, ok := strings.Cut(args[0], "/")
			if !ok || ns == "" || name == "" {
				return usageError{fmt.Errorf("%q is not NAMESPACE/NAME", args[0])}
			}
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			kind, remove := "service", c.DeleteService
			if slice {
				kind, remove = "endpointslice", c.DeleteEndpointSlice
			}
			if err := remove(cmd.Context(), ns, name); err != nil {
				return err
			}
			if err := c.Wait(cmd.Context(), delTimeout); err != nil {
				return fmt.Errorf("%s deleted, but: %w", kind, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s deleted\n", kind, args[0])
			return nil
		},
	}
	del.Flags().BoolVar(&slice, "endpointslice", false, "NAMESPACE/NAME is an EndpointSlice")
	del.Flags().DurationVar(&delTimeout, "timeout", agent.ProgrammedTimeout, "how long to wait for every node")
	cmd.AddCommand(apply, del, &cobra.Command{
		Use:   "list",
		Short: "list services with their frontends and backends (-o json for every field)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := t.client(cmd)
			if err != nil {
				return err
			}
			views, err := c.Services(cmd.Context())
			if err != nil {
				return err
			}
			var rows [][]string
			for _, v := range views {
				rows = append(rows, []string{v.Namespace + "/" + v.Name, v.Type, orNone(v.ClusterIP),
					orNone(strings.Join(v.Frontends, ",")), orNone(backendsCell(v.Backends))})
			}
			return printOut(cmd.OutOrStdout(), g, views, []string{"NAMESPACE/NAME", "TYPE", "CLUSTER-IP", "FRONTENDS", "BACKENDS"}, rows)
		},
	})
	return cmd
}

// backendsCell is "IP(state),…" for the table.
func backendsCell(bs []agentapi.BackendView) string {
	var out []string
	for _, b := range bs {
		out = append(out, b.IP+"("+b.State+")")
	}
	return strings.Join(out, ",")
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
