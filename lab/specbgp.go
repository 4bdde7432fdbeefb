package lab

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// BGPSpec is a lab file's `bgp:` block: every agent runs its BGP speaker (routing: bgp) in AS
// ASN and peers with the lab's router (RouterASN set: BIRD in a namespace of its own, with a
// leg in every segment), with every other node (MeshNodes), or both. RouterASN equal to ASN
// makes the router an iBGP route reflector.
type BGPSpec struct {
	ASN       int64 `json:"asn"`
	RouterASN int64 `json:"routerASN,omitempty"`
	MeshNodes bool  `json:"meshNodes,omitempty"`
	// Password, when set, protects every session (router and mesh) with TCP MD5.
	Password string `json:"password,omitempty"`
	// HoldTime and RestartTime are the sessions' hold time and the graceful restart time,
	// short in a lab so that tests see failures quickly.
	HoldTime    string `json:"holdTime,omitempty"`
	RestartTime string `json:"restartTime,omitempty"`
}

// Defaults of a lab's BGP.
const (
	DefaultBGPHoldTime    = "9s"
	DefaultBGPRestartTime = "60s"
)

// HasRouter says whether the lab runs a BGP router.
func (b *BGPSpec) HasRouter() bool { return b != nil && b.RouterASN != 0 }

// validateBGP checks the bgp block and the nodes' racks, filling the defaults.
func (s *Spec) validateBGP() error {
	racks := 0
	for _, n := range s.Nodes {
		if n.Rack != "" {
			racks++
		}
	}
	if racks > 0 && !s.BGP.HasRouter() {
		for i, n := range s.Nodes {
			if n.Rack != "" {
				return fmt.Errorf("nodes[%d].rack: racks need bgp with a routerASN (the router joins them)", i)
			}
		}
	}
	if racks > 0 && racks < len(s.Nodes) {
		for i, n := range s.Nodes {
			if n.Rack == "" {
				return fmt.Errorf("nodes[%d].rack: missing: when one node has a rack every node needs one", i)
			}
		}
	}
	b := s.BGP
	if b == nil {
		return nil
	}
	if s.Kubernetes {
		return errors.New("bgp: not in a kubernetes lab yet")
	}
	if s.Mode != "native" {
		return fmt.Errorf("bgp: needs mode: native (mode is %s)", s.Mode)
	}
	if b.ASN < 1 || b.ASN > math.MaxUint32 {
		return fmt.Errorf("bgp.asn: %d is not in 1-4294967295", b.ASN)
	}
	if b.RouterASN < 0 || b.RouterASN > math.MaxUint32 {
		return fmt.Errorf("bgp.routerASN: %d is not in 1-4294967295", b.RouterASN)
	}
	if b.RouterASN == 0 && !b.MeshNodes {
		return errors.New("bgp: give a routerASN (the lab's router) or meshNodes: true, or the nodes peer with no one")
	}
	if err := validPassword(b.Password); err != nil {
		return fmt.Errorf("bgp.password: %w", err)
	}
	if b.HoldTime == "" {
		b.HoldTime = DefaultBGPHoldTime
	}
	if d, err := time.ParseDuration(b.HoldTime); err != nil || d < 3*time.Second || d > 65535*time.Second || d%time.Second != 0 {
		return fmt.Errorf("bgp.holdTime: %q must be whole seconds between 3s and 65535s", b.HoldTime)
	}
	if b.RestartTime == "" {
		b.RestartTime = DefaultBGPRestartTime
	}
	if d, err := time.ParseDuration(b.RestartTime); err != nil || d < time.Second || d > 4095*time.Second || d%time.Second != 0 {
		return fmt.Errorf("bgp.restartTime: %q must be whole seconds between 1s and 4095s", b.RestartTime)
	}
	return nil
}

// validPassword accepts what both TCP MD5 (at most 80 bytes) and a quoted string in BIRD's
// config (no quote or backslash) can carry.
func validPassword(p string) error {
	if len(p) > 80 {
		return errors.New("longer than TCP MD5's 80 bytes")
	}
	for _, c := range p {
		if c < ' ' || c > '~' || c == '"' || c == '\\' {
			return errors.New(`must be printable ASCII without '"' or '\'`)
		}
	}
	return nil
}

// seconds is a duration validated by validateBGP, in whole seconds.
func seconds(d string) int {
	v, _ := time.ParseDuration(d)
	return int(v / time.Second)
}
