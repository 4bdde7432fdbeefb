// Package bgp runs the agent's embedded BGP speaker (GoBGP as a library): it advertises the
// node's pod CIDRs, keeps its neighbours in step with what it is told, and reports what they
// announce. It decides nothing about those routes: the agent judges and installs them.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Config is the speaker's own side.
type Config struct {
	ASN      uint32
	RouterID netip.Addr
	// ListenPort is where sessions are accepted; neighbours are dialled on 179.
	ListenPort  int
	HoldTime    time.Duration
	RestartTime time.Duration
	// Restarting says this speaker comes back from a restart: it sets the restart flag of the
	// graceful-restart capability, so neighbours keep its routes until its End-of-RIB.
	Restarting bool
	// IPv6 adds IPv6 unicast to every session, beside IPv4 unicast: a dual-stack node's IPv6
	// pod CIDR is announced with its IPv6 address as next hop, or, if it has none, its IPv4
	// one (sent IPv4-mapped, as 6PE does).
	IPv6   bool
	Logger *slog.Logger
}

// Neighbor is one BGP neighbour.
type Neighbor struct {
	Address  netip.Addr
	ASN      uint32
	Password string // TCP MD5 when set
	Port     int    // where the neighbour listens; 0 is 179
	// Node names the cluster node this neighbour is (full mesh); empty for explicit peers.
	Node string
}

// Speaker is a running BGP speaker.
type Speaker struct {
	srv *server.BgpServer
	cfg Config
	mu  sync.Mutex
	// neighbors and advertised are what was configured, to change only what differs.
	neighbors  map[netip.Addr]Neighbor
	advertised map[netip.Prefix]netip.Addr
	stop       context.CancelFunc
}

// connectRetry is how often an idle session is dialled again (GoBGP's default is 120s).
const connectRetry = 5 * time.Second

// Start starts the speaker; onChange is called (from GoBGP's goroutines, so it must not
// block) whenever a best path or a session changes.
func Start(ctx context.Context, cfg Config, onChange func()) (*Speaker, error) {
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelInfo)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	srv := server.NewBgpServer(server.LoggerOption(log.With("component", "bgp"), lvl))
	go srv.Serve()
	global := &api.Global{Asn: cfg.ASN, RouterId: cfg.RouterID.String(), ListenPort: int32(cfg.ListenPort),
		ListenAddresses: []string{"0.0.0.0"}}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("start bgp speaker (asn %d, router id %s, port %d): %w", cfg.ASN, cfg.RouterID, cfg.ListenPort, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	s := &Speaker{srv: srv, cfg: cfg, neighbors: map[netip.Addr]Neighbor{}, advertised: map[netip.Prefix]netip.Addr{}, stop: cancel}
	err := srv.WatchEvent(wctx, server.WatchEventMessageCallbacks{
		OnBestPath:   func([]*apiutil.Path, time.Time) { onChange() },
		OnPeerUpdate: func(*apiutil.WatchEventMessage_PeerEvent, time.Time) { onChange() },
		OnPathEor:    func(*apiutil.Path, time.Time) { onChange() },
	}, server.WatchBestPath(false), server.WatchPeer(), server.WatchEor(false))
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("watch bgp events: %w", err)
	}
	return s, nil
}

// Stop ends every session without a notification to neighbours that support graceful
// restart: they keep this node's routes for the restart time, as when the agent is killed.
func (s *Speaker) Stop() {
	s.stop()
	if err := s.srv.StopBgp(context.Background(), &api.StopBgpRequest{AllowGracefulRestart: true}); err != nil {
		slog.Warn("stop bgp speaker", "err", err)
	}
}

// SetNeighbors makes the speaker's neighbours exactly want: new ones are added, changed ones
// replaced, missing ones deleted (their routes go with them).
func (s *Speaker) SetNeighbors(ctx context.Context, want []Neighbor) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	wanted := map[netip.Addr]Neighbor{}
	for _, n := range want {
		wanted[n.Address] = n
	}
	var errs []error
	for addr, have := range s.neighbors {
		if w, ok := wanted[addr]; ok && w == have {
			delete(wanted, addr)
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("delete bgp neighbor %s: %w", addr, err))
			continue
		}
		slog.Info("bgp neighbor removed", "address", addr, "asn", have.ASN, "node", have.Node)
		delete(s.neighbors, addr)
	}
	for _, n := range slices.SortedFunc(maps.Values(wanted), func(a, b Neighbor) int { return a.Address.Compare(b.Address) }) {
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peer(n)}); err != nil {
			errs = append(errs, fmt.Errorf("add bgp neighbor %s (asn %d): %w", n.Address, n.ASN, err))
			continue
		}
		slog.Info("bgp neighbor added", "address", n.Address, "asn", n.ASN, "node", n.Node, "md5", n.Password != "")
		s.neighbors[n.Address] = n
	}
	return errors.Join(errs...)
}

