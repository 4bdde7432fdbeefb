package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agent"
	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/loader"
)

// newUninstallCmd is `ebpfnet uninstall`: what is left to do on a node once the DaemonSet is
// deleted (`kubectl delete -f deploy/ebpfnet.yaml`), whose pods leave the datapath in place.
func newUninstallCmd(g *globals) *cobra.Command {
	var binDir, confDir, socket string
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "remove ebpfnet from this node: the datapath's pins and links, its devices and routes, the CNI plugin and conflist",
		Long: `uninstall removes from this node everything ebpfnet made: the datapath's programs, links
and maps pinned under --pin-dir, the agent's devices and kernel routes, the node side of every
pod's veth, and the files "ebpfnet cni install" wrote. Pods still running lose their network.
It refuses while an agent answers on --socket: delete the DaemonSet (or stop the daemon) first.
The store's data (the Kubernetes API's objects, etcd's keys, the local store file) is left.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
			defer cancel()
			if _, err := agentapi.NewClient(socket).Status(ctx); err == nil {
				return fmt.Errorf("an agent answers on %s: stop it first (kubectl delete -f deploy/ebpfnet.yaml, or stop ebpfnet daemon)", socket)
			}
			out := cmd.OutOrStdout()
			errs := []error{loader.Uninstall(g.pinDir)}
			fmt.Fprintln(out, "datapath removed from", g.pinDir)
			removed, err := agent.RemoveFromNode()
			errs = append(errs, err)
			for _, r := range removed {
				fmt.Fprintln(out, "removed", r)
			}
			for _, f := range []string{filepath.Join(confDir, ConflistName), filepath.Join(binDir, "ebpfnet-cni")} {
				switch err := os.Remove(f); {
				case err == nil:
					fmt.Fprintln(out, "removed", f)
				case !errors.Is(err, fs.ErrNotExist):
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&binDir, "cni-bin-dir", "/opt/cni/bin", "where ebpfnet cni install put ebpfnet-cni")
	f.StringVar(&confDir, "cni-conf-dir", "/etc/cni/net.d", "where ebpfnet cni install wrote the conflist")
	f.StringVar(&socket, "socket", agentapi.DefaultSocket, "the agent's API socket: uninstall refuses while an agent answers there")
	return cmd
}
