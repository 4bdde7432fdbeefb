package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ebpfnet/ebpfnet/agentapi"
)

// ConflistName is the file the runtime reads ebpfnet's network from; "10-" sorts it first.
const ConflistName = "10-ebpfnet.conflist"

// newCNICmd is `cni install`: what the DaemonSet's init container runs on every node.
func newCNICmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cni", Short: "the CNI plugin on this host"}
	var binDir, confDir, socket, version string
	install := &cobra.Command{
		Use:   "install --bin-dir DIR --conf-dir DIR",
		Short: "copy ebpfnet-cni into the runtime's plugin directory and write its conflist",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			if err := installFile(filepath.Join(filepath.Dir(exe), "ebpfnet-cni"), filepath.Join(binDir, "ebpfnet-cni"), 0o755); err != nil {
				return err
			}
			conf, err := conflist(version, socket)
			if err != nil {
				return err
			}
			if err := writeAtomic(filepath.Join(confDir, ConflistName), conf, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed %s and %s\n", filepath.Join(binDir, "ebpfnet-cni"), filepath.Join(confDir, ConflistName))
			return nil
		},
	}
	f := install.Flags()
	f.StringVar(&binDir, "bin-dir", "/opt/cni/bin", "the runtime's CNI plugin directory")
	f.StringVar(&confDir, "conf-dir", "/etc/cni/net.d", "the runtime's CNI configuration directory")
	f.StringVar(&socket, "socket", agentapi.DefaultSocket, "the agent's API socket, as the host sees it")
	f.StringVar(&version, "cni-version", "1.0.0", "the conflist's cniVersion (0.3.1, 0.4.0, 1.0.0 or 1.1.0)")
	cmd.AddCommand(install)
	return cmd
}

// conflist is ebpfnet's network configuration at the given CNI version.
func conflist(version, socket string) ([]byte, error) {
	switch version {
	case "0.3.1", "0.4.0", "1.0.0", "1.1.0":
	default:
		return nil, usageError{fmt.Errorf("--cni-version %q: want 0.3.1, 0.4.0, 1.0.0 or 1.1.0", version)}
	}
	c := map[string]any{"cniVersion": version, "name": "ebpfnet", "plugins": []any{
		map[string]any{"type": "ebpfnet-cni", "socket": socket, "capabilities": map[string]bool{"podLabels": true}},
	}}
	return json.MarshalIndent(c, "", "  ")
}

// installFile copies src to dst through a temporary file, so a runtime never runs half a plugin.
func installFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("cni plugin: %w", err)
	}
	defer in.Close()
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("cni plugin: %w", err)
	}
	return writeAtomic(dst, data, mode)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	return nil
}