// peer is the GoBGP configuration of one neighbour: graceful restart both ways, IPv4 unicast
// (and IPv6 unicast when the speaker has IPv6),
// and, towards another AS, acceptance of paths that carry this node's own AS once: nodes of
// one AS learn each other's routes through a router of another AS.
func (s *Speaker) peer(n Neighbor) *api.Peer {
	hold := uint64(s.cfg.HoldTime / time.Second)
	desc := "peer"
	if n.Node != "" {
		desc = "node " + n.Node
	}
	conf := &api.PeerConf{NeighborAddress: n.Address.String(), PeerAsn: n.ASN, AuthPassword: n.Password, Description: desc}
	if n.ASN != s.cfg.ASN {
		conf.AllowOwnAsn = 1
	}
	var transport *api.Transport
	if n.Port != 0 {
		transport = &api.Transport{RemotePort: uint32(n.Port)}
	}
	return &api.Peer{
		Conf:      conf,
		Transport: transport,
		Timers: &api.Timers{Config: &api.TimersConfig{HoldTime: hold, KeepaliveInterval: max(hold/3, 1),
			ConnectRetry: uint64(connectRetry / time.Second)}},
		GracefulRestart: &api.GracefulRestart{Enabled: true, RestartTime: uint32(s.cfg.RestartTime / time.Second),
			LocalRestarting: s.cfg.Restarting},
		AfiSafis: s.afiSafis(),
	}
}

// afiSafis are the families every session carries, each with graceful restart.
func (s *Speaker) afiSafis() []*api.AfiSafi {
	afis := []api.Family_Afi{api.Family_AFI_IP}
	if s.cfg.IPv6 {
		afis = append(afis, api.Family_AFI_IP6)
	}
	var out []*api.AfiSafi
	for _, afi := range afis {
		out = append(out, &api.AfiSafi{
			Config:            &api.AfiSafiConfig{Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		})
	}
	return out
}

// Advertise makes the speaker originate exactly the prefixes of routes, each with its next hop.
func (s *Speaker) Advertise(routes map[netip.Prefix]netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := maps.Clone(routes)
	var errs []error
	for p, nh := range s.advertised {
		if have, ok := want[p]; ok && have == nh {
			delete(want, p)
			continue
		}
		path, err := localPath(p, nh)
		if err == nil {
			err = s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{path}})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
			continue
		}
		delete(s.advertised, p)
	}
	for p, nextHop := range want {
		path, err := localPath(p, nextHop)
		if err == nil {
			_, err = s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{path}})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", p, err))
			continue
		}
		slog.Info("bgp advertises", "prefix", p, "nextHop", nextHop)
		s.advertised[p] = nextHop
	}
	return errors.Join(errs...)
}

// localPath is the path this speaker originates for p: IPv4 with a NEXT_HOP, IPv6 with the
// next hop in MP_REACH_NLRI (an IPv4 one goes IPv4-mapped).
func localPath(p netip.Prefix, nextHop netip.Addr) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(p)
	if err != nil {
		return nil, err
	}
	family := bgp.RF_IPv4_UC
	var nh bgp.PathAttributeInterface
	if p.Addr().Is6() {
		family = bgp.RF_IPv6_UC
		nh, err = bgp.NewPathAttributeMpReachNLRI(family, []bgp.PathNLRI{{NLRI: nlri}}, nextHop)
	} else {
		nh, err = bgp.NewPathAttributeNextHop(nextHop)
	}
	if err != nil {
		return nil, err
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP), nh,
		bgp.NewPathAttributeAsPath(nil)}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs}, nil
}

// Path is one route a neighbour announced.
type Path struct {
	Prefix  netip.Prefix `json:"prefix"`
	NextHop netip.Addr   `json:"nextHop"`
	// Peer is the neighbour that sent it; PeerASN its AS.
	Peer    netip.Addr `json:"peer"`
	PeerASN uint32     `json:"peerASN"`
	// ASPath is the AS path as received, nearest AS first; the origin AS is its last.
	ASPath []uint32 `json:"asPath"`
	// OriginatorID is set by route reflectors: the router ID of the path's originator.
	OriginatorID netip.Addr `json:"originatorID,omitzero"`
	// Best is GoBGP's choice among the prefix's paths; Stale marks a path kept for a
	// neighbour in graceful restart.
	Best  bool      `json:"best"`
	Stale bool      `json:"stale"`
	Since time.Time `json:"since"`
}

// Paths lists every unicast path (IPv4, and IPv6 with IPv6 on) neighbours announced, by
// prefix, best first.
func (s *Speaker) Paths() ([]Path, error) {
	var out []Path
	families := []bgp.Family{bgp.RF_IPv4_UC}
	if s.cfg.IPv6 {
		families = append(families, bgp.RF_IPv6_UC)
	}
	for _, family := range families {
		err := s.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: family},
			func(prefix bgp.NLRI, paths []*apiutil.Path) {
				for _, p := range paths {
					if !p.PeerAddress.IsValid() || p.PeerAddress.IsUnspecified() {
						continue // originated here
					}
					if path, ok := fromGoBGP(prefix, p); ok {
						out = append(out, path)
					}
				}
			})
		if err != nil {
			return nil, fmt.Errorf("list bgp paths: %w", err)
		}
	}
	slices.SortStableFunc(out, func(a, b Path) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return a.Prefix.Bits() - b.Prefix.Bits()
		}
		if a.Best != b.Best {
			if a.Best {
				return -1
			}
			return 1
		}
		return a.Peer.Compare(b.Peer)
	})
	return out, nil
}

