package loader_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/testkit/nstest"
)

// tcFilters reads back the bpf filters on ifindex's clsact ingress or egress.
func tcFilters(t *testing.T, ns *nstest.NS, ifindex int, egress bool) []*netlink.BpfFilter {
	t.Helper()
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if egress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	fs, err := ns.NL.FilterList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, parent)
	if err != nil && !strings.Contains(err.Error(), "invalid argument") { // no clsact: no filters
		t.Fatalf("list tc filters: %v", err)
	}
	var out []*netlink.BpfFilter
	for _, f := range fs {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok {
			t.Fatalf("a %s filter on ifindex %d, want only bpf ones", f.Type(), ifindex)
		}
		out = append(out, bf)
	}
	return out
}

// oneFilter is the only filter on ifindex's ingress or egress, which must be the datapath's.
func oneFilter(t *testing.T, ns *nstest.NS, ifindex int, egress bool, pinDir string) *netlink.BpfFilter {
	t.Helper()
	fs := tcFilters(t, ns, ifindex, egress)
	if len(fs) != 1 {
		t.Fatalf("%d filters on ifindex %d (egress %v), want 1: %+v", len(fs), ifindex, egress, fs)
	}
	h := loader.HookFromPod
	if egress {
		h = loader.HookToPod
	}
	if fs[0].Name != loader.FilterName(pinDir, h) {
		t.Fatalf("filter named %q, want %q", fs[0].Name, loader.FilterName(pinDir, h))
	}
	return fs[0]
}

func hasClsact(t *testing.T, ns *nstest.NS, ifindex int) bool {
	t.Helper()
	qs, err := ns.NL.QdiscList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: ifindex}})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			return true
		}
	}
	return false
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("no program id")
	}
	return id
}

// tcxCount is how many tcx programs run on ifindex, both directions.
func tcxCount(t *testing.T, ns *nstest.NS, ifindex int) int {
	t.Helper()
	return len(attachedPrograms(t, ns, ifindex, ebpf.AttachTCXIngress)) +
		len(attachedPrograms(t, ns, ifindex, ebpf.AttachTCXEgress))
}

// A pod's hooks are cls_bpf filters in direct-action mode running this datapath's programs,
// attached once however often AttachPod runs, with no pins and no tcx links; the checks tell
// a filter running another program, and a missing one, apart.
func TestPodHooksAreTCFilters(t *testing.T) {
	t.Parallel()
	p, pinDir, dp := loadBesidePair(t)
	ifindex := p.aLink.Attrs().Index
	for range 2 { // a repeated ADD attaches nothing twice
		if err := dp.AttachPod(p.a.NL, "v0", ifindex); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		egress bool
		prog   *ebpf.Program
	}{{false, dp.FromPod}, {true, dp.ToPod}} {
		f := oneFilter(t, p.a, ifindex, c.egress, pinDir)
		if !f.DirectAction || ebpf.ProgramID(f.Id) != progID(t, c.prog) {
			t.Errorf("filter (egress %v): direct-action %v, program %d; want direct-action, program %d",
				c.egress, f.DirectAction, f.Id, progID(t, c.prog))
		}
	}
	if n := tcxCount(t, p.a, ifindex); n != 0 {
		t.Errorf("%d tcx programs on v0, want none", n)
	}
	if entries, _ := os.ReadDir(loader.LinksDir(pinDir)); len(entries) != 0 {
		t.Errorf("pins made for a pod: %v", entries)
	}
	tx := p.udpFlow(t)
	send(t, tx, 100)
	if got := delivered(t, pinDir); got != 100 {
		t.Errorf("to_pod as a tc filter counted %d of 100 packets", got)
	}
	check := func(h loader.Hook) (err error) {
		p.a.Do(t, func() error { err = dp.CheckAttached("v0", h); return nil })
		return err
	}
	for _, h := range loader.PodHooks {
		if err := check(h); err != nil {
			t.Errorf("check %s: %v", h, err)
		}
	}
	var atts []loader.Attachment
	p.a.Do(t, func() (err error) { atts, err = loader.Attachments(pinDir); return err })
	if len(atts) != 2 || atts[0].Type != "tc" || atts[0].Interface != "v0" || atts[1].Ifindex != ifindex {
		t.Errorf("attachments %+v, want v0's two tc filters", atts)
	}

	// Another program in our filter's place (another datapath's, with the same name).
	other := loadAt(t, pinDir)
	f := oneFilter(t, p.a, ifindex, true, pinDir)
	f.Fd = other.ToPod.FD()
	if err := p.a.NL.FilterReplace(f); err != nil {
		t.Fatal(err)
	}
	if err := check(loader.HookToPod); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("runs program %d", progID(t, other.ToPod))) {
		t.Errorf("check with another program on the filter: %v", err)
	}
	if err := p.a.NL.FilterDel(f); err != nil {
		t.Fatal(err)
	}
	if err := check(loader.HookToPod); err == nil || !strings.Contains(err.Error(), "detached") {
		t.Errorf("check with no filter: %v", err)
	}
	if err := loader.DetachPod(p.a.NL, pinDir, "v0"); err != nil {
		t.Fatal(err)
	}
	if fs := append(tcFilters(t, p.a, ifindex, false), tcFilters(t, p.a, ifindex, true)...); len(fs) != 0 {
		t.Errorf("filters left after DetachPod: %+v", fs)
	}
}

