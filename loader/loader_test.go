package loader_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/test/nstest"
)

// childEnv makes the test binary act as a short-lived loader process (see TestMain).
const childEnv = "EBPFNET_LOADER_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		if err := childAttach(spec); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childAttach loads and attaches to_pod as "pinDir netnsPath ifname" says, then returns.
func childAttach(spec string) error {
	f := strings.Fields(spec)
	dp, err := loader.Load(loader.Config{PinDir: f[0]})
	if err != nil {
		return err
	}
	defer dp.Close()
	return namespace.Do(f[1], func() error {
		_, err := dp.Attach(f[2], loader.HookToPod)
		return err
	})
}

// pair is two namespaces joined by a veth, with static neighbours so no ARP crosses it.
type pair struct {
	a, b         *nstest.NS
	aLink, bLink netlink.Link
	aIP, bIP     netip.Addr
}

func newPair(t *testing.T) *pair {
	t.Helper()
	p := &pair{a: nstest.New(t, "ldr-a"), b: nstest.New(t, "ldr-b"),
		aIP: netip.MustParseAddr("10.201.0.1"), bIP: netip.MustParseAddr("10.201.0.2")}
	p.aLink, p.bLink = nstest.Veth(t, p.a, "v0", p.b, "v1")
	for _, side := range []struct {
		ns       *nstest.NS
		l, peer  netlink.Link
		ip, peIP netip.Addr
	}{{p.a, p.aLink, p.bLink, p.aIP, p.bIP}, {p.b, p.bLink, p.aLink, p.bIP, p.aIP}} {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: side.ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}
		if err := side.ns.NL.AddrAdd(side.l, addr); err != nil {
			t.Fatalf("add address: %v", err)
		}
		if err := side.ns.NL.NeighSet(&netlink.Neigh{LinkIndex: side.l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: side.peIP.AsSlice(), HardwareAddr: side.peer.Attrs().HardwareAddr}); err != nil {
			t.Fatalf("add neighbour: %v", err)
		}
	}
	return p
}

// udpFlow opens a receiver in b and a connected sender in a.
func (p *pair) udpFlow(t *testing.T) *net.UDPConn {
	t.Helper()
	var rx, tx *net.UDPConn
	p.b.Do(t, func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: p.bIP.AsSlice(), Port: 9999})
		return err
	})
	t.Cleanup(func() { rx.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, err := rx.Read(buf); err != nil {
				return
			}
		}
	}()
	p.a.Do(t, func() (err error) {
		tx, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: p.bIP.AsSlice(), Port: 9999})
		return err
	})
	t.Cleanup(func() { tx.Close() })
	return tx
}

func send(t *testing.T, tx *net.UDPConn, n int) {
	t.Helper()
	payload := make([]byte, 64)
	for i := 0; i < n; i++ {
		if _, err := tx.Write(payload); err != nil {
			t.Fatalf("send packet %d: %v", i, err)
		}
	}
}

func delivered(t *testing.T, pinDir string) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(maps.PinPath(pinDir, maps.MetricsName), nil)
	if err != nil {
		t.Fatalf("open pinned metrics: %v", err)
	}
	defer m.Close()
	c, err := maps.NewMetrics(m).Get(maps.ReasonDeliver, maps.DirToPod)
	if err != nil {
		t.Fatal(err)
	}
	return c.Packets
}

func attachedPrograms(t *testing.T, ns *nstest.NS, ifindex int, at ebpf.AttachType) []link.AttachedProgram {
	t.Helper()
	var res *link.QueryResult
	ns.Do(t, func() (err error) {
		res, err = link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		return err
	})
	return res.Programs
}

func loadAndAttach(t *testing.T, pinDir string, ns *nstest.NS, ifname string) *loader.Datapath {
	t.Helper()
	dp, err := loader.Load(loader.Config{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	ns.Do(t, func() error {
		_, err := dp.Attach(ifname, loader.HookToPod)
		return err
	})
	return dp
}

// Acceptance: a tcx program on a veth counts exactly the packets sent into a pinned per-CPU map.
func TestTCXCountsEveryPacket(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	pinDir := nstest.PinDir(t)
	t.Cleanup(func() { loader.Uninstall(pinDir) })
	loadAndAttach(t, pinDir, p.a, "v0")
	tx := p.udpFlow(t)

	const n = 1000
	send(t, tx, n)
	if got := delivered(t, pinDir); got != n {
		t.Fatalf("counted %d packets, sent %d", got, n)
	}
}

// Acceptance: the links outlive the process that made them; uninstall removes all of it.
func TestLinksOutliveLoaderAndUninstallRemovesThem(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	pinDir := nstest.PinDir(t)
	t.Cleanup(func() { loader.Uninstall(pinDir) })

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), childEnv+"="+strings.Join([]string{pinDir, p.a.Path, "v0"}, " "))
	if out, err := child.CombinedOutput(); err != nil {
		t.Fatalf("child loader: %v\n%s", err, out)
	}
	tx := p.udpFlow(t)
	const n = 500
	send(t, tx, n)
	if got := delivered(t, pinDir); got != n {
		t.Fatalf("after the loader exited: counted %d packets, sent %d", got, n)
	}
	ifindex := p.aLink.Attrs().Index
	if progs := attachedPrograms(t, p.a, ifindex, ebpf.AttachTCXEgress); len(progs) != 1 {
		t.Fatalf("%d programs on v0 egress, want 1", len(progs))
	}

	for i := 0; i < 2; i++ { // twice: uninstall is idempotent
		if err := loader.Uninstall(pinDir); err != nil {
			t.Fatalf("uninstall #%d: %v", i+1, err)
		}
	}
	if progs := attachedPrograms(t, p.a, ifindex, ebpf.AttachTCXEgress); len(progs) != 0 {
		t.Fatalf("%d programs still on v0 egress after uninstall", len(progs))
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir %s still there after uninstall (err %v)", pinDir, err)
	}
}

