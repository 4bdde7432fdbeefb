package bench

import (
	"fmt"
	"log/slog"
	"sort"
	"time"
)

// Config is how long and how often to measure.
type Config struct {
	Rounds      int
	Throughput  time.Duration // one iperf3 run
	Latency     time.Duration // one sockperf run
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
}

// Suite is a set of setups measured side by side, with the one ratios are taken against
// (Baseline) and the physical limit (Limit).
type Suite struct {
	Name     string  `json:"name"`
	Baseline string  `json:"baseline"`
	Limit    string  `json:"limit"`
	Setups   []Setup `json:"setups"`
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
	suite := Suite{Name: name, Baseline: baseline, Limit: limit}
	var topos []*Topology
	defer func() {
		for _, t := range topos {
			if err := t.Close(); err != nil {
				slog.Warn("tear down topology", "name", t.Name, "err", err)
			}
		}
	}()
	for i, b := range builders {
		t, err := b.Build(fmt.Sprintf("eb%d%d", time.Now().UnixNano()%1000, i))
		if err != nil {
			return suite, fmt.Errorf("build %s: %w", b.Name, err)
		}
		topos = append(topos, t)
		if err := t.startServers(); err != nil {
			return suite, err
		}
		suite.Setups = append(suite.Setups, Setup{Name: b.Name})
	}
	for r := 0; r < cfg.Rounds; r++ {
		for i, t := range topos {
			gbps, err := t.throughput(cfg.Throughput)
			if err != nil {
				return suite, err
			}
			p50, p99, err := t.latency(cfg.Latency)
			if err != nil {
				return suite, err
			}
			st := &suite.Setups[i]
			st.ThroughputGbps = append(st.ThroughputGbps, gbps)
			st.LatencyP50us = append(st.LatencyP50us, p50)
			st.LatencyP99us = append(st.LatencyP99us, p99)
			slog.Info("measured", "suite", name, "round", r+1, "setup", t.Name, "gbps", round2(gbps), "p50us", p50, "p99us", p99)
		}
	}
	for i := range suite.Setups {
		st := &suite.Setups[i]
		st.MedianGbps, st.MedianP50us, st.MedianP99us = median(st.ThroughputGbps), median(st.LatencyP50us), median(st.LatencyP99us)
	}
	return suite, nil
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
	"same-node":  {Baseline: "kernel-route", Limit: "direct", Builders: SameNode},
	"cross-node": {Baseline: "kernel-vxlan", Limit: "node-to-node", Builders: CrossNode},
	"policy":     {Baseline: "kernel-route+10k-iptables", Limit: "kernel-route+10k-iptables", Builders: PolicyThroughput},
	"services":   {Baseline: "ebpfnet-native-direct", Limit: PodToPodKernel, Builders: func() []Builder { return ServiceSetups(nil) }},
	"bgp":        {Baseline: NodeToNodeViaRouter, Limit: NodeToNodeViaRouter, Builders: BGPSetups},
}
