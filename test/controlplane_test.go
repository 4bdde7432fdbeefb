package test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/lab"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// plugin runs ebpfnet-cni in the node's namespace with env and stdin as given.
func plugin(t *testing.T, node *lab.Node, env []string, stdin string) (stdout string, code int) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net="+node.Netns, "--", filepath.Join(binDir, "ebpfnet-cni"))
	cmd.Env = env
	cmd.Stdin = bytes.NewBufferString(stdin)
	out, err := cmd.Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

func cniEnv(command, containerID, netns string) []string {
	env := []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + containerID, "CNI_IFNAME=eth0", "CNI_PATH=" + binDir,
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=" + containerID}
	if netns != "" {
		env = append(env, "CNI_NETNS="+netns)
	}
	return env
}

func cniConf(socket string, extra string) string {
	return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "ebpfnet", "type": "ebpfnet-cni", "socket": %q%s}`, socket, extra)
}

// Acceptance: bad input gets the spec's error JSON with the right code and leaves nothing.
func TestCNIErrorsLeaveNothing(t *testing.T) {
	t.Parallel()
	st := upLab(t, "ce", twoNodes("vxlan"))
	node1, _ := st.Node("node1")
	fresh := nstest.New(t, "cni-err")
	before := stateOf(t, node1)
	cases := []struct {
		name  string
		env   []string
		stdin string
		code  int
	}{
		{"malformed conflist", cniEnv("ADD", "e1", fresh.Path), `{"cniVersion": "1.1.0", "name": `, 6},
		{"unknown field", cniEnv("ADD", "e2", fresh.Path), cniConf(node1.Socket, `, "mtu": 9000`), 7},
		{"missing CNI_NETNS", cniEnv("ADD", "e3", ""), cniConf(node1.Socket, ""), 4},
		{"unreachable agent", cniEnv("ADD", "e4", fresh.Path), cniConf("/run/ebpfnet/no-such-agent.sock", ""), 11},
		{"status of an unreachable agent", cniEnv("STATUS", "e5", ""), cniConf("/run/ebpfnet/no-such-agent.sock", ""), 50},
	}
	for _, c := range cases {
		out, exit := plugin(t, node1, c.env, c.stdin)
		var e struct {
			CNIVersion string `json:"cniVersion"`
			Code       int    `json:"code"`
			Msg        string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Errorf("%s: stdout %q is not CNI error JSON: %v", c.name, out, err)
			continue
		}
		if exit == 0 || e.Code != c.code || e.Msg == "" {
			t.Errorf("%s: exit %d, error %+v; want a non-zero exit and code %d", c.name, exit, e, c.code)
		}
	}
	if got := stateOf(t, node1); got != before {
		t.Fatalf("failed ADDs left something on node1: %+v, before %+v", got, before)
	}
	if _, err := fresh.NL.LinkByName("eth0"); err == nil {
		t.Fatal("a failed ADD left eth0 in the pod")
	}
	if out, code := plugin(t, node1, cniEnv("STATUS", "s", ""), cniConf(node1.Socket, "")); code != 0 {
		t.Fatalf("STATUS of a ready agent: exit %d %s", code, out)
	}
}

// Acceptance: 300 ADD/DEL cycles leave no veth, lease, map entry or pin behind.
func TestCNIAddDelCyclesLeakNothing(t *testing.T) {
	t.Parallel()
	st := upLab(t, "cy", twoNodes("native"))
	node1, _ := st.Node("node1")
	before := stateOf(t, node1)
	ns := nstest.New(t, "cni-cyc")
	conf := cniConf(node1.Socket, "")
	for i := 0; i < 300; i++ {
		id := fmt.Sprintf("cycle-%d", i)
		if out, code := plugin(t, node1, cniEnv("ADD", id, ns.Path), conf); code != 0 {
			t.Fatalf("ADD #%d: %s", i, out)
		}
		if out, code := plugin(t, node1, cniEnv("DEL", id, ns.Path), conf); code != 0 {
			t.Fatalf("DEL #%d: %s", i, out)
		}
	}
	if got := stateOf(t, node1); got != before {
		t.Fatalf("after 300 ADD/DEL cycles node1 holds %+v, before %+v", got, before)
	}
}

// stream keeps a TCP echo conversation and a paced UDP echo stream going from one pod to
// another, counting what goes out and what comes back.
type stream struct {
	tcpBytes          atomic.Int64
	udpSent, udpEchos atomic.Int64
	// echoed marks each datagram's sequence number as its echo comes back.
	mu     sync.Mutex
	echoed []bool
	// netns are the two pods' namespaces and rcvbufErrs their UDP receive-buffer drops at the
	// start: a datagram a socket had no room for was not lost by the network.
	netns      [2]string
	rcvbufErrs int64
	errs       chan error
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

func startStream(t *testing.T, from, to *lab.Pod) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{errs: make(chan error, 4), stop: cancel, netns: [2]string{from.Netns, to.Netns}}
	s.rcvbufErrs = s.socketDrops(t)
	var tc, uc net.Conn
	err := namespace.Do(from.Netns, func() (err error) {
		if tc, err = net.DialTimeout("tcp4", netip.AddrPortFrom(to.IP, 80).String(), 2*time.Second); err != nil {
			return err
		}
		uc, err = net.Dial("udp4", netip.AddrPortFrom(to.IP, 81).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Echoes wait in the socket while this process is descheduled on a loaded machine: room for
	// seconds of them, so that an echo lost is one the network lost.
	if err := lab.GrowReadBuffer(uc.(*net.UDPConn), lab.EchoReadBuffer); err != nil {
		t.Fatal(err)
	}
	s.wg.Add(3)
	go func() { // TCP: write a chunk, read it back, again and again
		defer s.wg.Done()
		defer tc.Close()
		buf, back := bytes.Repeat([]byte("x"), 1024), make([]byte, 1024)
		for ctx.Err() == nil {
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := tc.Write(buf); err != nil {
				s.errs <- fmt.Errorf("tcp write: %w", err)
				return
			}
			if _, err := io.ReadFull(tc, back); err != nil {
				s.errs <- fmt.Errorf("tcp read: %w", err)
				return
			}
			s.tcpBytes.Add(1024)
		}
	}()
	go func() { // UDP: one numbered datagram every 2 ms
		defer s.wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		buf := make([]byte, 8)
		for seq := uint64(0); ctx.Err() == nil; seq++ {
			<-tick.C
			binary.BigEndian.PutUint64(buf, seq)
			if _, err := uc.Write(buf); err != nil {
				s.errs <- fmt.Errorf("udp write: %w", err)
				return
			}
			s.udpSent.Add(1)
		}
	}()
	go func() {
		defer s.wg.Done()
		defer uc.Close()
		buf := make([]byte, 64)
		for {
			uc.SetReadDeadline(time.Now().Add(time.Second))
			n, err := uc.Read(buf)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if n == 8 {
				s.markEchoed(binary.BigEndian.Uint64(buf))
			}
			s.udpEchos.Add(1)
		}
	}()
	return s
}

func (s *stream) markEchoed(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq >= 1<<32 {
		return // not one of ours
	}
	for uint64(len(s.echoed)) <= seq {
		s.echoed = append(s.echoed, false)
	}
	s.echoed[seq] = true
}

// lostSince counts the datagrams from sequence number from on whose echo never came back
// although an echo of a datagram sent at least 50 ms (25 datagrams) later did: lost, not in
// flight. upTo is the last sequence number it judged.
func (s *stream) lostSince(from int64) (lost, upTo int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	upTo = int64(len(s.echoed)) - 1 - 25
	for seq := from; seq <= upTo; seq++ {
		if !s.echoed[seq] {
			lost++
		}
	}
	return lost, upTo
}

// finish stops the streams and fails the test if either broke or a UDP datagram went
// unanswered.
func (s *stream) finish(t *testing.T) {
	t.Helper()
	s.stop()
	s.wg.Wait()
	select {
	case err := <-s.errs:
		t.Fatalf("a stream broke: %v", err)
	default:
	}
	sent, got := s.udpSent.Load(), s.udpEchos.Load()
	drops := s.socketDrops(t) - s.rcvbufErrs
	if sent == 0 || sent-got > drops {
		t.Errorf("UDP: %d datagrams sent, %d echoed, %d dropped by a full socket buffer", sent, got, drops)
	} else if got != sent {
		t.Logf("UDP: %d datagrams sent, %d echoed: %d dropped by a full socket buffer (a descheduled reader), none by the network", sent, got, drops)
	}
}

// socketDrops counts the UDP datagrams the stream's two pods dropped for want of room in a
// socket's receive buffer (Udp RcvbufErrors of each namespace).
func (s *stream) socketDrops(t *testing.T) int64 {
	t.Helper()
	var total int64
	for _, ns := range s.netns {
		err := namespace.Do(ns, func() error {
			b, err := os.ReadFile("/proc/thread-self/net/snmp")
			if err != nil {
				return err
			}
			n, err := snmpField(string(b), "Udp:", "RcvbufErrors")
			total += n
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return total
}

// snmpField reads one counter of /proc/net/snmp: a header line and a value line per protocol.
func snmpField(snmp, proto, field string) (int64, error) {
	var names []string
	for _, l := range strings.Split(snmp, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != proto {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i := range names {
			if names[i] == field && i < len(f) {
				return strconv.ParseInt(f[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s %s in /proc/net/snmp", proto, field)
}

// progress waits until the TCP stream moved on by at least n bytes from now.
func (s *stream) progress(t *testing.T, n int64, what string) {
	t.Helper()
	start := s.tcpBytes.Load()
	eventually(t, 10*time.Second, what, func() (bool, string) {
		select {
		case err := <-s.errs:
			t.Fatalf("%s: %v", what, err)
		default:
		}
		return s.tcpBytes.Load() >= start+n, fmt.Sprintf("the TCP stream stalled at %d bytes", s.tcpBytes.Load())
	})
}

// udpProgress waits until n more UDP datagrams have been echoed.
func (s *stream) udpProgress(t *testing.T, n int64, what string) {
	t.Helper()
	start := s.udpEchos.Load()
	eventually(t, 10*time.Second, what, func() (bool, string) {
		return s.udpEchos.Load() >= start+n, fmt.Sprintf("UDP echoes stalled at %d", s.udpEchos.Load())
	})
}

func pinnedMapID(t *testing.T, node *lab.Node, name string) ebpf.MapID {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(maps.PinPath(node.PinDir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatalf("%s: the kernel did not give its map ID", name)
	}
	return id
}

func endpointsOf(t *testing.T, node *lab.Node) map[netip.Addr]maps.Endpoint {
	t.Helper()
	out, code := ebpfnet(t, "--pin-dir", node.PinDir, "endpoint", "list", "-o", "json")
	if code != 0 {
		t.Fatal(out)
	}
	var eps []maps.Endpoint
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatal(err)
	}
	m := map[netip.Addr]maps.Endpoint{}
	for _, e := range eps {
		m[e.IP] = e
	}
	return m
}

// Acceptance: SIGKILL the agent under TCP and UDP streams between two nodes: both keep
// flowing, UDP loses nothing; on restart nothing is flushed and a pod deleted meanwhile is
// cleaned up.
func TestAgentKillKeepsTrafficAndRestartCleansStale(t *testing.T) {
	t.Parallel()
	spec := twoNodes("vxlan")
	spec.Pods = append(spec.Pods, lab.PodSpec{Namespace: "x", Name: "c", Node: "node1", Ports: []lab.Port{{Port: 80}}})
	st := upLab(t, "ak", spec)
	node1, _ := st.Node("node1")
	a, _ := st.Pod("x/a")
	b, _ := st.Pod("x/b")
	c, _ := st.Pod("x/c")
	mapID := pinnedMapID(t, node1, maps.EndpointsName)
	entryA := endpointsOf(t, node1)[a.IP]

	s := startStream(t, a, b)
	s.progress(t, 64<<10, "before the kill")
	if err := st.StopAgent("node1"); err != nil {
		t.Fatal(err)
	}
	// Delete pod c while no agent runs: its server, then its namespace (and with it the veth).
	if err := syscall.Kill(c.ServerPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "c's server to die", func() (bool, string) { return !nstest.ProcessAlive(c.ServerPID), "alive" })
	if err := namespace.Delete(filepath.Base(c.Netns)); err != nil {
		t.Fatal(err)
	}
	s.progress(t, 256<<10, "while the agent is down")
	s.udpProgress(t, 250, "while the agent is down")
	if _, ok := endpointsOf(t, node1)[c.IP]; !ok {
		t.Fatal("c's entry vanished with no agent running; the test cannot show the restart removes it")
	}
	if err := st.StartAgent(context.Background(), "node1", labOpts()); err != nil {
		t.Fatal(err)
	}
	s.progress(t, 256<<10, "after the restart")
	s.finish(t)
	after := endpointsOf(t, node1)
	if _, ok := after[c.IP]; ok {
		t.Error("the restarted agent kept the entry of a pod deleted while it was down")
	}
	if fmt.Sprint(after[a.IP]) != fmt.Sprint(entryA) {
		t.Errorf("a's entry changed across the restart: %+v -> %+v", entryA, after[a.IP])
	}
	if id := pinnedMapID(t, node1, maps.EndpointsName); id != mapID {
		t.Errorf("endpoints map was replaced (id %d -> %d): state was flushed", mapID, id)
	}
	var eps []struct{ Pod string }
	if err := agentapi.NewClient(node1.Socket).Get(context.Background(), "/v1/endpoints?node=node1", &eps); err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || eps[0].Pod != "a" {
		t.Errorf("store holds %v for node1, want only pod a", eps)
	}
	t.Logf("TCP %d KiB echoed, UDP %d/%d datagrams echoed across the kill and restart",
		s.tcpBytes.Load()>>10, s.udpEchos.Load(), s.udpSent.Load())
}

// Acceptance: a node that joins through the store is reached by running pods; one that is
// deleted disappears from the others' routes.
func TestNodeJoinAndLeave(t *testing.T) {
	t.Parallel()
	st := upLab(t, "jl", twoNodes("ipip"))
	node1, _ := st.Node("node1")
	a, _ := st.Pod("x/a")
	if _, err := st.AddNode(context.Background(), lab.NodeSpec{Name: "node3"}, labOpts()); err != nil {
		t.Fatal(err)
	}
	c, err := st.AddPod(context.Background(), lab.PodSpec{Namespace: "x", Name: "c", Node: "node3", Ports: []lab.Port{{Port: 80}}}, labOpts())
	if err != nil {
		t.Fatal(err)
	}
	node3, _ := st.Node("node3")
	waitRoute(t, node1, node3.PodCIDR, true)
	if err := st.Probe(a.Key(), c.Key(), 80, "TCP"); err != nil {
		t.Fatalf("x/a (never restarted) does not reach x/c on the new node: %v", err)
	}
	if out, code := ebpfnet(t, "node", "delete", "node3", "--socket", node1.Socket); code != 0 {
		t.Fatalf("node delete: %s", out)
	}
	waitRoute(t, node1, node3.PodCIDR, false)
	if err := st.Probe(a.Key(), c.Key(), 80, "TCP"); err == nil {
		t.Fatal("x/a still reaches x/c after node3 was deleted")
	}
}

func waitRoute(t *testing.T, node *lab.Node, cidr netip.Prefix, present bool) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%s: route to %s present=%v", node.Name, cidr, present), func() (bool, string) {
		var routes []maps.Route
		if err := agentapi.NewClient(node.Socket).Get(context.Background(), "/v1/routes", &routes); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range routes {
			found = found || r.Prefix == cidr
		}
		return found == present, fmt.Sprint(routes)
	})
}
