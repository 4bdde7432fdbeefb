package fuzz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/model"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// Checker runs packets through the datapath and the model of one installed world and
// compares what they did: verdict, reason, the packet as it left (when not dropped) and the
// conntrack entry of its flow.
type Checker struct {
	h        *Harness
	w        World
	m        *model.Model
	creators map[model.CTKey]Packet // the packet that began each flow, for printed cases
	last     maps.Reason            // the model's reason for the last packet run
	out      []byte                 // the packet as the datapath left it, while the model runs
	Stats
}

// Stats counts what a run saw.
type Stats struct {
	Packets       int // run by the kernel and the model
	Refused       int // refused by BPF_PROG_TEST_RUN (shorter than an Ethernet header)
	Disagreements int
	Reasons       map[model.Hook]map[maps.Reason]int
	Conntrack     map[model.Conntrack]int
	// VXLANIn counts, by reason, what from_underlay decapsulated from VXLAN; VXLANOut what
	// was encapsulated in VXLAN by BPF.
	VXLANIn  map[maps.Reason]int
	VXLANOut int
	// VXLAN6In and VXLAN6Out count the same over an IPv6 underlay; VXLAN6In also what
	// from_underlay refused of it (a sender no node).
	VXLAN6In  map[maps.Reason]int
	VXLAN6Out int
	// LaterFragments counts later fragments that took their first fragment's ports.
	LaterFragments int
	// IPv6 counts, by reason, the verdicts about IPv6 packets; IPv6In those that came out
	// of a tunnel (VXLAN or 6in4) in from_underlay; NA those about Neighbor Advertisements
	// that anti-spoofing looked into.
	IPv6, IPv6In, NA map[maps.Reason]int
	// Services counts, by reason, the IPv6 packets the NAT stage translated: to a backend
	// or back from one.
	Services map[maps.Reason]int
	// SNAT counts, by reason, the packets that met the node's address in the NAT stage, by
	// how: a NodePort flow or a pod's masqueraded flow taking it, a reply translated back, an
	// ICMPv6 error handed to a masquerading pod.
	SNAT map[model.SNAT]map[maps.Reason]int
}

// snatNames name the ways of model.SNAT for the coverage report.
var snatNames = map[model.SNAT]string{model.SNATNodePort: "nodeport", model.SNATMasquerade: "masquerade",
	model.SNATReply: "reply", model.SNATError: "icmpv6 error"}

func (s *Stats) countSNAT(how model.SNAT, r maps.Reason, n int) {
	if s.SNAT == nil {
		s.SNAT = map[model.SNAT]map[maps.Reason]int{}
	}
	s.SNAT[how] = countReason(s.SNAT[how], r, n)
}

func (s *Stats) add(o Stats) {
	s.Packets += o.Packets
	s.Refused += o.Refused
	s.Disagreements += o.Disagreements
	for v, n := range o.Conntrack {
		s.countFlow(v, n)
	}
	for h, per := range o.Reasons {
		for r, n := range per {
			s.count(h, r, n)
		}
	}
	for r, n := range o.VXLANIn {
		s.countVXLAN(r, n)
	}
	s.VXLANOut += o.VXLANOut
	for r, n := range o.VXLAN6In {
		s.VXLAN6In = countReason(s.VXLAN6In, r, n)
	}
	s.VXLAN6Out += o.VXLAN6Out
	s.LaterFragments += o.LaterFragments
	for r, n := range o.IPv6 {
		s.IPv6 = countReason(s.IPv6, r, n)
	}
	for r, n := range o.IPv6In {
		s.IPv6In = countReason(s.IPv6In, r, n)
	}
	for r, n := range o.NA {
		s.NA = countReason(s.NA, r, n)
	}
	for r, n := range o.Services {
		s.Services = countReason(s.Services, r, n)
	}
	for how, per := range o.SNAT {
		for r, n := range per {
			s.countSNAT(how, r, n)
		}
	}
}

