package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
	"github.com/ebpfnet/ebpfnet/testkit/yamlbomb"
)

// soloAgent is `ebpfnet daemon` alone in a node namespace of its own, with the local store:
// the agent the hostile-input tests attack through its socket, its plugin and its metrics.
type soloAgent struct {
	node   lab.Node // what stateOf, plugin and scrape take
	ns     *nstest.NS
	pid    int
	log    string
	client *agentapi.Client
}

// startSoloAgent runs the agent with extra daemon flags and waits until it is ready; the
// agent, its datapath and its namespaces go when the test ends.
func startSoloAgent(t *testing.T, prefix string, extra ...string) *soloAgent {
	t.Helper()
	node := nstest.New(t, prefix)
	peer := nstest.New(t, prefix+"p")
	eth0, _ := nstest.Veth(t, node, "eth0", peer, "eth1")
	addr, _ := netlink.ParseAddr("10.252.0.1/24")
	if err := node.NL.AddrAdd(eth0, addr); err != nil {
		t.Fatal(err)
	}
	dir, pin := t.TempDir(), nstest.PinDir(t)
	t.Cleanup(func() { datapathUninstall(t, pin) })
	socket := filepath.Join(dir, "run", "agent.sock")
	args := append([]string{"--net=" + node.Path, "--", ebpfnetBin, "--pin-dir", pin, "daemon", "--socket", socket,
		"--store", "local", "--store-path", filepath.Join(dir, "store.db"), "--underlay", "eth0",
		"--cluster-cidr", "10.246.0.0/16", "--mode", "native", "--node-name", "solo"}, extra...)
	cmd := exec.Command("nsenter", args...) // nsenter execs the agent: same pid
	log := filepath.Join(dir, "agent.log")
	logf, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) // killed: its status says nothing
	a := &soloAgent{ns: node, pid: cmd.Process.Pid, log: log, client: agentapi.NewClient(socket),
		node: lab.Node{Name: "solo", IP: netip.MustParseAddr("10.252.0.1"), Netns: node.Path, PinDir: pin, Socket: socket}}
	eventually(t, 30*time.Second, "agent ready", func() (bool, string) {
		st, err := a.client.Status(context.Background())
		b, _ := os.ReadFile(log)
		return err == nil && st.Ready, string(b)
	})
	return a
}

// logHas says whether the agent's log has a line containing every one of words.
func (a *soloAgent) logHas(words ...string) (bool, string) {
	b, _ := os.ReadFile(a.log)
	for _, line := range strings.Split(string(b), "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			return true, ""
		}
	}
	return false, string(b)
}

// vmHWM is the agent process's peak resident memory so far, in bytes.
func (a *soloAgent) vmHWM(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", a.pid)
	return 0
}

// Acceptance: the agent's socket serves root only, whatever its mode: with the socket 0666
// and every directory to it searchable, uid 65534 connects and is told in one line that only
// root is answered, unserved, and the agent logs it; the CLI run as uid 65534 prints that line;
// root is served, before and after.
func TestHostileSocketPeer(t *testing.T) {
	t.Parallel()
	a := startSoloAgent(t, "hsock")
	for p := a.node.Socket; p != "/"; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.IsDir() && fi.Mode().Perm()&0o005 != 0o005 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o005); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Chmod(a.node.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	reply, err := nstest.StatusAs(65534, a.node.Socket)
	if errors.Is(err, fs.ErrPermission) {
		t.Fatalf("uid 65534 could not connect, so the agent's own check went untested: %v", err)
	}
	const refusal = "the ebpfnet agent answers only root (uid 0); you are uid 65534"
	if err != nil || !strings.HasPrefix(reply, "HTTP/1.1 403 ") || !strings.Contains(reply, refusal) {
		t.Fatalf("uid 65534 through a 0666 socket: %q, %v; want a 403 saying %q", reply, err, refusal)
	}
	if err := os.Chmod(binDir, 0o755); err != nil { // so that uid 65534 may run the CLI
		t.Fatal(err)
	}
	cli := exec.Command(ebpfnetBin, "policy", "list", "--socket", a.node.Socket)
	cli.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cli.CombinedOutput(); err == nil || strings.TrimSpace(string(out)) != "ebpfnet: "+refusal {
		t.Errorf("ebpfnet policy list as uid 65534: %v, %q; want a failure saying %q", err, out, refusal)
	}
	eventually(t, 10*time.Second, "the agent logs the refusal", func() (bool, string) {
		return a.logHas("refused a connection from a non-root peer", "uid=65534")
	})
	if reply, err := nstest.StatusAs(0, a.node.Socket); err != nil || !strings.HasPrefix(reply, "HTTP/1.1 200") {
		t.Fatalf("root after the refusal: %q, %v", reply, err)
	}
}

