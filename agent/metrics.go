package agent

import (
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ebpfnet/ebpfnet/maps"
)

// agentMetrics are the agent's own Prometheus metrics; datapath counters are read from the
// per-CPU map at scrape time by datapathCollector.
type agentMetrics struct {
	reg         *prometheus.Registry
	reconcile   prometheus.Histogram
	policyDelay prometheus.Histogram
	ctGCRuns    prometheus.Counter
	ctGCRemoved prometheus.Counter
	// natGCRemoved and natEntries: translations (Services, masquerading) collected and left.
	natGCRemoved prometheus.Counter
	natEntries   prometheus.Gauge
	// identitiesCollected counts identities deleted because no pod carried them any more.
	identitiesCollected prometheus.Counter
	reconcileError      prometheus.Counter
	// bgpRefused and bgpInstalled: learned BGP paths refused (by reason) and routes installed.
	bgpRefused   *prometheus.CounterVec
	bgpInstalled prometheus.Gauge
	// mapRefusals counts changes refused, and store states held back, for want of room in a
	// map; held is what this node holds back now (ebpfnet_bpf_map_full).
	mapRefusals *prometheus.CounterVec
	held        holdBack
	// cniAddPhases: where a CNI ADD's time goes, by phase (see AddPhases).
	cniAddPhases *prometheus.HistogramVec
}

// checkedMaps are the maps a change is refused for: what ebpfnet_bpf_map_full and
// ebpfnet_map_refusals_total report on.
var checkedMaps = []string{maps.EndpointsName, maps.IPCacheName, maps.PolicyName}

func newAgentMetrics(a *Agent) *agentMetrics {
	m := &agentMetrics{reg: prometheus.NewRegistry()}
	m.reconcile = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ebpfnet_reconcile_duration_seconds",
		Help: "Time one reconcile of the store into the datapath took.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
	m.policyDelay = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ebpfnet_policy_implementation_delay_seconds",
		Help: "Time from a policy or label change in the store to this node enforcing it.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)})
	m.ctGCRuns = prometheus.NewCounter(prometheus.CounterOpts{Name: "ebpfnet_conntrack_gc_runs_total", Help: "Conntrack garbage collection runs."})
	m.ctGCRemoved = prometheus.NewCounter(prometheus.CounterOpts{Name: "ebpfnet_conntrack_gc_removed_total", Help: "Expired conntrack entries removed."})
	m.reconcileError = prometheus.NewCounter(prometheus.CounterOpts{Name: "ebpfnet_reconcile_errors_total", Help: "Reconciles that failed."})
	m.identitiesCollected = prometheus.NewCounter(prometheus.CounterOpts{Name: "ebpfnet_identities_collected_total", Help: "Identities deleted because no pod carried them for the grace period."})
	m.natGCRemoved = prometheus.NewCounter(prometheus.CounterOpts{Name: "ebpfnet_nat_gc_removed_total", Help: "Translations of ended flows removed from the nat map."})
	m.natEntries = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ebpfnet_nat_entries", Help: "Entries in the nat map after the last collection (two per translated flow)."})
	m.reg.MustRegister(m.natGCRemoved, m.natEntries)
	m.mapRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ebpfnet_map_refusals_total",
		Help: "Changes refused (policy apply, label change, CNI ADD) and store states held back because a map could not hold them, by map."}, []string{"map"})
	for _, name := range checkedMaps {
		m.mapRefusals.WithLabelValues(name)
	}
	m.reg.MustRegister(m.mapRefusals)
	m.cniAddPhases = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ebpfnet_cni_add_phase_seconds",
		Help:    "Time each phase of a CNI ADD took in the agent: " + addPhaseHelp + ".",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"phase"})
	for _, p := range AddPhases {
		m.cniAddPhases.WithLabelValues(p)
	}
	m.reg.MustRegister(m.cniAddPhases)
	m.reg.MustRegister(m.reconcile, m.policyDelay, m.ctGCRuns, m.ctGCRemoved, m.reconcileError, m.identitiesCollected, &datapathCollector{a: a})
	if a.cfg.bgp != nil {
		m.registerBGP(a)
	}
	return m
}

// serveMetrics listens first, so a bad address is an error at start, then serves in the
// background until the listener closes.
func (a *Agent) serveMetrics(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metricsAddress: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	// kubelet's probes: liveness restarts an agent that cannot repair itself, readiness
	// reports one that should not be counted on.
	mux.HandleFunc("GET /healthz", healthHandler(a.liveProblems))
	mux.HandleFunc("GET /readyz", healthHandler(a.readyProblems))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			a.log.Warn("metrics server", "err", err)
		}
	}()
	return ln, nil
}

