package fuzz

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/namespace"
	"github.com/ebpfnet/ebpfnet/testkit/model"
)

// Harness is the loaded datapath and a network namespace of its own whose underlay routes
// are fuzz's kernelRoutes, so that bpf_fib_lookup answers what the model expects. The
// namespace has no name: it goes when the process does, even one that is killed.
type Harness struct {
	dp       *loader.Datapath
	ns       netns.NsHandle
	underlay uint32             // the underlay device's ifindex in ns
	world    *World             // what the maps hold now
	counts   map[counter]uint64 // packets per metrics key, as last read
	buf      []byte
}

// NewHarness loads the datapath (once per process is enough: loading costs seconds of
// verifier time) and makes its namespace.
func NewHarness() (*Harness, error) {
	dp, err := loader.Load(loader.Config{Unpinned: true, Sizes: maps.Sizes{Conntrack: 1 << 16, NAT: 1 << 14, Affinity: 1 << 10}})
	if err != nil {
		return nil, err
	}
	h := &Harness{dp: dp, counts: map[counter]uint64{}, buf: make([]byte, maxFrame+512)}
	if err := h.makeNamespace(); err != nil {
		dp.Close()
		return nil, err
	}
	if err := h.readCounts(); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// Close releases the datapath and the namespace.
func (h *Harness) Close() error {
	return errors.Join(h.dp.Close(), h.ns.Close())
}

// makeNamespace makes the namespace: an underlay veth with the node's IPv4 and IPv6
// addresses, forwarding on (bpf_fib_lookup wants it), the kernel routes of kernelRoutes and
// kernelRoutes6 and the neighbours the worlds know.
func (h *Harness) makeNamespace() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	h.ns, err = netns.New()
	if err != nil {
		if netns.Set(orig) != nil {
			runtime.LockOSThread() // a thread stranded elsewhere is retired with its lock
		}
		return fmt.Errorf("make network namespace: %w", err)
	}
	err = setupUnderlay()
	if serr := netns.Set(orig); serr != nil {
		runtime.LockOSThread()
		return fmt.Errorf("leave the fuzz namespace: %w", serr)
	}
	if err != nil {
		h.ns.Close()
		return err
	}
	return h.Do(func() error {
		l, err := netlink.LinkByName("underlay")
		if err == nil {
			h.underlay = uint32(l.Attrs().Index)
		}
		return err
	})
}

// setupUnderlay runs inside the new namespace.
func setupUnderlay() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "underlay", HardwareAddr: underlayMAC, MTU: underlayMTU}, PeerName: "gateway"}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add the underlay veth: %w", err)
	}
	for _, kv := range [][2]string{{"ipv6/conf/gateway/disable_ipv6", "1"}, {"ipv6/conf/underlay/disable_ipv6", "0"},
		{"ipv6/conf/underlay/accept_ra", "0"}, {"ipv4/conf/underlay/forwarding", "1"}, {"ipv6/conf/underlay/forwarding", "1"}} {
		if err := writeSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	ul, err := netlink.LinkByName("underlay")
	if err != nil {
		return err
	}
	gw, err := netlink.LinkByName("gateway")
	if err != nil {
		return err
	}
	for _, l := range []netlink.Link{lo, gw, ul} {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("bring up %s: %w", l.Attrs().Name, err)
		}
	}
	for _, p := range []netip.Prefix{underlayPrefix, underlayPrefix6} {
		// No duplicate address detection: the IPv6 address is usable at once.
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
			Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(ul, addr); err != nil {
			return fmt.Errorf("address the underlay: %w", err)
		}
	}
	for ip, mac := range neighbours() {
		family := netlink.FAMILY_V4
		if ip.Is6() {
			family = netlink.FAMILY_V6
		}
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: family,
			State: netlink.NUD_PERMANENT, IP: ip.AsSlice(), HardwareAddr: mac}); err != nil {
			return fmt.Errorf("add neighbour %s: %w", ip, err)
		}
	}
	for _, r := range append(append([]model.FIBRoute(nil), kernelRoutes...), kernelRoutes6...) {
		rt := &netlink.Route{Dst: prefixNet(r.Prefix)}
		if r.Type == model.FIBUnreachable {
			rt.Type = unix.RTN_UNREACHABLE
		} else {
			rt.LinkIndex, rt.Gw = ul.Attrs().Index, r.Via.AsSlice()
		}
		if err := netlink.RouteAdd(rt); err != nil {
			return fmt.Errorf("add route %s: %w", r.Prefix, err)
		}
	}
	return nil
}

