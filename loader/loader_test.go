package loader_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
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

// Acceptance: to_pod on a veth counts exactly the packets sent into a pinned per-CPU map.
func TestToPodCountsEveryPacket(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	pinDir := nstest.PinDir(t)
	uninstallAtCleanup(t, pinDir)
	loadAndAttach(t, pinDir, p.a, "v0")
	tx := p.udpFlow(t)

	const n = 1000
	send(t, tx, n)
	if got := delivered(t, pinDir); got != n {
		t.Fatalf("counted %d packets, sent %d", got, n)
	}
}

// Acceptance: the hooks outlive the process that made them; uninstall removes all of it.
func TestHooksOutliveLoaderAndUninstallRemovesThem(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	pinDir := nstest.PinDir(t)
	uninstallAtCleanup(t, pinDir)

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
	oneFilter(t, p.a, ifindex, true, pinDir) // to-pod, a tc filter

	for i := 0; i < 2; i++ { // twice: uninstall is idempotent
		p.a.Do(t, func() error { return loader.Uninstall(pinDir) })
	}
	if fs := tcFilters(t, p.a, ifindex, true); len(fs) != 0 || hasClsact(t, p.a, ifindex) {
		t.Fatalf("after uninstall v0 has filters %+v, clsact %v", fs, hasClsact(t, p.a, ifindex))
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir %s still there after uninstall (err %v)", pinDir, err)
	}
}