// runPlugin is plugin with a deadline: a plugin that hangs (on a named pipe, say) fails.
func runPlugin(t *testing.T, netnsPath string, env []string, stdin []byte) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+netnsPath, "--", filepath.Join(binDir, "ebpfnet-cni"))
	cmd.Env, cmd.Stdin = env, bytes.NewReader(stdin)
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("the plugin did not answer in 20s (env %q)", env)
	}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// withEnv is env with name=value in place of what env had for name.
func withEnv(env []string, name, value string) []string {
	var out []string
	for _, e := range env {
		if !strings.HasPrefix(e, name+"=") {
			out = append(out, e)
		}
	}
	return append(out, name+"="+value)
}

// Acceptance: hostile CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, CNI_ARGS and configurations get
// the spec's error JSON with the right code, one line, in good time, and leave nothing: no
// veth, lease, endpoint, map entry or pin, no interface in the pod. Then the agent still
// attaches a pod. The agent refuses the same names when asked directly, not through the plugin.
func TestHostileCNIInput(t *testing.T) {
	t.Parallel()
	a := startSoloAgent(t, "hcni")
	pod := nstest.New(t, "hcnipod")
	fifo := filepath.Join(t.TempDir(), "netns-fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, &a.node)
	conf := []byte(cniConf(a.node.Socket, ""))
	env := cniEnv("ADD", "h1", pod.Path)
	cases := []struct {
		name  string
		env   []string
		stdin []byte
		code  int
	}{
		{"container id going up", withEnv(env, "CNI_CONTAINERID", "../../x"), conf, 4},
		{"container id with a slash", withEnv(env, "CNI_CONTAINERID", "a/b"), conf, 4},
		{"interface name of 16 bytes", withEnv(env, "CNI_IFNAME", "eth0123456789abc"), conf, 4},
		{"interface name ..", withEnv(env, "CNI_IFNAME", ".."), conf, 4},
		{"interface name with a colon", withEnv(env, "CNI_IFNAME", "eth0:1"), conf, 4},
		{"interface name with a slash", withEnv(env, "CNI_IFNAME", "a/b"), conf, 4},
		{"relative netns", withEnv(env, "CNI_NETNS", strings.TrimPrefix(pod.Path, "/")), conf, 4},
		{"netns that is a named pipe", withEnv(env, "CNI_NETNS", fifo), conf, 4},
		{"netns that is a device", withEnv(env, "CNI_NETNS", "/dev/zero"), conf, 4},
		{"netns that is a directory", withEnv(env, "CNI_NETNS", "/run"), conf, 4},
		{"netns of the node itself", withEnv(env, "CNI_NETNS", a.node.Netns), conf, 4},
		{"pod name going up", withEnv(env, "CNI_ARGS", "K8S_POD_NAMESPACE=x;K8S_POD_NAME=../p"), conf, 4},
		{"pod namespace with a slash", withEnv(env, "CNI_ARGS", "K8S_POD_NAMESPACE=x/y;K8S_POD_NAME=p"), conf, 4},
		{"configuration over 1 MiB", env, []byte(cniConf(a.node.Socket, `, "args": {"pad": "`+strings.Repeat("x", 2<<20)+`"}`)), 7},
		{"two configurations", env, append(append([]byte{}, conf...), conf...), 6},
		{"relative socket", env, []byte(cniConf("agent.sock", "")), 7},
		{"network name going up", env, []byte(`{"cniVersion": "1.1.0", "name": "../n", "type": "ebpfnet-cni"}`), 7},
	}
	for _, c := range cases {
		out, exit := runPlugin(t, a.node.Netns, c.env, c.stdin)
		var e struct {
			Code int    `json:"code"`
			Msg  string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Errorf("%s: stdout %q is not CNI error JSON: %v", c.name, out, err)
			continue
		}
		if exit == 0 || e.Code != c.code || e.Msg == "" || strings.Contains(e.Msg, "\n") {
			t.Errorf("%s: exit %d, error %+v; want a non-zero exit and code %d with a one-line message", c.name, exit, e, c.code)
		}
	}
	// The agent refuses them too when asked directly, with the pod's namespace passed along.
	for _, req := range []agentapi.AttachRequest{
		{ContainerID: "../x", IfName: "eth0", Netns: pod.Path},
		{ContainerID: "h2", IfName: "a/b", Netns: pod.Path},
		{ContainerID: "h3", IfName: "eth0", Netns: pod.Path, Namespace: "x", Pod: "../../p"},
	} {
		_, err := a.client.Add(context.Background(), req)
		var ae *agentapi.APIError
		if !errors.As(err, &ae) || ae.Code != agentapi.CodeInvalidEnv {
			t.Errorf("agent ADD of %+v: %v; want code 4", req, err)
		}
	}
	if got := stateOf(t, &a.node); got != before {
		t.Fatalf("refused input left something on the node: %+v, before %+v", got, before)
	}
	if _, err := pod.NL.LinkByName("eth0"); err == nil {
		t.Fatal("refused input left eth0 in the pod")
	}
	if out, code := runPlugin(t, a.node.Netns, env, conf); code != 0 {
		t.Fatalf("a good ADD after the hostile ones: exit %d %s", code, out)
	}
	if out, code := runPlugin(t, a.node.Netns, withEnv(env, "CNI_COMMAND", "DEL"), conf); code != 0 {
		t.Fatalf("DEL: exit %d %s", code, out)
	}
}

// postPolicies sends body to the agent's POST /v1/policies, with its length or chunked
// (length -1), and returns the status and the API's error, if any.
func postPolicies(t *testing.T, socket string, body io.Reader, length int64) (int, agentapi.APIError) {
	t.Helper()
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}
	req, err := http.NewRequest("POST", "http://agent/v1/policies", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = length
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("POST /v1/policies: %v", err)
	}
	defer resp.Body.Close()
	var ae agentapi.APIError
	if err := json.NewDecoder(resp.Body).Decode(&ae); err != nil {
		t.Fatalf("POST /v1/policies: %s with an unreadable body: %v", resp.Status, err)
	}
	return resp.StatusCode, ae
}

