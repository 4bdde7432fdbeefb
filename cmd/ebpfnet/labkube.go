package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

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

// newLabAPIWhoamiCmd is `lab api-whoami`: run in a pod, it asks the API server who the pod's
// service-account token says it is, as any in-cluster client does: the token, the CA and, unless
// --server names another, the address of the kubernetes Service that kubelet puts in the pod.
func newLabAPIWhoamiCmd() *cobra.Command {
	var server string
	cmd := &cobra.Command{
		Use:    "api-whoami [--server URL]",
		Short:  "print the user the API server sees, from inside a pod, with the pod's service-account token",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := rest.InClusterConfig()
			if err != nil {
				return fmt.Errorf("in-cluster config: %w", err)
			}
			if server != "" {
				cfg.Host = server
			}
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("client for %s: %w", cfg.Host, err)
			}
			r, err := cs.AuthenticationV1().SelfSubjectReviews().Create(cmd.Context(), &authv1.SelfSubjectReview{}, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("ask %s who I am: %w", cfg.Host, err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.Status.UserInfo.Username)
			return nil
		},
	}
	cmd.Flags().StringVar(&server, "server", "", "the API server's URL (default: the kubernetes Service's address kubelet gives the pod)")
	return cmd
}
