package bench

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"time"

	"github.com/ebpfnet/ebpfnet/namespace"
)

// Config is how long and how often to measure.
type Config struct {
	Rounds      int
	Throughput  time.Duration // one iperf3 run
	Latency     time.Duration // one sockperf run (over IPv6, one TCP_RR and one TCP_CRR run)
	ProgRepeat  int           // BPF_PROG_TEST_RUN repetitions per sample
	ProgSamples int
}

// Setup is one topology's samples and their medians.
type Setup struct {
	Name           string    `json:"name"`
	ThroughputGbps []float64 `json:"throughputGbps"`
	LatencyP50us   []float64 `json:"latencyP50us"`
	LatencyP99us   []float64 `json:"latencyP99us"`
	MedianGbps     float64   `json:"medianGbps"`
	MedianP50us    float64   `json:"medianP50us"`
	MedianP99us    float64   `json:"medianP99us"`
	// Over IPv6, TCP_CRR's mean µs per connection.
	CRRus       []float64 `json:"crrUs,omitempty"`
	MedianCRRus float64   `json:"medianCRRus,omitempty"`
}

// Suite is a set of setups measured side by side, with the one ratios are taken against
// (Baseline) and the physical limit (Limit).
type Suite struct {
	Name     string `json:"name"`
	Baseline string `json:"baseline"`
	Limit    string `json:"limit"`
	// Family is IPv6 where the clients reached their servers over IPv6, empty over IPv4.
	Family Family  `json:"family,omitempty"`
	Setups []Setup `json:"setups"`
}

// Get returns the setup called name.
func (s Suite) Get(name string) Setup {
	for _, st := range s.Setups {
		if st.Name == name {
			return st
		}
	}
	return Setup{}
}

// RunSuite builds every topology, then measures them round by round, interleaved, so that
// machine noise hits all of them alike.
func RunSuite(name, baseline, limit string, builders []Builder, cfg Config) (Suite, error) {
	suite := newSuite(name, baseline, limit, builders)
	topos, err := buildAll(builders)
	defer closeAll(topos)
	if err == nil {
		err = measure(&suite, topos, cfg)
	}
	return suite, err
}

// newSuite is a suite with a setup, yet unmeasured, for each builder.
func newSuite(name, baseline, limit string, builders []Builder) Suite {
	suite := Suite{Name: name, Baseline: baseline, Limit: limit}
	for _, b := range builders {
		suite.Setups = append(suite.Setups, Setup{Name: b.Name})
	}
	return suite
}

// buildAll builds every topology and starts its servers; on an error, it returns those built
// so far too, for closeAll.
func buildAll(builders []Builder) ([]*Topology, error) {
	var topos []*Topology
	for i, b := range builders {
		t, err := b.Build(fmt.Sprintf("eb%d%d", time.Now().UnixNano()%1000, i))
		if err != nil {
			return topos, fmt.Errorf("build %s: %w", b.Name, err)
		}
		topos = append(topos, t)
		if err := t.startServers(); err != nil {
			return topos, err
		}
	}
	return topos, nil
}

func closeAll(topos []*Topology) {
	for _, t := range topos {
		if err := t.Close(); err != nil {
			slog.Warn("tear down topology", "name", t.Name, "err", err)
		}
	}
}

// measure measures suite's setups, built as topos (one each, in order), cfg.Rounds rounds,
// and takes their medians.
func measure(suite *Suite, topos []*Topology, cfg Config) error {
	for r := 0; r < cfg.Rounds; r++ {
		for i, t := range topos {
			gbps, err := t.throughput(cfg.Throughput)
			if err != nil {
				return err
			}
			p50, p99, err := t.latency(cfg.Latency)
			if err != nil {
				return err
			}
			st := &suite.Setups[i]
			st.ThroughputGbps = append(st.ThroughputGbps, gbps)
			st.LatencyP50us = append(st.LatencyP50us, p50)
			st.LatencyP99us = append(st.LatencyP99us, p99)
			logged := []any{"suite", suite.Name, "round", r + 1, "setup", t.Name, "gbps", round2(gbps), "p50us", p50, "p99us", p99}
			if t.target().Is6() {
				suite.Family = IPv6
				crr, err := TCPCRR(namespace.Path(t.Client), netip.AddrPortFrom(t.target(), latencyPort), cfg.Latency)
				if err != nil {
					return err
				}
				st.CRRus = append(st.CRRus, round2(crr.MeanMicros()))
				logged = append(logged, "crrUs", round2(crr.MeanMicros()))
			}
			slog.Info("measured", logged...)
		}
	}
	for i := range suite.Setups {
		st := &suite.Setups[i]
		st.MedianGbps, st.MedianP50us, st.MedianP99us = median(st.ThroughputGbps), median(st.LatencyP50us), median(st.LatencyP99us)
		st.MedianCRRus = median(st.CRRus)
	}
	return nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func round2(x float64) float64 { return float64(int(x*100+0.5)) / 100 }

// SuiteDef names a suite's setups, its baseline and its limit.
type SuiteDef struct {
	Baseline, Limit string
	Builders        func() []Builder
}

// Suites are the suites `ebpfnet-bench -suites` knows.
var Suites = map[string]SuiteDef{
	"same-node":       {Baseline: "kernel-route", Limit: "direct", Builders: SameNode},
	"same-node-ipv6":  {Baseline: "kernel-route", Limit: "direct", Builders: SameNodeIPv6},
	"cross-node":      {Baseline: "kernel-vxlan", Limit: "node-to-node", Builders: CrossNode},
	"cross-node-ipv6": {Baseline: "kernel-vxlan", Limit: "node-to-node", Builders: CrossNodeIPv6},
	"policy":          {Baseline: "kernel-route+10k-iptables", Limit: "kernel-route+10k-iptables", Builders: PolicyThroughput},
	"services":        {Baseline: "ebpfnet-native-direct", Limit: PodToPodKernel, Builders: func() []Builder { return ServiceSetups(nil) }},
	"bgp":             {Baseline: NodeToNodeViaRouter, Limit: NodeToNodeViaRouter, Builders: BGPSetups},
}
