package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/ebpfnet/ebpfnet/agentapi"
	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/maps"
)

// monitor fans the datapath's drop events out to every subscriber; a slow subscriber misses
// events rather than holding up the others.
type monitor struct {
	mu   sync.Mutex
	subs map[chan agentapi.MonitorEvent]string // -> "drop", "verdict" or "all"
	pods map[netip.Addr]string
	// verdicts turns the datapath's verdict events on and off as subscribers come and go.
	verdicts func(on bool)
}

func (m *monitor) subscribe(kind string) chan agentapi.MonitorEvent {
	ch := make(chan agentapi.MonitorEvent, 256)
	m.mu.Lock()
	defer m.mu.Unlock()
	was := m.wantVerdicts()
	m.subs[ch] = kind
	if !was && m.wantVerdicts() && m.verdicts != nil {
		m.verdicts(true)
	}
	return ch
}

func (m *monitor) unsubscribe(ch chan agentapi.MonitorEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	was := m.wantVerdicts()
	delete(m.subs, ch)
	if was && !m.wantVerdicts() && m.verdicts != nil {
		m.verdicts(false)
	}
}

func (m *monitor) wantVerdicts() bool {
	for _, k := range m.subs {
		if k != "drop" {
			return true
		}
	}
	return false
}

func (m *monitor) setPods(pods map[netip.Addr]string) {
	m.mu.Lock()
	m.pods = pods
	m.mu.Unlock()
}

var protoNames = map[uint8]string{1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}

// readEvents decodes the ring buffer until ctx ends.
func (a *Agent) readEvents(ctx context.Context) {
	rd, err := ringbuf.NewReader(a.dp.DatapathMaps.Events)
	if err != nil {
		a.log.Warn("drop monitor unavailable", "err", err)
		return
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	for {
		rec, err := rd.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		var ev bpf.DatapathEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
			continue
		}
		a.mon.publish(a.toMonitorEvent(ev))
	}
}

func (a *Agent) toMonitorEvent(ev bpf.DatapathEvent) agentapi.MonitorEvent {
	age := time.Duration(int64(maps.MonotonicNow()) - int64(ev.Ts))
	addr := func(b [16]uint8) netip.Addr {
		if ev.Family == 2 {
			return netip.AddrFrom4([4]byte(b[:4]))
		}
		return netip.AddrFrom16(b)
	}
	port := func(p uint16) uint16 { return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, p)) }
	kind := "drop"
	if !maps.IsDrop(maps.Reason(ev.Reason)) {
		kind = "verdict"
	}
	out := agentapi.MonitorEvent{Time: time.Now().Add(-age), Node: a.node.Name, Type: kind, Length: ev.Len,
		Reason: maps.ReasonName(maps.Reason(ev.Reason)), Direction: maps.DirectionName(maps.Direction(ev.Direction)),
		Protocol: protoNames[ev.Protocol]}
	if ev.Family != 0 {
		out.Src = agentapi.Peer{IP: addr(ev.Saddr), Port: port(ev.Sport), Identity: ev.SrcIdentity}
		out.Dst = agentapi.Peer{IP: addr(ev.Daddr), Port: port(ev.Dport), Identity: ev.DstIdentity}
	}
	return out
}

func (m *monitor) publish(ev agentapi.MonitorEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ev.Src.Pod, ev.Dst.Pod = m.pods[ev.Src.IP], m.pods[ev.Dst.IP]
	for ch, kind := range m.subs {
		if kind != "all" && kind != ev.Type {
			continue
		}
		select {
		case ch <- ev:
		default:
		}
	}
}

// serveMonitor streams events as JSON lines until the client goes away.
func (a *Agent) serveMonitor(w http.ResponseWriter, r *http.Request) {
	kind := r.URL.Query().Get("type")
	if kind == "" {
		kind = "drop"
	}
	if kind != "drop" && kind != "verdict" && kind != "all" {
		reply(w, nil, &agentapi.APIError{Code: agentapi.CodeInvalidConfig, Message: "type " + kind + ": want drop, verdict or all"})
		return
	}
	ch := a.mon.subscribe(kind)
	defer a.mon.unsubscribe(ch)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case ev := <-ch:
			if enc.Encode(ev) != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
	}
}
