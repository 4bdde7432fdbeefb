package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Routing sources: where the routes to other nodes' pod CIDRs come from.
const (
	RoutingStore = "store" // every node's pod CIDR and address, from the store (one L2 segment)
	RoutingBGP   = "bgp"   // learned by the embedded BGP speaker (native mode across L3 boundaries)
)

// BGPConfig is the embedded BGP speaker's configuration (routing: bgp).
type BGPConfig struct {
	// ASN is this node's autonomous system number.
	ASN uint32 `json:"asn"`
	// RouterID defaults to the node's underlay address.
	RouterID string `json:"routerID,omitempty"`
	// ListenPort is where the speaker accepts sessions (default 179).
	ListenPort int `json:"listenPort,omitempty"`
	// Peers are explicit neighbours: route reflectors, top-of-rack routers.
	Peers []BGPPeer `json:"peers,omitempty"`
	// MeshNodes peers with every other node the store knows (iBGP full mesh, the node's ASN).
	MeshNodes bool `json:"meshNodes,omitempty"`
	// MeshPassword, when set, protects the mesh sessions with TCP MD5.
	MeshPassword string `json:"meshPassword,omitempty"`
	// HoldTime is the sessions' hold time (default 90s; keepalives every third of it).
	HoldTime        string              `json:"holdTime,omitempty"`
	GracefulRestart *BGPGracefulRestart `json:"gracefulRestart,omitempty"`
}

// BGPPeer is one explicit neighbour.
type BGPPeer struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// Password, when set, protects the session with TCP MD5 (RFC 2385).
	Password string `json:"password,omitempty"`
	// Port is where the peer listens (default 179).
	Port int `json:"port,omitempty"`
}

// BGPGracefulRestart: peers keep this node's routes for RestartTime while its agent restarts.
type BGPGracefulRestart struct {
	RestartTime string `json:"restartTime,omitempty"` // default 120s
}

// Defaults of the BGP speaker.
const (
	DefaultBGPPort        = 179
	DefaultBGPHoldTime    = 90 * time.Second
	DefaultBGPRestartTime = 120 * time.Second
)

// bgpSettings is BGPConfig validated and parsed.
type bgpSettings struct {
	BGPConfig
	routerID    netip.Addr // invalid: the node's underlay address
	peers       []bgpPeer
	holdTime    time.Duration
	restartTime time.Duration
}

// bgpPeer is a validated explicit neighbour.
type bgpPeer struct {
	addr     netip.Addr
	asn      uint32
	password string
	port     int
}

// validateRouting settles routing and bgp, naming the field that is wrong.
func (s *settled) validateRouting() error {
	switch s.Routing {
	case "", RoutingStore:
		s.Routing = RoutingStore
		if s.BGP != nil {
			return errors.New("bgp: set, but routing is store (set routing: bgp)")
		}
		return nil
	case RoutingBGP:
	default:
		return fmt.Errorf("routing: %q must be store or bgp", s.Routing)
	}
	if s.mode.String() != "native" {
		return fmt.Errorf("routing: bgp distributes native routes; mode is %s (want native)", s.mode)
	}
	if s.BGP == nil {
		return errors.New("bgp: routing is bgp but the bgp section is missing")
	}
	b := &bgpSettings{BGPConfig: *s.BGP, holdTime: DefaultBGPHoldTime, restartTime: DefaultBGPRestartTime}
	if b.ASN == 0 {
		return errors.New("bgp.asn: must be set (1-4294967295)")
	}
	if b.RouterID != "" {
		ip, err := netip.ParseAddr(b.RouterID)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("bgp.routerID: %q is not an IPv4 address", b.RouterID)
		}
		b.routerID = ip
	}
	if b.ListenPort == 0 {
		b.ListenPort = DefaultBGPPort
	}
	if b.ListenPort < 1 || b.ListenPort > 65535 {
		return fmt.Errorf("bgp.listenPort: %d is not a port", b.ListenPort)
	}
	if b.HoldTime != "" {
		d, err := time.ParseDuration(b.HoldTime)
		if err != nil || d < 3*time.Second || d > 65535*time.Second {
			return fmt.Errorf("bgp.holdTime: %q must be a duration between 3s and 65535s", b.HoldTime)
		}
		b.holdTime = d.Truncate(time.Second)
	}
	if g := b.GracefulRestart; g != nil && g.RestartTime != "" {
		d, err := time.ParseDuration(g.RestartTime)
		if err != nil || d < time.Second || d > 4095*time.Second {
			return fmt.Errorf("bgp.gracefulRestart.restartTime: %q must be a duration between 1s and 4095s", g.RestartTime)
		}
		b.restartTime = d.Truncate(time.Second)
	}
	if len(b.Peers) == 0 && !b.MeshNodes {
		return errors.New("bgp: no peers and meshNodes is false: the speaker would talk to no one")
	}
	seen := map[netip.Addr]bool{}
	for i, p := range b.Peers {
		ip, err := netip.ParseAddr(p.Address)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("bgp.peers[%d].address: %q is not an IPv4 address", i, p.Address)
		}
		if seen[ip] {
			return fmt.Errorf("bgp.peers[%d].address: %s is listed twice", i, ip)
		}
		seen[ip] = true
		if p.ASN == 0 {
			return fmt.Errorf("bgp.peers[%d].asn: must be set", i)
		}
		if len(p.Password) > 80 {
			return fmt.Errorf("bgp.peers[%d].password: longer than TCP MD5's 80 bytes", i)
		}
		if p.Port < 0 || p.Port > 65535 {
			return fmt.Errorf("bgp.peers[%d].port: %d is not a port", i, p.Port)
		}
		b.peers = append(b.peers, bgpPeer{addr: ip, asn: p.ASN, password: p.Password, port: p.Port})
	}
	if len(b.MeshPassword) > 80 {
		return errors.New("bgp.meshPassword: longer than TCP MD5's 80 bytes")
	}
	s.bgp = b
	return nil
}
