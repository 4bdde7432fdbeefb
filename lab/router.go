package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// BirdBinary is the BIRD 2 daemon the router runs (Debian's bird2).
var BirdBinary = "/usr/sbin/bird"

// router makes the lab's BGP router, if it has one: its namespace, forwarding with no reverse
// path filter, a bridge per rack with the router's leg in it, a leg on br0, and BIRD.
func (b *builder) router(ctx context.Context) error {
	r := b.st.Router
	if r == nil {
		return nil
	}
	for _, f := range []string{BirdBinary, BirdcBinary} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("lab needs %s: %w (install bird2: scripts/install-deps.sh)", f, err)
		}
	}
	if _, err := namespace.Create(filepath.Base(r.Netns)); err != nil {
		return err
	}
	err := namespace.Do(r.Netns, func() error {
		// IPv6 too: in a dual-stack lab it routes the nodes' IPv6 pod CIDRs between racks.
		for _, kv := range [][2]string{{"ipv4/ip_forward", "1"}, {"ipv4/conf/all/rp_filter", "0"}, {"ipv4/conf/default/rp_filter", "0"},
			{"ipv6/conf/all/forwarding", "1"}} {
			if err := os.WriteFile(filepath.Join("/proc/sys/net", kv[0]), []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s: %w", kv[0], err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, rk := range b.st.Racks {
		if err := b.rackBridge(rk); err != nil {
			return err
		}
	}
	for _, leg := range r.Legs {
		if err := b.routerLeg(leg); err != nil {
			return err
		}
	}
	return b.startBird(ctx)
}

// rackBridge makes a rack's switch in the underlay namespace. It has no address there: the
// underlay namespace does not forward, so the router is the racks' only way to each other.
func (b *builder) rackBridge(rk Rack) error {
	return inNetns(b.st.Underlay, func(h *netlink.Handle) error {
		br, err := addBridge(h, rk.Bridge)
		if err != nil {
			return err
		}
		return h.LinkSetUp(br)
	})
}

// routerLeg plugs the router into a segment: a veth from its namespace to the segment's bridge.
func (b *builder) routerLeg(leg RouterLeg) error {
	if err := b.plugPort(leg.Bridge, leg.BridgePort(), b.st.Router.Netns, leg.Interface); err != nil {
		return fmt.Errorf("add router leg %s: %w", leg.BridgePort(), err)
	}
	return inNetns(b.st.Router.Netns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(leg.Interface)
		if err != nil {
			return err
		}
		if err := disableIPv6(leg.Interface); err != nil {
			return err
		}
		rpFilter := filepath.Join("/proc/sys/net/ipv4/conf", leg.Interface, "rp_filter")
		if err := os.WriteFile(rpFilter, []byte("0"), 0o644); err != nil {
			return fmt.Errorf("sysctl rp_filter of %s: %w", leg.Interface, err)
		}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: prefixNet(leg.Address)}); err != nil {
			return fmt.Errorf("address %s: %w", leg.Interface, err)
		}
		if leg.AddressV6.IsValid() {
			if err := addIPv6(h, l, leg.AddressV6.Addr()); err != nil {
				return fmt.Errorf("%s: %w", leg.Interface, err)
			}
		}
		return h.LinkSetUp(l)
	})
}

// startBird writes bird.conf and runs BIRD in the foreground (so the lab tracks its pid), with
// its control socket under the lab's directory, and waits until birdc gets an answer.
func (b *builder) startBird(ctx context.Context) error {
	r := b.st.Router
	dir := filepath.Dir(r.Config)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := b.st.writeBirdConfig(ctx); err != nil {
		return err
	}
	logFile := filepath.Join(dir, "bird.log")
	pid, err := spawn(r.Netns, logFile, BirdBinary, "-f", "-c", r.Config, "-s", r.Socket, "-P", filepath.Join(dir, "bird.pid"))
	if err != nil {
		return err
	}
	r.PID = pid
	if err := b.st.save(); err != nil {
		return err
	}
	return waitFor(ctx, 10*time.Second, "BIRD to answer", func() (bool, string) {
		if _, err := b.st.Birdc(ctx, "show", "status"); err != nil {
			return false, err.Error() + " | " + logTail(logFile)
		}
		return true, ""
	})
}