// prefixNet is p as a net.IPNet.
func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// writeSysctl writes a net sysctl of the calling thread's namespace.
func writeSysctl(key, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys/net", key), []byte(value), 0o644)
}

// Do runs fn with its thread in the harness's namespace: programs run there see its routes.
func (h *Harness) Do(fn func() error) error { return namespace.DoHandle(h.ns, fn) }

// Install makes the maps hold w (and nothing of the world before) and clears conntrack.
func (h *Harness) Install(w World) error {
	if h.world != nil {
		if err := h.uninstall(*h.world); err != nil {
			return err
		}
	}
	h.world = nil
	cfg := w.Node
	cfg.UnderlayIfindex = h.underlay
	if err := h.dp.SetNodeConfig(cfg); err != nil {
		return err
	}
	for _, ep := range w.Endpoints {
		if err := h.dp.Endpoints().Upsert(ep); err != nil {
			return err
		}
	}
	for _, r := range w.Routes {
		if err := h.dp.Routes().Upsert(r); err != nil {
			return err
		}
	}
	for _, e := range w.IPCache {
		if err := h.dp.IPCache().Upsert(e); err != nil {
			return err
		}
	}
	for _, e := range w.Policy {
		if err := h.dp.Policy().Put(e); err != nil {
			return err
		}
	}
	for _, b := range w.Backends {
		if err := h.dp.Services().UpsertBackend(b); err != nil {
			return err
		}
	}
	for _, f := range w.Frontends {
		if err := h.dp.Services().Upsert(f, 0); err != nil {
			return err
		}
	}
	for _, p := range w.NoMasquerade {
		if err := h.dp.NoMasquerade().Add(p); err != nil {
			return err
		}
	}
	h.world = &w
	return h.ClearConntrack()
}

func (h *Harness) uninstall(w World) error {
	for _, ep := range w.Endpoints {
		if err := h.dp.Endpoints().Delete(ep.IP); err != nil {
			return err
		}
	}
	for _, r := range w.Routes {
		if err := h.dp.Routes().Delete(r.Prefix); err != nil {
			return err
		}
	}
	for _, e := range w.IPCache {
		if err := h.dp.IPCache().Delete(e.Prefix); err != nil {
			return err
		}
	}
	for _, e := range w.Policy {
		if err := h.dp.Policy().Delete(e); err != nil {
			return err
		}
	}
	for _, f := range w.Frontends {
		if err := h.dp.Services().Delete(f.Addr, f.Protocol, len(f.Backends)); err != nil {
			return err
		}
	}
	for _, b := range w.Backends {
		if err := h.dp.Services().DeleteBackend(b.ID); err != nil {
			return err
		}
	}
	for _, p := range w.NoMasquerade {
		if err := h.dp.NoMasquerade().Delete(p); err != nil {
			return err
		}
	}
	return nil
}

// ClearConntrack deletes every flow, every fragmented datagram's first ports, every
// translation and every client's affinity.
func (h *Harness) ClearConntrack() error {
	for _, m := range []struct {
		m    *ebpf.Map
		what string
	}{{h.dp.DatapathMaps.Fragments, "fragments"}, {h.dp.DatapathMaps.Nat, "nat"}, {h.dp.DatapathMaps.Affinity, "affinity"}} {
		if err := clearMap(m.m, m.what); err != nil {
			return err
		}
	}
	return clearMap(h.dp.DatapathMaps.Conntrack, "conntrack")
}

