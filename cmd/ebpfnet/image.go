package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/lab/kube"
)

// newImageCmd is `image build`: the container image deploy/ebpfnet.yaml runs, as a docker archive.
func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "the agent's container image"}
	var out string
	build := &cobra.Command{
		Use:   "build --out DIR",
		Short: "write " + kube.AgentImage + " (this binary and ebpfnet-cni beside it) as a docker archive",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			p, err := kube.BuildAgentImage(out, "", exe, filepath.Join(filepath.Dir(exe), "ebpfnet-cni"))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\nload it on a node with: ctr -n k8s.io images import %s\n", p, p)
			return nil
		},
	}
	build.Flags().StringVar(&out, "out", "bin/image", "directory for the archive")
	cmd.AddCommand(build)
	return cmd
}
