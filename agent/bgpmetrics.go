package agent

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ebpfnet/ebpfnet/bgp"
)

var (
	bgpSessionUp = prometheus.NewDesc("ebpfnet_bgp_session_up", "1 while the BGP session with a neighbour is established, else 0.",
		[]string{"peer", "asn", "node"}, nil)
	bgpPrefixesReceived   = prometheus.NewDesc("ebpfnet_bgp_prefixes_received", "Prefixes a neighbour announced (IPv4 unicast).", []string{"peer"}, nil)
	bgpPrefixesAdvertised = prometheus.NewDesc("ebpfnet_bgp_prefixes_advertised", "Prefixes sent to a neighbour (IPv4 unicast).", []string{"peer"}, nil)
	bgpUpdatesReceived    = prometheus.NewDesc("ebpfnet_bgp_updates_received_total", "BGP UPDATE messages received from a neighbour in its current session.", []string{"peer"}, nil)
	bgpUpdatesSent        = prometheus.NewDesc("ebpfnet_bgp_updates_sent_total", "BGP UPDATE messages sent to a neighbour in its current session.", []string{"peer"}, nil)
)

// newBGPMetrics makes the counters the BGP reconciler keeps; per-session figures are read
// from the speaker at scrape time by bgpCollector.
func (m *agentMetrics) registerBGP(a *Agent) {
	m.bgpRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebpfnet_bgp_routes_refused_total",
		Help: "Learned BGP paths refused, by reason (each path counted once)."}, []string{"reason"})
	m.bgpInstalled = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ebpfnet_bgp_routes_installed",
		Help: "Routes to other nodes' pod CIDRs learned by BGP and installed."})
	for _, r := range []string{refuseOutsideCluster, refuseOwnCIDR, refuseNotNodeCIDR, refuseForeignOrigin, refuseWrongNode, refuseNoNextHop} {
		m.bgpRefused.WithLabelValues(r) // every reason shows, at zero until it happens
	}
	m.reg.MustRegister(m.bgpRefused, m.bgpInstalled, &bgpCollector{a: a})
}

// bgpCollector reads the sessions from the speaker at scrape time.
type bgpCollector struct{ a *Agent }

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{bgpSessionUp, bgpPrefixesReceived, bgpPrefixesAdvertised, bgpUpdatesReceived, bgpUpdatesSent} {
		ch <- d
	}
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	b := c.a.bgp
	if b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	peers, err := b.speaker.Peers(ctx)
	if err != nil {
		return
	}
	for _, p := range peers {
		up := 0.0
		if p.State == bgp.Established {
			up = 1
		}
		addr := p.Address.String()
		ch <- prometheus.MustNewConstMetric(bgpSessionUp, prometheus.GaugeValue, up, addr, strconv.FormatUint(uint64(p.ASN), 10), p.Node)
		ch <- prometheus.MustNewConstMetric(bgpPrefixesReceived, prometheus.GaugeValue, float64(p.Received), addr)
		ch <- prometheus.MustNewConstMetric(bgpPrefixesAdvertised, prometheus.GaugeValue, float64(p.Advertised), addr)
		ch <- prometheus.MustNewConstMetric(bgpUpdatesReceived, prometheus.CounterValue, float64(p.UpdatesIn), addr)
		ch <- prometheus.MustNewConstMetric(bgpUpdatesSent, prometheus.CounterValue, float64(p.UpdatesOut), addr)
	}
}
