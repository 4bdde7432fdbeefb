package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/netlinksafe"
)

// Hook names a place where a datapath program runs.
type Hook string

// The hooks ebpfnet attaches to.
const (
	HookFromPod   Hook = "from-pod"  // tc ingress of a pod's host-side veth (a tc filter, see tc.go)
	HookToPod     Hook = "to-pod"    // tc egress of a pod's host-side veth (a tc filter)
	HookPrefilter Hook = "prefilter" // XDP on the underlay device
	// HookFromOverlay is tc ingress of the VXLAN device.
	HookFromOverlay Hook = "from-overlay"
	// HookFromUnderlay is tc ingress of the underlay device.
	HookFromUnderlay Hook = "from-underlay"
	// HookFromHost is tc egress of the host device, where the node's routes to remote pods
	// and Services lead.
	HookFromHost Hook = "from-host"
)

// Hooks lists every hook.
var Hooks = []Hook{HookFromPod, HookToPod, HookPrefilter, HookFromOverlay, HookFromUnderlay, HookFromHost}

func (d *Datapath) program(h Hook) (*ebpf.Program, ebpf.AttachType, error) {
	switch h {
	case HookFromPod:
		return d.FromPod, ebpf.AttachTCXIngress, nil
	case HookToPod:
		return d.ToPod, ebpf.AttachTCXEgress, nil
	case HookPrefilter:
		return d.XdpPrefilter, ebpf.AttachXDP, nil
	case HookFromOverlay:
		return d.FromOverlay, ebpf.AttachTCXIngress, nil
	case HookFromUnderlay:
		return d.FromUnderlay, ebpf.AttachTCXIngress, nil
	case HookFromHost:
		return d.FromHost, ebpf.AttachTCXEgress, nil
	}
	return nil, 0, fmt.Errorf("unknown hook %q", h)
}

// LinksDir is where links are pinned under pinDir.
func LinksDir(pinDir string) string { return filepath.Join(pinDir, "links") }

// LinkPinPath is where the link of hook on ifname is pinned: "<hook>@<ifname>", with any dot
// in the name turned into '_' because bpffs refuses names with dots.
func LinkPinPath(pinDir, ifname string, h Hook) string {
	return filepath.Join(LinksDir(pinDir), string(h)+"@"+strings.ReplaceAll(ifname, ".", "_"))
}

// Attach attaches hook's program to ifname in the calling thread's network namespace and pins
// the link; a pod hook becomes a tc filter (AttachPod). When a pinned link exists, or the
// filter, it is updated in place, so no packet passes unprocessed. For XDP it reports the mode
// it got ("native" or "generic").
func (d *Datapath) Attach(ifname string, h Hook) (string, error) {
	if d.PinDir == "" {
		return "", errors.New("attach needs a pinned datapath")
	}
	prog, at, err := d.program(h)
	if err != nil {
		return "", err
	}
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return "", fmt.Errorf("interface %q: %w", ifname, err)
	}
	if podHook(h) {
		return "", d.attachPod(nlHandle(nil), ifname, iface.Index, []Hook{h})
	}
	path := LinkPinPath(d.PinDir, ifname, h)
	if mode, done, err := d.updatePinned(path, prog, iface.Index); done || err != nil {
		return mode, err
	}
	var (
		l    link.Link
		mode string
	)
	if at == ebpf.AttachXDP {
		l, mode, err = attachXDP(prog, iface.Index)
	} else {
		l, err = link.AttachTCX(link.TCXOptions{Interface: iface.Index, Program: prog, Attach: at})
	}
	if err != nil {
		return "", fmt.Errorf("attach %s to %s: %w", h, ifname, err)
	}
	defer l.Close()
	if err := os.MkdirAll(LinksDir(d.PinDir), 0o700); err != nil {
		return "", fmt.Errorf("make links dir: %w", err)
	}
	if err := l.Pin(path); err != nil {
		return "", fmt.Errorf("pin link %s: %w", path, err)
	}
	return mode, nil
}

// updatePinned swaps prog into the link pinned at path if that link still targets ifindex.
// A pinned link whose interface is gone (or was recreated) is removed so a fresh one is made.
func (d *Datapath) updatePinned(path string, prog *ebpf.Program, ifindex int) (string, bool, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("open pinned link %s: %w", path, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err == nil && linkIfindex(info) == ifindex {
		if progInfo, perr := prog.Info(); perr == nil {
			if id, ok := progInfo.ID(); ok && id == info.Program {
				return xdpMode(info, ifindex), true, nil // already running this program
			}
		}
		if err := l.Update(prog); err != nil {
			return "", true, fmt.Errorf("replace program in link %s: %w", path, err)
		}
		return xdpMode(info, ifindex), true, nil
	}
	if err := l.Unpin(); err != nil {
		return "", false, fmt.Errorf("remove stale link %s: %w", path, err)
	}
	return "", false, nil
}

func linkIfindex(info *link.Info) int {
	if tcx := info.TCX(); tcx != nil {
		return int(tcx.Ifindex)
	}
	if xdp := info.XDP(); xdp != nil {
		return int(xdp.Ifindex)
	}
	return -1
}

// xdpMode asks the kernel which XDP mode the interface runs, for links attached earlier.
func xdpMode(info *link.Info, ifindex int) string {
	if info.XDP() == nil {
		return ""
	}
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil || l.Attrs().Xdp == nil {
		return "unknown"
	}
	switch l.Attrs().Xdp.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return "native"
	case nl.XDP_ATTACHED_SKB:
		return "generic"
	}
	return "unknown"
}

