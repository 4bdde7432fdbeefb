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
)

// Hook names a place where a datapath program runs.
type Hook string

// The hooks ebpfnet attaches to.
const (
	HookFromPod   Hook = "from-pod"  // tc ingress of a pod's host-side veth
	HookToPod     Hook = "to-pod"    // tc egress of a pod's host-side veth
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
// the link. When a pinned link exists it is updated in place, so no packet passes unprocessed.
// For XDP it reports the mode it got ("native" or "generic").
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

// CheckAttached fails, naming what is wrong, unless hook's link on ifname (in the calling
// thread's network namespace) is pinned, targets the interface now called ifname and runs this
// datapath's program: someone may have removed the pin, or deleted and made the device again.
func (d *Datapath) CheckAttached(ifname string, h Hook) error {
	prog, _, err := d.program(h)
	if err != nil {
		return err
	}
	path := LinkPinPath(d.PinDir, ifname, h)
	l, err := link.LoadPinnedLink(path, nil)
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

// Detach removes the link of hook on ifname; a missing link is not an error.
func Detach(pinDir, ifname string, h Hook) error {
	return removeLink(LinkPinPath(pinDir, ifname, h))
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

// Upgrade points every pinned link at this datapath's programs: the in-place replacement
// that an agent upgrade does. Then the maps Load migrated take their pins (after a last pass
// for entries the old programs added meanwhile). If a link cannot be switched, those already
// switched get their old programs back and the migrations are dropped: nothing changed.
func (d *Datapath) Upgrade() (n int, err error) {
	// Links switched so far, with the programs they ran: put back if a later one fails, so that
	// no program is left on a map whose migration is dropped.
	type switched struct {
		l   link.Link
		old *ebpf.Program
	}
	var done []switched
	defer func() {
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
	entries, err := os.ReadDir(LinksDir(d.PinDir))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list pinned links: %w", err)
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

// Attachment is one pinned link as `ebpfnet datapath status` shows it.
type Attachment struct {
	Hook      Hook   `json:"hook"`
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	ProgramID uint32 `json:"programID"`
	LinkID    uint32 `json:"linkID"`
	Pin       string `json:"pin"`
}

// Attachments lists the pinned links under pinDir.
func Attachments(pinDir string) ([]Attachment, error) {
	entries, err := os.ReadDir(LinksDir(pinDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
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
		out = append(out, Attachment{Hook: Hook(hook), Interface: ifname, Ifindex: linkIfindex(info),
			ProgramID: uint32(info.Program), LinkID: uint32(info.ID), Pin: path})
	}
	return out, nil
}
