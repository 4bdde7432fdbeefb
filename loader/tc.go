package loader

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Pods' hooks are cls_bpf filters in direct-action mode on a clsact qdisc (legacy tc), not tcx
// links: attaching a tcx program waits for an RCU grace period with the RTNL lock held (10 to
// 15 ms each, two per pod, on the CNI ADD path), a tc filter does not. Our programs return only
// TC_ACT_OK, TC_ACT_SHOT and TC_ACT_REDIRECT, which both modes read alike. A filter has no pin:
// it lives as long as its device, and is found again by its handle, priority and name. Pods an
// older version attached keep their pinned tcx links, which Attach and Upgrade update in place.

// The handle and priority every filter of ours has: replacing the filter at them swaps its
// program atomically, so no packet goes unprocessed.
const (
	tcHandle   = 0xeb
	tcPriority = 1
)

// podHook says whether h runs on a pod's host-side veth, as a tc filter.
func podHook(h Hook) bool { return h == HookFromPod || h == HookToPod }

// PodHooks are the hooks on a pod's host-side veth.
var PodHooks = []Hook{HookFromPod, HookToPod}

// tcParent is where on the clsact qdisc a pod hook's filter goes.
func tcParent(h Hook) uint32 {
	if h == HookToPod {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

// FilterName is the name of hook's tc filter for the datapath pinned under pinDir:
// "ebpfnet:<hook>@<pinDir>", so `tc filter show` says whose it is and two datapaths in one
// network namespace (tests, labs) never list, switch or remove each other's. A pin dir too
// long for a filter name (255 bytes) is named by a hash of it.
func FilterName(pinDir string, h Hook) string {
	name := "ebpfnet:" + string(h) + "@" + filepath.Clean(pinDir)
	if len(name) > 255 {
		sum := sha256.Sum256([]byte(filepath.Clean(pinDir)))
		name = "ebpfnet:" + string(h) + "@sha256:" + hex.EncodeToString(sum[:16])
	}
	return name
}

// nlHandle is h, or for nil a handle in the calling thread's network namespace.
func nlHandle(h *netlink.Handle) *netlink.Handle {
	if h == nil {
		return &netlink.Handle{} // like netlink's package functions: a socket per request
	}
	return h
}

// AttachPod attaches from-pod and to-pod to a pod's host-side veth ifname (index ifindex) in
// the network namespace of nl (nil: the calling thread's): as tc filters, or, on a pod an
// older version attached with pinned tcx links, by updating those links. It looks nothing up
// by name, so the CNI ADD path pays for the attachment alone.
func (d *Datapath) AttachPod(nl *netlink.Handle, ifname string, ifindex int) error {
	return d.attachPod(nlHandle(nl), ifname, ifindex, PodHooks)
}

func (d *Datapath) attachPod(nl *netlink.Handle, ifname string, ifindex int, hooks []Hook) error {
	if d.PinDir == "" {
		return errors.New("attach needs a pinned datapath")
	}
	qdisc := false
	for _, h := range hooks {
		prog, _, err := d.program(h)
		if err != nil {
			return err
		}
		if _, done, err := d.updatePinned(LinkPinPath(d.PinDir, ifname, h), prog, ifindex); done || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		if !qdisc {
			if err := ensureClsact(nl, ifindex); err != nil {
				return fmt.Errorf("attach %s to %s: %w", h, ifname, err)
			}
			qdisc = true
		}
		if err := nl.FilterReplace(d.filter(h, ifindex, prog)); err != nil {
			return fmt.Errorf("attach %s to %s: tc filter: %w", h, ifname, err)
		}
	}
	return nil
}

// ensureClsact gives the device a clsact qdisc; one already there is kept as it is.
func ensureClsact(nl *netlink.Handle, ifindex int) error {
	if err := nl.QdiscReplace(clsact(ifindex)); err != nil {
		return fmt.Errorf("clsact qdisc: %w", err)
	}
	return nil
}

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
}

// filter is hook's tc filter running prog on ifindex.
func (d *Datapath) filter(h Hook, ifindex int, prog *ebpf.Program) *netlink.BpfFilter {
	return &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: tcParent(h),
		Handle: tcHandle, Priority: tcPriority, Protocol: unix.ETH_P_ALL},
		Fd: prog.FD(), Name: FilterName(d.PinDir, h), DirectAction: true}
}

// podFilter is the datapath's filter of hook on ifindex, or nil when there is none.
func podFilter(nl *netlink.Handle, pinDir string, ifindex int, h Hook) (*netlink.BpfFilter, error) {
	filters, err := retryDump(func() ([]netlink.Filter, error) {
		return nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, tcParent(h))
	})
	if errors.Is(err, unix.EINVAL) {
		return nil, nil // no clsact qdisc, so no filter
	}
	if err != nil {
		return nil, err
	}
	name := FilterName(pinDir, h)
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == name {
			return bf, nil
		}
	}
	return nil, nil
}