// attachXDP prefers native mode and falls back to generic where the driver has none.
func attachXDP(prog *ebpf.Program, ifindex int) (link.Link, string, error) {
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err == nil {
		return l, "native", nil
	}
	l, gerr := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPGenericMode})
	if gerr != nil {
		return nil, "", fmt.Errorf("native: %w; generic: %w", err, gerr)
	}
	return l, "generic", nil
}

// CheckAttached fails, naming what is wrong, unless hook runs this datapath's program on ifname
// (in the calling thread's network namespace): through a link that is pinned and targets the
// interface now called ifname (someone may have removed the pin, or deleted and made the device
// again), or for a pod hook, through the datapath's tc filter or a pinned link of an older
// version.
func (d *Datapath) CheckAttached(ifname string, h Hook) error {
	prog, _, err := d.program(h)
	if err != nil {
		return err
	}
	path := LinkPinPath(d.PinDir, ifname, h)
	l, err := link.LoadPinnedLink(path, nil)
	if podHook(h) && errors.Is(err, os.ErrNotExist) {
		return d.checkFilter(ifname, h, prog)
	}
	if err != nil {
		return fmt.Errorf("%s on %s is detached: %w", h, ifname, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("%s on %s: link info: %w", h, ifname, err)
	}
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", h, ifname, err)
	}
	if got := linkIfindex(info); got != iface.Index {
		if podHook(h) { // a stale pin of an older version's: the device may have a filter now
			return d.checkFilter(ifname, h, prog)
		}
		return fmt.Errorf("%s on %s is detached: its link targets ifindex %d, the device is %d", h, ifname, got, iface.Index)
	}
	pinfo, err := prog.Info()
	if err != nil {
		return fmt.Errorf("%s: program info: %w", h, err)
	}
	if id, ok := pinfo.ID(); ok && id != info.Program {
		return fmt.Errorf("%s on %s runs program %d, not this datapath's %d", h, ifname, info.Program, id)
	}
	return nil
}

// checkFilter is CheckAttached of a pod hook that has no pinned link: its tc filter.
func (d *Datapath) checkFilter(ifname string, h Hook, prog *ebpf.Program) error {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("%s on %s is detached: %w", h, ifname, err)
	}
	return checkFilter(nlHandle(nil), d.PinDir, ifname, iface.Index, h, prog)
}

// Detach removes the link of hook on ifname, and for a pod hook its tc filter (in the calling
// thread's network namespace); a missing link or filter is not an error.
func Detach(pinDir, ifname string, h Hook) error {
	err := removeLink(LinkPinPath(pinDir, ifname, h))
	if !podHook(h) {
		return err
	}
	nl := nlHandle(nil)
	l, lerr := nl.LinkByName(ifname)
	if lerr != nil {
		return err // the device is gone and its filters with it
	}
	return errors.Join(err, delFilter(nl, pinDir, l.Attrs().Index, h))
}

func removeLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", path, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link %s: %w", path, err)
	}
	return nil
}

