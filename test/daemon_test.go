package test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// A bad configuration is refused at start, in one line naming the field, and nothing is left.
func TestDaemonRefusesBadConfig(t *testing.T) {
	t.Parallel()
	node := nstest.New(t, "dcfg")
	dir := t.TempDir()
	pin := nstest.PinDir(t)
	base := []string{"--pin-dir", pin, "daemon", "--socket", filepath.Join(dir, "s", "agent.sock"), "--store-path", filepath.Join(dir, "db"),
		"--underlay", "lo", "--cluster-cidr", "10.244.0.0/16", "--mode", "vxlan"}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--mode", "geneve"}, `config: mode: unknown mode "geneve"`},
		{[]string{"--cluster-cidr", "10.244.0.0/33"}, "config: clusterCIDR"},
		{[]string{"--pod-cidr", "192.168.0.0/24"}, "config: podCIDR: 192.168.0.0/24 is not inside clusterCIDR"},
		{[]string{"--store", "consul"}, `config: store.type: "consul"`},
		{[]string{"--underlay", "nosuch0"}, `underlayInterface: "nosuch0"`},
	}
	for _, c := range cases {
		args := append(append([]string{}, base...), c.args...)
		out, err := exec.Command("nsenter", append([]string{"--net=" + node.Path, "--", ebpfnetBin}, args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("%v: %v %q; want a one-line error containing %q", c.args, err, out, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "s", "agent.sock")); err == nil {
		t.Error("a refused daemon left its socket")
	}
}

// startDaemon runs the agent with a local store inside node and waits until it is ready.
func startDaemon(t *testing.T, node *nstest.NS, dir, pin string) (*exec.Cmd, *agentapi.Client) {
	t.Helper()
	socket := filepath.Join(dir, "run", "agent.sock")
	cmd := exec.Command("nsenter", "--net="+node.Path, "--", ebpfnetBin, "--pin-dir", pin, "daemon", "--socket", socket,
		"--store", "local", "--store-path", filepath.Join(dir, "store.db"), "--underlay", "eth0",
		"--cluster-cidr", "10.246.0.0/16", "--mode", "native", "--node-name", "solo")
	log, _ := os.Create(filepath.Join(dir, "agent.log"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) // killed: its status says nothing
	c := agentapi.NewClient(socket)
	eventually(t, 20*time.Second, "agent ready", func() (bool, string) {
		st, err := c.Status(context.Background())
		b, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
		return err == nil && st.Ready, string(b)
	})
	return cmd, c
}

// One node with the local store: the socket is root-only; SIGTERM stops the agent cleanly and
// leaves the datapath; a restarted agent finds its endpoint, lease and map entry as they were.
func TestDaemonLocalStoreSurvivesRestart(t *testing.T) {
	t.Parallel()
	node := nstest.New(t, "dsolo")
	peer := nstest.New(t, "dpeer")
	eth0, _ := nstest.Veth(t, node, "eth0", peer, "eth1")
	addr, _ := netlink.ParseAddr("10.252.0.1/24")
	if err := node.NL.AddrAdd(eth0, addr); err != nil {
		t.Fatal(err)
	}
	dir, pin := t.TempDir(), nstest.PinDir(t)
	t.Cleanup(func() { datapathUninstall(t, pin) })
	cmd, c := startDaemon(t, node, dir, pin)

	sock, _ := os.Stat(filepath.Join(dir, "run", "agent.sock"))
	sockDir, _ := os.Stat(filepath.Join(dir, "run"))
	if sock.Mode().Perm() != 0o600 || sockDir.Mode().Perm() != 0o700 {
		t.Fatalf("socket %v in dir %v, want 0600 in 0700", sock.Mode().Perm(), sockDir.Mode().Perm())
	}
	pod := nstest.New(t, "dpod")
	req := agentapi.AttachRequest{ContainerID: "c1", IfName: "eth0", Netns: pod.Path, Namespace: "x", Pod: "p"}
	res, err := c.Add(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	// No DEL at cleanup: the agent is gone by then, and the pod's and the node's namespaces
	// go with their veths. The test ends with a DEL to the restarted agent instead.
	// The pod reaches its node: the node refuses port 1 (on a loaded machine the first try can
	// time out while the node's neighbour entry for the pod settles).
	eventually(t, 20*time.Second, "the pod reaches its node", func() (bool, string) {
		var err error
		pod.Do(t, func() error {
			var conn net.Conn
			if conn, err = net.DialTimeout("tcp4", "10.252.0.1:1", time.Second); err == nil {
				conn.Close()
			}
			return nil
		})
		return err == nil || strings.Contains(err.Error(), "refused"), fmt.Sprint(err)
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent did not exit cleanly on SIGTERM: %v", err)
	}
	if _, err := os.Stat(filepath.Join(pin, "endpoints")); err != nil {
		t.Fatalf("the datapath's pins went with the agent: %v", err)
	}
	_, c = startDaemon(t, node, dir, pin)
	if err := c.Check(context.Background(), req); err != nil {
		t.Fatalf("CHECK after restart: %v", err)
	}
	again, err := c.Add(context.Background(), req)
	if err != nil || again.IP != res.IP {
		t.Fatalf("ADD after restart gave %v (%v), want the lease %v kept", again.IP, err, res.IP)
	}
	if err := c.Del(context.Background(), req); err != nil {
		t.Fatalf("DEL after restart: %v", err)
	}
}

// datapathUninstall runs `ebpfnet datapath uninstall` on the pins under pin, at a test's end.
func datapathUninstall(t *testing.T, pin string) {
	t.Helper()
	if out, err := exec.Command(ebpfnetBin, "--pin-dir", pin, "datapath", "uninstall").CombinedOutput(); err != nil {
		t.Errorf("datapath uninstall: %v: %s", err, out)
	}
}