// Acceptance: NetworkPolicy YAML that is a billion-laughs alias bomb, a long string repeated
// by aliases, or 100 MB (with its length or chunked) is refused by the agent with code 7 and
// one line (never a broken pipe: the agent reads what the client is still sending), and the
// agent's peak resident memory (VmHWM) grows by less than 64 MiB over all of them; nothing is
// stored. `policy apply -f` refuses a 100 MB file without sending it.
func TestHostilePolicies(t *testing.T) {
	t.Parallel()
	a := startSoloAgent(t, "hpol")
	laughs, long := yamlbomb.LaughsInAnnotations(), yamlbomb.LabelledInAnnotations(64<<10, 4000)
	cases := []struct {
		name   string
		body   func() io.Reader
		length int64
		status int
		want   string
	}{
		{"billion laughs", func() io.Reader { return strings.NewReader(laughs) }, int64(len(laughs)), 400, "document 1: "},
		{"a long string repeated by aliases", func() io.Reader { return strings.NewReader(long) }, int64(len(long)), 400, "its aliases expand it past the 1 MiB"},
		{"100 MB with its length", func() io.Reader { return nstest.YAMLPadding(100 << 20) }, 100 << 20, 413, "request body is over the agent API's limit of 16 MiB"},
		{"100 MB chunked", func() io.Reader { return nstest.YAMLPadding(100 << 20) }, -1, 400, "request body is over the agent API's limit of 16 MiB"},
	}
	start := a.vmHWM(t)
	for _, c := range cases {
		status, ae := postPolicies(t, a.node.Socket, c.body(), c.length)
		t.Logf("%s: %d %+v; agent VmHWM %+.1f MiB", c.name, status, ae, float64(a.vmHWM(t)-start)/(1<<20))
		if status != c.status || ae.Code != agentapi.CodeInvalidConfig || !strings.Contains(ae.Message, c.want) || strings.Contains(ae.Message, "\n") {
			t.Errorf("%s: %d %+v; want %d, code 7 and one line containing %q", c.name, status, ae, c.status, c.want)
		}
	}
	if grew := a.vmHWM(t) - start; grew > 64<<20 {
		t.Errorf("the agent's peak resident memory grew by %.1f MiB, want under 64 MiB", float64(grew)/(1<<20))
	}
	var list agentapi.PolicyList
	if err := a.client.Get(context.Background(), "/v1/policies", &list); err != nil || len(list.Policies) != 0 {
		t.Errorf("policies stored: %+v (%v)", list.Policies, err)
	}

	huge := filepath.Join(t.TempDir(), "huge.yaml")
	if err := os.WriteFile(huge, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, 100<<20); err != nil {
		t.Fatal(err)
	}
	out, code := ebpfnet(t, "policy", "apply", "--socket", a.node.Socket, "-f", huge)
	if code != 1 || !strings.Contains(out, "is over 16 MiB, the most the agent takes in one request") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("policy apply -f of 100 MB: exit %d %q", code, out)
	}
}