// Upgrade swaps the program of a pod's tc filter in place: under a steady stream no packet
// is lost or skipped, and the filter stays the only one.
func TestUpgradeSwapsTCFilterUnderLoad(t *testing.T) {
	t.Parallel()
	p, pinDir, first := loadBesidePair(t)
	ifindex := p.aLink.Attrs().Index
	if err := first.AttachPod(p.a.NL, "v0", ifindex); err != nil {
		t.Fatal(err)
	}
	tx := p.udpFlow(t)
	const upgrades = 3
	var last *loader.Datapath
	sent := streamDuring(t, tx, 20000, func() {
		for range upgrades {
			next, err := loader.Load(loader.Config{PinDir: pinDir})
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { next.Close() })
			var n int
			p.a.Do(t, func() (err error) { n, err = next.Upgrade(); return err })
			if n != 2 {
				t.Errorf("upgrade switched %d attachments, want v0's 2 filters", n)
			}
			last = next
		}
	})
	if last == nil {
		t.FailNow()
	}
	for _, c := range []struct {
		egress bool
		prog   *ebpf.Program
	}{{false, last.FromPod}, {true, last.ToPod}} {
		if f := oneFilter(t, p.a, ifindex, c.egress, pinDir); ebpf.ProgramID(f.Id) != progID(t, c.prog) || !f.DirectAction {
			t.Errorf("after %d upgrades the filter (egress %v) runs %d, want %d", upgrades, c.egress, f.Id, progID(t, c.prog))
		}
	}
	if got := delivered(t, pinDir); got != sent {
		t.Fatalf("counted %d of %d packets across %d upgrades", got, sent, upgrades)
	}
}

// A pod an older version attached with pinned tcx links keeps them: Attach updates them in
// place (no filter beside them), CheckAttached and Attachments see them, Upgrade switches
// them, and DetachPod and Uninstall remove them.
func TestOlderPodsPinnedTCXLinksAreKept(t *testing.T) {
	t.Parallel()
	p, pinDir, old := loadBesidePair(t)
	ifindex := p.aLink.Attrs().Index
	if err := os.MkdirAll(loader.LinksDir(pinDir), 0o700); err != nil {
		t.Fatal(err)
	}
	// What the older version did: a tcx link per hook, pinned.
	for _, c := range []struct {
		h    loader.Hook
		prog *ebpf.Program
		at   ebpf.AttachType
	}{{loader.HookFromPod, old.FromPod, ebpf.AttachTCXIngress}, {loader.HookToPod, old.ToPod, ebpf.AttachTCXEgress}} {
		var l link.Link
		p.a.Do(t, func() (err error) {
			l, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: c.prog, Attach: c.at})
			return err
		})
		if err := l.Pin(loader.LinkPinPath(pinDir, "v0", c.h)); err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	running := func() []ebpf.ProgramID {
		var ids []ebpf.ProgramID
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			progs := attachedPrograms(t, p.a, ifindex, at)
			if len(progs) != 1 {
				t.Fatalf("%d tcx programs on v0 (%v), want 1", len(progs), at)
			}
			ids = append(ids, progs[0].ID)
		}
		return ids
	}
	check := func(dp *loader.Datapath) (errs []error) {
		p.a.Do(t, func() error {
			for _, h := range loader.PodHooks {
				errs = append(errs, dp.CheckAttached("v0", h))
			}
			return nil
		})
		return errs
	}

	next := loadAt(t, pinDir)
	if err := next.AttachPod(p.a.NL, "v0", ifindex); err != nil {
		t.Fatal(err)
	}
	if got, want := running(), []ebpf.ProgramID{progID(t, next.FromPod), progID(t, next.ToPod)}; got[0] != want[0] || got[1] != want[1] {
		t.Errorf("after Attach v0 runs %v, want the new %v", got, want)
	}
	if hasClsact(t, p.a, ifindex) {
		t.Error("Attach added a clsact qdisc (and filters) beside the pinned links")
	}
	for _, err := range check(next) {
		if err != nil {
			t.Errorf("check with the new datapath: %v", err)
		}
	}
	for _, err := range check(old) {
		if err == nil || !strings.Contains(err.Error(), "runs program") {
			t.Errorf("check with the old datapath: %v, want it to name the program running", err)
		}
	}
	var atts []loader.Attachment
	p.a.Do(t, func() (err error) { atts, err = loader.Attachments(pinDir); return err })
	if len(atts) != 2 || atts[0].Type != "tcx" || atts[0].Pin == "" {
		t.Errorf("attachments %+v, want v0's two pinned tcx links", atts)
	}

	third := loadAt(t, pinDir)
	var n int
	p.a.Do(t, func() (err error) { n, err = third.Upgrade(); return err })
	if got, want := running(), []ebpf.ProgramID{progID(t, third.FromPod), progID(t, third.ToPod)}; n != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("upgrade switched %d; v0 runs %v, want %v", n, got, want)
	}
	tx := p.udpFlow(t)
	send(t, tx, 100)
	if got := delivered(t, pinDir); got != 100 {
		t.Errorf("to_pod through the kept tcx link counted %d of 100 packets", got)
	}
	if err := loader.DetachPod(p.a.NL, pinDir, "v0"); err != nil {
		t.Fatal(err)
	}
	if n := tcxCount(t, p.a, ifindex); n != 0 {
		t.Errorf("%d tcx programs on v0 after DetachPod", n)
	}
}

