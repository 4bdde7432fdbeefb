package fuzz

import (
	"fmt"
	"strings"

	"github.com/ebpfnet/ebpfnet/maps"
	"github.com/ebpfnet/ebpfnet/testkit/model"
)

// Case is one packet to replay in a table test: the world it ran in, the packets before it
// that began the flows it met, and the reason the datapath must give it.
type Case struct {
	Name   string
	World  uint64 // NewWorld's seed
	Before []Packet
	Hook   model.Hook
	In     []byte
	Reason maps.Reason
}

// GoString prints c as a literal for a []fuzz.Case table.
func (c Case) GoString() string {
	var b strings.Builder
	fmt.Fprintf(&b, "{Name: %q, World: %#x, Hook: %#v,\n", c.Name, c.World, c.Hook)
	if len(c.Before) > 0 {
		b.WriteString("\tBefore: []fuzz.Packet{\n")
		for _, p := range c.Before {
			fmt.Fprintf(&b, "\t\t{Hook: %#v, Frame: %s},\n", p.Hook, bytesLiteral(p.Frame, "\t\t"))
		}
		b.WriteString("\t},\n")
	}
	fmt.Fprintf(&b, "\tIn: %s,\n", bytesLiteral(c.In, "\t"))
	fmt.Fprintf(&b, "\tReason: %s},", reasonLiteral(c.Reason))
	return b.String()
}

// bytesLiteral is a []byte literal, 16 bytes a line.
func bytesLiteral(p []byte, indent string) string {
	var b strings.Builder
	b.WriteString("[]byte{")
	for i, v := range p {
		if i%16 == 0 {
			b.WriteString("\n" + indent + "\t")
		} else {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "0x%02x,", v)
	}
	b.WriteString("\n" + indent + "}")
	return b.String()
}

var reasonIdents = map[maps.Reason]string{
	maps.ReasonForwardLocal: "ReasonForwardLocal", maps.ReasonForwardHost: "ReasonForwardHost",
	maps.ReasonDeliver: "ReasonDeliver", maps.ReasonMalformed: "ReasonMalformed",
	maps.ReasonSpoofedSource: "ReasonSpoofedSource", maps.ReasonTTLExceeded: "ReasonTTLExceeded",
	maps.ReasonUnsupportedL3: "ReasonUnsupportedL3", maps.ReasonRedirectFailed: "ReasonRedirectFailed",
	maps.ReasonForwardTunnel: "ReasonForwardTunnel", maps.ReasonForwardUnder: "ReasonForwardUnder",
	maps.ReasonUnknownDest: "ReasonUnknownDest", maps.ReasonNoRoute: "ReasonNoRoute",
	maps.ReasonEncapFailed: "ReasonEncapFailed", maps.ReasonPolicyIngress: "ReasonPolicyIngress",
	maps.ReasonPolicyEgress: "ReasonPolicyEgress", maps.ReasonForwardNode: "ReasonForwardNode",
}

func reasonLiteral(r maps.Reason) string {
	if id, ok := reasonIdents[r]; ok {
		return "maps." + id
	}
	return fmt.Sprintf("maps.Reason(%d)", uint32(r))
}

// Replay runs c on h and returns the disagreement, if any (call it inside Harness.Do). The
// model must give c.Reason too: a case records what the datapath must do.
func (h *Harness) Replay(c Case) (*Disagreement, error) {
	ck, err := h.Checker(NewWorld(c.World))
	if err != nil {
		return nil, err
	}
	for _, p := range append(append([]Packet(nil), c.Before...), Packet{Hook: c.Hook, Frame: c.In}) {
		if d, err := ck.Check(p); d != nil || err != nil {
			return d, err
		}
	}
	if ck.last != c.Reason {
		return &Disagreement{Case: c, What: []string{fmt.Sprintf("the model says %s, the case %s",
			maps.ReasonName(ck.last), maps.ReasonName(c.Reason))}}, nil
	}
	return nil, nil
}
