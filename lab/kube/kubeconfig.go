package kube

import (
	"fmt"
	"os"
)

// writeKubeconfig writes a kubeconfig at path for a client certificate user of server.
func writeKubeconfig(path, server, caFile, certFile, keyFile, user string) error {
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: lab
  context:
    cluster: lab
    user: %s
current-context: lab
`, server, caFile, user, certFile, keyFile, user)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}
