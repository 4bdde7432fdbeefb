package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ebpfnet/ebpfnet/lab/kube"
)

// spawn starts a long-lived lab process inside the network namespace at netns. nsenter
// switches only the network namespace: `ip netns exec` would also remount /sys, and with it
// hide the bpffs where the agents pin the datapath.
func spawn(netns, logFile, exe string, args ...string) (int, error) {
	logf, err := os.Create(logFile)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + netns, "--", exe}, args...)...)
	cmd.Env = append(os.Environ(), ServeEnv+"=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s %s: %w", filepath.Base(exe), args[0], err)
	}
	go cmd.Wait() //nolint:errcheck // reaps it if it dies while this process still runs; its log says why
	return cmd.Process.Pid, nil
}

// stop kills a lab process if pid is still one of this lab's, and waits until every thread of
// it has exited: an exiting process loses its command line, and its first thread can be a
// zombie, before its files are closed (an agent's socket still takes connections meanwhile);
// on a busy machine a thread blocked in the kernel holds the exit up for seconds.
func stop(pid int, lab string) error {
	if pid <= 0 || !isLabProcess(pid, lab) {
		return nil
	}
	start := time.Now()
	if err := killAndWait(pid, stopTimeout); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if took := time.Since(start); took > 5*time.Second {
		slog.Warn("a killed lab process took long to exit", "pid", pid, "took", took.Round(time.Millisecond))
	}
	return nil
}

// stopTimeout bounds how long stop waits for a killed process to exit.
const stopTimeout = time.Minute

// isLabProcess checks /proc so that a recycled pid is never killed by mistake: every lab
// process names a file under the lab's directory on its command line.
func isLabProcess(pid int, lab string) bool { return kube.OwnedBy(pid, Dir(lab)) }

// cniConf is the network configuration the lab hands the plugin, as a runtime would.
func cniConf(node *Node, labels map[string]string) []byte {
	conf := map[string]any{"cniVersion": "1.1.0", "name": "ebpfnet", "type": "ebpfnet-cni", "socket": node.Socket}
	if len(labels) > 0 {
		conf["runtimeConfig"] = map[string]any{"podLabels": labels}
	}
	b, _ := json.Marshal(conf)
	return b
}

// runCNI executes the plugin in the node's namespace with the CNI environment and returns the
// pod's addresses for ADD.
func runCNI(ctx context.Context, plugin string, node *Node, command string, p *Pod) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+node.Netns, "--", plugin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+p.ContainerID, "CNI_NETNS="+p.Netns,
		"CNI_IFNAME=eth0", "CNI_PATH="+filepath.Dir(plugin),
		fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s", p.Namespace, p.Name))
	cmd.Stdin = bytes.NewReader(cniConf(node, p.Labels))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("CNI %s: %w: %s%s", command, err, strings.TrimSpace(string(out)), strings.TrimSpace(stderr.String()))
	}
	if command != "ADD" {
		return nil, nil
	}
	var res types100.Result
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("CNI ADD result %q: %w", out, err)
	}
	if len(res.IPs) == 0 {
		return nil, fmt.Errorf("CNI ADD result %q: no IP", out)
	}
	var ips []netip.Addr
	for _, c := range res.IPs {
		ip, _ := netip.AddrFromSlice(c.Address.IP)
		ips = append(ips, ip.Unmap())
	}
	return ips, nil
}
