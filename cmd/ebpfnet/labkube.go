package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/lab"
)

// newLabKubeconfigCmd is `lab kubeconfig`: the admin kubeconfig of a kubernetes lab.
func newLabKubeconfigCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "kubeconfig",
		Short: "print the path of a kubernetes lab's admin kubeconfig (its API server is on the lab's underlay)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			cp, err := st.ControlPlane()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), cp.Kubeconfig)
			return nil
		},
	}
}

// newLabKubectlCmd is `lab kubectl -- ARGS…`: kubectl against the lab, from its underlay.
func newLabKubectlCmd(name *string) *cobra.Command {
	return &cobra.Command{
		Use:   "kubectl -- ARGS...",
		Short: "run kubectl against a kubernetes lab",
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.Load(*name)
			if err != nil {
				return err
			}
			cp, err := st.ControlPlane()
			if err != nil {
				return err
			}
			k := cp.KubectlCommand(cmd.Context(), args...)
			k.Stdin, k.Stdout, k.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			if err := k.Run(); err != nil {
				return fmt.Errorf("kubectl: %w", err)
			}
			return nil
		},
	}
}
