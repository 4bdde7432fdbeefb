package bench

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/ebpfnet/ebpfnet/loader"
	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/packet"
)

// ProgCost is the per-packet cost of from_pod beside an empty tc program, by BPF_PROG_TEST_RUN.
type ProgCost struct {
	Repeat      int     `json:"repeat"`
	FromPodNs   float64 `json:"fromPodNs"`
	EmptyNs     float64 `json:"emptyNs"`
	OverheadNs  float64 `json:"overheadNs"`
	Description string  `json:"description"`
}

// MeasureProgCost runs a TCP packet between two local pods through from_pod, and the same
// packet through a program that only returns, samples times each, and keeps the medians.
func MeasureProgCost(repeat, samples int) (ProgCost, error) {
	dp, err := loader.Load(loader.Config{Unpinned: true})
	if err != nil {
		return ProgCost{}, err
	}
	defer dp.Close()
	macA, macB := packet.MAC("02:00:00:00:00:0a"), packet.MAC("02:00:00:00:00:0b")
	a, b := netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.11")
	for _, ep := range []maps.Endpoint{
		{IP: a, Ifindex: 1, Local: true, MAC: macA, NodeMAC: packet.MAC("ee:00:00:00:00:0a")},
		{IP: b, Ifindex: 42, Local: true, MAC: macB, NodeMAC: packet.MAC("ee:00:00:00:00:0b")},
	} {
		if err := dp.Endpoints().Upsert(ep); err != nil {
			return ProgCost{}, err
		}
	}
	pkt := packet.Eth(packet.MAC("ee:00:00:00:00:0a"), macA, packet.EtherIPv4,
		packet.IPv4{Src: a, Dst: b, Proto: packet.ProtoTCP}.Marshal(packet.TCP(40000, 80)))
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		return ProgCost{}, fmt.Errorf("load empty program: %w", err)
	}
	defer empty.Close()
	var fromPod, none []float64
	for i := 0; i < samples; i++ {
		for _, p := range []struct {
			prog *ebpf.Program
			into *[]float64
		}{{dp.FromPod, &fromPod}, {empty, &none}} {
			_, d, err := p.prog.Benchmark(pkt, repeat, nil)
			if err != nil {
				return ProgCost{}, fmt.Errorf("BPF_PROG_TEST_RUN %s: %w", p.prog, err)
			}
			*p.into = append(*p.into, float64(d.Nanoseconds()))
		}
	}
	c := ProgCost{Repeat: repeat, FromPodNs: median(fromPod), EmptyNs: median(none),
		Description: "TCP SYN pod->pod on the same node (redirect path)"}
	c.OverheadNs = c.FromPodNs - c.EmptyNs
	return c, nil
}