var (
	forwardPackets = prometheus.NewDesc("ebpfnet_forward_packets_total", "Packets the datapath forwarded or let through, by hook and reason.", []string{"direction", "reason"}, nil)
	forwardBytes   = prometheus.NewDesc("ebpfnet_forward_bytes_total", "Bytes the datapath forwarded or let through, by hook and reason.", []string{"direction", "reason"}, nil)
	dropPackets    = prometheus.NewDesc("ebpfnet_drop_packets_total", "Packets the datapath dropped, by hook and reason.", []string{"direction", "reason"}, nil)
	dropBytes      = prometheus.NewDesc("ebpfnet_drop_bytes_total", "Bytes the datapath dropped, by hook and reason.", []string{"direction", "reason"}, nil)
	mapPressure    = prometheus.NewDesc("ebpfnet_bpf_map_pressure", "Fill ratio of a datapath map: entries over capacity.", []string{"map"}, nil)
	mapFull        = prometheus.NewDesc("ebpfnet_bpf_map_full", "1 while a map holds all it can or cannot hold what the store wants of this node (the change is held back), else 0.", []string{"map"}, nil)
	endpointsDesc  = prometheus.NewDesc("ebpfnet_endpoints", "Pods attached on this node.", nil, nil)
	identitiesDesc = prometheus.NewDesc("ebpfnet_identities", "Security identities in the cluster.", nil, nil)
	policiesDesc   = prometheus.NewDesc("ebpfnet_policies", "NetworkPolicies in the cluster.", nil, nil)
	eventsLost     = prometheus.NewDesc("ebpfnet_monitor_events_lost_total", "Drop events the full ring buffer could not take.", []string{"direction"}, nil)
	ctEntries      = prometheus.NewDesc("ebpfnet_conntrack_entries", "Flows in the conntrack map.", nil, nil)
)

// datapathCollector reads the maps at scrape time.
type datapathCollector struct{ a *Agent }

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{eventsLost, forwardPackets, forwardBytes, dropPackets, dropBytes, mapPressure, mapFull, endpointsDesc, identitiesDesc, policiesDesc, ctEntries} {
		ch <- d
	}
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	dp := c.a.dp
	if counters, err := dp.Metrics().All(); err == nil {
		for _, k := range counters {
			if k.Reason == maps.ReasonEventLost {
				ch <- prometheus.MustNewConstMetric(eventsLost, prometheus.CounterValue, float64(k.Packets), maps.DirectionName(k.Direction))
				continue
			}
			pk, bk := forwardPackets, forwardBytes
			if maps.IsDrop(k.Reason) {
				pk, bk = dropPackets, dropBytes
			}
			labels := []string{maps.DirectionName(k.Direction), maps.ReasonName(k.Reason)}
			ch <- prometheus.MustNewConstMetric(pk, prometheus.CounterValue, float64(k.Packets), labels...)
			ch <- prometheus.MustNewConstMetric(bk, prometheus.CounterValue, float64(k.Bytes), labels...)
		}
	}
	var flows int
	for name, m := range map[string]*ebpf.Map{maps.EndpointsName: dp.DatapathMaps.Endpoints, maps.RoutesName: dp.DatapathMaps.Routes,
		maps.IPCacheName: dp.DatapathMaps.Ipcache, maps.PolicyName: dp.DatapathMaps.Policy, maps.ConntrackName: dp.DatapathMaps.Conntrack,
		maps.PrefilterName: dp.DatapathMaps.Prefilter, maps.MetricsName: dp.DatapathMaps.Metrics} { // not the ring buffer
		n := countEntries(m)
		if name == maps.ConntrackName {
			flows = n
		}
		ch <- prometheus.MustNewConstMetric(mapPressure, prometheus.GaugeValue, float64(n)/float64(m.MaxEntries()), name)
		if slices.Contains(checkedMaps, name) {
			full := 0.0
			if n >= int(m.MaxEntries()) || c.a.metrics.held.full(name) {
				full = 1
			}
			ch <- prometheus.MustNewConstMetric(mapFull, prometheus.GaugeValue, full, name)
		}
	}
	ch <- prometheus.MustNewConstMetric(ctEntries, prometheus.GaugeValue, float64(flows))
	if out := c.a.lastPolicy.Load(); out != nil {
		ch <- prometheus.MustNewConstMetric(endpointsDesc, prometheus.GaugeValue, float64(len(out.Endpoints)))
		ch <- prometheus.MustNewConstMetric(identitiesDesc, prometheus.GaugeValue, float64(len(out.Identities)))
		ch <- prometheus.MustNewConstMetric(policiesDesc, prometheus.GaugeValue, float64(out.Policies))
	}
}

// countEntries walks a map's keys; values are not read, so per-CPU maps cost no more.
func countEntries(m *ebpf.Map) int {
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	n := 0
	var cur any
	for {
		if err := m.NextKey(cur, next); err != nil {
			return n
		}
		n++
		copy(key, next)
		cur = key
	}
}