// clearMap deletes every entry of a hash map (named what in errors).
func clearMap(m *ebpf.Map, what string) error {
	k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	var keys [][]byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, append([]byte(nil), k...))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list %s: %w", what, err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", what, err)
		}
	}
	return nil
}

// ErrRefused is a frame BPF_PROG_TEST_RUN will not run a program on.
var ErrRefused = errors.New("BPF_PROG_TEST_RUN refused the frame")

// Result is what the kernel did with a packet.
type Result struct {
	Verdict uint32
	Out     []byte // valid until the next Run
}

func (h *Harness) program(hook model.Hook) *ebpf.Program {
	switch hook {
	case model.ToPod:
		return h.dp.ToPod
	case model.FromOverlay:
		return h.dp.FromOverlay
	case model.FromUnderlay:
		return h.dp.FromUnderlay
	}
	return h.dp.FromPod
}

// Run runs hook's program on frame; call it inside Do.
func (h *Harness) Run(hook model.Hook, frame []byte) (Result, error) {
	opts := &ebpf.RunOptions{Data: frame, DataOut: h.buf}
	ret, err := h.program(hook).Run(opts)
	if errors.Is(err, unix.EINVAL) {
		return Result{}, ErrRefused
	}
	if err != nil {
		return Result{}, fmt.Errorf("BPF_PROG_TEST_RUN %s: %w", hook, err)
	}
	return Result{Verdict: ret, Out: opts.DataOut}, nil
}

// Counted reports whether the last run counted a packet under reason in dir; when it did
// not, it names the reason that was counted.
func (h *Harness) Counted(reason maps.Reason, dir maps.Direction) (maps.Reason, error) {
	c, err := h.dp.Metrics().Get(reason, dir)
	if err != nil {
		return 0, err
	}
	key := counter{reason, dir}
	if c.Packets == h.counts[key]+1 {
		h.counts[key] = c.Packets
		return reason, nil
	}
	before := h.counts
	h.counts = map[counter]uint64{}
	if err := h.readCounts(); err != nil {
		return 0, err
	}
	for k, n := range h.counts {
		if k.dir == dir && k.reason != maps.ReasonEventLost && n != before[k] {
			return k.reason, nil
		}
	}
	return 0, fmt.Errorf("no counter moved in %s", maps.DirectionName(dir))
}

// counter is a metrics map key.
type counter struct {
	reason maps.Reason
	dir    maps.Direction
}

func (h *Harness) readCounts() error {
	all, err := h.dp.Metrics().All()
	if err != nil {
		return err
	}
	for _, c := range all {
		h.counts[counter{c.Reason, c.Direction}] = c.Packets
	}
	return nil
}

// ctKey is the map key of a model key.
func ctKey(k model.CTKey) bpf.DatapathCtKey {
	return bpf.DatapathCtKey{Saddr: k.Src, Daddr: k.Dst, Sport: htons(k.Sport), Dport: htons(k.Dport),
		Protocol: k.Proto, Family: k.Family}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Flow reads the conntrack entry of k, or nil.
func (h *Harness) Flow(k model.CTKey) (*model.CTEntry, error) {
	key := ctKey(k)
	var v bpf.DatapathCtEntry
	if err := h.dp.DatapathMaps.Conntrack.Lookup(&key, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, err
	}
	return &model.CTEntry{Flags: v.Flags, Packets: v.Packets, Bytes: v.Bytes, ReplyPackets: v.ReplyPackets, ReplyBytes: v.ReplyBytes}, nil
}

// Flows is the number of entries in conntrack.
func (h *Harness) Flows() (int, error) { return count(h.dp.DatapathMaps.Conntrack) }

// Translations is the number of entries in the nat map.
func (h *Harness) Translations() (int, error) { return count(h.dp.DatapathMaps.Nat) }

// count is the number of entries of a hash map.
func count(m *ebpf.Map) (int, error) {
	k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}