// countReason adds n under r to m, which it makes when nil.
func countReason(m map[maps.Reason]int, r maps.Reason, n int) map[maps.Reason]int {
	if m == nil {
		m = map[maps.Reason]int{}
	}
	m[r] += n
	return m
}

// reasonList is "reason n, ..." in order of the reasons' names.
func reasonList(m map[maps.Reason]int) string {
	var parts []string
	for r, n := range m {
		parts = append(parts, fmt.Sprintf("%s %d", maps.ReasonName(r), n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func (s *Stats) countVXLAN(r maps.Reason, n int) {
	if s.VXLANIn == nil {
		s.VXLANIn = map[maps.Reason]int{}
	}
	s.VXLANIn[r] += n
}

func (s *Stats) count(h model.Hook, r maps.Reason, n int) {
	if s.Reasons == nil {
		s.Reasons = map[model.Hook]map[maps.Reason]int{}
	}
	if s.Reasons[h] == nil {
		s.Reasons[h] = map[maps.Reason]int{}
	}
	s.Reasons[h][r] += n
}

func (s *Stats) countFlow(v model.Conntrack, n int) {
	if s.Conntrack == nil {
		s.Conntrack = map[model.Conntrack]int{}
	}
	s.Conntrack[v] += n
}

// Coverage lists, per program, how many packets ended with each reason.
func (s Stats) Coverage() string {
	var lines []string
	for _, h := range model.Hooks {
		var parts []string
		for r, n := range s.Reasons[h] {
			parts = append(parts, fmt.Sprintf("%s %d", maps.ReasonName(r), n))
		}
		sort.Strings(parts)
		lines = append(lines, fmt.Sprintf("%s: %s", h, strings.Join(parts, ", ")))
	}
	var flows []string
	for v := model.CTNone; v <= model.CTRelated; v++ {
		flows = append(flows, fmt.Sprintf("%s %d", v, s.Conntrack[v]))
	}
	lines = append(lines, "conntrack: "+strings.Join(flows, ", "))
	var vxlan []string
	for r, n := range s.VXLANIn {
		vxlan = append(vxlan, fmt.Sprintf("%s %d", maps.ReasonName(r), n))
	}
	sort.Strings(vxlan)
	lines = append(lines, fmt.Sprintf("vxlan in BPF: out %d; in: %s", s.VXLANOut, strings.Join(vxlan, ", ")),
		fmt.Sprintf("vxlan over ipv6 in BPF: out %d; in: %s", s.VXLAN6Out, reasonList(s.VXLAN6In)),
		fmt.Sprintf("later fragments given their first's ports: %d", s.LaterFragments),
		"ipv6: "+reasonList(s.IPv6), "ipv6 out of a tunnel: "+reasonList(s.IPv6In),
		"neighbor advertisements: "+reasonList(s.NA), "ipv6 services translated: "+reasonList(s.Services))
	for how := model.SNATNodePort; how <= model.SNATError; how++ {
		lines = append(lines, fmt.Sprintf("ipv6 node address, %s: %s", snatNames[how], reasonList(s.SNAT[how])))
	}
	return strings.Join(lines, "\n")
}

// Checker installs w and returns a checker for it, with conntrack empty on both sides.
func (h *Harness) Checker(w World) (*Checker, error) {
	if err := h.Install(w); err != nil {
		return nil, err
	}
	c := &Checker{h: h, w: w, m: model.New(w.World), creators: map[model.CTKey]Packet{}}
	c.m.ChoosePort = c.datapathPort
	return c, nil
}

// datapathPort answers the model's ChoosePort with the port the datapath's random search
// took: the packet it left carries it fromEnd bytes before its end. A port the model does not
// hold free is not taken: the model's first is, and the comparison shows the difference.
func (c *Checker) datapathPort(free []uint16, fromEnd int) uint16 {
	if fromEnd >= 2 && fromEnd <= len(c.out) {
		if p := binary.BigEndian.Uint16(c.out[len(c.out)-fromEnd:]); slices.Contains(free, p) {
			return p
		}
	}
	return free[0]
}

// Reset empties conntrack on both sides.
func (c *Checker) Reset() error {
	c.m.ResetConntrack()
	clear(c.creators)
	return c.h.ClearConntrack()
}

// Disagreement is a packet the datapath and the model judged differently.
type Disagreement struct {
	Case Case
	What []string
}

func (d Disagreement) String() string {
	return fmt.Sprintf("datapath and model disagree: %s\n%#v", strings.Join(d.What, "; "), d.Case)
}

// Check runs p through the kernel and the model (call it inside Harness.Do). A disagreement
// leaves conntrack emptied on both sides, so that one difference does not cascade.
func (c *Checker) Check(p Packet) (*Disagreement, error) {
	res, err := c.h.Run(p.Hook, p.Frame)
	if errors.Is(err, ErrRefused) {
		c.Refused++
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	c.Packets++
	c.out = res.Out
	o := c.m.Run(p.Hook, p.Frame)
	c.out = nil
	c.last = o.Reason
	c.count(p.Hook, o.Reason, 1)
	c.countFlow(o.Conntrack, 1)
	if p.Hook == model.FromUnderlay && (o.Direction == maps.DirFromOverlay || o.Reason == maps.ReasonSpoofedSource && isVXLANv4(p.Frame)) {
		c.countVXLAN(o.Reason, 1)
	}
	if len(o.Unknown) > 0 {
		c.VXLANOut++
		if binary.BigEndian.Uint16(o.Out[12:]) == packet.EtherIPv6 {
			c.VXLAN6Out++
		}
	}
	if p.Hook == model.FromUnderlay && len(p.Frame) >= 14 && binary.BigEndian.Uint16(p.Frame[12:]) == packet.EtherIPv6 &&
		(o.Direction == maps.DirFromOverlay || o.Reason == maps.ReasonSpoofedSource) {
		c.VXLAN6In = countReason(c.VXLAN6In, o.Reason, 1)
	}
	if o.LaterFragment {
		c.LaterFragments++
	}
	if o.IPv6 {
		c.IPv6 = countReason(c.IPv6, o.Reason, 1)
		if p.Hook == model.FromUnderlay && len(p.Frame) >= 14 && binary.BigEndian.Uint16(p.Frame[12:]) == packet.EtherIPv4 {
			c.IPv6In = countReason(c.IPv6In, o.Reason, 1)
		}
	}
	if o.NA {
		c.NA = countReason(c.NA, o.Reason, 1)
	}
	if o.Translated && o.IPv6 {
		c.Services = countReason(c.Services, o.Reason, 1)
	}
	if o.SNAT != model.SNATNone {
		c.countSNAT(o.SNAT, o.Reason, 1)
	}
	var what []string
	if want := model.Verdict(o.Reason); res.Verdict != want {
		what = append(what, fmt.Sprintf("verdict %d, model %d", res.Verdict, want))
	}
	got, err := c.h.Counted(o.Reason, o.Direction)
	if err != nil {
		return nil, err
	}
	if got != o.Reason {
		what = append(what, fmt.Sprintf("counted under %s, model %s", maps.ReasonName(got), maps.ReasonName(o.Reason)))
	}
	for _, u := range o.Unknown { // what the model cannot know is the datapath's to say
		if u[1] <= len(res.Out) && u[1] <= len(o.Out) {
			copy(o.Out[u[0]:u[1]], res.Out[u[0]:u[1]])
		}
	}
	if !maps.IsDrop(o.Reason) && got == o.Reason && !bytes.Equal(res.Out, o.Out) {
		what = append(what, fmt.Sprintf("left as\n%x\nmodel\n%x", res.Out, o.Out))
	}
	if o.Key != nil {
		e, err := c.h.Flow(*o.Key)
		if err != nil {
			return nil, err
		}
		if want := c.m.CT[*o.Key]; !sameFlow(e, want) {
			what = append(what, fmt.Sprintf("conntrack %s, model %s", flowString(e), flowString(want)))
		}
		if o.Created {
			c.creators[*o.Key] = Packet{Hook: p.Hook, Frame: append([]byte(nil), p.Frame...)}
		}
	}
	if len(what) == 0 {
		return nil, nil
	}
	c.Disagreements++
	d := &Disagreement{What: what, Case: Case{World: c.w.Seed, Hook: p.Hook, In: append([]byte(nil), p.Frame...), Reason: o.Reason}}
	d.Case.Name = fmt.Sprintf("%s in world %#x: %s", p.Hook, c.w.Seed, strings.SplitN(what[0], "\n", 2)[0])
	if o.Key != nil {
		keys := []model.CTKey{*o.Key, reverse(*o.Key)}
		if o.Quoted != nil {
			keys = append(keys, *o.Quoted)
		}
		for _, k := range keys {
			if b, ok := c.creators[k]; ok && !bytes.Equal(b.Frame, p.Frame) {
				d.Case.Before = append(d.Case.Before, b)
			}
		}
	}
	return d, c.Reset()
}

// CheckFlowCount compares how many flows conntrack holds, and how many translations the nat
// map, with the model's counts: an entry the datapath made under a key the model never
// looked at shows here.
func (c *Checker) CheckFlowCount() error {
	n, err := c.h.Flows()
	if err != nil {
		return err
	}
	if n != len(c.m.CT) {
		return fmt.Errorf("world %d: conntrack holds %d flows, model %d", c.w.Seed, n, len(c.m.CT))
	}
	if n, err = c.h.Translations(); err != nil {
		return err
	}
	if n != c.m.Translations() {
		return fmt.Errorf("world %d: the nat map holds %d entries, model %d", c.w.Seed, n, c.m.Translations())
	}
	return nil
}

func reverse(k model.CTKey) model.CTKey {
	k.Src, k.Dst = k.Dst, k.Src
	k.Sport, k.Dport = k.Dport, k.Sport
	return k
}

func sameFlow(a, b *model.CTEntry) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func flowString(e *model.CTEntry) string {
	if e == nil {
		return "none"
	}
	return fmt.Sprintf("{flags %#x, %d packets, %d bytes, of them replies: %d packets, %d bytes}", e.Flags, e.Packets, e.Bytes, e.ReplyPackets, e.ReplyBytes)
}

// worldPackets is how many packets one world sees before the next is installed.
const worldPackets = 500

// RunSeeded checks packets packets (refused ones not counted) generated from seed, a new
// world every worldPackets, and hands each disagreement to report.
func (h *Harness) RunSeeded(seed uint64, packets int, report func(Disagreement)) (Stats, time.Duration, error) {
	var st Stats
	start := time.Now()
	err := h.Do(func() error {
		for world := uint64(0); st.Packets < packets; world++ {
			w := NewWorld(seed<<20 | world)
			c, err := h.Checker(w)
			if err != nil {
				return err
			}
			g := NewGen(w.Seed, w)
			for c.Packets < worldPackets && st.Packets+c.Packets < packets {
				d, err := c.Check(g.Next())
				if err != nil {
					return err
				}
				if d != nil {
					report(*d)
				}
			}
			if err := c.CheckFlowCount(); err != nil {
				c.Disagreements++
				report(Disagreement{What: []string{err.Error()}, Case: Case{Name: "flow count", World: w.Seed}})
			}
			st.add(c.Stats)
		}
		return nil
	})
	return st, time.Since(start), err
}

// isVXLANv4 says whether frame is UDP over IPv4 to the worlds' VXLAN port.
func isVXLANv4(frame []byte) bool {
	if len(frame) < 14+20+8 || binary.BigEndian.Uint16(frame[12:]) != packet.EtherIPv4 || frame[14+9] != packet.ProtoUDP {
		return false
	}
	l4 := 14 + int(frame[14]&0x0f)*4
	return len(frame) >= l4+4 && binary.BigEndian.Uint16(frame[l4+2:]) == vxlanPort
}