// tcpListeners returns the local addresses of the TCP sockets process pid listens on.
func tcpListeners(t *testing.T, pid int) []netip.AddrPort {
	t.Helper()
	own := map[string]bool{} // socket inodes the process holds
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(l, "socket:[") {
			own[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []netip.AddrPort
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" || !own[fields[9]] { // 0A: LISTEN
				continue
			}
			out = append(out, procAddr(t, fields[1]))
		}
		f.Close()
	}
	return out
}

// procAddr decodes /proc/net/tcp's "ADDR:PORT": the address in 32-bit host-order words, the
// port a hex number.
func procAddr(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	hexAddr, hexPort, _ := strings.Cut(s, ":")
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	for i := 0; i+8 <= len(hexAddr); i += 8 {
		w, err := strconv.ParseUint(hexAddr[i:i+8], 16, 32)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	addr, ok := netip.AddrFromSlice(b)
	if !ok {
		t.Fatalf("address %q", s)
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(port))
}

// dialIn says whether a TCP connection to addr from inside the namespace at path succeeds.
func dialIn(t *testing.T, path string, addr netip.AddrPort) bool {
	t.Helper()
	ok := false
	nstest.InNetns(t, path, func(*netlink.Handle) {
		if c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second); err == nil {
			ok = true
			c.Close()
		}
	})
	return ok
}

// Acceptance: with metricsAddress set the agent listens there and nowhere else: not on the
// node's other addresses, not on the wildcard; with it empty the agent has no TCP listener.
func TestHostileMetricsBinding(t *testing.T) {
	t.Parallel()
	metrics := netip.AddrPortFrom(netip.MustParseAddr("10.252.0.1"), lab.MetricsPort)
	t.Run("set", func(t *testing.T) {
		t.Parallel()
		a := startSoloAgent(t, "hmet", "--metrics-address", metrics.String())
		other, _ := netlink.ParseAddr("10.252.0.2/24")
		eth0, err := a.ns.NL.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if err := a.ns.NL.AddrAdd(eth0, other); err != nil {
			t.Fatal(err)
		}
		if got := tcpListeners(t, a.pid); len(got) != 1 || got[0] != metrics {
			t.Fatalf("the agent listens on %v, want only %v", got, metrics)
		}
		if !strings.Contains(string(scrape(t, &a.node)), "ebpfnet_endpoints") {
			t.Fatalf("%v serves no ebpfnet metrics", metrics)
		}
		for _, ip := range []string{"10.252.0.2", "127.0.0.1"} {
			if addr := netip.AddrPortFrom(netip.MustParseAddr(ip), lab.MetricsPort); dialIn(t, a.node.Netns, addr) {
				t.Errorf("metrics answer on %v too", addr)
			}
		}
	})
	t.Run("empty", func(t *testing.T) {
		t.Parallel()
		a := startSoloAgent(t, "hnomet")
		if got := tcpListeners(t, a.pid); len(got) != 0 {
			t.Fatalf("with no metricsAddress the agent listens on %v", got)
		}
		if dialIn(t, a.node.Netns, metrics) {
			t.Fatalf("something answers on %v", metrics)
		}
	})
}