// Uninstall, in the pods' namespace, deletes the datapath's filters and the clsact qdisc that
// holds nothing else, and leaves alone a filter that is not the datapath's (and its qdisc).
func TestUninstallRemovesTCFilters(t *testing.T) {
	t.Parallel()
	p, pinDir, dp := loadBesidePair(t)
	a, b := p.aLink.Attrs().Index, p.bLink.Attrs().Index
	if err := dp.AttachPod(p.a.NL, "v0", a); err != nil {
		t.Fatal(err)
	}
	if err := dp.AttachPod(p.b.NL, "v1", b); err != nil {
		t.Fatal(err)
	}
	// Someone else's filter on v1, at another priority.
	foreign := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: b, Parent: netlink.HANDLE_MIN_EGRESS,
		Handle: 1, Priority: 7, Protocol: unix.ETH_P_ALL}, Fd: dp.ToPod.FD(), Name: "someone-else", DirectAction: true}
	if err := p.b.NL.FilterAdd(foreign); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []*nstest.NS{p.a, p.b} {
		for range 2 { // idempotent
			ns.Do(t, func() error { return loader.Uninstall(pinDir) })
		}
	}
	if fs := append(tcFilters(t, p.a, a, false), tcFilters(t, p.a, a, true)...); len(fs) != 0 || hasClsact(t, p.a, a) {
		t.Errorf("v0 after uninstall: filters %+v, clsact %v; want neither", fs, hasClsact(t, p.a, a))
	}
	fs := append(tcFilters(t, p.b, b, false), tcFilters(t, p.b, b, true)...)
	if len(fs) != 1 || fs[0].Name != "someone-else" || !hasClsact(t, p.b, b) {
		t.Errorf("v1 after uninstall: filters %+v, want only someone-else's on its clsact", fs)
	}
}

// A pod veth without any filter (no clsact qdisc either) is reported detached.
func TestCheckAttachedWithoutQdisc(t *testing.T) {
	t.Parallel()
	p, pinDir, dp := loadBesidePair(t)
	var checkErr error
	p.a.Do(t, func() error { checkErr = dp.CheckAttached("v0", loader.HookFromPod); return nil })
	if checkErr == nil || !strings.Contains(checkErr.Error(), "from-pod on v0 is detached") {
		t.Fatalf("check of a bare veth: %v", checkErr)
	}
	if err := loader.DetachPod(p.a.NL, pinDir, "v0"); err != nil {
		t.Fatalf("detach from a bare veth: %v", err)
	}
}

// loadBesidePair makes a veth pair, whose v0 stands for a pod's host side, and loads a
// datapath at a pin dir of its own, which uninstall removes when the test ends.
func loadBesidePair(t *testing.T) (*pair, string, *loader.Datapath) {
	t.Helper()
	p := newPair(t)
	pinDir := nstest.PinDir(t)
	uninstallAtCleanup(t, pinDir)
	return p, pinDir, loadAt(t, pinDir)
}

// loadAt loads a datapath pinned at pinDir, closed when the test ends.
func loadAt(t *testing.T, pinDir string) *loader.Datapath {
	t.Helper()
	dp, err := loader.Load(loader.Config{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}