// Acceptance: replacing the program under a steady stream loses and skips no packet.
func TestReplaceUnderLoadLosesNothing(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	pinDir := nstest.PinDir(t)
	t.Cleanup(func() { loader.Uninstall(pinDir) })
	first := loadAndAttach(t, pinDir, p.a, "v0")
	firstInfo, _ := first.ToPod.Info()
	firstID, _ := firstInfo.ID()
	tx := p.udpFlow(t)

	// The stream runs until the program was replaced a few times, however long a load takes.
	const minPackets, minReplacements = 20000, 3
	var (
		stop atomic.Bool
		sent atomic.Int64
	)
	errc := make(chan error, 1)
	go func() {
		payload := make([]byte, 64)
		for i := 0; !stop.Load() || i < minPackets; i++ {
			if _, err := tx.Write(payload); err != nil {
				errc <- fmt.Errorf("send packet %d: %w", i, err)
				return
			}
			sent.Add(1)
		}
		errc <- nil
	}()
	replacements := 0
	for ; replacements < minReplacements; replacements++ {
		loadAndAttach(t, pinDir, p.a, "v0")
	}
	stop.Store(true)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	n := uint64(sent.Load())
	progs := attachedPrograms(t, p.a, p.aLink.Attrs().Index, ebpf.AttachTCXEgress)
	if len(progs) != 1 || progs[0].ID == firstID {
		t.Fatalf("after %d replacements v0 runs %v, want one program other than %d", replacements, progs, firstID)
	}
	if got := delivered(t, pinDir); got != n {
		t.Fatalf("counted %d of %d packets across %d replacements", got, n, replacements)
	}
	t.Logf("%d packets, %d in-place replacements, none lost", n, replacements)
}

// Acceptance: a pinned map of another layout is refused by name and left as it was.
func TestIncompatiblePinIsRefusedAndKept(t *testing.T) {
	t.Parallel()
	pinDir := nstest.PinDir(t)
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "metrics", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	path := maps.PinPath(pinDir, maps.MetricsName)
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	oldInfo, _ := old.Info()
	oldID, _ := oldInfo.ID()

	_, err = loader.Load(loader.Config{PinDir: pinDir})
	if err == nil {
		t.Fatal("load over an incompatible pin succeeded")
	}
	for _, want := range []string{path, "different layout", "value size 8, want 16"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	still, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatalf("old pin gone: %v", err)
	}
	defer still.Close()
	info, _ := still.Info()
	if id, _ := info.ID(); id != oldID {
		t.Fatalf("pin now holds map %d, want the old %d", id, oldID)
	}
}

func TestAttachNamesMissingInterface(t *testing.T) {
	t.Parallel()
	ns := nstest.New(t, "ldr-x")
	pinDir := nstest.PinDir(t)
	t.Cleanup(func() { loader.Uninstall(pinDir) })
	dp, err := loader.Load(loader.Config{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	var attachErr error
	ns.Do(t, func() error {
		_, attachErr = dp.Attach("nosuch0", loader.HookFromPod)
		return nil
	})
	if attachErr == nil || !strings.Contains(attachErr.Error(), `"nosuch0"`) {
		t.Fatalf("error %v does not name the missing interface", attachErr)
	}
}

func TestPinDirMustBeOnBPFFS(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	dir := t.TempDir()
	_, err := loader.Load(loader.Config{PinDir: dir})
	if err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("load with pin dir on %s: %v", dir, err)
	}
}

// The config map holds nothing the agent does not write again: one of an older layout (the
// node_config before Services) is replaced at load, where maps holding state are refused.
func TestOlderConfigMapIsReplaced(t *testing.T) {
	t.Parallel()
	pinDir := nstest.PinDir(t)
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loader.Uninstall(pinDir) })
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "config", Type: ebpf.Array, KeySize: 4, ValueSize: 28, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	path := maps.PinPath(pinDir, maps.ConfigName)
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	d, err := loader.Load(loader.Config{PinDir: pinDir})
	if err != nil {
		t.Fatalf("load over an older config map: %v", err)
	}
	defer d.Close()
	pinned, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if info, _ := pinned.Info(); info.ValueSize == 28 {
		t.Fatalf("the config pin still holds the old layout")
	}
}