// streamDuring sends 64-byte datagrams on tx from before do starts until do has returned and
// at least minPackets went, and says how many went.
func streamDuring(t *testing.T, tx *net.UDPConn, minPackets int, do func()) uint64 {
	t.Helper()
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
	func() {
		defer stop.Store(true) // a do that fails the test stops the stream too
		do()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return uint64(sent.Load())
}

// Acceptance: replacing the program under a steady stream loses and skips no packet.
func TestReplaceUnderLoadLosesNothing(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	pinDir := nstest.PinDir(t)
	uninstallAtCleanup(t, pinDir)
	first := loadAndAttach(t, pinDir, p.a, "v0")
	firstInfo, _ := first.ToPod.Info()
	firstID, _ := firstInfo.ID()
	tx := p.udpFlow(t)

	// The stream runs until the program was replaced a few times, however long a load takes.
	const minReplacements = 3
	replacements := 0
	n := streamDuring(t, tx, 20000, func() {
		for ; replacements < minReplacements; replacements++ {
			loadAndAttach(t, pinDir, p.a, "v0")
		}
	})
	if f := oneFilter(t, p.a, p.aLink.Attrs().Index, true, pinDir); ebpf.ProgramID(f.Id) == firstID {
		t.Fatalf("after %d replacements v0 runs %d, want a program other than %d", replacements, f.Id, firstID)
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
	// An endpoints map of a layout no upgrade knows.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "endpoints", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	path := maps.PinPath(pinDir, maps.EndpointsName)
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	oldInfo, _ := old.Info()
	oldID, _ := oldInfo.ID()

	_, err = loader.Load(loader.Config{PinDir: pinDir})
	if err == nil {
		t.Fatal("load over an incompatible pin succeeded")
	}
	for _, want := range []string{path, "no known upgrade", "key 4, value 8 bytes"} {
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

// A conntrack map of the first layout (no created field) is carried into the current one:
// every entry converted, the new map pinned only after Upgrade, and an entry the old map got
// between Load and Upgrade carried too.
func TestConntrackOfAnOlderLayoutIsMigrated(t *testing.T) {
	t.Parallel()
	pinDir := nstest.PinDir(t)
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	uninstallAtCleanup(t, pinDir)
	const size = 1024
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "conntrack", Type: ebpf.LRUHash, KeySize: 40, ValueSize: 32, MaxEntries: size})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	path := maps.PinPath(pinDir, maps.ConntrackName)
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	entry := func(i int) (k [40]byte, v [32]byte) {
		k[0], k[1], k[36], k[37] = 10, byte(i), 6, 2 // saddr 10.i..., protocol, family
		binary.LittleEndian.PutUint64(v[0:], uint64(1000+i))
		binary.LittleEndian.PutUint64(v[8:], uint64(i))
		binary.LittleEndian.PutUint64(v[16:], uint64(100*i))
		binary.LittleEndian.PutUint32(v[24:], 1)
		return
	}
	for i := range 200 {
		k, v := entry(i)
		if err := old.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	d, err := loader.Load(loader.Config{PinDir: pinDir, Sizes: maps.Sizes{Conntrack: size}})
	if err != nil {
		t.Fatalf("load over an older conntrack: %v", err)
	}
	defer d.Close()
	if d.Migrating() != maps.ConntrackName {
		t.Fatalf("migrating %q, want conntrack", d.Migrating())
	}
	if info, _ := loadPinnedInfo(t, path); info.ValueSize != 32 {
		t.Fatal("the pin changed before Upgrade switched the programs")
	}
	k, v := entry(200) // the old programs still run: a flow they add now must not be lost
	if err := old.Put(k, v); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Upgrade(); err != nil {
		t.Fatal(err)
	}
	info, pinned := loadPinnedInfo(t, path)
	if info.ValueSize != 56 {
		t.Fatalf("after Upgrade the pin holds value size %d, want 56", info.ValueSize)
	}
	for i := range 201 {
		k, v := entry(i)
		var got [56]byte
		if err := pinned.Lookup(k, &got); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if !bytes.Equal(got[:32], v[:]) || !bytes.Equal(got[32:], make([]byte, 24)) {
			t.Fatalf("entry %d carried as %x, want %x, a zero created and zero reply counts", i, got, v)
		}
	}
	flows, err := d.Conntrack().List()
	if err != nil || len(flows) != 201 || flows[0].Age != -1 {
		t.Fatalf("conntrack through the new datapath: %d flows, %v", len(flows), err)
	}
}

// An upgrade whose last link cannot take the new program puts the old programs back on what
// it switched before (a pod's tc filter, a pod's pinned tcx link of an older version) and drops
// the migrations: the old datapath keeps forwarding on its own maps, the old pins untouched,
// and the error names the link that failed.
func TestUpgradeRollsBackWhenALinkSwitchFails(t *testing.T) {
	t.Parallel()
	p := newPair(t)
	pinDir := nstest.PinDir(t)
	uninstallAtCleanup(t, pinDir)
	old, err := loader.Load(loader.Config{PinDir: pinDir, Sizes: maps.Sizes{Routes: 64}})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	p.a.Do(t, func() error {
		_, err := old.Attach("v0", loader.HookToPod)
		return err
	})
	// A pod of an older version: from-pod as a pinned tcx link on v0.
	var tcx link.Link
	p.a.Do(t, func() (err error) {
		tcx, err = link.AttachTCX(link.TCXOptions{Interface: p.aLink.Attrs().Index, Program: old.FromPod, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err := os.MkdirAll(loader.LinksDir(pinDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := tcx.Pin(loader.LinkPinPath(pinDir, "v0", loader.HookFromPod)); err != nil {
		t.Fatal(err)
	}
	tcx.Close()
	// A link the new to-pod program cannot go into: the old prefilter's XDP link, pinned under
	// a to-pod name that sorts after from-pod@v0, so v0's link is switched first (and filters
	// go before links).
	p.b.Do(t, func() error {
		_, err := old.Attach("v1", loader.HookPrefilter)
		return err
	})
	bad := filepath.Join(loader.LinksDir(pinDir), string(loader.HookToPod)+"@w1")
	if err := os.Rename(loader.LinkPinPath(pinDir, "v1", loader.HookPrefilter), bad); err != nil {
		t.Fatal(err)
	}
	running := func() ebpf.ProgramID { // v0's to-pod filter's
		return ebpf.ProgramID(oneFilter(t, p.a, p.aLink.Attrs().Index, true, pinDir).Id)
	}
	runningTCX := func() ebpf.ProgramID {
		progs := attachedPrograms(t, p.a, p.aLink.Attrs().Index, ebpf.AttachTCXIngress)
		if len(progs) != 1 {
			t.Fatalf("%d programs on v0 ingress, want 1", len(progs))
		}
		return progs[0].ID
	}
	before, beforeTCX := running(), runningTCX()
	routes, _ := loadPinnedInfo(t, maps.PinPath(pinDir, maps.RoutesName))
	routesID, _ := routes.ID()

	next, err := loader.Load(loader.Config{PinDir: pinDir, Sizes: maps.Sizes{Routes: 128}})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if next.Migrating() != maps.RoutesName {
		t.Fatalf("migrating %q, want routes", next.Migrating())
	}
	nextInfo, _ := next.ToPod.Info()
	nextID, _ := nextInfo.ID()
	var n int
	p.a.Do(t, func() error {
		n, err = next.Upgrade()
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("upgrade switched %d links, error %v: want it to fail naming %s", n, err, bad)
	}
	t.Logf("upgrade refused: %v", err)
	// The check can tell the programs apart: the new one is another program.
	if after := running(); after != before || after == nextID {
		t.Errorf("v0's filter runs program %d after the failed upgrade, want the old %d back (the new one is %d)", after, before, nextID)
	}
	if after := runningTCX(); after != beforeTCX || after == progID(t, next.FromPod) {
		t.Errorf("v0's pinned tcx link runs program %d after the failed upgrade, want the old %d back", after, beforeTCX)
	}
	info, _ := loadPinnedInfo(t, maps.PinPath(pinDir, maps.RoutesName))
	if id, _ := info.ID(); id != routesID || info.MaxEntries != 64 {
		t.Errorf("routes pin holds map %d of %d entries, want the old map %d of 64", id, info.MaxEntries, routesID)
	}
	tx := p.udpFlow(t)
	const packets = 100
	send(t, tx, packets)
	if got := delivered(t, pinDir); got != packets {
		t.Errorf("the old datapath delivered %d of %d packets after the failed upgrade", got, packets)
	}
}

// A map whose capacity changed is copied whole; one too small for its entries is refused and
// the old pin kept.
func TestResizedMapIsCopiedOrRefused(t *testing.T) {
	t.Parallel()
	pinDir := nstest.PinDir(t)
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	uninstallAtCleanup(t, pinDir)
	d, err := loader.Load(loader.Config{PinDir: pinDir, Sizes: maps.Sizes{Routes: 64}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		r := maps.Route{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			NodeIP: netip.AddrFrom4([4]byte{10, 250, 0, byte(i)}), Mode: maps.ModeNative}
		if err := d.Routes().Upsert(r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Upgrade(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := loader.Load(loader.Config{PinDir: pinDir, Sizes: maps.Sizes{Routes: 32}}); err == nil ||
		!strings.Contains(err.Error(), "too small") {
		t.Fatalf("shrinking routes below its 40 entries: %v", err)
	}
	d, err = loader.Load(loader.Config{PinDir: pinDir, Sizes: maps.Sizes{Routes: 256}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Upgrade(); err != nil {
		t.Fatal(err)
	}
	info, _ := loadPinnedInfo(t, maps.PinPath(pinDir, maps.RoutesName))
	rs, err := d.Routes().List()
	if info.MaxEntries != 256 || err != nil || len(rs) != 40 {
		t.Fatalf("routes after growing: max %d, %d entries, %v", info.MaxEntries, len(rs), err)
	}
}

func loadPinnedInfo(t *testing.T, path string) (*ebpf.MapInfo, *ebpf.Map) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info, m
}

func TestAttachNamesMissingInterface(t *testing.T) {
	t.Parallel()
	ns := nstest.New(t, "ldr-x")
	pinDir := nstest.PinDir(t)
	uninstallAtCleanup(t, pinDir)
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
	uninstallAtCleanup(t, pinDir)
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
	if _, err := d.Upgrade(); err != nil {
		t.Fatal(err)
	}
	pinned, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if info, _ := pinned.Info(); info.ValueSize == 28 {
		t.Fatalf("the config pin still holds the old layout")
	}
}

// uninstallAtCleanup removes the datapath pinned under pinDir when the test ends.
func uninstallAtCleanup(t *testing.T, pinDir string) {
	t.Cleanup(func() {
		if err := loader.Uninstall(pinDir); err != nil {
			t.Error(err)
		}
	})
}
