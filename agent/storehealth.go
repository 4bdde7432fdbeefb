package agent

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ebpfnet/ebpfnet/store"
)

// storeHealth watches whether the store answers. While it does not, the agent reports
// not-ready (CNI STATUS answers 50), says so once in its log and in ebpfnet_store_up, and
// the datapath goes on forwarding and enforcing from its pins; once it answers again the agent
// reconciles what changed meanwhile.
type storeHealth struct {
	down  atomic.Bool
	since atomic.Int64 // unix ns of the last change
	gauge prometheus.Gauge
}

// Intervals of the store probe.
const (
	storeProbeEvery   = 2 * time.Second
	storeProbeTimeout = 3 * time.Second
)

func newStoreHealth(reg *prometheus.Registry) *storeHealth {
	h := &storeHealth{gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ebpfnet_store_up",
		Help: "1 while the agent's store (etcd, the Kubernetes API server) answers, else 0."})}
	h.gauge.Set(1)
	h.since.Store(time.Now().UnixNano())
	reg.MustRegister(h.gauge)
	return h
}

// sinceTime is when the store last went down or came back.
func (h *storeHealth) sinceTime() time.Time { return time.Unix(0, h.since.Load()) }

// up says whether the store answered its last probe.
func (h *storeHealth) up() bool { return !h.down.Load() }

// watch probes the store until ctx ends; back calls the agent's reconcile when it returns.
func (h *storeHealth) watch(ctx context.Context, kv store.KV, back func()) {
	p, ok := kv.(store.Pinger)
	if !ok {
		return // a local store does not go away
	}
	t := time.NewTicker(storeProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, storeProbeTimeout)
		err := p.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if h.observe(err) {
			rewatch(ctx, kv)
			back()
		}
	}
}

// rewatch restarts the store's watches, if it has any that back off, once it answers again.
func rewatch(ctx context.Context, kv store.KV) {
	rw, ok := kv.(store.Rewatcher)
	if !ok {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	if err := rw.Rewatch(rctx); err != nil {
		slog.Warn("store reachable again, but its watches did not restart: they retry by themselves", "err", err)
		return
	}
	slog.Info("store watches restarted", "took", time.Since(start).Round(time.Millisecond))
}

// observe records one probe's result and logs the transitions; it says whether the store has
// just come back.
func (h *storeHealth) observe(err error) bool {
	was := h.down.Load()
	switch {
	case err != nil && !was:
		h.down.Store(true)
		h.since.Store(time.Now().UnixNano())
		h.gauge.Set(0)
		slog.Warn("store unreachable: this node reports not-ready; the datapath keeps forwarding and enforcing from its pins", "err", err)
	case err == nil && was:
		down := time.Since(time.Unix(0, h.since.Load()))
		h.down.Store(false)
		h.since.Store(time.Now().UnixNano())
		h.gauge.Set(1)
		slog.Info("store reachable again: reconciling what changed meanwhile", "down", down.Round(time.Millisecond))
		return true
	}
	return false
}