// Upgrade points every pinned link, and every tc filter of the datapath's in the calling
// thread's network namespace, at this datapath's programs: the in-place replacement that an
// agent upgrade does. Then the maps Load migrated take their pins (after a last pass for
// entries the old programs added meanwhile). If a link or filter cannot be switched, those
// already switched get their old programs back and the migrations are dropped: nothing changed.
func (d *Datapath) Upgrade() (n int, err error) {
	// Links and filters switched so far, with the programs they ran: put back if a later one
	// fails, so that no program is left on a map whose migration is dropped.
	type switched struct {
		l   link.Link
		old *ebpf.Program
	}
	type switchedFilter struct {
		f   *netlink.BpfFilter // as it was
		old *ebpf.Program
	}
	var (
		done    []switched
		filters []switchedFilter
		nl      = nlHandle(nil)
	)
	defer func() {
		for _, s := range filters {
			if err != nil && s.old != nil {
				back := *s.f
				back.Fd = s.old.FD()
				if rerr := nl.FilterReplace(&back); rerr != nil && !errors.Is(rerr, unix.ENODEV) {
					err = errors.Join(err, fmt.Errorf("put the old program back on tc filter %s of ifindex %d: %w",
						s.f.Name, s.f.LinkIndex, rerr))
				}
			}
			if s.old != nil {
				s.old.Close()
			}
		}
		for _, s := range done {
			if err != nil && s.old != nil {
				if rerr := s.l.Update(s.old); rerr != nil {
					err = errors.Join(err, fmt.Errorf("put the old program back: %w", rerr))
				}
			}
			if s.old != nil {
				s.old.Close()
			}
			s.l.Close()
		}
		if err != nil {
			discard(d.migrations)
		} else {
			err = commit(d.migrations)
		}
		d.migrations = nil
	}()
	atts, err := tcAttachments(nl, d.PinDir)
	if err != nil {
		return 0, err
	}
	for _, a := range atts {
		prog, _, err := d.program(a.hook)
		if err != nil {
			return n, err
		}
		// Held open: once switched, the filter no longer keeps the old program alive.
		old, _ := ebpf.NewProgramFromID(ebpf.ProgramID(a.filter.Id))
		err = nl.FilterReplace(d.filter(a.hook, a.ifindex, prog))
		if errors.Is(err, unix.ENODEV) {
			if old != nil {
				old.Close()
			}
			continue // the device went meanwhile, and the filter with it
		}
		if err != nil {
			if old != nil {
				old.Close()
			}
			return n, fmt.Errorf("replace program in tc filter %s of ifindex %d: %w", a.filter.Name, a.ifindex, err)
		}
		filters = append(filters, switchedFilter{a.filter, old})
		n++
	}
	entries, err := os.ReadDir(LinksDir(d.PinDir))
	if errors.Is(err, os.ErrNotExist) {
		return n, nil
	}
	if err != nil {
		return n, fmt.Errorf("list pinned links: %w", err)
	}
	for _, e := range entries {
		hook, _, ok := strings.Cut(e.Name(), "@")
		if !ok {
			continue
		}
		prog, _, err := d.program(Hook(hook))
		if err != nil {
			continue
		}
		path := filepath.Join(LinksDir(d.PinDir), e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return n, fmt.Errorf("open pinned link %s: %w", path, err)
		}
		var old *ebpf.Program
		if info, err := l.Info(); err == nil {
			old, _ = ebpf.NewProgramFromID(info.Program)
		}
		err = l.Update(prog)
		if errors.Is(err, unix.ENOLINK) {
			// The interface went away (a pod deleted while no agent ran): the pin is stale.
			err = l.Unpin()
			l.Close()
			if old != nil {
				old.Close()
			}
			if err != nil {
				return n, fmt.Errorf("remove severed link %s: %w", path, err)
			}
			continue
		}
		if err != nil {
			l.Close()
			if old != nil {
				old.Close()
			}
			return n, fmt.Errorf("replace program in link %s: %w", path, err)
		}
		done = append(done, switched{l, old})
		n++
	}
	return n, nil
}

// Attachment is one pinned link or tc filter as `ebpfnet datapath status` shows it.
type Attachment struct {
	Hook      Hook   `json:"hook"`
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	// Type is how the program is attached: "tcx" or "xdp" (a pinned link), or "tc" (a filter).
	Type      string `json:"type"`
	ProgramID uint32 `json:"programID"`
	// LinkID and Pin are a link's; a tc filter has neither.
	LinkID uint32 `json:"linkID,omitempty"`
	Pin    string `json:"pin,omitempty"`
	// Filter is a tc filter's name.
	Filter string `json:"filter,omitempty"`
}

// Attachments lists the pinned links under pinDir, then the datapath's tc filters in the
// calling thread's network namespace.
func Attachments(pinDir string) ([]Attachment, error) {
	entries, err := os.ReadDir(LinksDir(pinDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list pinned links: %w", err)
	}
	var out []Attachment
	for _, e := range entries {
		hook, ifname, ok := strings.Cut(e.Name(), "@")
		if !ok {
			continue
		}
		path := filepath.Join(LinksDir(pinDir), e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return nil, fmt.Errorf("open pinned link %s: %w", path, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("read pinned link %s: %w", path, err)
		}
		typ := "tcx"
		if info.XDP() != nil {
			typ = "xdp"
		}
		out = append(out, Attachment{Hook: Hook(hook), Interface: ifname, Ifindex: linkIfindex(info), Type: typ,
			ProgramID: uint32(info.Program), LinkID: uint32(info.ID), Pin: path})
	}
	nl := nlHandle(nil)
	atts, err := tcAttachments(nl, pinDir)
	if err != nil || len(atts) == 0 {
		return out, err
	}
	links, err := netlinksafe.NewHandle(nl).LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	for _, a := range atts {
		out = append(out, Attachment{Hook: a.hook, Interface: names[a.ifindex], Ifindex: a.ifindex, Type: "tc",
			ProgramID: uint32(a.filter.Id), Filter: a.filter.Name})
	}
	return out, nil
}