// tcAttachment is one of the datapath's tc filters.
type tcAttachment struct {
	hook    Hook
	ifindex int
	filter  *netlink.BpfFilter
	// others says whether the device's clsact qdisc holds filters besides ours.
	others bool
}

// tcAttachments finds the datapath's filters in nl's namespace: one dump of the qdiscs, then
// the filters of each device with a clsact qdisc. Devices that go meanwhile are skipped.
func tcAttachments(nl *netlink.Handle, pinDir string) ([]tcAttachment, error) {
	qdiscs, err := retryDump(func() ([]netlink.Qdisc, error) { return nl.QdiscList(nil) })
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	var out []tcAttachment
	for _, q := range qdiscs {
		if q.Type() != "clsact" {
			continue
		}
		ifindex := q.Attrs().LinkIndex
		var mine []tcAttachment
		others := false
		for _, h := range PodHooks {
			filters, err := retryDump(func() ([]netlink.Filter, error) {
				return nl.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, tcParent(h))
			})
			if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EINVAL) {
				break // the device is gone, or its qdisc
			}
			if err != nil {
				return nil, fmt.Errorf("list tc filters of ifindex %d: %w", ifindex, err)
			}
			for _, f := range filters {
				if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == FilterName(pinDir, h) {
					mine = append(mine, tcAttachment{hook: h, ifindex: ifindex, filter: bf})
				} else {
					others = true
				}
			}
		}
		for i := range mine {
			mine[i].others = others
		}
		out = append(out, mine...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ifindex < out[j].ifindex })
	return out, nil
}

// retryDump runs a netlink dump again when the kernel interrupted it (the list changed
// meanwhile), as netlinksafe does for the dumps it covers.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range 10 {
		if v, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// checkFilter fails, naming what is wrong, unless hook's filter on ifname is there and runs
// prog.
func checkFilter(nl *netlink.Handle, pinDir, ifname string, ifindex int, h Hook, prog *ebpf.Program) error {
	f, err := podFilter(nl, pinDir, ifindex, h)
	if err != nil {
		return fmt.Errorf("%s on %s: list tc filters: %w", h, ifname, err)
	}
	if f == nil {
		return fmt.Errorf("%s on %s is detached: no tc filter %s", h, ifname, FilterName(pinDir, h))
	}
	if !f.DirectAction {
		return fmt.Errorf("%s on %s: its tc filter is not in direct-action mode", h, ifname)
	}
	pinfo, err := prog.Info()
	if err != nil {
		return fmt.Errorf("%s: program info: %w", h, err)
	}
	if id, ok := pinfo.ID(); ok && uint32(id) != uint32(f.Id) {
		return fmt.Errorf("%s on %s runs program %d, not this datapath's %d", h, ifname, f.Id, id)
	}
	return nil
}

// DetachPod removes from-pod and to-pod from the pod veth ifname in nl's namespace (nil: the
// calling thread's): the pinned links an older version made, and the tc filters while the
// device is there. What is already gone is not an error.
func DetachPod(nl *netlink.Handle, pinDir, ifname string) error {
	nl = nlHandle(nl)
	var errs []error
	for _, h := range PodHooks {
		errs = append(errs, removeLink(LinkPinPath(pinDir, ifname, h)))
	}
	l, err := nl.LinkByName(ifname)
	if err != nil {
		return errors.Join(errs...) // the device is gone and its filters with it
	}
	for _, h := range PodHooks {
		errs = append(errs, delFilter(nl, pinDir, l.Attrs().Index, h))
	}
	return errors.Join(errs...)
}

// delFilter deletes hook's filter on ifindex, if it is the datapath's.
func delFilter(nl *netlink.Handle, pinDir string, ifindex int, h Hook) error {
	f, err := podFilter(nl, pinDir, ifindex, h)
	if errors.Is(err, unix.ENODEV) || (err == nil && f == nil) {
		return nil
	}
	if err == nil {
		err = nl.FilterDel(f)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete tc filter %s of ifindex %d: %w", FilterName(pinDir, h), ifindex, err)
	}
	return nil
}

// removeFilters deletes every tc filter of the datapath pinned under pinDir in the calling
// thread's namespace, and the clsact qdisc of each device where nothing else is left on it.
func removeFilters(pinDir string) error {
	nl := nlHandle(nil)
	atts, err := tcAttachments(nl, pinDir)
	if err != nil {
		return err
	}
	var errs []error
	keep := map[int]bool{} // devices whose clsact qdisc stays: something else is on it, or ours is
	for _, a := range atts {
		if _, ok := keep[a.ifindex]; !ok {
			keep[a.ifindex] = a.others
		}
		if err := nl.FilterDel(a.filter); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete tc filter %s of ifindex %d: %w", a.filter.Name, a.ifindex, err))
			keep[a.ifindex] = true
		}
	}
	for ifindex, kept := range keep {
		if kept {
			continue
		}
		if err := nl.QdiscDel(clsact(ifindex)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) &&
			!errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("delete clsact qdisc of ifindex %d: %w", ifindex, err))
		}
	}
	return errors.Join(errs...)
}
