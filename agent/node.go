package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/podnet"
)

// VXLANDevice is the node's one collect-metadata VXLAN device (vxlan mode).
const VXLANDevice = "ebpfnet_vxlan"

// HostDevice is one end of a veth pair whose egress runs from_host: the node's routes to
// Services (and, over VXLAN and IP-in-IP, to other nodes' pods) lead there, and the datapath
// hands the node replies through its ingress. hostPeer, the other end, only keeps it up.
const (
	HostDevice = "ebpfnet_host"
	hostPeer   = "ebpfnet_net"
)

// setupNode makes (or adopts) the node's devices and hooks and writes the config map.
func (a *Agent) setupNode(underlay netlink.Link) error {
	cfg := maps.NodeConfig{NodeIP: a.node.IP, NodeIPv6: a.node.IPv6, UnderlayIfindex: uint32(underlay.Attrs().Index), Mode: a.cfg.mode,
		Masquerade: a.cfg.masquerade, NATPorts: a.cfg.natPorts}
	host, err := a.hostDevice(underlay.Attrs().MTU - a.overhead())
	if err != nil {
		return err
	}
	cfg.HostIfindex, cfg.HostMAC = uint32(host.Attrs().Index), host.Attrs().HardwareAddr
	if a.cfg.mode == maps.ModeVXLAN {
		idx, err := a.vxlanDevice(underlay.Attrs().MTU)
		if err != nil {
			return err
		}
		cfg.TunnelIfindex = uint32(idx)
		cfg.VXLANPort = uint16(a.cfg.VXLANPort)
	}
	a.nodeCfg = cfg
	if err := a.dp.SetNodeConfig(cfg); err != nil {
		return err
	}
	if err := a.attachNodeHook(a.cfg.UnderlayInterface, loader.HookFromUnderlay); err != nil {
		return err
	}
	// Nodes forward for their pods in native mode, and pods reach other nodes' addresses.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip_forward: %w", err)
	}
	// In a dual-stack or IPv6-only cluster, and over an IPv6 underlay, over IPv6 too: the
	// datapath's FIB lookups for translated IPv6 and for VXLAN over IPv6 leaving the node want
	// it, and pods' untranslated IPv6 to outside the cluster (a backend's reply to another
	// node's IPv6 node port, say) leaves through the node's stack.
	if a.cfg.hasIPv6() || a.cfg.underlayV6 {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable IPv6 forwarding: %w", err)
		}
	}
	return nil
}

func (a *Agent) vxlanDevice(mtu int) (int, error) {
	l, err := netlink.LinkByName(VXLANDevice)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, MTU: mtu}, FlowBased: true,
			Port: a.cfg.VXLANPort, Learning: false}
		if err := netlink.LinkAdd(v); err != nil {
			return 0, fmt.Errorf("add %s: %w", VXLANDevice, err)
		}
		if l, err = netlink.LinkByName(VXLANDevice); err != nil {
			return 0, err
		}
		if err := disableIPv6(VXLANDevice); err != nil {
			return 0, err
		}
	} else if err != nil {
		return 0, fmt.Errorf("look up %s: %w", VXLANDevice, err)
	} else if v, ok := l.(*netlink.Vxlan); !ok || !v.FlowBased || v.Port != a.cfg.VXLANPort {
		return 0, fmt.Errorf("%s exists but is not a collect-metadata VXLAN device on port %d; delete it", VXLANDevice, a.cfg.VXLANPort)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return 0, err
	}
	if err := a.attachNodeHook(VXLANDevice, loader.HookFromOverlay); err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}

// hostDevice makes (or adopts) the host device pair and attaches from_host to its egress.
func (a *Agent) hostDevice(mtu int) (netlink.Link, error) {
	l, err := netlink.LinkByName(HostDevice)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostDevice, MTU: mtu}, PeerName: hostPeer}
		if err := netlink.LinkAdd(v); err != nil {
			return nil, fmt.Errorf("add %s: %w", HostDevice, err)
		}
		for _, name := range []string{HostDevice, hostPeer} {
			if err := disableIPv6(name); err != nil {
				return nil, err
			}
		}
		if l, err = netlink.LinkByName(HostDevice); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("look up %s: %w", HostDevice, err)
	} else if _, ok := l.(*netlink.Veth); !ok {
		return nil, fmt.Errorf("%s exists but is not a veth; delete it", HostDevice)
	}
	if l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("set %s mtu: %w", HostDevice, err)
		}
	}
	// No neighbour resolution: what the node routes here is taken by from_host, whatever its MACs.
	if err := netlink.LinkSetARPOff(l); err != nil {
		return nil, fmt.Errorf("%s arp off: %w", HostDevice, err)
	}
	// IPv6 on when the node has an IPv6 address: it routes IPv6 cluster IPs and pods here,
	// and takes replies back through the device.
	if err := podnet.SetIPv6(HostDevice, a.node.IPv6.IsValid()); err != nil {
		return nil, err
	}
	for _, name := range []string{hostPeer, HostDevice} {
		if err := netlink.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			return nil, fmt.Errorf("set %s up: %w", name, err)
		}
	}
	if err := a.attachNodeHook(HostDevice, loader.HookFromHost); err != nil {
		return nil, err
	}
	return l, nil
}

// PodMTU is the MTU pods get: the underlay's minus the mode's encapsulation.
func (a *Agent) PodMTU() int {
	l, err := netlink.LinkByName(a.cfg.UnderlayInterface)
	mtu := 1500
	if err == nil {
		mtu = l.Attrs().MTU
	}
	return mtu - a.overhead()
}

// overhead is what the node's encapsulation adds to a pod's packet: more for VXLAN over IPv6.
func (a *Agent) overhead() int {
	if a.cfg.underlayV6 {
		return maps.VXLANOverheadIPv6
	}
	return a.cfg.mode.Overhead()
}

// disableIPv6 turns IPv6 off on a device the agent made, so that the kernel sends no IPv6 of
// its own (address detection, router solicitations) through it. A kernel without IPv6 has
// nothing to turn off.
func disableIPv6(dev string) error {
	err := os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", dev, "disable_ipv6"), []byte("1"), 0o644)
	if err != nil && !(errors.Is(err, fs.ErrNotExist) && noIPv6()) {
		return fmt.Errorf("disable IPv6 on %s: %w", dev, err)
	}
	return nil
}

// noIPv6 says the kernel has no IPv6 (booted with ipv6.disable=1, or built without it).
func noIPv6() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return errors.Is(err, fs.ErrNotExist)
}