func fromGoBGP(prefix bgp.NLRI, p *apiutil.Path) (Path, bool) {
	pfx, err := netip.ParsePrefix(prefix.String())
	if err != nil || pfx.Addr().Is4In6() {
		return Path{}, false
	}
	out := Path{Prefix: pfx, Peer: p.PeerAddress, PeerASN: p.PeerASN, Best: p.Best, Stale: p.Stale,
		Since: time.Unix(p.Age, 0)}
	for _, a := range p.Attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			out.NextHop = a.Value
		case *bgp.PathAttributeMpReachNLRI:
			out.NextHop = a.Nexthop.Unmap() // an IPv4 next hop of an IPv6 path comes IPv4-mapped
		case *bgp.PathAttributeAsPath:
			for _, seg := range a.Value {
				out.ASPath = append(out.ASPath, seg.GetAS()...)
			}
		case *bgp.PathAttributeOriginatorId:
			out.OriginatorID = a.Value
		}
	}
	return out, true
}

// PeerStatus is one neighbour's session, as `ebpfnet bgp peers` shows it.
type PeerStatus struct {
	Address  netip.Addr `json:"address"`
	ASN      uint32     `json:"asn"`
	Node     string     `json:"node,omitempty"`
	State    string     `json:"state"` // idle, connect, active, opensent, openconfirm, established
	Since    time.Time  `json:"since,omitzero"`
	RouterID string     `json:"routerID,omitempty"`
	MD5      bool       `json:"md5"`
	// Received, Accepted and Advertised count IPv4 unicast prefixes.
	Received   uint64 `json:"received"`
	Accepted   uint64 `json:"accepted"`
	Advertised uint64 `json:"advertised"`
	// UpdatesIn and UpdatesOut count UPDATE messages.
	UpdatesIn  uint64 `json:"updatesIn"`
	UpdatesOut uint64 `json:"updatesOut"`
	// EndOfRIB says the neighbour has sent all its routes since the session came up.
	EndOfRIB bool `json:"endOfRIB"`
	// Disconnect is why the session last went down.
	Disconnect string `json:"disconnect,omitempty"`
}

// Established is the state of a session that exchanges routes.
const Established = "established"

// Peers reports every neighbour's session.
func (s *Speaker) Peers(ctx context.Context) ([]PeerStatus, error) {
	s.mu.Lock()
	nodes := map[string]string{}
	for a, n := range s.neighbors {
		nodes[a.String()] = n.Node
	}
	s.mu.Unlock()
	var out []PeerStatus
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		out = append(out, peerStatus(p, nodes))
	})
	if err != nil {
		return nil, fmt.Errorf("list bgp peers: %w", err)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return a.Address.Compare(b.Address) })
	return out, nil
}

func peerStatus(p *api.Peer, nodes map[string]string) PeerStatus {
	var ps PeerStatus
	if c := p.GetConf(); c != nil {
		ps.Address, _ = netip.ParseAddr(c.GetNeighborAddress())
		ps.ASN = c.GetPeerAsn()
		ps.MD5 = c.GetAuthPassword() != ""
		ps.Node = nodes[c.GetNeighborAddress()]
	}
	if st := p.GetState(); st != nil {
		ps.State = strings.ToLower(strings.TrimPrefix(st.GetSessionState().String(), "SESSION_STATE_"))
		ps.RouterID = st.GetRouterId()
		ps.UpdatesIn = st.GetMessages().GetReceived().GetUpdate()
		ps.UpdatesOut = st.GetMessages().GetSent().GetUpdate()
		if st.GetDisconnectMessage() != "" {
			ps.Disconnect = st.GetDisconnectMessage()
		}
	}
	if ts := p.GetTimers().GetState(); ts != nil && ps.State == Established && ts.GetUptime() != nil {
		ps.Since = ts.GetUptime().AsTime()
	}
	for _, af := range p.GetAfiSafis() {
		if af.GetState().GetFamily().GetAfi() != api.Family_AFI_IP || af.GetState().GetFamily().GetSafi() != api.Family_SAFI_UNICAST {
			continue
		}
		ps.Received = af.GetState().GetReceived()
		ps.Accepted = af.GetState().GetAccepted()
		ps.Advertised = af.GetState().GetAdvertised()
		ps.EndOfRIB = af.GetMpGracefulRestart().GetState().GetEndOfRibReceived()
	}
	return ps
}
